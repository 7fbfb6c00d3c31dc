//! Authentication and authorisation as a hostile client meets them: no token, forged tokens,
//! someone else's token, someone else's ids.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{ISSUER, TestApp, assert_problem, brl, spawn_app};

/// Every operation of the OpenAPI document, with whether it declares a security requirement.
fn operations() -> Vec<(Method, String, bool)> {
    platform::testkit::openapi_operations(&transaction_api::openapi(), |_| "txn_01jc3v6p6m9x2s8q4r7t5w1y0z".to_owned())
}

async fn send(app: &TestApp, method: &Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.anonymous.request(method.clone(), app.server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST {
        request = request.json(&brl("u1", "10.00"));
    }
    request.send().await.expect("sent")
}

#[tokio::test]
async fn every_operation_is_secured_and_refuses_anonymous_and_forged_tokens() {
    let app = spawn_app().await;
    let operations = operations();
    assert!(!operations.is_empty());
    for (method, path, secured) in &operations {
        assert!(secured, "{method} {path} declares no security requirement in the OpenAPI document");
        let response = send(&app, method, path, None).await;
        let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"transaction-api\""), "{method} {path}");
        assert_problem(response, 401).await;
        for (what, token) in ISSUER.hostile_tokens("transaction-api") {
            let response = send(&app, method, path, Some(&token)).await;
            let challenge =
                response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            assert!(challenge.contains("error=\"invalid_token\""), "{method} {path} with {what}: {challenge}");
            assert_problem(response, 401).await;
        }
    }
    assert_eq!(app.transaction_count().await, 0, "no refused request wrote anything");
}

#[tokio::test]
async fn a_customer_acts_only_for_itself() {
    let app = spawn_app().await;
    let u1 = ISSUER.customer("u1");
    let response =
        app.anonymous.post(app.server.url("/transactions")).bearer_auth(&u1).json(&brl("u2", "10.00")).send().await;
    let body = assert_problem(response.expect("sent"), 403).await;
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("may not act for")), "{body}");
    assert_eq!(app.transaction_count().await, 0);

    let response =
        app.anonymous.post(app.server.url("/transactions")).bearer_auth(&u1).json(&brl("u1", "10.00")).send().await;
    assert_eq!(response.expect("sent").status(), 201);
    // A service token acts for anyone.
    assert_eq!(app.post_transaction(&brl("u2", "10.00")).await.status(), 201);
    assert_eq!(app.transaction_count().await, 2);
}

#[tokio::test]
async fn another_users_transaction_is_not_found() {
    let app = spawn_app().await;
    let created = app
        .anonymous
        .post(app.server.url("/transactions"))
        .bearer_auth(ISSUER.customer("u1"))
        .json(&brl("u1", "7.00"))
        .send()
        .await;
    let created: Value = created.expect("sent").json().await.expect("json");
    let path = format!("/transactions/{}", created["id"].as_str().expect("id"));
    let get = |token: String| {
        let request = app.anonymous.get(app.server.url(&path)).bearer_auth(token);
        async move { request.send().await.expect("sent") }
    };
    assert_eq!(get(ISSUER.customer("u1")).await.status(), 200, "its owner reads it");
    assert_eq!(app.get(&path).await.status(), 200, "a service reads it");
    // Twice: the second read is served from the cache, which must be scoped just the same.
    for _ in 0..2 {
        let foreign = assert_problem(get(ISSUER.customer("u2")).await, 404).await;
        let unknown = assert_problem(
            app.anonymous
                .get(app.server.url("/transactions/txn_01jc3v6p6m9x2s8q4r7t5w1y0z"))
                .bearer_auth(ISSUER.customer("u2"))
                .send()
                .await
                .expect("sent"),
            404,
        )
        .await;
        assert_eq!(foreign["title"], unknown["title"], "a foreign id looks exactly like an unknown one");
    }
}

#[tokio::test]
async fn a_token_without_the_operations_scope_is_forbidden() {
    let app = spawn_app().await;
    let read_only = ISSUER.token("u1", &["customer"], &["transactions:read"]);
    let response = app
        .anonymous
        .post(app.server.url("/transactions"))
        .bearer_auth(&read_only)
        .json(&brl("u1", "1.00"))
        .send()
        .await
        .expect("sent");
    let challenge =
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("transactions:write"),
        "{challenge}"
    );
    assert_problem(response, 403).await;
    // A token with no role at all acts for nobody.
    let no_role = ISSUER.token("u1", &["auditor"], platform::testkit::ALL_SCOPES);
    let response = app
        .anonymous
        .post(app.server.url("/transactions"))
        .bearer_auth(&no_role)
        .json(&brl("u1", "1.00"))
        .send()
        .await
        .expect("sent");
    assert_problem(response, 403).await;
    assert_eq!(app.transaction_count().await, 0);
}
