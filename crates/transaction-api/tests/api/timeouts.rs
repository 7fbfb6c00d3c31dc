//! A create that times out may still commit (its statement runs on in PostgreSQL): the answer
//! must not invite a blind retry unless the retry is safe.

use std::time::Duration;

use sqlx::Connection;

use crate::helpers::{ISSUER, Options, assert_problem, brl, spawn_app_with};

#[tokio::test]
async fn a_timed_out_create_says_whether_repeating_it_is_safe() {
    let database_url = platform::testkit::fresh_database().await;
    let app = spawn_app_with(Options {
        database_url: Some(database_url.clone()),
        extra_toml: "[server]\nrequest_timeout = \"1s\"\n".to_owned(),
        ..Default::default()
    })
    .await;
    // Another session holds the table: every insert waits past the request timeout.
    let mut blocker = sqlx::PgConnection::connect(&database_url).await.expect("connect");
    sqlx::query("SET search_path TO transactions").execute(&mut blocker).await.expect("search path");
    sqlx::query("BEGIN").execute(&mut blocker).await.expect("begin");
    sqlx::query("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE").execute(&mut blocker).await.expect("lock");

    let without_key = app.post_transaction(&brl("u1", "5.00")).await;
    assert!(without_key.headers().get("retry-after").is_none(), "no invitation to repeat a non-idempotent request");
    let body = assert_problem(without_key, 504).await;
    assert!(body["type"].as_str().is_some_and(|t| t.ends_with("/outcome-unknown")), "{body}");

    let with_key = app.post_with_key(&brl("u1", "6.00"), "timeout-key").await;
    assert_eq!(with_key.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_problem(with_key, 503).await;

    sqlx::query("COMMIT").execute(&mut blocker).await.expect("unlock");
    // The keyless create's statement went on waiting and may have committed after its 504: that
    // is why it was not told to retry. The keyed one is retried as told, and is stored once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retry = app.post_with_key(&brl("u1", "6.00"), "timeout-key").await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers().get("idempotency-key").and_then(|v| v.to_str().ok()), Some("timeout-key"));
    let again = app.post_with_key(&brl("u1", "6.00"), "timeout-key").await;
    assert_eq!(again.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let keyed: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions WHERE amount = 6")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(keyed, 1, "a timed-out keyed create and its retries store one transaction");
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_caller() {
    let app = spawn_app_with(Options::default()).await;
    let post = |token: String, user: &'static str| {
        let request = app
            .anonymous
            .post(app.server.url("/transactions"))
            .bearer_auth(token)
            .header("idempotency-key", "shared-key")
            .json(&brl(user, "3.00"));
        async move { request.send().await.expect("sent") }
    };
    let first = post(ISSUER.customer("u1"), "u1").await;
    assert_eq!(first.status(), 201);
    let other = post(ISSUER.customer("u2"), "u2").await;
    assert_eq!(other.status(), 201, "u2's key is not u1's");
    assert!(other.headers().get("idempotent-replayed").is_none());
    let replay = post(ISSUER.customer("u1"), "u1").await;
    assert_eq!(replay.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(app.transaction_count().await, 2);
}
