//! Who may create and read notifications: bearer tokens on the API, HMAC signatures (never a
//! token) on the webhook.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, assert_problem, spawn_app};

/// Every operation of the OpenAPI document, with whether it declares a security requirement.
fn operations() -> Vec<(Method, String, bool)> {
    platform::testkit::openapi_operations(&notification_service::openapi(), |_| "u1".to_owned())
}

async fn send(app: &TestApp, method: &Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.anonymous.request(method.clone(), app.server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST {
        request = request.json(&json!({"user_id": "u1", "message": "hi"}));
    }
    request.send().await.expect("sent")
}

#[tokio::test]
async fn only_the_signed_webhook_goes_without_a_token() {
    let app = spawn_app().await;
    let operations = operations();
    let open: Vec<_> =
        operations.iter().filter(|(_, _, secured)| !secured).map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(open, ["POST /webhooks/transactions"], "only the HMAC-signed webhook is open to tokenless callers");
    for (method, path, _) in operations.iter().filter(|(_, _, secured)| *secured) {
        let response = send(&app, method, path, None).await;
        let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"notification-service\""), "{method} {path}");
        assert_problem(response, 401).await;
        for (what, token) in app.issuer.hostile_tokens("notification-service") {
            let response = send(&app, method, path, Some(&token)).await;
            assert_eq!(response.status(), 401, "{method} {path} with {what}");
        }
    }
    // The webhook ignores bearer tokens: a valid one does not stand in for the signature.
    let response = send(&app, &Method::POST, "/webhooks/transactions", Some(&app.issuer.service())).await;
    assert_problem(response, 401).await;
    assert!(app.items("u1").await.is_empty(), "no refused request wrote anything");
}

#[tokio::test]
async fn a_customer_notifies_and_reads_only_itself() {
    let app = spawn_app().await;
    let u1 = app.issuer.customer("u1");
    let notify = |user: &str, token: &str| {
        app.anonymous
            .post(app.server.url("/notify"))
            .bearer_auth(token)
            .json(&json!({"user_id": user, "message": "hi"}))
            .send()
    };
    assert_problem(notify("u2", &u1).await.expect("sent"), 403).await;
    assert_eq!(notify("u1", &u1).await.expect("sent").status(), 201);
    let list = |user: &str, token: &str| {
        app.anonymous.get(app.server.url(&format!("/notifications/{user}"))).bearer_auth(token).send()
    };
    assert_eq!(list("u1", &u1).await.expect("sent").status(), 200);
    assert_problem(list("u2", &u1).await.expect("sent"), 403).await;
    assert_eq!(app.items("u2").await.len(), 0, "the refused notify wrote nothing");
    let read_only = app.issuer.token("u1", &["customer"], &["notifications:read"]);
    assert_problem(notify("u1", &read_only).await.expect("sent"), 403).await;
    assert_eq!(app.items("u1").await.len(), 1);
}
