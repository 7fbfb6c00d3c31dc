//! `POST /notify` and the platform routes.

use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with_database};

#[tokio::test]
async fn notify_creates_a_notification() {
    let app = spawn_app().await;
    let response = app.notify(&json!({"user_id": "u1", "message": "hello"})).await;
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["location"], "/notifications/u1");
    let body: Value = response.json().await.expect("json");
    assert!(platform::ids::is_valid_id("notif", body["id"].as_str().expect("id")), "{body}");
    assert_eq!((body["user_id"].as_str(), body["message"].as_str()), (Some("u1"), Some("hello")));
    assert!(body["created_at"].is_string());
    assert_eq!(app.items("u1").await, vec![body]);
}

#[tokio::test]
async fn notify_rejects_invalid_fields_with_422_listing_each() {
    let app = spawn_app().await;
    let body = assert_problem(app.notify(&json!({"user_id": " ", "message": ""})).await, 422).await;
    let pointers: Vec<&str> =
        body["errors"].as_array().expect("errors").iter().filter_map(|e| e["pointer"].as_str()).collect();
    assert_eq!(pointers, ["/user_id", "/message"], "{body}");
    let long = "x".repeat(2001);
    assert_problem(app.notify(&json!({"user_id": "u1", "message": long})).await, 422).await;
    assert!(app.items("u1").await.is_empty());
}

#[tokio::test]
async fn unknown_fields_are_422_malformed_json_400_and_non_json_415() {
    let app = spawn_app().await;
    let body = assert_problem(app.notify(&json!({"user_id": "u1", "message": "m", "channel": "sms"})).await, 422).await;
    assert!(body["errors"][0]["detail"].as_str().is_some_and(|d| d.contains("unknown field `channel`")), "{body}");
    let malformed =
        app.http.post(app.server.url("/notify")).header("content-type", "application/json").body("{").send();
    assert_problem(malformed.await.expect("sent"), 400).await;
    let text = app.http.post(app.server.url("/notify")).header("content-type", "text/plain").body("hi").send();
    assert_problem(text.await.expect("sent"), 415).await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = spawn_app().await;
    let huge = json!({"user_id": "u1", "message": "x".repeat(70_000)});
    assert_problem(app.notify(&huge).await, 413).await;
}

#[tokio::test]
async fn unknown_route_is_404_problem() {
    let app = spawn_app().await;
    let response = app.http.get(app.server.url("/nope")).send().await.expect("sent");
    assert_problem(response, 404).await;
}

#[tokio::test]
async fn health_ready_metrics_openapi_respond() {
    let app = spawn_app().await;
    app.notify(&json!({"user_id": "u1", "message": "hello"})).await;
    let get = |path: &str| app.http.get(app.server.url(path)).send();
    assert_eq!(get("/health").await.expect("sent").status().as_u16(), 200);
    let ready: Value = get("/ready").await.expect("sent").json().await.expect("json");
    assert_eq!(ready["checks"]["postgres"], "up", "{ready}");
    let metrics = get("/metrics").await.expect("sent").text().await.expect("text");
    for expected in [
        r#"http_requests_total{method="POST",route="/notify",status="201"}"#,
        r#"notifications_created_total{source="api"} 1"#,
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    let openapi: Value = get("/openapi.json").await.expect("sent").json().await.expect("json");
    assert!(openapi["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{openapi}");
    for path in ["/notify", "/webhooks/transactions", "/notifications/{user_id}"] {
        assert!(openapi["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
}

#[tokio::test]
async fn ready_is_503_when_database_unreachable() {
    let port = platform::testkit::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/none");
    let app = spawn_app_with_database(&url, "migrate_on_start = false\nacquire_timeout = \"300ms\"").await;
    let response = app.http.get(app.server.url("/ready")).send().await.expect("sent");
    let body = assert_problem(response, 503).await;
    assert_eq!(body["checks"]["postgres"], "down");
    assert_problem(app.notify(&json!({"user_id": "u1", "message": "m"})).await, 503).await;
}
