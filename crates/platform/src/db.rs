//! PostgreSQL: a pool bound to the service's own schema, TLS mode and CA bundle from config,
//! credentials re-read from their file after a rotation, embedded migrations run as the schema's
//! owner, the pool's readiness check and stop hook, and query errors as problems. The roles and
//! grants themselves are in [`roles`] (docs/adr/0008).

pub mod roles;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection, PgPool};

use crate::Problem;
use crate::config::{ConfigError, DatabaseConfig, SslMode};
use crate::server::{ReadinessCheck, StopHook};

/// A service's pool, ready to serve: built from `config` for `schema`, following credential
/// rotations (see [`reload_credentials`]), and migrated with `migrator` first when
/// `database.migrate_on_start` is set (local runs; clusters serve as a role that cannot, and
/// migrate in a Job). Register [`readiness_check`] and [`close_on_stop`] with the service.
pub async fn connect(config: &DatabaseConfig, schema: &'static str, migrator: &Migrator) -> anyhow::Result<PgPool> {
    let pool = pool(config, schema)?;
    reload_credentials(&pool, config, schema, CREDENTIALS_RELOAD_INTERVAL);
    if config.migrate_on_start {
        migrate(&pool, schema, migrator).await.map_err(|e| migration_failed(schema, &e))?;
    }
    Ok(pool)
}

fn migration_failed(schema: &str, error: &sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot migrate the `{schema}` schema: {error}")
}

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

/// How often a database URL read from a file is read again: Secrets Manager rotates the service
/// role's password, and the ExternalSecret and the kubelet bring the new URL into the mounted file.
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

/// Connection settings for `url`: the configured TLS mode, CA bundle and statement timeout,
/// `schema` as the search path and application name.
fn connect_options(config: &DatabaseConfig, schema: &'static str, url: &str) -> Result<PgConnectOptions, ConfigError> {
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| ConfigError::new("database.url", format!("not a valid PostgreSQL URL: {}", redact_url_error(&e))))?
        .ssl_mode(ssl_mode(config.ssl_mode))
        .application_name(schema)
        .options([
            ("search_path", schema.to_owned()),
            ("statement_timeout", config.statement_timeout.as_millis().to_string()),
        ]);
    if let Some(bundle) = &config.ssl_root_cert {
        options = options.ssl_root_cert(bundle);
    }
    Ok(options)
}

/// `<service> migrate`: applies `migrator` to `schema` with the role in `database.url` (in
/// clusters the service's migration role, from the migration Job) and closes the connection.
pub async fn run_migrations(config: &DatabaseConfig, schema: &'static str, migrator: &Migrator) -> anyhow::Result<()> {
    let pool = pool(&DatabaseConfig { max_connections: 1, min_connections: 0, ..config.clone() }, schema)?;
    let result = migrate(&pool, schema, migrator).await;
    pool.close().await;
    result.map_err(|e| migration_failed(schema, &e))
}

/// Applies the embedded migrations to `schema`, as the role that owns it.
///
/// In clusters the schema exists, owned by the service's owner role, and the migration role (a
/// member of it) connects: the session switches to the owner (`SET ROLE`) so that every table is
/// the owner's and its default privileges grant the serving role DML on it. Where the schema does
/// not exist yet (local runs and tests, as a superuser) it is created. The migrations table lives
/// in the service's schema too, so services never see each other's history. sqlx serialises
/// concurrent runs with an advisory lock.
pub async fn migrate(pool: &PgPool, schema: &'static str, migrator: &Migrator) -> Result<(), sqlx::Error> {
    // A connection of its own, closed afterwards, so the role switch never reaches the pool.
    let mut connection = pool.acquire().await?.detach();
    let result = migrate_on(&mut connection, schema, migrator).await;
    let _ = connection.close().await;
    result
}

async fn migrate_on(
    connection: &mut PgConnection,
    schema: &'static str,
    migrator: &Migrator,
) -> Result<(), sqlx::Error> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1")
            .bind(schema)
            .fetch_optional(&mut *connection)
            .await?;
    match owner {
        Some(owner) => {
            let current: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *connection).await?;
            if owner != current {
                let statement = format!("SET ROLE {}", roles::quote_identifier(&owner));
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *connection).await?;
            }
        }
        None => {
            // `schema` is a compile-time constant of the calling service, never user input.
            let statement = format!("CREATE SCHEMA {}", roles::quote_identifier(schema));
            if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *connection).await {
                // Two processes racing on CREATE SCHEMA: the loser sees a duplicate; the schema exists.
                let code = error.as_database_error().and_then(|e| e.code());
                if !code.is_some_and(|code| code == "23505" || code == "42P06") {
                    return Err(error);
                }
            }
        }
    }
    migrator.run(&mut *connection).await?;
    Ok(())
}

/// Whether PostgreSQL answers a trivial query.
pub async fn is_reachable(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool).await.is_ok()
}

/// How long `/ready` waits for PostgreSQL.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// `/ready`'s `postgres` check: required, since without its database a service serves nothing.
pub fn readiness_check(pool: &PgPool) -> ReadinessCheck {
    let pool = pool.clone();
    ReadinessCheck::required("postgres", READINESS_TIMEOUT, move || {
        let pool = pool.clone();
        async move { is_reachable(&pool).await }
    })
}

/// Closes the pool at shutdown, once the workers that use it have stopped: PostgreSQL sees its
/// sessions end cleanly instead of dropped sockets.
pub fn close_on_stop(pool: &PgPool) -> StopHook {
    let pool = pool.clone();
    StopHook::new("close the PostgreSQL pool", move || async move { pool.close().await })
}

/// Seconds a client is told to wait before retrying when the database is unavailable.
const RETRY_AFTER_SECONDS: u32 = 2;

/// The problem+json answer for a failed query: 503 with Retry-After when the database is
/// unreachable, the pool exhausted, or the login refused (as while a password rotation reaches
/// the pods: the old password is gone before the new one is read), otherwise a 500. Either way
/// the error is the problem's cause, logged by the server.
impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Self {
        Self::from(&error)
    }
}

impl From<&sqlx::Error> for Problem {
    fn from(error: &sqlx::Error) -> Self {
        if is_unavailable(error) {
            let mut problem =
                Problem::service_unavailable("the database is unavailable; retry later").with_cause(error);
            problem.retry_after_seconds = Some(RETRY_AFTER_SECONDS);
            return problem;
        }
        Problem::internal_caused_by(error)
    }
}

/// Whether `error` says the database cannot serve now (retrying later may work), not that the
/// query is wrong. SQLSTATE classes: 08 connection exception, 28 invalid authorization
/// (28P01 wrong password), 53300 too many connections, 57P01–57P03 shutdown or starting up.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("28") || code == "53300" || code.starts_with("57P0")
        }),
        _ => false,
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
