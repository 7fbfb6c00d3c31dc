//! PostgreSQL access for transactions, idempotency keys and the outbox insert.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::ApiError;
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

/// A client's idempotency key, how long to wait behind a concurrent request holding it, and how
/// long the key answers with its transaction (`transactions.idempotency_ttl`).
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub wait: std::time::Duration,
    pub ttl: std::time::Duration,
}

/// Result of a create call.
#[derive(Debug)]
pub enum Created {
    New(Transaction),
    /// The idempotency key was seen before with the same request: the original transaction.
    Replayed(Transaction),
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
/// `principal` identifies the authenticated caller (an opaque string); a key belongs to the
/// principal that sent it, so two callers choosing the same key never see each other's
/// transaction. `''` is the principal of keys stored before keys were scoped.
///
/// `make_event` builds the event from the final transaction (it needs the id and timestamp).
/// Without a key this is one statement (both inserts in one CTE, committed together); with a key
/// the key is claimed first in the same database transaction. A key whose `ttl` has run out is
/// free again: claiming it creates a new transaction.
pub async fn create(
    pool: &PgPool,
    principal: &str,
    id: &str,
    new: &NewTransaction,
    idempotency: Option<Idempotency<'_>>,
    make_event: impl FnOnce(&Transaction) -> OutboxEvent,
) -> Result<Created, ApiError> {
    let transaction = Transaction {
        id: id.to_owned(),
        user_id: new.user_id.clone(),
        amount: new.money.amount_text(),
        currency: new.money.currency().code().to_owned(),
        status: "completed".to_owned(),
        created_at: now_in_database_precision(),
    };
    let event = make_event(&transaction);
    let Some(Idempotency { key, wait, ttl }) = idempotency else {
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
    // A live row keeps the key (0 rows affected); an expired one is taken over as if it were new
    // (1 row, as for an insert). In both cases PostgreSQL leaves the row locked by this
    // transaction, so it can neither expire away nor be taken over while its replay is read.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, transaction_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5)
         ON CONFLICT (principal, key) DO UPDATE
             SET fingerprint = excluded.fingerprint, transaction_id = excluded.transaction_id,
                 created_at = excluded.created_at, expires_at = excluded.expires_at
             WHERE idempotency_keys.expires_at <= now()",
    )
    .bind(principal)
    .bind(key)
    .bind(&fingerprint)
    .bind(id)
    .bind(ttl)
    .execute(&mut *tx)
    .await
    .map_err(|error| match error.as_database_error().and_then(|e| e.code()) {
        Some(code) if code == LOCK_NOT_AVAILABLE => ApiError::IdempotencyKeyInProgress,
        _ => ApiError::Database(error),
    })?
    .rows_affected()
        == 1;
    if !claimed {
        // Read under that lock and with the claim's own now(), then let go of the row at once:
        // other requests with the same key queue on it.
        let stored = live_key(&mut tx, principal, key).await;
        tx.rollback().await?;
        return replay(pool, stored?, &fingerprint).await;
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

/// The fingerprint and transaction id of the unexpired row for `(principal, key)`. An expired
/// row is as good as absent, whether or not it has been deleted yet.
async fn live_key(
    connection: &mut sqlx::PgConnection,
    principal: &str,
    key: &str,
) -> Result<(Vec<u8>, String), sqlx::Error> {
    sqlx::query_as(
        "SELECT fingerprint, transaction_id FROM idempotency_keys
         WHERE principal = $1 AND key = $2 AND expires_at > now()",
    )
    .bind(principal)
    .bind(key)
    .fetch_one(connection)
    .await
}

async fn replay(
    pool: &PgPool,
    (stored_fingerprint, transaction_id): (Vec<u8>, String),
    fingerprint: &[u8],
) -> Result<Created, ApiError> {
    if stored_fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
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
