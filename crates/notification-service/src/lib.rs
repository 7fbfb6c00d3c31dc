//! notification-service: stores user notifications, from its API and from signed webhook events.

pub mod config;
pub mod error;
pub mod http;
pub mod store;

use axum::Router;
use axum::routing::{get, post};
use platform::auth::BearerSecurity;
use platform::server::{Lifecycle, Service};
use utoipa::OpenApi;

pub use config::{Config, DEFAULTS};

pub const SERVICE: &str = "notification-service";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "notifications";

/// Applied by `notification-service migrate` (the migration Job, as the migration role) or, locally, at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(OpenApi)]
#[openapi(
    info(title = "notification-service", description = "User notifications, created directly or from signed transaction events."),
    paths(http::notify, http::receive_transaction_event, http::list_notifications),
    components(schemas(store::Notification, http::NotifyRequest, http::NotificationPage, platform::Problem, platform::FieldError)),
    tags((name = "notifications"), (name = "webhooks")),
    modifiers(&BearerSecurity)
)]
struct ApiDoc;

/// The OpenAPI document of this service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Connects the database, migrates, and assembles the routes.
pub async fn build(config: &Config, _lifecycle: &Lifecycle) -> anyhow::Result<Service> {
    platform::metrics::install(&[]);
    let pool = platform::db::connect(&config.database, SCHEMA, &MIGRATOR).await?;
    let auth = platform::auth::Authenticator::new(SERVICE, &config.auth)?;
    let state = http::AppState {
        auth,
        pool: pool.clone(),
        signing_key: config.webhook.signing_key.clone(),
        previous_signing_key: config.webhook.previous_signing_key.clone(),
        tolerance: config.webhook.tolerance,
        pagination: config.pagination,
    };
    let routes = Router::new()
        .route("/notify", post(http::notify))
        .route("/webhooks/transactions", post(http::receive_transaction_event))
        .route("/notifications/{user_id}", get(http::list_notifications))
        .with_state(state);
    Ok(Service::new(SERVICE, routes)
        .with_openapi(openapi())
        .with_readiness(platform::db::readiness_check(&pool))
        .on_stop(platform::db::close_on_stop(&pool)))
}
