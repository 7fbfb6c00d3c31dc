//! Idempotency-Key: replays, conflicting reuse, concurrent duplicates, keys scoped per principal,
//! and keys that expire.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use transaction_api::error::ApiError;
use transaction_api::store::{self, Created, Idempotency, NewTransaction, Transaction};

use crate::helpers::{Options, assert_problem, brl, spawn_app, spawn_app_with};

#[tokio::test]
async fn replay_with_same_key_and_body_returns_the_original() {
    let app = spawn_app().await;
    let first = app.post_with_key(&brl("u1", "10.00"), "key-1").await;
    assert_eq!(first.status().as_u16(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");
    // 10 and "10.00" mean the same amount: still a replay.
    let replay = app.post_with_key(&brl("u1", "10"), "key-1").await;
    assert_eq!(replay.status().as_u16(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(replay, first);
    assert_eq!(app.transaction_count().await, 1);
}

#[tokio::test]
async fn same_key_with_a_different_body_is_422() {
    let app = spawn_app().await;
    assert_eq!(app.post_with_key(&brl("u1", "10.00"), "key-1").await.status().as_u16(), 201);
    let body = assert_problem(app.post_with_key(&brl("u1", "11.00"), "key-1").await, 422).await;
    assert!(body["type"].as_str().is_some_and(|t| t.ends_with("idempotency-key-reused")), "{body}");
    assert_eq!(app.transaction_count().await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_transaction() {
    let app = spawn_app().await;
    let body = brl("u1", "99.99");
    let requests = (0..24).map(|_| app.post_with_key(&body, "same-key"));
    let responses = futures::future::join_all(requests).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every duplicate sees the same transaction: {ids:?}");
    assert_eq!(app.transaction_count().await, 1);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.pool).await.expect("count");
    assert_eq!(events, 1, "one webhook event, not one per duplicate");
}

#[tokio::test]
async fn invalid_idempotency_key_is_422() {
    let app = spawn_app().await;
    let long = "k".repeat(256);
    assert_problem(app.post_with_key(&brl("u1", "1"), &long).await, 422).await;
    assert_eq!(app.transaction_count().await, 0);
}

#[tokio::test]
async fn a_key_held_by_a_request_in_progress_gets_409_with_retry_after() {
    use sqlx::Connection;
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        extra_toml: "[transactions]\nidempotency_wait = \"200ms\"\n".to_owned(),
        ..Default::default()
    })
    .await;
    // An open transaction holding the key stands in for a slow request with the same key.
    let mut holder = app.pool.acquire().await.expect("connection");
    let mut tx = holder.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, transaction_id) VALUES ($1, 'busy', '\\x00', 'txn_x')",
    )
    .bind(format!("{} test-suite", platform::auth::dev::DEV_ISSUER))
    .execute(&mut *tx)
        .await
        .expect("hold the key");
    let response = app.post_with_key(&brl("u1", "5.00"), "busy").await;
    assert_eq!(response.headers()["retry-after"], "1");
    let body = assert_problem(response, 409).await;
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("still being processed")), "{body}");
    tx.rollback().await.expect("release");
    drop(holder);
    assert_eq!(app.post_with_key(&brl("u1", "5.00"), "busy").await.status().as_u16(), 201, "free again after release");
}

/// `store::create` as the handler calls it, for `principal` with `key`, a TTL of an hour.
async fn create(pool: &PgPool, principal: &str, key: &str, amount: &str) -> Result<Created, ApiError> {
    let new = NewTransaction { user_id: "u-scoped".to_owned(), money: format!("{amount} BRL").parse().expect("money") };
    let id = platform::ids::new_id("txn");
    let idempotency = Idempotency { key, wait: Duration::from_secs(2), ttl: Duration::from_secs(60 * 60) };
    store::create(pool, principal, &id, &new, Some(idempotency), |t| {
        transaction_api::outbox::transaction_created(t, None)
    })
    .await
}

fn new(created: Result<Created, ApiError>) -> Transaction {
    match created {
        Ok(Created::New(t)) => t,
        other => panic!("expected a new transaction, got {other:?}"),
    }
}

fn replayed(created: Result<Created, ApiError>) -> Transaction {
    match created {
        Ok(Created::Replayed(t)) => t,
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[tokio::test]
async fn the_same_key_from_two_principals_is_two_transactions() {
    let app = spawn_app().await;
    let alice = new(create(&app.pool, "https://issuer.example alice", "order-1", "10.00").await);
    let bob = new(create(&app.pool, "https://issuer.example bob", "order-1", "10.00").await);
    assert_ne!(alice.id, bob.id, "bob's key is his own, not a replay of alice's");
    assert_eq!(replayed(create(&app.pool, "https://issuer.example alice", "order-1", "10.00").await), alice);
    assert_eq!(replayed(create(&app.pool, "https://issuer.example bob", "order-1", "10").await), bob);
    // A conflicting reuse is judged against the principal's own request, not the other's.
    let reused = create(&app.pool, "https://issuer.example bob", "order-1", "11.00").await;
    assert!(matches!(reused, Err(ApiError::IdempotencyKeyReused)), "{reused:?}");
    // Keys stored before keys were scoped belong to no principal, and stay out of every caller's way.
    let legacy = new(create(&app.pool, "", "order-1", "12.00").await);
    assert_ne!(legacy.id, alice.id);
    assert_eq!(app.transaction_count().await, 3);
}

#[tokio::test]
async fn an_expired_key_is_free_again_and_creates_a_new_transaction() {
    let app = spawn_app().await;
    let first = new(create(&app.pool, "p", "renewed", "10.00").await);
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE principal = 'p'")
        .execute(&app.pool)
        .await
        .expect("expire the key");
    // The expired row is still stored, but is not replayed, not even for the same body.
    let second = new(create(&app.pool, "p", "renewed", "10.00").await);
    assert_ne!(second.id, first.id);
    assert_eq!(replayed(create(&app.pool, "p", "renewed", "10.00").await), second);
    let (transaction_id, live): (String, bool) = sqlx::query_as(
        "SELECT transaction_id, expires_at > now() + interval '59 minutes' FROM idempotency_keys WHERE principal = 'p'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the key's one row");
    assert_eq!((transaction_id.as_str(), live), (second.id.as_str(), true), "taken over with a fresh TTL");
    // The key now holds the second request: another body is a conflicting reuse again.
    let reused = create(&app.pool, "p", "renewed", "11.00").await;
    assert!(matches!(reused, Err(ApiError::IdempotencyKeyReused)), "{reused:?}");
    assert_eq!(app.transaction_count().await, 2);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.pool).await.expect("count");
    assert_eq!(events, 2, "one event per transaction");
}

#[tokio::test]
async fn a_key_expires_after_the_configured_ttl() {
    let app = spawn_app_with(Options {
        extra_toml: "[transactions]\nidempotency_ttl = \"90m\"\n".to_owned(),
        ..Default::default()
    })
    .await;
    assert_eq!(app.post_with_key(&brl("u1", "3.00"), "ttl").await.status().as_u16(), 201);
    let (principal, seconds): (String, f64) = sqlx::query_as(
        "SELECT principal, extract(epoch FROM expires_at - created_at)::float8 FROM idempotency_keys WHERE key = 'ttl'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the key's row");
    assert_eq!(seconds, 90.0 * 60.0, "transactions.idempotency_ttl reaches the claim");
    assert_eq!(principal, format!("{} test-suite", platform::auth::dev::DEV_ISSUER), "the caller owns its key");
}
