//! Builds and runs the service binaries as child processes, with prefixed output.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::infra::{Daemon, Postgres};

/// One deployable as `cargo xtask up|bench|images` run it.
#[derive(Debug)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub port: u16,
    /// The service's PostgreSQL schema, if it has one.
    pub schema: Option<&'static str>,
    /// Extra environment for local runs; `{redis_port}` is replaced by the throwaway Redis port.
    pub local_env: Vec<(String, String)>,
}

/// The deployables, from nix/services.toml (the one list the flake reads too).
pub static SERVICES: LazyLock<Vec<ServiceSpec>> = LazyLock::new(|| {
    let list: toml::Table =
        toml::from_str(include_str!("../../../nix/services.toml")).expect("nix/services.toml parses");
    list["service"]
        .as_array()
        .expect("nix/services.toml lists services")
        .iter()
        .map(|service| ServiceSpec {
            name: service["name"].as_str().expect("service name").to_owned().leak(),
            port: service["port"].as_integer().and_then(|p| u16::try_from(p).ok()).expect("service port"),
            schema: service.get("schema").and_then(toml::Value::as_str).map(|s| &*s.to_owned().leak()),
            local_env: service
                .get("local_env")
                .and_then(toml::Value::as_table)
                .map(|env| env.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                .unwrap_or_default(),
        })
        .collect()
});

/// Cargo profile to build with.
#[derive(Debug, Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

/// Builds every service binary and returns the directory holding them.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.arg("build").current_dir(crate::workspace_root());
    for ServiceSpec { name, .. } in SERVICES.iter() {
        command.args(["-p", name]);
    }
    if matches!(profile, Profile::Release) {
        command.arg("--release");
    }
    let status = command.status().context("run cargo build")?;
    if !status.success() {
        bail!("building the services failed");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    Ok(target.join(if matches!(profile, Profile::Release) { "release" } else { "debug" }))
}

/// A running service process.
#[derive(Debug)]
pub struct RunningService {
    pub name: &'static str,
    pub port: u16,
    pub child: Child,
    pub started: Instant,
}

impl RunningService {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM and waits (up to 30 s) for a graceful exit.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// How a service's output is shown.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// Each line prefixed with the coloured service name.
    Prefixed,
    /// Discarded (benchmarks).
    Quiet,
    /// Left piped on the child for the caller to read (drills).
    Piped,
}

/// Starts one service against the throwaway infrastructure.
pub fn start(
    bin_dir: &std::path::Path,
    spec: &ServiceSpec,
    postgres: &Postgres,
    redis: &Daemon,
    keys: &LocalKeys,
    output: Output,
    log: (&str, &str),
) -> Result<RunningService> {
    let (name, port) = (spec.name, spec.port);
    let mut command = Command::new(bin_dir.join(name));
    command
        .env("QUILLA_SERVER__HOST", "127.0.0.1")
        .env("QUILLA_SERVER__PORT", port.to_string())
        .env("QUILLA_SERVER__DRAIN_DELAY", "0s")
        .env("QUILLA_DATABASE__URL", postgres.url("quilla"))
        .env("QUILLA_DATABASE__SSL_MODE", "disable")
        .env("QUILLA_WEBHOOK__SIGNING_KEY", &keys.signing_key)
        .env("QUILLA_AUTH__ISSUERS", keys.issuer.issuers_env())
        .env("QUILLA_TELEMETRY__LOG_FORMAT", log.0)
        .env("QUILLA_TELEMETRY__LOG_LEVEL", log.1)
        .stdin(Stdio::null())
        // Own process group: Ctrl-C reaches xtask only, which then stops children in order.
        .process_group(0);
    for (key, value) in &spec.local_env {
        command.env(key, value.replace("{redis_port}", &redis.port.to_string()));
    }
    match output {
        Output::Prefixed | Output::Piped => command.stdout(Stdio::piped()).stderr(Stdio::piped()),
        Output::Quiet => command.stdout(Stdio::null()).stderr(Stdio::null()),
    };
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("start {name}"))?;
    if let Output::Prefixed = output {
        let colour = 31 + SERVICES.iter().position(|s| s.name == name).unwrap_or(0) % 6;
        let prefix = format!("\x1b[{colour}m[{name}]\x1b[0m");
        if let Some(stdout) = child.stdout.take() {
            forward(stdout, prefix.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            forward(stderr, prefix);
        }
    }
    Ok(RunningService { name, port, child, started })
}

fn forward(stream: impl Read + Send + 'static, prefix: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            println!("{prefix} {line}");
        }
    });
}

/// Polls `GET /ready` until 200; returns the time from spawn to ready.
pub async fn wait_ready(http: &reqwest::Client, service: &mut RunningService, timeout: Duration) -> Result<Duration> {
    let (name, url, child) = (service.name, service.url("/ready"), &mut service.child);
    platform::testkit::wait_until(&format!("{name} was not ready"), timeout, Duration::from_millis(2), || {
        let exited = child.try_wait();
        let response = http.get(&url).send();
        async move {
            if response.await.is_ok_and(|r| r.status().is_success()) {
                return Ok(Some(()));
            }
            if let Ok(Some(status)) = exited {
                bail!("{name} exited during startup ({status})");
            }
            Ok(None)
        }
    })
    .await?;
    Ok(service.started.elapsed())
}

/// The keys of one local run: the webhook's HMAC key (random, never printed) and the token
/// issuer the services trust.
#[derive(Debug)]
pub struct LocalKeys {
    pub signing_key: String,
    pub issuer: crate::issuer::LocalIssuer,
}

impl LocalKeys {
    pub fn create() -> Result<Self> {
        Ok(Self { signing_key: hex::encode(rand::random::<[u8; 32]>()), issuer: crate::issuer::LocalIssuer::create()? })
    }
}

/// What `up` and `bench` run: PostgreSQL, Redis and every service, started by [`start_stack`].
#[derive(Debug)]
pub struct Stack {
    /// In start order (notification-service first); dropped in reverse, so transaction-api's
    /// dispatcher stops before its webhook target does.
    pub running: Vec<RunningService>,
    /// Each service's time from spawn to `/ready`, in start order.
    pub ready: Vec<(&'static str, Duration)>,
    pub keys: LocalKeys,
    pub redis: Daemon,
    pub postgres: Postgres,
}

/// How [`start_stack`] builds and runs the services.
#[derive(Debug, Clone, Copy)]
pub struct StackOptions<'a> {
    pub profile: Profile,
    pub output: Output,
    /// `(log format, log level)`.
    pub log: (&'a str, &'a str),
    /// How long each service may take to become ready.
    pub ready_within: Duration,
}

/// Checks the ports, builds the services, starts PostgreSQL (fsync on) and Redis, creates the
/// database and the local keys, then starts every service and waits until each is ready:
/// the one way `up` and `bench` bring the product up.
pub async fn start_stack(options: StackOptions<'_>) -> Result<Stack> {
    check_ports_free()?;
    let bin_dir = build(options.profile)?;
    let postgres = Postgres::start(crate::infra::Durability::Production)?;
    let redis = Daemon::redis()?;
    create_database(&postgres)?;
    // A throwaway token issuer: its JWKS is what the services trust, its key signs `xtask token`.
    let keys = LocalKeys::create()?;
    let http = reqwest::Client::new();
    let (mut running, mut ready) = (Vec::new(), Vec::new());
    // notification-service first, so transaction-api's first deliveries find it.
    for service in SERVICES.iter().rev() {
        let mut started = start(&bin_dir, service, &postgres, &redis, &keys, options.output, options.log)?;
        ready.push((service.name, wait_ready(&http, &mut started, options.ready_within).await?));
        running.push(started);
    }
    Ok(Stack { running, ready, keys, redis, postgres })
}

impl Stack {
    /// Stops the services (transaction-api first), then Redis and PostgreSQL.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Before the fields drop (Redis, then PostgreSQL): a service never outlives its database.
        for service in self.running.iter_mut().rev() {
            service.stop();
        }
    }
}

/// The base URL of a service on its local port from nix/services.toml.
pub fn local_url(name: &str) -> Result<String> {
    let spec =
        SERVICES.iter().find(|s| s.name == name).with_context(|| format!("{name} is not in nix/services.toml"))?;
    Ok(format!("http://127.0.0.1:{}", spec.port))
}

/// Makes sure the local ports are free before starting anything.
pub fn check_ports_free() -> Result<()> {
    for ServiceSpec { name, port, .. } in SERVICES.iter() {
        if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
            bail!("port {port} (for {name}) is in use; stop whatever listens there first");
        }
    }
    Ok(())
}

/// Creates the `quilla` database the services share.
pub fn create_database(postgres: &Postgres) -> Result<()> {
    postgres.create_database("quilla").context("create the quilla database")
}

#[cfg(test)]
mod tests {
    use super::{SERVICES, local_url};

    #[test]
    fn local_urls_use_the_ports_of_the_shared_list() {
        for service in SERVICES.iter() {
            assert_eq!(local_url(service.name).expect("listed"), format!("http://127.0.0.1:{}", service.port));
        }
        assert!(local_url("no-such-service").is_err());
    }

    #[test]
    fn services_come_from_the_shared_list() {
        let ports: Vec<(&str, u16)> = SERVICES.iter().map(|s| (s.name, s.port)).collect();
        assert_eq!(ports, [("transaction-api", 8080), ("notification-service", 8081)]);
        let transaction_api = &SERVICES[0];
        assert!(transaction_api.local_env.iter().any(|(k, v)| k == "QUILLA_REDIS__URL" && v.contains("{redis_port}")));
    }
}
