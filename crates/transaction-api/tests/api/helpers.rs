//! `spawn_app()` and typed request helpers shared by every transaction-api test.

use platform::config::{Sources, load};
use std::sync::LazyLock;

use platform::testkit::{TestIssuer, TestServer, fresh_database, shared_redis_url};
use serde_json::{Value, json};
use sqlx::PgPool;
use transaction_api::{Config, DEFAULTS, build};

/// The HMAC key both services share in tests.
pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef";

/// The token issuer every service in this test process trusts.
pub static ISSUER: LazyLock<TestIssuer> =
    LazyLock::new(|| TestIssuer::for_process(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("issuers")));

/// Knobs a test may turn; everything else comes from the embedded defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub database_url: Option<String>,
    pub redis_url: String,
    pub webhook_url: String,
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            database_url: None,
            redis_url: shared_redis_url(),
            // Nothing listens here: deliveries fail and stay pending, which these tests ignore.
            webhook_url: format!("http://127.0.0.1:{}/webhooks/transactions", platform::testkit::free_port()),
            extra_toml: String::new(),
        }
    }
}

#[derive(Debug)]
pub struct TestApp {
    pub server: TestServer,
    /// Sends a service token (acting for any user) on every request.
    pub http: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    /// A pool on the service's schema, for assertions on stored rows.
    pub pool: PgPool,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// The test configuration as TOML, layered over the embedded defaults like an environment file.
pub fn test_config(database_url: &str, options: &Options) -> Config {
    let overrides = format!(
        r#"
[server]
host = "127.0.0.1"
drain_delay = "0s"
shutdown_grace = "5s"
[telemetry]
log_level = "warn"
[database]
url = "{database_url}"
ssl_mode = "disable"
max_connections = 30
[redis]
url = "{redis}"
[webhook]
url = "{webhook}"
signing_key = "{SIGNING_KEY}"
{auth}
[outbox]
poll_interval = "50ms"
retry_base = "50ms"
retry_max = "200ms"
"#,
        redis = options.redis_url,
        webhook = options.webhook_url,
        auth = ISSUER.auth_toml(),
    );
    let mut table: toml::Table = overrides.parse().expect("test TOML");
    merge(&mut table, options.extra_toml.parse().expect("extra TOML"));
    let overrides = toml::to_string(&table).expect("TOML");
    load(&Sources::overridden(DEFAULTS, overrides)).expect("valid test config")
}

/// Deep-merges `extra` into `base` (tables merge, other values replace).
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(more)) => merge(existing, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let database_url = match &options.database_url {
        Some(url) => url.clone(),
        None => fresh_database().await,
    };
    let config = test_config(&database_url, &options);
    let lifecycle = platform::server::Lifecycle::new();
    let service = build(&config, &lifecycle).await.expect("service builds");
    let server = TestServer::start(service, &config.server, lifecycle).await;
    let pool = platform::db::pool(&config.database, transaction_api::SCHEMA).expect("pool");
    TestApp { server, http: ISSUER.service_client(), anonymous: reqwest::Client::new(), pool }
}

impl TestApp {
    pub async fn post_transaction(&self, body: &Value) -> reqwest::Response {
        self.post_raw("application/json", body.to_string(), None).await
    }

    pub async fn post_with_key(&self, body: &Value, key: &str) -> reqwest::Response {
        self.post_raw("application/json", body.to_string(), Some(key)).await
    }

    pub async fn post_raw(&self, content_type: &str, body: String, key: Option<&str>) -> reqwest::Response {
        let mut request =
            self.http.post(self.server.url("/transactions")).header("content-type", content_type).body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.server.url(path)).send().await.expect("request sent")
    }

    pub async fn transaction_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM transactions").fetch_one(&self.pool).await.expect("count")
    }
}

/// A valid request body.
pub fn brl(user: &str, amount: &str) -> Value {
    json!({ "user_id": user, "amount": serde_json::from_str::<Value>(amount).expect("JSON number"), "currency": "BRL" })
}

/// Asserts an RFC 9457 response and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["type"].as_str().is_some_and(|t| !t.is_empty()) && body["title"].is_string(), "{body}");
    body
}

/// Starts notification-service (the webhook receiver) on a loopback port (0: any free one).
pub async fn start_notification_service(database_url: &str, port: u16, signing_key: &str) -> TestServer {
    let overrides = format!(
        "[server]\nhost = \"127.0.0.1\"\ndrain_delay = \"0s\"\n[telemetry]\nlog_level = \"warn\"\n\
         [database]\nurl = \"{database_url}\"\nssl_mode = \"disable\"\n[webhook]\nsigning_key = \"{signing_key}\"\n{auth}",
        auth = ISSUER.auth_toml()
    );
    let config: notification_service::Config =
        load(&Sources::overridden(notification_service::DEFAULTS, overrides)).expect("notification-service config");
    let lifecycle = platform::server::Lifecycle::new();
    let service = notification_service::build(&config, &lifecycle).await.expect("notification-service builds");
    TestServer::start_on(service, &config.server, lifecycle, port).await
}

/// The real transaction-api binary, configured only by environment variables: loopback on `port`,
/// `database_url` without TLS, the shared Redis, a webhook URL nothing listens on. Callers add or
/// replace variables before spawning.
pub fn binary(database_url: &str, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_transaction-api"));
    command
        .env_clear()
        .env("QUILLA_SERVER__HOST", "127.0.0.1")
        .env("QUILLA_SERVER__PORT", port.to_string())
        .env("QUILLA_DATABASE__URL", database_url)
        .env("QUILLA_DATABASE__SSL_MODE", "disable")
        .env("QUILLA_REDIS__URL", shared_redis_url())
        .env("QUILLA_WEBHOOK__URL", "http://127.0.0.1:9/webhooks/transactions")
        .env("QUILLA_WEBHOOK__SIGNING_KEY", SIGNING_KEY)
        .env("QUILLA_TELEMETRY__LOG_LEVEL", "warn")
        .env("QUILLA_AUTH__ISSUERS", ISSUER.issuers_env())
        .stdout(std::process::Stdio::null());
    command
}

/// Polls `<base>/ready` until it answers 2xx (five seconds at most).
pub async fn wait_until_ready(http: &reqwest::Client, base: &str) {
    if let Err(error) = platform::testkit::wait_until_ready(http, base, std::time::Duration::from_secs(5)).await {
        panic!("service never became ready: {error}");
    }
}

/// The first page (up to 100) of `user`'s notifications in notification-service.
pub async fn notifications(http: &reqwest::Client, notifier: &TestServer, user: &str) -> Vec<Value> {
    let page: Value = http
        .get(notifier.url(&format!("/notifications/{user}?limit=100")))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    page["items"].as_array().cloned().unwrap_or_default()
}
