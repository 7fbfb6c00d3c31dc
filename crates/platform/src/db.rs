//! PostgreSQL: a pool bound to the service's own schema, TLS mode from config, embedded migrations.

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::{ConfigError, DatabaseConfig, SslMode};

/// Builds a lazily connecting pool whose sessions use `schema` as their search path, so each
/// service owns one schema (`transactions`, `notifications`) in the shared database.
pub fn pool(config: &DatabaseConfig, schema: &'static str) -> Result<PgPool, ConfigError> {
    config.validate()?;
    let options = PgConnectOptions::from_str(config.url.expose())
        .map_err(|e| ConfigError::new("database.url", format!("not a valid PostgreSQL URL: {}", redact_url_error(&e))))?
        .ssl_mode(ssl_mode(config.ssl_mode))
        .application_name(schema)
        .options([
            ("search_path", schema.to_owned()),
            ("statement_timeout", config.statement_timeout.as_millis().to_string()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_lazy_with(options))
}

/// Creates the service schema if needed and applies the embedded migrations.
///
/// The migrations table lives in the service's schema too, so services never see each other's
/// history. sqlx serialises concurrent runs (several replicas starting) with an advisory lock.
pub async fn migrate(pool: &PgPool, schema: &'static str, migrator: &Migrator) -> Result<(), sqlx::Error> {
    // `schema` is a compile-time constant of the calling service, never user input.
    let statement = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(pool).await {
        // Two replicas racing on CREATE SCHEMA: the loser sees a unique violation; the schema exists.
        let raced = error.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "23505");
        if !raced {
            return Err(error);
        }
    }
    migrator.run(pool).await?;
    Ok(())
}

/// Whether PostgreSQL answers a trivial query (used by `/ready`).
pub async fn is_reachable(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool).await.is_ok()
}

/// The problem+json answer for a failed query: 503 when the database is unreachable or the pool
/// exhausted (clients should retry), otherwise a logged 500.
pub fn error_problem(error: &sqlx::Error) -> crate::Problem {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::error!(%error, "database unavailable");
            crate::Problem::service_unavailable("the database is unavailable; retry later")
        }
        other => crate::Problem::internal_logged(other),
    }
}

fn ssl_mode(mode: SslMode) -> PgSslMode {
    match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    }
}

/// URL parse errors can echo the URL, password included; keep only the kind of error.
fn redact_url_error(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Configuration(_) => "malformed URL or unknown parameter",
        _ => "unparsable",
    }
}
