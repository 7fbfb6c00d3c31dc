//! transaction-api: records payment transactions and announces each one to notification-service.

pub mod config;
pub mod error;
pub mod http;
pub mod money;
pub mod outbox;
pub mod retention;
pub mod store;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use platform::auth::BearerSecurity;
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

/// Precision of the `transactions.amount` column, `numeric(24, 4)` in the migrations (a test
/// checks they agree): every amount and `transactions.max_amount` limit derives from these two.
pub const AMOUNT_PRECISION: u32 = 24;
/// Scale (decimal places) of the `transactions.amount` column.
pub const AMOUNT_SCALE: u32 = 4;

/// Amount histogram buckets, in major currency units.
const AMOUNT_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 100_000.0, 1_000_000.0];

#[derive(OpenApi)]
#[openapi(
    info(title = "transaction-api", description = "Payment transactions with idempotent creation and a webhook per transaction."),
    paths(http::create_transaction, http::get_transaction),
    components(schemas(store::Transaction, http::CreateTransaction, platform::Problem, platform::FieldError)),
    tags((name = "transactions")),
    modifiers(&BearerSecurity)
)]
struct ApiDoc;

/// The OpenAPI document of this service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Connects dependencies, migrates, and assembles routes, the outbox dispatcher and the retention job.
pub async fn build(config: &Config, lifecycle: &Lifecycle) -> anyhow::Result<Service> {
    platform::metrics::install(&[("transaction_amount", AMOUNT_BUCKETS)]);
    let pool = platform::db::connect(&config.database, SCHEMA, &MIGRATOR).await?;
    let auth = platform::auth::Authenticator::new(SERVICE, &config.auth)?;
    let cache = Arc::new(Cache::new("transactions", &config.redis, &config.memory_cache)?);
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
    let retention = tokio::spawn(retention::run(pool.clone(), config.retention.clone(), lifecycle.workers_stop()));
    let currencies = money::Currencies::new(&config.transactions.extra_currencies)
        .map_err(|e| anyhow::anyhow!("transactions.extra_currencies: {e}"))?;
    let state = http::AppState {
        pool: pool.clone(),
        cache: cache.clone(),
        max_amount: config.transactions.max_amount,
        currencies,
        cache_ttl: config.transactions.cache_ttl,
        idempotency_wait: config.transactions.idempotency_wait,
        idempotency_ttl: config.transactions.idempotency_ttl,
        wake_dispatcher: wake,
        auth,
    };
    let routes = Router::new()
        .route("/transactions", post(http::create_transaction))
        .route("/transactions/{id}", get(http::get_transaction))
        .with_state(state);
    Ok(Service::new(SERVICE, routes)
        .with_openapi(openapi())
        .with_readiness(platform::db::readiness_check(&pool))
        .with_readiness(platform::cache::readiness_check(&cache))
        .with_worker(worker)
        .with_worker(retention)
        .on_stop(platform::db::close_on_stop(&pool)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(precision, scale)` of the last `numeric(p, s)` on a line naming the `amount` column, in
    /// migration order: the column's type once every migration has run.
    fn amount_column_type() -> Option<(u32, u32)> {
        let mut found = None;
        for migration in MIGRATOR.iter() {
            for line in migration.sql.as_str().lines() {
                let code = line.split("--").next().unwrap_or_default().to_ascii_lowercase();
                let names_amount = code.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|w| w == "amount");
                let Some((_, rest)) = code.split_once("numeric(") else { continue };
                let Some((inside, _)) = rest.split_once(')') else { continue };
                let Some((precision, scale)) = inside.split_once(',') else { continue };
                if names_amount {
                    found = Some((precision.trim().parse().ok()?, scale.trim().parse().ok()?));
                }
            }
        }
        found
    }

    #[test]
    fn amount_constants_match_the_migrations() {
        assert_eq!(amount_column_type(), Some((AMOUNT_PRECISION, AMOUNT_SCALE)));
    }
}
