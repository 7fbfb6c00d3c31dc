//! Retention: delivered events past the retention age and expired idempotency keys are deleted,
//! in batches that skip rows another run holds; pending events and dead letters are kept. The
//! gauge and retention statements are served by indexes, not table scans.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgPool, Row};
use transaction_api::config::RetentionConfig;
use transaction_api::outbox::GAUGE_COUNTS;
use transaction_api::retention::{self, DELETE_DELIVERED_EVENTS, DELETE_EXPIRED_IDEMPOTENCY_KEYS, Deleted};

use crate::helpers::{Options, brl, spawn_app, spawn_app_with};

/// A week of retention, two rows a batch: every test below needs more than one batch.
fn config() -> RetentionConfig {
    RetentionConfig {
        interval: Duration::from_secs(60 * 60),
        delivered_events: Duration::from_secs(7 * 24 * 60 * 60),
        batch_size: 2,
    }
}

/// `count` transactions made through the API, each with the Idempotency-Key `key-<n>`, then the
/// service stopped, so neither its dispatcher nor its own retention job touches the rows. Returns
/// the pool and each transaction's event id, in order.
async fn stopped_app_with_events(count: usize) -> (PgPool, Vec<String>) {
    let app = spawn_app().await;
    let mut events = Vec::new();
    for n in 0..count {
        let response = app.post_with_key(&brl("retention", "1.00"), &format!("key-{n}")).await;
        assert_eq!(response.status().as_u16(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        let event: String = sqlx::query_scalar("SELECT event_id FROM outbox WHERE transaction_id = $1")
            .bind(body["id"].as_str().expect("id"))
            .fetch_one(&app.pool)
            .await
            .expect("the transaction's event");
        events.push(event);
    }
    let pool = app.pool.clone();
    app.server.stop().await;
    (pool, events)
}

/// Sets an event's status and delivered_at (`age` ago, or NULL), and dates its creation a month back.
async fn set_event(pool: &PgPool, event_id: &str, status: &str, delivered_ago: Option<&str>) {
    sqlx::query(
        "UPDATE outbox SET status = $2, delivered_at = now() - $3::interval, claim = NULL,
             created_at = now() - interval '30 days'
         WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(status)
    .bind(delivered_ago)
    .execute(pool)
    .await
    .expect("set the event");
}

async fn remaining_events(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY event_id").fetch_all(pool).await.expect("events")
}

async fn remaining_keys(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key").fetch_all(pool).await.expect("keys")
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn deletes_old_delivered_events_and_expired_keys_and_nothing_else() {
    let (pool, events) = stopped_app_with_events(7).await;
    // Three old delivered events: more than a batch, so the job has to loop.
    for event in &events[..3] {
        set_event(&pool, event, "delivered", Some("8 days")).await;
    }
    set_event(&pool, &events[3], "delivered", Some("6 days")).await;
    // Pending and dead rows with an old delivered_at, which the dispatcher never writes (an
    // operator's replay of a dead letter could): status alone keeps them.
    set_event(&pool, &events[4], "pending", Some("30 days")).await;
    set_event(&pool, &events[5], "dead", Some("30 days")).await;
    set_event(&pool, &events[6], "dead", None).await;
    // Two expired keys (key-0, key-1); the others are live.
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key IN ('key-0', 'key-1')")
        .execute(&pool)
        .await
        .expect("expire two keys");

    let deleted = retention::run_once(&pool, &config()).await.expect("run");
    assert_eq!(deleted, Deleted { outbox: 3, idempotency_keys: 2 });
    assert_eq!(remaining_events(&pool).await, sorted(events[3..].to_vec()), "the fresh, pending and dead events");
    assert_eq!(remaining_keys(&pool).await, ["key-2", "key-3", "key-4", "key-5", "key-6"]);
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transactions").fetch_one(&pool).await.expect("count");
    assert_eq!(transactions, 7, "transactions are never deleted");

    assert_eq!(retention::run_once(&pool, &config()).await.expect("second run"), Deleted::default());
}

#[tokio::test]
async fn rows_another_run_holds_are_skipped_not_waited_for() {
    let (pool, events) = stopped_app_with_events(3).await;
    for event in &events {
        set_event(&pool, event, "delivered", Some("8 days")).await;
    }
    // Another replica's batch, mid-statement, stands in as a transaction holding one row.
    let mut other = pool.acquire().await.expect("connection");
    let mut held = other.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM outbox WHERE event_id = $1 FOR UPDATE")
        .bind(&events[0])
        .execute(&mut *held)
        .await
        .expect("lock one event");

    let started = Instant::now();
    let deleted = tokio::time::timeout(Duration::from_secs(3), retention::run_once(&pool, &config()))
        .await
        .expect("the run does not wait for the held row")
        .expect("run");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(deleted.outbox, 2);
    assert_eq!(remaining_events(&pool).await, [events[0].clone()]);

    held.rollback().await.expect("release");
    assert_eq!(retention::run_once(&pool, &config()).await.expect("run").outbox, 1, "deleted once free");
}

#[tokio::test]
async fn the_service_runs_the_job_every_interval_and_counts_what_it_deletes() {
    let app =
        spawn_app_with(Options { extra_toml: "[retention]\ninterval = \"100ms\"\n".to_owned(), ..Default::default() })
            .await;
    assert_eq!(app.post_with_key(&brl("retention", "1.00"), "expiring").await.status().as_u16(), 201);
    sqlx::raw_sql(
        "UPDATE outbox SET status = 'delivered', delivered_at = now() - interval '8 days', claim = NULL;
         UPDATE idempotency_keys SET expires_at = now() - interval '1 second'",
    )
    .execute(&app.pool)
    .await
    .expect("age the rows");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (remaining_events(&app.pool).await.len(), remaining_keys(&app.pool).await.len()) != (0, 0) {
        assert!(Instant::now() < deadline, "the service's retention job never deleted the rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains(r#"retention_deleted_rows_total{table="outbox"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"retention_deleted_rows_total{table="idempotency_keys"} 1"#), "{metrics}");
}

/// `EXPLAIN` of `statement` with `binds` applied, and with sequential scans made prohibitively
/// expensive: the planner still picks one where no index can serve the statement, so a plan
/// without one shows that an index does.
async fn plan(pool: &PgPool, statement: &str, binds: impl FnOnce(PgQuery<'static>) -> PgQuery<'static>) -> String {
    let mut connection = pool.acquire().await.expect("connection");
    let mut tx = connection.begin().await.expect("begin");
    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.expect("no seqscan");
    let explain = binds(sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {statement}"))));
    let rows = explain.fetch_all(&mut *tx).await.expect("explain");
    tx.rollback().await.expect("rollback");
    rows.iter().map(|row| row.get::<String, _>(0)).collect::<Vec<_>>().join("\n")
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

#[tokio::test]
async fn the_gauges_and_retention_statements_are_served_by_their_indexes() {
    let app = spawn_app().await;
    let retention = config();
    let batch = i64::from(retention.batch_size);
    // The exact statements the service runs, with parameters bound as it binds them, and what
    // each plan must contain: the index that finds the rows and, for a batch, the TID scan that
    // deletes them (a join to the table through a full scan of its primary key would also avoid
    // "Seq Scan", and read every row).
    let plans = [
        ("the gauges", plan(&app.pool, GAUGE_COUNTS, |q| q).await, &["outbox_due", "outbox_dead"]),
        (
            "the delivered events batch",
            plan(&app.pool, DELETE_DELIVERED_EVENTS, |q| q.bind(retention.delivered_events).bind(batch)).await,
            &["outbox_delivered", "Tid Scan on outbox"],
        ),
        (
            "the expired keys batch",
            plan(&app.pool, DELETE_EXPIRED_IDEMPOTENCY_KEYS, |q| q.bind(batch)).await,
            &["idempotency_keys_expires_at", "Tid Scan on idempotency_keys"],
        ),
    ];
    for (name, plan, expected) in plans {
        for table in ["outbox", "idempotency_keys"] {
            assert!(!plan.contains(&format!("Seq Scan on {table}")), "{name} scans {table}:\n{plan}");
        }
        for node in expected {
            assert!(plan.contains(node), "{name}: no `{node}` in the plan:\n{plan}");
        }
    }
}
