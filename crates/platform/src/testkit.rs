//! Test helpers: a fresh database per test, throwaway Redis servers, services on random ports.
//!
//! `cargo xtask test` starts PostgreSQL, Redis and moto and exports their addresses:
//! `QUILLA_TEST_DATABASE_URL` (superuser URL), `QUILLA_TEST_REDIS_URL`, `QUILLA_TEST_AWS_ENDPOINT`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::server::{Lifecycle, Service};

mod local;

pub use local::{TempDir, free_port, wait_for_port, wait_until, wait_until_ready};

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

/// Server settings for in-process tests: loopback, no drain delay, no rate limits.
pub fn server_config() -> crate::config::ServerConfig {
    toml::from_str(
        r#"host = "127.0.0.1"
port = 0
request_timeout = "5s"
body_limit_bytes = 1024
drain_delay = "0s"
shutdown_grace = "1s"
header_read_timeout = "5s"
idle_timeout = "30s"
max_connections = 256
max_header_bytes = 16384
rate_limit = { requests_per_second = 0, burst = 1 }
admin_rate_limit = { requests_per_second = 0, burst = 1 }"#,
    )
    .expect("test server config")
}

/// Every operation of an OpenAPI document: its method, its path with each `{param}` replaced by
/// `fill(param)`, and whether it declares a security requirement. Auth tests walk it, so a new
/// route cannot be added without being tried anonymously.
pub fn openapi_operations(
    document: &utoipa::openapi::OpenApi,
    fill: impl Fn(&str) -> String,
) -> Vec<(http::Method, String, bool)> {
    let document = serde_json::to_value(document).expect("the OpenAPI document serialises");
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        let mut concrete = String::new();
        let mut rest = path.as_str();
        while let Some((before, after)) = rest.split_once('{') {
            let (param, tail) = after.split_once('}').expect("a closed path parameter");
            concrete.push_str(before);
            concrete.push_str(&fill(param));
            rest = tail;
        }
        concrete.push_str(rest);
        for (method, operation) in item.as_object().into_iter().flatten() {
            let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else { continue };
            let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
            found.push((method, concrete.clone(), secured));
        }
    }
    found
}

/// A throwaway token issuer for one test: its JWKS in a file the service under test trusts.
#[derive(Debug)]
pub struct TestIssuer {
    pub issuer: crate::auth::dev::DevIssuer,
    jwks_path: PathBuf,
    _dir: Option<TempDir>,
}

/// Every scope the services check, granted to the tokens tests make by default.
pub use crate::auth::dev::SCOPES as ALL_SCOPES;

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// An issuer whose JWKS lives in a temp dir removed with it.
    pub fn new() -> Self {
        let dir = TempDir::new("issuer");
        let mut issuer = Self::writing_to(dir.path().join("jwks.json"));
        issuer._dir = Some(dir);
        issuer
    }

    /// An issuer for a whole test process (a `static`, never dropped): its JWKS is written to
    /// `dir/jwks-<pid>.json`, e.g. under `CARGO_TARGET_TMPDIR`, replaced by the next process
    /// with that pid rather than piling up in /tmp.
    pub fn for_process(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).expect("create the issuer dir");
        Self::writing_to(dir.join(format!("jwks-{}.json", std::process::id())))
    }

    fn writing_to(jwks_path: PathBuf) -> Self {
        let issuer = crate::auth::dev::DevIssuer::generate(crate::auth::dev::DEV_ISSUER);
        std::fs::write(&jwks_path, issuer.jwks()).expect("write the JWKS");
        Self { issuer, jwks_path, _dir: None }
    }

    pub fn jwks_path(&self) -> PathBuf {
        self.jwks_path.clone()
    }

    /// `auth.issuers` as one environment variable value (figment's inline syntax).
    pub fn issuers_env(&self) -> String {
        crate::auth::dev::issuers_env(self.issuer.issuer(), &self.jwks_path)
    }

    /// The `[[auth.issuers]]` entry trusting this issuer, as a config layer.
    pub fn auth_toml(&self) -> String {
        format!(
            "[[auth.issuers]]\nissuer = \"{}\"\njwks_file = \"{}\"\n",
            self.issuer.issuer(),
            self.jwks_path().display()
        )
    }

    /// A token for both services, valid for an hour.
    pub fn token(&self, subject: &str, roles: &[&str], scopes: &[&str]) -> String {
        self.issuer.token(&crate::auth::dev::TokenRequest {
            subject,
            roles,
            scopes,
            audience: crate::auth::dev::AUDIENCES,
            ttl: Duration::from_secs(3600),
        })
    }

    /// A customer acting for `subject`, with every scope.
    pub fn customer(&self, subject: &str) -> String {
        self.token(subject, &["customer"], ALL_SCOPES)
    }

    /// A workload acting for any user, with every scope.
    pub fn service(&self) -> String {
        self.token("test-suite", &["service"], ALL_SCOPES)
    }

    /// Tokens a hostile or careless client sends, each labelled with what is wrong with it: all
    /// must get 401. `audience` is the service under test; every token is otherwise valid.
    pub fn hostile_tokens(&self, audience: &str) -> Vec<(&'static str, String)> {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use hmac::{Hmac, KeyInit, Mac};
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut claims = serde_json::json!({
                "iss": self.issuer.issuer(), "sub": "u1", "aud": audience, "exp": now + 600,
                "roles": ["service"], "scope": ALL_SCOPES.join(" "),
            });
            change(&mut claims);
            claims
        };
        let unsigned = |alg: &str| {
            let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": self.issuer.kid()});
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims(&|_| {}).to_string())
            )
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(self.issuer.jwks().as_bytes()).expect("any key length");
        let input = unsigned("HS256");
        mac.update(input.as_bytes());
        let hs256 = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        let stranger = crate::auth::dev::DevIssuer::generate(self.issuer.issuer());
        vec![
            ("alg none", format!("{}.", unsigned("none"))),
            ("HS256 signed with the published key", hs256),
            ("another audience", self.issuer.sign(&claims(&|c| c["aud"] = "someone-else".into()))),
            ("another issuer", self.issuer.sign(&claims(&|c| c["iss"] = "https://evil.example".into()))),
            ("expired", self.issuer.sign(&claims(&|c| c["exp"] = (now - 3600).into()))),
            ("not valid yet", self.issuer.sign(&claims(&|c| c["nbf"] = (now + 3600).into()))),
            ("no subject", self.issuer.sign(&claims(&|c| drop(c.as_object_mut().map(|o| o.remove("sub")))))),
            ("signed by an unknown key", stranger.sign(&claims(&|_| {}))),
            ("not a JWT", "not-a-token".to_owned()),
        ]
    }

    /// A client sending a service token on every request (tests about anything but auth).
    pub fn service_client(&self) -> reqwest::Client {
        let mut headers = http::HeaderMap::new();
        let value = http::HeaderValue::from_str(&format!("Bearer {}", self.service())).expect("header");
        headers.insert(http::header::AUTHORIZATION, value);
        reqwest::Client::builder().default_headers(headers).build().expect("client")
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
        wait_for_port(self.port, Duration::from_secs(10)).unwrap_or_else(|error| panic!("redis-server: {error}"));
    }
}

/// A CA (`ca.pem`) and a certificate it signed for `localhost` (`server.pem`, `server.key`) in `dir`.
fn write_certificates(dir: &std::path::Path) {
    let ca = TestCa::new("quilla test CA");
    let (certificate, key) = ca.issue(&["localhost"]);
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    std::fs::write(dir.join("server.pem"), certificate).expect("write server.pem");
    std::fs::write(dir.join("server.key"), key).expect("write server.key");
}

/// A throwaway certificate authority that issues server certificates.
#[derive(Debug)]
pub struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA"))
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate for `names` and its private key, both PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let certificate = rcgen::CertificateParams::new(names)
            .expect("server parameters")
            .signed_by(&key, &self.0)
            .expect("server certificate");
        (certificate.pem(), key.serialize_pem())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
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
        crate::bootstrap::install_crypto_provider();
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

/// Creates, as the test server's superuser, what the database administrator creates in every
/// environment (docs/adr/0008): the database-wide revocations, then each service's roles, schema
/// and grants, all from [`crate::db::roles`]. Give each test roles of its own
/// ([`crate::db::roles::SchemaRoles::with_prefix`]): roles are shared by the whole server.
pub async fn provision_roles(database_url: &str, services: &[&crate::db::roles::SchemaRoles]) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(database_url).await.expect("connect as the superuser");
    let database = url::Url::parse(database_url).expect("URL").path().trim_start_matches('/').to_owned();
    let statements = crate::db::roles::database_statements(&database)
        .into_iter()
        .chain(services.iter().flat_map(|roles| roles.statements(&database)));
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// `database_url` with `role` as its user (the test server trusts every local login).
pub fn url_as(database_url: &str, role: &str) -> String {
    let mut url = url::Url::parse(database_url).expect("URL");
    url.set_username(role).expect("username");
    url.to_string()
}

/// A private PostgreSQL server that accepts TLS connections only, presenting a certificate that
/// `ca` issued for `names`: for the tests of what the client's TLS modes accept. Stopped and
/// removed when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    /// initdb refuses to run as root: as root, every server command runs as `postgres`.
    as_postgres_user: bool,
}

impl PostgresServer {
    pub fn start_tls(ca: &TestCa, names: &[&str]) -> Self {
        let bin = postgres_bin_dir().expect("PostgreSQL server binaries (initdb, pg_ctl)");
        let dir = TempDir::new("pg-tls");
        let (certificate, key) = ca.issue(names);
        std::fs::write(dir.path().join("server.pem"), certificate).expect("write server.pem");
        std::fs::write(dir.path().join("server.key"), key).expect("write server.key");
        let as_postgres_user = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
        let server = Self { port: free_port(), bin, dir, as_postgres_user };
        server.set_file_modes();
        let data = server.dir.path().join("data");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        // TLS or nothing: no plain-TCP line, so a client that does not negotiate TLS is refused.
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        server.set_file_modes();
        let options = format!(
            "-p {} -k {dir} -c listen_addresses=localhost -c fsync=off -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key",
            server.port,
            dir = server.dir.path().display()
        );
        let log = server.dir.path().join("postgres.log");
        let started = server.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        if let Err(error) = started {
            panic!("PostgreSQL did not start: {error}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        wait_for_port(server.port, Duration::from_secs(30)).unwrap_or_else(|error| panic!("PostgreSQL: {error}"));
        server
    }

    /// The superuser's URL of the `postgres` database, reached as `host` (the name the client
    /// checks the certificate against).
    pub fn url(&self, host: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    /// The server's files belong to the user it runs as, and its key is readable by it alone.
    fn set_file_modes(&self) {
        use std::os::unix::fs::PermissionsExt;
        let key = self.dir.path().join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod server.key");
        if self.as_postgres_user {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(self.dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the PostgreSQL directory to postgres");
        }
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        if let Err(error) = self.try_run(tool, args) {
            panic!("{error}");
        }
    }

    fn try_run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {tool}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{tool} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.try_run(
            "pg_ctl",
            &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "-w".as_ref(), "stop".as_ref()],
        );
    }
}

/// PostgreSQL's server binaries: Debian keeps them in /usr/lib/postgresql/<version>/bin.
fn postgres_bin_dir() -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse::<u32>().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("pg_ctl").is_file())
        .max();
    newest.map(|(_, bin)| bin).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find(|dir| dir.join("pg_ctl").is_file())
    })
}

/// Asserts that nix/services.toml lists `service` with `schema`: `cargo xtask pods` provisions
/// the roles of the schema listed there, so it must be the one the service migrates.
pub fn assert_listed_schema(service: &str, schema: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nix/services.toml");
    let text = std::fs::read_to_string(&path).expect("read nix/services.toml");
    let list: toml::Table = toml::from_str(&text).expect("nix/services.toml parses");
    let listed = list["service"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| entry.get("name").and_then(toml::Value::as_str) == Some(service))
        .and_then(|entry| entry.get("schema").and_then(toml::Value::as_str).map(str::to_owned));
    assert_eq!(listed.as_deref(), Some(schema), "nix/services.toml must list {service} with schema = \"{schema}\"");
}
