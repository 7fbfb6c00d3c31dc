//! Retention: deletes delivered outbox events once `retention.delivered_events` has passed since
//! their delivery, and idempotency keys once they expire. Pending events and dead letters are
//! never deleted (a dead letter waits for an operator, docs/runbooks/webhook-dead-letters.md);
//! transactions are never deleted.
//!
//! Every replica runs it. Rows go in batches of `retention.batch_size`, each batch one short
//! statement that locks only its own rows and skips rows another replica has locked, so a large
//! backlog never holds many locks at once and replicas running together share the work instead of
//! queueing on each other.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;

/// One batch of delivered events older than `$1` (an interval), at most `$2` rows. The inner scan
/// goes through the partial index `outbox_delivered` (migration 0003), so it never reaches pending
/// or dead rows; the rows it locked are then deleted by their physical address (a TID scan), which
/// leaves the planner no join to get wrong. The addresses cannot move in between: the rows are
/// locked by this statement.
pub const DELETE_DELIVERED_EVENTS: &str = "DELETE FROM outbox WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM outbox
     WHERE status = 'delivered' AND delivered_at < now() - $1
     LIMIT $2
     FOR UPDATE SKIP LOCKED))";

/// One batch of expired idempotency keys, at most `$1` rows, found through
/// `idempotency_keys_expires_at` and deleted like the events. `expires_at <= now()` is the
/// condition under which `store::create` takes a key over, so a key is deleted only once it is
/// free anyway; one being taken over is locked, so skipped, and live again once it is not.
pub const DELETE_EXPIRED_IDEMPOTENCY_KEYS: &str = "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM idempotency_keys
     WHERE expires_at <= now()
     LIMIT $1
     FOR UPDATE SKIP LOCKED))";

/// Rows one run deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub outbox: u64,
    pub idempotency_keys: u64,
}

impl Deleted {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Runs the job at start (deployments may come more often than `retention.interval`), then every
/// interval, until `stop` is cancelled. A failed run is logged and tried again at the next one.
pub async fn run(pool: PgPool, config: RetentionConfig, stop: CancellationToken) {
    tracing::info!(interval = ?config.interval, delivered_events = ?config.delivered_events, "retention job started");
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match delete_until(&pool, &config, &stop).await {
            Ok(deleted) if deleted.is_empty() => {}
            Ok(deleted) => tracing::info!(
                outbox = deleted.outbox,
                idempotency_keys = deleted.idempotency_keys,
                "retention deleted delivered events and expired idempotency keys"
            ),
            Err(error) => tracing::warn!(%error, "retention run failed; will retry at the next interval"),
        }
    }
    tracing::info!("retention job stopped");
}

/// One full run: every delivered event past retention and every expired key, batch by batch.
pub async fn run_once(pool: &PgPool, config: &RetentionConfig) -> Result<Deleted, sqlx::Error> {
    delete_until(pool, config, &CancellationToken::new()).await
}

/// A run that also stops between batches once `stop` is cancelled, so shutdown never waits for a
/// backlog to drain.
async fn delete_until(
    pool: &PgPool,
    config: &RetentionConfig,
    stop: &CancellationToken,
) -> Result<Deleted, sqlx::Error> {
    let (age, batch) = (config.delivered_events, config.batch_size);
    let limit = i64::from(batch);
    let outbox =
        in_batches("outbox", batch, stop, || sqlx::query(DELETE_DELIVERED_EVENTS).bind(age).bind(limit).execute(pool))
            .await?;
    let idempotency_keys = in_batches("idempotency_keys", batch, stop, || {
        sqlx::query(DELETE_EXPIRED_IDEMPOTENCY_KEYS).bind(limit).execute(pool)
    })
    .await?;
    Ok(Deleted { outbox, idempotency_keys })
}

/// Runs `delete` until a batch comes back short: nothing is left, or what is left is locked by
/// another replica, which deletes it. Returns the rows deleted.
async fn in_batches<F, Fut>(
    table: &'static str,
    batch: u32,
    stop: &CancellationToken,
    delete: F,
) -> Result<u64, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    let mut total = 0;
    while !stop.is_cancelled() {
        let deleted = delete().await?.rows_affected();
        metrics::counter!("retention_deleted_rows_total", "table" => table).increment(deleted);
        total += deleted;
        if deleted < u64::from(batch) {
            break;
        }
    }
    Ok(total)
}
