//! `database.ssl_mode = "verify-full"` authenticates the server: the connection succeeds only when
//! the server's certificate chains to the bundle in `database.ssl_root_cert` and names the host the
//! client dialled. `require` encrypts but accepts any certificate, which is why clusters do not use it.

use std::path::PathBuf;
use std::time::Duration;

use platform::Secret;
use platform::config::{DatabaseConfig, SslMode};
use platform::testkit::{PostgresServer, TempDir, TestCa};
use sqlx::{Connection, PgConnection};

fn config(url: String, ssl_mode: SslMode, ssl_root_cert: Option<PathBuf>) -> DatabaseConfig {
    DatabaseConfig {
        url: Secret::new(url),
        ssl_mode,
        ssl_root_cert,
        max_connections: 1,
        min_connections: 0,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
        migrate_on_start: false,
    }
}

/// Opens one connection with exactly the options the service's pool would use, and queries.
async fn connect(url: String, ssl_mode: SslMode, ssl_root_cert: Option<&PathBuf>) -> Result<(), sqlx::Error> {
    let config = config(url, ssl_mode, ssl_root_cert.cloned());
    let pool = platform::db::pool(&config, "public").expect("a valid database config");
    let mut connection = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut connection).await?;
    connection.close().await
}

#[tokio::test]
async fn verify_full_accepts_only_the_configured_ca_and_the_dialled_host_name() {
    platform::bootstrap::install_crypto_provider();
    let rds = TestCa::new("stand-in for the region's RDS CA");
    let stranger = TestCa::new("a CA the client was not told to trust");
    let server = PostgresServer::start_tls(&rds, &["localhost"]);
    let dir = TempDir::new("pg-ca");
    let (rds_bundle, stranger_bundle) = (dir.path().join("rds-ca.pem"), dir.path().join("stranger.pem"));
    std::fs::write(&rds_bundle, rds.pem()).expect("write bundle");
    std::fs::write(&stranger_bundle, stranger.pem()).expect("write bundle");

    connect(server.url("localhost"), SslMode::VerifyFull, Some(&rds_bundle))
        .await
        .expect("the right CA and host name: connected");

    let error = connect(server.url("localhost"), SslMode::VerifyFull, Some(&stranger_bundle))
        .await
        .expect_err("a certificate from a CA outside the bundle");
    assert!(error.to_string().contains("invalid peer certificate: UnknownIssuer"), "{error}");

    let error = connect(server.url("127.0.0.1"), SslMode::VerifyFull, Some(&rds_bundle))
        .await
        .expect_err("a certificate for another name than the one dialled");
    assert!(error.to_string().contains("certificate not valid for name \"127.0.0.1\""), "{error}");
    connect(server.url("127.0.0.1"), SslMode::VerifyCa, Some(&rds_bundle))
        .await
        .expect("verify-ca checks the CA, not the name");

    connect(server.url("localhost"), SslMode::Require, Some(&stranger_bundle))
        .await
        .expect("require accepts a certificate nobody vouches for");
    assert!(
        connect(server.url("localhost"), SslMode::Disable, None).await.is_err(),
        "the server accepts TLS connections only"
    );
}
