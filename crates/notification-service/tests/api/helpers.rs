//! `spawn_app()` and typed request helpers shared by every notification-service test.

use notification_service::{Config, DEFAULTS, build};
use platform::config::{Sources, load};
use platform::events::{Event, TransactionCreated};
use platform::testkit::{TestIssuer, TestServer, fresh_database};
use platform::webhook_signature::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde_json::Value;

pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef";

#[derive(Debug)]
pub struct TestApp {
    pub server: TestServer,
    /// Sends a service token (acting for any user) on every request.
    pub http: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    /// The issuer the service trusts, for tokens of other shapes.
    pub issuer: TestIssuer,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with_database(&fresh_database().await, "").await
}

/// Starts the service on `database_url`; `extra` is TOML appended inside the `[database]` table.
pub async fn spawn_app_with_database(database_url: &str, extra_database_toml: &str) -> TestApp {
    spawn(database_url, "", extra_database_toml).await
}

/// Starts the service that also accepts `previous_key` (a webhook key rotation under way).
pub async fn spawn_app_accepting_previous_key(previous_key: &str) -> TestApp {
    spawn(&fresh_database().await, &format!("previous_signing_key = \"{previous_key}\"\n"), "").await
}

/// The service on `database_url`, with TOML appended inside its `[webhook]` and `[database]` tables.
async fn spawn(database_url: &str, extra_webhook_toml: &str, extra_database_toml: &str) -> TestApp {
    let issuer = TestIssuer::new();
    let overrides = format!(
        "[server]\nhost = \"127.0.0.1\"\ndrain_delay = \"0s\"\n[telemetry]\nlog_level = \"warn\"\n\
         [webhook]\nsigning_key = \"{SIGNING_KEY}\"\n{extra_webhook_toml}\
         [database]\nurl = \"{database_url}\"\nssl_mode = \"disable\"\n{extra_database_toml}\n{auth}",
        auth = issuer.auth_toml()
    );
    let config: Config = load(&Sources::overridden(DEFAULTS, overrides)).expect("valid test config");
    let lifecycle = platform::server::Lifecycle::new();
    let service = build(&config, &lifecycle).await.expect("service builds");
    let server = TestServer::start(service, &config.server, lifecycle).await;
    TestApp { server, http: issuer.service_client(), anonymous: reqwest::Client::new(), issuer }
}

/// A `transaction.created` event body as transaction-api sends it (the shared type, serialised).
pub fn transaction_event(event_id: &str, user_id: &str) -> String {
    let data = TransactionCreated {
        id: platform::ids::new_id("txn"),
        user_id: user_id.to_owned(),
        amount: "100.50".to_owned(),
        currency: "BRL".to_owned(),
        status: "completed".to_owned(),
        created_at: chrono::Utc::now(),
    };
    Event::new(event_id, chrono::Utc::now(), data).to_json()
}

impl TestApp {
    pub async fn notify(&self, body: &Value) -> reqwest::Response {
        self.http.post(self.server.url("/notify")).json(body).send().await.expect("sent")
    }

    pub async fn list(&self, user_id: &str, query: &str) -> reqwest::Response {
        self.http.get(self.server.url(&format!("/notifications/{user_id}{query}"))).send().await.expect("sent")
    }

    /// Posts `body` signed with `key` at `timestamp` under `event_id`.
    pub async fn post_event(&self, event_id: &str, body: &str, key: &str, timestamp: i64) -> reqwest::Response {
        let signature = webhook_signature::sign(key.as_bytes(), event_id, timestamp, body.as_bytes());
        self.http
            .post(self.server.url("/webhooks/transactions"))
            .header("content-type", "application/json")
            .header(ID_HEADER, event_id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("sent")
    }

    /// Posts a correctly signed event, now.
    pub async fn post_signed_event(&self, event_id: &str, body: &str) -> reqwest::Response {
        self.post_event(event_id, body, SIGNING_KEY, chrono::Utc::now().timestamp()).await
    }

    pub async fn items(&self, user_id: &str) -> Vec<Value> {
        let page: Value = self.list(user_id, "?limit=100").await.json().await.expect("json");
        page["items"].as_array().cloned().expect("items")
    }
}

/// Asserts an RFC 9457 response and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    body
}
