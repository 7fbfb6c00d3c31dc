//! Signed transaction events: verification, deduplication, validation.

use serde_json::Value;

use crate::helpers::{SIGNING_KEY, assert_problem, spawn_app, spawn_app_accepting_previous_key, transaction_event};

/// transaction-api's key before a rotation.
const PREVIOUS_KEY: &str = "the-previous-signing-key-0123456789";

#[tokio::test]
async fn during_a_rotation_events_signed_with_the_previous_key_are_accepted_and_only_then() {
    let now = chrono::Utc::now().timestamp();
    let rotating = spawn_app_accepting_previous_key(PREVIOUS_KEY).await;
    let event_id = platform::ids::new_id("evt");
    let old = rotating.post_event(&event_id, &transaction_event(&event_id, "u1"), PREVIOUS_KEY, now).await;
    assert_eq!(old.status().as_u16(), 201, "signed with the previous key");
    let event_id = platform::ids::new_id("evt");
    let new = rotating.post_signed_event(&event_id, &transaction_event(&event_id, "u1")).await;
    assert_eq!(new.status().as_u16(), 201, "signed with the current key");

    let settled = spawn_app().await;
    let event_id = platform::ids::new_id("evt");
    let old = settled.post_event(&event_id, &transaction_event(&event_id, "u1"), PREVIOUS_KEY, now).await;
    assert_problem(old, 401).await;
}

#[tokio::test]
async fn a_timestamp_at_the_ends_of_i64_is_401_not_a_crash() {
    let app = spawn_app().await;
    for timestamp in [i64::MIN, i64::MAX, 0] {
        let event_id = platform::ids::new_id("evt");
        let response = app.post_event(&event_id, &transaction_event(&event_id, "u1"), SIGNING_KEY, timestamp).await;
        assert_problem(response, 401).await;
    }
    // The service is still there.
    let event_id = platform::ids::new_id("evt");
    assert_eq!(app.post_signed_event(&event_id, &transaction_event(&event_id, "u1")).await.status().as_u16(), 201);
}

#[tokio::test]
async fn signed_event_creates_notification() {
    let app = spawn_app().await;
    let event_id = platform::ids::new_id("evt");
    let response = app.post_signed_event(&event_id, &transaction_event(&event_id, "u1")).await;
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("json");
    let message = body["message"].as_str().expect("message");
    assert!(message.starts_with("Transaction txn_") && message.ends_with("of 100.50 BRL completed"), "{message}");
    assert_eq!(app.items("u1").await.len(), 1);
}

#[tokio::test]
async fn replayed_event_creates_no_second_notification() {
    let app = spawn_app().await;
    let event_id = platform::ids::new_id("evt");
    let body = transaction_event(&event_id, "u1");
    let first: Value = app.post_signed_event(&event_id, &body).await.json().await.expect("json");
    let replay = app.post_signed_event(&event_id, &body).await;
    assert_eq!(replay.status().as_u16(), 200, "a redelivery is acknowledged, not created again");
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(replay, first);
    assert_eq!(app.items("u1").await.len(), 1);
}

#[tokio::test]
async fn concurrent_duplicate_events_create_one_notification() {
    let app = spawn_app().await;
    let event_id = platform::ids::new_id("evt");
    let body = transaction_event(&event_id, "u1");
    let responses = futures::future::join_all((0..16).map(|_| app.post_signed_event(&event_id, &body))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    assert_eq!(app.items("u1").await.len(), 1);
}

#[tokio::test]
async fn bad_signature_is_401() {
    let app = spawn_app().await;
    let event_id = platform::ids::new_id("evt");
    let body = transaction_event(&event_id, "u1");
    let now = chrono::Utc::now().timestamp();
    let wrong_key = app.post_event(&event_id, &body, "another-key-0123456789abcdef", now).await;
    assert_problem(wrong_key, 401).await;
    let tampered = body.replace("100.50", "900.50");
    let signature = platform::webhook_signature::sign(SIGNING_KEY.as_bytes(), &event_id, now, body.as_bytes());
    let response = app
        .http
        .post(app.server.url("/webhooks/transactions"))
        .header("content-type", "application/json")
        .header("webhook-id", &event_id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(tampered)
        .send()
        .await
        .expect("sent");
    assert_problem(response, 401).await;
    let unsigned = app
        .http
        .post(app.server.url("/webhooks/transactions"))
        .header("content-type", "application/json")
        .body(body)
        .send();
    assert_problem(unsigned.await.expect("sent"), 401).await;
    assert!(app.items("u1").await.is_empty());
}

#[tokio::test]
async fn stale_timestamp_is_401() {
    let app = spawn_app().await;
    let event_id = platform::ids::new_id("evt");
    let an_hour_ago = chrono::Utc::now().timestamp() - 3600;
    let response = app.post_event(&event_id, &transaction_event(&event_id, "u1"), SIGNING_KEY, an_hour_ago).await;
    let body = assert_problem(response, 401).await;
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("too old")), "{body}");
}

#[tokio::test]
async fn header_and_body_event_id_mismatch_is_422() {
    let app = spawn_app().await;
    let (header_id, body_id) = (platform::ids::new_id("evt"), platform::ids::new_id("evt"));
    let response = app.post_signed_event(&header_id, &transaction_event(&body_id, "u1")).await;
    let body = assert_problem(response, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/id", "{body}");
    let unknown_type = transaction_event(&header_id, "u1").replace("transaction.created", "transaction.refunded");
    let body = assert_problem(app.post_signed_event(&header_id, &unknown_type).await, 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/type", "{body}");
    assert!(app.items("u1").await.is_empty());
}

/// The value of `webhook_events_total{outcome="<outcome>"}` in `/metrics` (0 before the first one).
/// The recorder is per process: the before/after deltas below rely on nextest running each test in
/// its own process, as `cargo xtask test` and the Nix check do.
async fn webhooks_counted(app: &crate::helpers::TestApp, outcome: &str) -> f64 {
    let exposition = app.http.get(app.server.url("/metrics")).send().await.expect("scrape").text().await.expect("text");
    let series = format!("webhook_events_total{{outcome=\"{outcome}\"}} ");
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse::<f64>().expect("a number"))
        .sum()
}

#[tokio::test]
async fn each_outcome_is_counted_apart() {
    let app = spawn_app().await;
    let outcomes = ["created", "duplicate", "unauthenticated", "invalid"];
    let mut before = Vec::new();
    for outcome in outcomes {
        before.push(webhooks_counted(&app, outcome).await);
    }

    let event_id = platform::ids::new_id("evt");
    let body = transaction_event(&event_id, "u-count");
    assert_eq!(app.post_signed_event(&event_id, &body).await.status().as_u16(), 201);
    assert_eq!(app.post_signed_event(&event_id, &body).await.status().as_u16(), 200);
    let now = chrono::Utc::now().timestamp();
    assert_problem(app.post_event(&event_id, &body, "another-key-0123456789abcdef", now).await, 401).await;
    assert_problem(app.post_signed_event(&event_id, "{\"id\":").await, 400).await;
    let other_id = platform::ids::new_id("evt");
    assert_problem(app.post_signed_event(&other_id, &body).await, 422).await;

    let mut counted = Vec::new();
    for (outcome, before) in outcomes.iter().zip(before) {
        counted.push((*outcome, webhooks_counted(&app, outcome).await - before));
    }
    assert_eq!(counted, [("created", 1.0), ("duplicate", 1.0), ("unauthenticated", 1.0), ("invalid", 2.0)]);
}
