//! PostgreSQL access for transactions, idempotency keys and the outbox insert.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::money::{Money, format_stored};

/// A stored transaction as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transaction {
    #[schema(example = "txn_01jc3v6p6m9x2s8q4r7t5w1y0z")]
    pub id: String,
    pub user_id: String,
    /// Exact decimal amount as a string, with the currency's minor units (`"100.50"`).
    #[schema(example = "100.50")]
    pub amount: String,
    #[schema(example = "BRL")]
    pub currency: String,
    #[schema(example = "completed")]
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// What a client asked for, after validation.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub user_id: String,
    pub money: Money,
}

impl NewTransaction {
    /// Identifies the request's meaning (not its bytes): `100.5` and `"100.50"` are the same.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut hash = Sha256::new();
        for part in [self.user_id.as_str(), &self.money.amount_text(), self.money.currency().code()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().to_vec()
    }
}

/// The outbox event written with a transaction.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: String,
    pub event_type: &'static str,
    pub payload: String,
    pub traceparent: Option<String>,
}

/// A client's idempotency key and how long to wait behind a concurrent request holding it.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub wait: std::time::Duration,
}

/// Result of a create call.
#[derive(Debug)]
pub enum Created {
    New(Transaction),
    /// The idempotency key was seen before with the same request: the original transaction.
    Replayed(Transaction),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("another request with this idempotency key is still in progress")]
    IdempotencyKeyInProgress,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// SQLSTATE 55P03: a lock wait exceeded `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    user_id: String,
    amount: Decimal,
    currency: String,
    status: String,
    created_at: DateTime<Utc>,
}

impl Row {
    fn into_transaction(self) -> Transaction {
        let currency = self.currency.trim().to_owned();
        let amount = format_stored(self.amount, &currency);
        Transaction {
            id: self.id,
            user_id: self.user_id,
            amount,
            currency,
            status: self.status,
            created_at: self.created_at,
        }
    }
}

/// Stores a transaction and its outbox event atomically, honouring the idempotency key.
///
/// `make_event` builds the event from the final transaction (it needs the id and timestamp).
/// Without a key this is one statement (both inserts in one CTE, committed together); with a key
/// the key is claimed first in the same database transaction.
pub async fn create(
    pool: &PgPool,
    id: &str,
    new: &NewTransaction,
    idempotency: Option<Idempotency<'_>>,
    make_event: impl FnOnce(&Transaction) -> OutboxEvent,
) -> Result<Created, StoreError> {
    let transaction = Transaction {
        id: id.to_owned(),
        user_id: new.user_id.clone(),
        amount: new.money.amount_text(),
        currency: new.money.currency().code().to_owned(),
        status: "completed".to_owned(),
        created_at: now_in_database_precision(),
    };
    let event = make_event(&transaction);
    let Some(Idempotency { key, wait }) = idempotency else {
        insert_with_event(pool, new, &transaction, &event).await?;
        return Ok(Created::New(transaction));
    };
    let mut tx = pool.begin().await?;
    let fingerprint = new.fingerprint();
    // The insert below waits while another request holding the key is uncommitted; bound it.
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", wait.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (key, fingerprint, transaction_id) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(&fingerprint)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(|error| match error.as_database_error().and_then(|e| e.code()) {
        Some(code) if code == LOCK_NOT_AVAILABLE => StoreError::IdempotencyKeyInProgress,
        _ => StoreError::Database(error),
    })?
    .rows_affected()
        == 1;
    if !claimed {
        tx.rollback().await?;
        return replay(pool, key, &fingerprint).await;
    }
    insert_with_event(&mut *tx, new, &transaction, &event).await?;
    tx.commit().await?;
    Ok(Created::New(transaction))
}

/// Inserts the transaction and its outbox event in one statement: one round trip, one commit
/// when run outside a transaction. Foreign keys are checked at the end of the statement.
async fn insert_with_event<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    new: &NewTransaction,
    transaction: &Transaction,
    event: &OutboxEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH created AS (
             INSERT INTO transactions (id, user_id, amount, currency, status, created_at)
             VALUES ($1, $2, $3, $4, 'completed', $5)
         )
         INSERT INTO outbox (event_id, event_type, transaction_id, payload, traceparent)
         VALUES ($6, $7, $1, $8, $9)",
    )
    .bind(&transaction.id)
    .bind(&transaction.user_id)
    .bind(new.money.amount())
    .bind(&transaction.currency)
    .bind(transaction.created_at)
    .bind(&event.event_id)
    .bind(event.event_type)
    .bind(&event.payload)
    .bind(&event.traceparent)
    .execute(executor)
    .await?;
    Ok(())
}

/// PostgreSQL keeps microseconds; a timestamp made here must read back identical.
fn now_in_database_precision() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

async fn replay(pool: &PgPool, key: &str, fingerprint: &[u8]) -> Result<Created, StoreError> {
    let (stored_fingerprint, transaction_id): (Vec<u8>, String) =
        sqlx::query_as("SELECT fingerprint, transaction_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_one(pool)
            .await?;
    if stored_fingerprint != fingerprint {
        return Err(StoreError::IdempotencyKeyReused);
    }
    let transaction = find(pool, &transaction_id).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(Created::Replayed(transaction))
}

/// Loads one transaction.
pub async fn find(pool: &PgPool, id: &str) -> Result<Option<Transaction>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as("SELECT id, user_id, amount, currency, status, created_at FROM transactions WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(Row::into_transaction))
}
