//! transaction-api: records payment transactions and announces each one to notification-service.

pub mod config;
pub mod error;
pub mod http;
pub mod money;
pub mod outbox;
pub mod store;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use platform::cache::Cache;
use platform::client::ResilientClient;
use platform::server::{Lifecycle, Service};
use tokio::sync::Notify;
use utoipa::OpenApi;

pub use config::{Config, DEFAULTS};

pub const SERVICE: &str = "transaction-api";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "transactions";

/// Applied by `transaction-api migrate` (the migration Job, as the migration role) or, locally, at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Amount histogram buckets, in major currency units.
const AMOUNT_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 100_000.0, 1_000_000.0];

#[derive(OpenApi)]
#[openapi(
    info(title = "transaction-api", description = "Payment transactions with idempotent creation and a webhook per transaction."),
    paths(http::create_transaction, http::get_transaction),
    components(schemas(store::Transaction, http::CreateTransaction, platform::Problem, platform::FieldError)),
    tags((name = "transactions"))
)]
struct ApiDoc;

/// The OpenAPI document of this service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Connects dependencies, migrates, and assembles routes and the outbox dispatcher.
pub async fn build(config: &Config, lifecycle: &Lifecycle) -> anyhow::Result<Service> {
    platform::metrics::install(&[("transaction_amount", AMOUNT_BUCKETS)]);
    let pool = platform::db::pool(&config.database, SCHEMA)?;
    platform::db::reload_credentials(&pool, &config.database, SCHEMA, platform::db::CREDENTIALS_RELOAD_INTERVAL);
    // Local runs migrate here; clusters serve as a role that cannot, and migrate in a Job.
    if config.database.migrate_on_start {
        platform::db::migrate(&pool, SCHEMA, &MIGRATOR)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate the `{SCHEMA}` schema: {e}"))?;
    }
    let cache = Arc::new(Cache::new("transactions", &config.redis)?);
    let wake = Arc::new(Notify::new());
    let dispatcher = outbox::Dispatcher {
        pool: pool.clone(),
        client: ResilientClient::new("notification-service", config.webhook.client.clone())?,
        url: config.webhook.url.clone(),
        signing_key: config.webhook.signing_key.clone(),
        config: config.outbox.clone(),
        wake: wake.clone(),
    };
    let worker = tokio::spawn(dispatcher.run(lifecycle.workers_stop()));
    let state = http::AppState {
        pool: pool.clone(),
        cache: cache.clone(),
        max_amount: config.transactions.max_amount,
        cache_ttl: config.transactions.cache_ttl,
        idempotency_wait: config.transactions.idempotency_wait,
        wake_dispatcher: wake,
    };
    let routes = Router::new()
        .route("/transactions", post(http::create_transaction))
        .route("/transactions/{id}", get(http::get_transaction))
        .with_state(state);
    Ok(Service { name: SERVICE, routes, openapi: openapi(), database: pool, cache: Some(cache), workers: vec![worker] })
}
