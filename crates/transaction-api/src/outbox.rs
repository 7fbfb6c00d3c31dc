//! Outbox dispatcher: delivers pending events to notification-service, signed, with retries;
//! events that exhaust their attempts become dead letters. Safe with many replicas: events are
//! claimed under a lease and no transaction is open while they are delivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use platform::Secret;
use platform::client::{ClientError, ResilientClient, backoff};
use platform::events::{Event, EventData, TransactionCreated};
use platform::trace_context::TraceContext;
use platform::webhook_signature::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::OutboxConfig;
use crate::store::{OutboxEvent, Transaction};

/// Pending and dead-lettered events, for the gauges. One scalar subquery per status, so each is
/// counted from its own partial index (`outbox_due`, `outbox_dead`) and the delivered rows, nearly
/// all of the table, are never read; one `WHERE status IN (…)` over both matches neither index.
pub const GAUGE_COUNTS: &str = "SELECT (SELECT count(*) FROM outbox WHERE status = 'pending'),
            (SELECT count(*) FROM outbox WHERE status = 'dead')";

/// Builds the `transaction.created` event for a transaction; `traceparent` is the creating
/// request's trace context, so the delivery joins its trace.
pub fn transaction_created(transaction: &Transaction, traceparent: Option<String>) -> OutboxEvent {
    let event_id = platform::ids::new_id("evt");
    let data = TransactionCreated {
        id: transaction.id.clone(),
        user_id: transaction.user_id.clone(),
        amount: transaction.amount.clone(),
        currency: transaction.currency.clone(),
        status: transaction.status.clone(),
        created_at: transaction.created_at,
    };
    let payload = Event::new(event_id.clone(), Utc::now(), data).to_json();
    OutboxEvent { event_id, event_type: TransactionCreated::TYPE, payload, traceparent }
}

/// Where and how events are delivered.
#[derive(Debug)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub client: ResilientClient,
    pub url: String,
    pub signing_key: Secret,
    pub config: OutboxConfig,
    /// Poked after each commit so new events go out at once instead of at the next poll.
    pub wake: Arc<Notify>,
}

#[derive(sqlx::FromRow)]
struct Pending {
    event_id: String,
    payload: String,
    traceparent: Option<String>,
    attempts: i32,
}

/// Why a delivery did not succeed.
enum Failure {
    /// Sent (or tried to send) and failed: counts as an attempt.
    Failed(String),
    /// The circuit is open: nothing was sent, so no attempt is counted.
    NotAttempted,
}

impl Dispatcher {
    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(url = %self.url, "outbox dispatcher started");
        let mut last_gauges = Instant::now() - Duration::from_secs(60);
        loop {
            // Drain what is due, batch by batch, but stop at once on shutdown, and do not walk
            // the backlog while the circuit refuses every delivery.
            while !stop.is_cancelled() && !self.client.is_circuit_open() {
                match self.dispatch_batch().await {
                    Ok(handled) if handled >= self.config.batch_size as usize => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "outbox batch failed; will retry");
                        break;
                    }
                }
            }
            if last_gauges.elapsed() >= Duration::from_secs(5) {
                self.publish_gauges().await;
                last_gauges = Instant::now();
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        tracing::info!("outbox dispatcher stopped");
    }

    /// Claims due events under a lease (one statement, committed at once), delivers them
    /// concurrently with no transaction open, then records each outcome in one short statement
    /// that applies only while this claim still holds. Returns how many were claimed.
    pub async fn dispatch_batch(&self) -> Result<usize, sqlx::Error> {
        let claim = platform::ids::new_id("claim");
        // SKIP LOCKED: replicas claiming at the same moment take different events. The lease is
        // the event's next_attempt_at: if this replica dies, the event is due again when it ends.
        let due: Vec<Pending> = sqlx::query_as(
            "UPDATE outbox SET next_attempt_at = now() + $2, claim = $3
             WHERE event_id IN (
                 SELECT event_id FROM outbox
                 WHERE status = 'pending' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at, event_id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             RETURNING event_id, payload, traceparent, attempts",
        )
        .bind(i64::from(self.config.batch_size))
        .bind(self.config.lease)
        .bind(&claim)
        .fetch_all(&self.pool)
        .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let outcomes = futures::future::join_all(due.iter().map(|event| self.deliver(event))).await;
        let mut delivered = Vec::new();
        for (event, outcome) in due.iter().zip(outcomes) {
            match outcome {
                Ok(()) => delivered.push(event.event_id.clone()),
                Err(failure) => self.record_failure(&claim, event, failure).await?,
            }
        }
        if !delivered.is_empty() {
            // One statement for the common case. An event whose lease ran out and that another
            // replica claimed is left to that replica.
            let recorded = sqlx::query(
                "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = now(),
                     last_error = NULL, claim = NULL
                 WHERE event_id = ANY($1) AND claim = $2",
            )
            .bind(&delivered)
            .bind(&claim)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if recorded < delivered.len() as u64 {
                tracing::warn!(
                    lost = delivered.len() as u64 - recorded,
                    "deliveries finished after their lease ran out"
                );
            }
        }
        metrics::counter!("outbox_events_total", "outcome" => "delivered").increment(delivered.len() as u64);
        Ok(due.len())
    }

    async fn deliver(&self, event: &Pending) -> Result<(), Failure> {
        let timestamp = Utc::now().timestamp();
        let signature = webhook_signature::sign(
            self.signing_key.expose().as_bytes(),
            &event.event_id,
            timestamp,
            event.payload.as_bytes(),
        );
        // The delivery is a span in the trace of the request that created the transaction.
        let span = tracing::info_span!("webhook delivery", otel.name = "POST webhook", event_id = %event.event_id);
        let trace = platform::telemetry::join_trace(&span, event.traceparent.as_deref().and_then(TraceContext::parse));
        let started = Instant::now();
        let result = self
            .client
            .send_idempotent(Some(trace), |http| {
                http.post(&self.url)
                    .header("content-type", "application/json")
                    .header(ID_HEADER, &event.event_id)
                    .header(TIMESTAMP_HEADER, timestamp.to_string())
                    .header(SIGNATURE_HEADER, &signature)
                    .body(event.payload.clone())
            })
            .instrument(span)
            .await;
        match result {
            Ok(_) => {
                metrics::histogram!("webhook_delivery_duration_seconds").record(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(ClientError::CircuitOpen(_)) => Err(Failure::NotAttempted),
            Err(error) => Err(Failure::Failed(error.to_string())),
        }
    }

    /// Records a failed delivery, if this claim still holds the event.
    async fn record_failure(&self, claim: &str, event: &Pending, failure: Failure) -> Result<(), sqlx::Error> {
        match failure {
            Failure::NotAttempted => {
                let delay = self.config.retry_base;
                sqlx::query(
                    "UPDATE outbox SET next_attempt_at = now() + $2, claim = NULL WHERE event_id = $1 AND claim = $3",
                )
                .bind(&event.event_id)
                .bind(delay)
                .bind(claim)
                .execute(&self.pool)
                .await?;
            }
            Failure::Failed(error) => {
                let attempts = u32::try_from(event.attempts).unwrap_or(0) + 1;
                if attempts >= self.config.max_attempts {
                    sqlx::query(
                        "UPDATE outbox SET status = 'dead', attempts = $2, last_error = $3, claim = NULL
                         WHERE event_id = $1 AND claim = $4",
                    )
                    .bind(&event.event_id)
                    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                    .bind(&error)
                    .bind(claim)
                    .execute(&self.pool)
                    .await?;
                    metrics::counter!("outbox_events_total", "outcome" => "dead_lettered").increment(1);
                    tracing::error!(event_id = %event.event_id, attempts, %error, "webhook event dead-lettered");
                } else {
                    let delay = backoff(attempts, self.config.retry_base, self.config.retry_max)
                        .max(self.config.retry_base / 2);
                    sqlx::query(
                        "UPDATE outbox SET attempts = $2, last_error = $3, next_attempt_at = now() + $4, claim = NULL
                         WHERE event_id = $1 AND claim = $5",
                    )
                    .bind(&event.event_id)
                    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                    .bind(&error)
                    .bind(delay)
                    .bind(claim)
                    .execute(&self.pool)
                    .await?;
                    metrics::counter!("outbox_events_total", "outcome" => "retried").increment(1);
                    tracing::warn!(event_id = %event.event_id, attempts, ?delay, %error, "webhook delivery failed; will retry");
                }
            }
        }
        Ok(())
    }

    async fn publish_gauges(&self) {
        let counts: Result<(i64, i64), _> = sqlx::query_as(GAUGE_COUNTS).fetch_one(&self.pool).await;
        if let Ok((pending, dead)) = counts {
            metrics::gauge!("outbox_pending_events").set(pending as f64);
            metrics::gauge!("outbox_dead_letter_events").set(dead as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_stored_is_what_the_consumer_reads() {
        let transaction = Transaction {
            id: platform::ids::new_id("txn"),
            user_id: "u1".to_owned(),
            amount: "100.50".to_owned(),
            currency: "BRL".to_owned(),
            status: "completed".to_owned(),
            created_at: Utc::now(),
        };
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        let event = transaction_created(&transaction, Some(traceparent.clone()));
        assert_eq!((event.event_type, event.traceparent), ("transaction.created", Some(traceparent)));
        // notification-service reads the body with this type (its webhook handler).
        let read: Event<TransactionCreated> = serde_json::from_str(&event.payload).expect("the consumer reads it");
        assert_eq!(read.id, event.event_id);
        assert!(read.has_type_of_its_data());
        let data = read.data;
        assert_eq!(
            (data.id, data.user_id, data.amount, data.currency, data.status, data.created_at),
            (
                transaction.id,
                transaction.user_id,
                transaction.amount,
                transaction.currency,
                transaction.status,
                transaction.created_at
            )
        );
    }
}
