//! Idempotency-Key: replays, conflicting reuse, and concurrent duplicates.

use serde_json::Value;

use crate::helpers::{assert_problem, brl, spawn_app};

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
    sqlx::query("INSERT INTO idempotency_keys (key, fingerprint, transaction_id) VALUES ('busy', '\\x00', 'txn_x')")
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
