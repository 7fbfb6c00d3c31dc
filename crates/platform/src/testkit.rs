//! Test helpers: a fresh database per test, throwaway Redis servers, services on random ports.
//!
//! `cargo xtask test` starts PostgreSQL, Redis and moto and exports their addresses:
//! `QUILLA_TEST_DATABASE_URL` (superuser URL), `QUILLA_TEST_REDIS_URL`, `QUILLA_TEST_AWS_ENDPOINT`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{Lifecycle, Service};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with `cargo xtask test`, which starts PostgreSQL, Redis and moto")
    })
}

/// Creates an empty database with a unique name and returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin_url = required_env("QUILLA_TEST_DATABASE_URL");
    let name = format!("test_{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("QUILLA_TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// The shared test Redis.
pub fn shared_redis_url() -> String {
    required_env("QUILLA_TEST_REDIS_URL")
}

/// The AWS API emulator endpoint (moto).
pub fn aws_endpoint() -> String {
    required_env("QUILLA_TEST_AWS_ENDPOINT")
}

/// Server settings for in-process tests: loopback, no drain delay, no rate limit.
pub fn server_config() -> crate::config::ServerConfig {
    toml::from_str(
        r#"host = "127.0.0.1"
port = 0
request_timeout = "5s"
body_limit_bytes = 1024
drain_delay = "0s"
shutdown_grace = "1s"
rate_limit = { requests_per_second = 0, burst = 1 }"#,
    )
    .expect("test server config")
}

/// A service made of `routes` alone, whose database pool points nowhere and is never used.
pub fn service_without_database(name: &'static str, routes: axum::Router) -> Service {
    let database = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:9/none")
        .expect("a lazy pool needs no connection");
    Service {
        name,
        routes,
        openapi: utoipa::openapi::OpenApiBuilder::new().build(),
        database,
        cache: None,
        workers: Vec::new(),
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A fresh directory under the system's temp dir, removed with everything in it when dropped
/// (also when the test panics).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(crate::ids::new_id(label));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private Redis server that a test may stop and restart.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    tls: Option<RedisTls>,
    child: Option<Child>,
}

/// What a TLS Redis server needs: a password, and its certificates in a directory of its own.
#[derive(Debug)]
struct RedisTls {
    password: String,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self { port: free_port(), tls: None, child: None };
        server.restart();
        server
    }

    /// A server like ElastiCache with encryption in transit and AUTH: TLS only, with `password`.
    /// Its certificate (for `localhost`) is signed by a throwaway CA, written to [`Self::ca_file`].
    pub fn start_tls(password: &str) -> Self {
        let dir = TempDir::new("redis-tls");
        write_certificates(dir.path());
        let tls = RedisTls { password: password.to_owned(), dir };
        let mut server = Self { port: free_port(), tls: Some(tls), child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://:<password>@localhost:<port>` for a TLS server.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(tls) => format!("rediss://:{}@localhost:{}", tls.password, self.port),
        }
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.dir.path().join("ca.pem"))
    }

    /// Kills the server (SIGKILL): connections drop as in a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no", "--requirepass", &tls.password])
                .arg("--tls-cert-file")
                .arg(tls.dir.path().join("server.pem"))
                .arg("--tls-key-file")
                .arg(tls.dir.path().join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.dir.path().join("ca.pem")),
        };
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server on PATH");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
    }
}

/// A CA (`ca.pem`) and a certificate it signed for `localhost` (`server.pem`, `server.key`) in `dir`.
fn write_certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server parameters")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write server.pem");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write server.key");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts connections on the loopback port.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on port {port} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A service running in-process on a random port.
#[derive(Debug)]
pub struct TestServer {
    pub address: SocketAddr,
    pub lifecycle: Lifecycle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Serves `service` on 127.0.0.1 with a random port. `lifecycle` must be the one the service
    /// was built with, so stopping the server also stops its background workers.
    pub async fn start(service: Service, config: &crate::config::ServerConfig, lifecycle: Lifecycle) -> Self {
        Self::start_on(service, config, lifecycle, 0).await
    }

    /// Serves on a chosen loopback port (to stop a service and start it again at the same address).
    pub async fn start_on(
        service: Service,
        config: &crate::config::ServerConfig,
        lifecycle: Lifecycle,
        port: u16,
    ) -> Self {
        crate::cli::install_crypto_provider();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test port");
        let address = listener.local_addr().expect("local address");
        let task = tokio::spawn(crate::server::serve(service, config.clone(), listener, lifecycle.clone()));
        Self { address, lifecycle, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Triggers graceful shutdown and waits for it to finish.
    pub async fn stop(self) {
        self.lifecycle.shutdown();
        self.task.await.expect("server task").expect("server stopped cleanly");
    }
}
