//! PostgreSQL: a pool bound to the service's own schema, TLS mode from config, credentials re-read
//! from their file after a rotation, embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::{ConfigError, DatabaseConfig, SslMode};

/// Builds a lazily connecting pool whose sessions use `schema` as their search path, so each
/// service owns one schema (`transactions`, `notifications`) in the shared database.
pub fn pool(config: &DatabaseConfig, schema: &'static str) -> Result<PgPool, ConfigError> {
    config.validate()?;
    let options = connect_options(config, schema, config.url.expose())?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_lazy_with(options))
}

/// How often a database URL read from a file is read again: RDS rotates the master user's
/// password, and the ExternalSecret and the kubelet bring the new URL into the mounted file.
pub const CREDENTIALS_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// When `database.url` came from a `file://` reference, reads that file every `interval` and
/// points the pool's new connections at the URL it holds once it changes. Open connections stay:
/// PostgreSQL keeps sessions across a password change. Without a file reference, does nothing.
pub fn reload_credentials(pool: &PgPool, config: &DatabaseConfig, schema: &'static str, interval: Duration) {
    let Some(path) =
        config.url.resolved_from().and_then(|reference| reference.strip_prefix(crate::secret::FILE_SCHEME))
    else {
        return;
    };
    let (pool, config, path) = (pool.clone(), config.clone(), path.to_owned());
    tokio::spawn(async move {
        let mut current = config.url.clone();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        while !pool.is_closed() {
            ticker.tick().await;
            let url = match crate::secret_references::read_secret_file(&path) {
                Ok(url) if url != current.expose() => crate::Secret::new(url),
                Ok(_) => continue,
                Err(problem) => {
                    tracing::warn!(problem, "cannot read the database URL file again; keeping the current URL");
                    continue;
                }
            };
            match connect_options(&config, schema, url.expose()) {
                Ok(options) => {
                    pool.set_connect_options(options);
                    current = url;
                    tracing::info!(path, "database credentials changed: new connections use them");
                }
                Err(error) => {
                    tracing::warn!(%error, "the database URL file holds an invalid URL; keeping the current one")
                }
            }
        }
    });
}

/// Connection settings for `url`: the configured TLS mode and statement timeout, `schema` as the
/// search path and application name.
fn connect_options(config: &DatabaseConfig, schema: &'static str, url: &str) -> Result<PgConnectOptions, ConfigError> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| ConfigError::new("database.url", format!("not a valid PostgreSQL URL: {}", redact_url_error(&e))))?
        .ssl_mode(ssl_mode(config.ssl_mode))
        .application_name(schema)
        .options([
            ("search_path", schema.to_owned()),
            ("statement_timeout", config.statement_timeout.as_millis().to_string()),
        ]))
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
