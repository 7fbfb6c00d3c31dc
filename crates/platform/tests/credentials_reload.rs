//! A database URL read from a file is read again: after a credential rotation the pool's new
//! connections use the new URL without a restart, and a broken file never replaces a working URL.

use std::path::Path;
use std::time::{Duration, Instant};

use platform::Secret;
use platform::config::{DatabaseConfig, SslMode};
use platform::db::{is_reachable, pool, reload_credentials};
use sqlx::Connection;

/// Runs `statement` as the test PostgreSQL's superuser on `database_url`'s database.
async fn admin(database_url: &str, statement: String) {
    let mut connection = sqlx::PgConnection::connect(database_url).await.expect("connect as admin");
    sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut connection).await.expect("admin statement");
}

/// `database_url` with `role` as its user.
fn as_role(database_url: &str, role: &str) -> String {
    let mut url = url::Url::parse(database_url).expect("URL");
    url.set_username(role).expect("username");
    url.to_string()
}

fn config(url: &str, url_file: &Path) -> DatabaseConfig {
    DatabaseConfig {
        url: Secret::resolved(url, format!("file://{}", url_file.display())),
        ssl_mode: SslMode::Disable,
        max_connections: 2,
        min_connections: 0,
        acquire_timeout: Duration::from_millis(500),
        statement_timeout: Duration::from_secs(5),
        ssl_root_cert: None,
        migrate_on_start: false,
    }
}

/// Whether the pool reaches the database within `within`.
async fn reachable_within(pool: &sqlx::PgPool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if is_reachable(pool).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn new_connections_follow_the_rotated_url_in_the_file() {
    let database_url = platform::testkit::fresh_database().await;
    let suffix = platform::ids::new_id("r").to_ascii_lowercase();
    let (old_role, new_role) = (format!("old_{suffix}"), format!("new_{suffix}"));
    admin(&database_url, format!("CREATE ROLE \"{old_role}\" LOGIN")).await;
    admin(&database_url, format!("CREATE ROLE \"{new_role}\" LOGIN")).await;

    let dir = platform::testkit::TempDir::new("credentials");
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, as_role(&database_url, &old_role)).expect("write");
    let config = config(&as_role(&database_url, &old_role), &url_file);
    let pool = pool(&config, "public").expect("pool");
    reload_credentials(&pool, &config, "public", Duration::from_millis(50));
    assert!(reachable_within(&pool, Duration::from_secs(5)).await, "the first URL works");

    // The rotation: the old credential stops working, the file gets the new one a little later.
    // Its open session is ended too, so that the next query needs a new connection.
    admin(&database_url, format!("ALTER ROLE \"{old_role}\" NOLOGIN")).await;
    let terminate = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{old_role}'");
    admin(&database_url, terminate).await;
    assert!(!reachable_within(&pool, Duration::from_millis(500)).await, "the old credential no longer logs in");
    std::fs::write(&url_file, format!("{}\n", as_role(&database_url, &new_role))).expect("write");
    assert!(reachable_within(&pool, Duration::from_secs(5)).await, "new connections use the rotated URL");

    // A file that stops holding a valid URL leaves the working one in place.
    std::fs::write(&url_file, "not a url").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.connect_options().get_username(), new_role);
}

#[tokio::test]
async fn a_url_written_in_the_config_is_never_reloaded() {
    let database_url = platform::testkit::fresh_database().await;
    let mut config = config(&database_url, Path::new("/nonexistent"));
    config.url = Secret::new(database_url.clone());
    let pool = pool(&config, "public").expect("pool");
    reload_credentials(&pool, &config, "public", Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(is_reachable(&pool).await);
    assert_eq!(pool.connect_options().get_username(), "postgres");
}

/// While a rotation reaches the pods a login can be refused; clients must hear "retry shortly"
/// (503 + Retry-After), not "server error".
#[tokio::test]
async fn a_refused_login_is_a_503_with_retry_after_not_a_500() {
    let database_url = platform::testkit::fresh_database().await;
    let error = sqlx::PgConnection::connect(&as_role(&database_url, "no_such_role_after_rotation"))
        .await
        .expect_err("the role does not exist");
    assert!(matches!(&error, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28"))), "{error}");
    let problem = platform::Problem::from(error);
    assert_eq!((problem.status, problem.retry_after_seconds), (503, Some(2)));
    assert!(problem.cause.as_deref().is_some_and(|c| c.contains("no_such_role_after_rotation")), "{problem:?}");
    // A query that is wrong stays a 500: retrying it will not help.
    let mut connection = sqlx::PgConnection::connect(&database_url).await.expect("connect");
    let wrong = sqlx::query("SELECT no_such_column FROM pg_class").execute(&mut connection).await.expect_err("bad SQL");
    let problem = platform::Problem::from(wrong);
    assert_eq!((problem.status, problem.retry_after_seconds), (500, None));
    assert!(problem.cause.as_deref().is_some_and(|c| c.contains("no_such_column")), "{problem:?}");
}
