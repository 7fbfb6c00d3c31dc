//! A service binary's whole startup: the command line (serve, migrate, healthcheck,
//! --print-config, --version), then config, telemetry, secret references, `build` and serving.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, ServiceConfig, Sources};
use crate::server::{Lifecycle, Service};

const USAGE: &str = "\
usage: {name} [COMMAND]

commands:
  serve            run the service (default)
  migrate          apply the database migrations as the role in database.url, then exit
  healthcheck      exit 0 if the local service answers GET /health with 200
                   (on the admin port when set; HTTPS when server.tls is set)
  --print-config   print the effective configuration (secrets redacted) and exit
  --version, -V    print the version and exit
  --help, -h       print this help

configuration: embedded defaults, then the TOML file in $QUILLA_CONFIG, then
environment variables QUILLA_<SECTION>__<KEY> (e.g. QUILLA_SERVER__PORT=9000).";

/// A service's schema and its embedded migrations, for `migrate`.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    pub schema: &'static str,
    pub migrator: &'static sqlx::migrate::Migrator,
}

/// Runs a service binary: parses the command line, loads the config and, for `serve`, calls
/// `build` (with secrets resolved) and serves the result until shutdown; for `migrate`, applies
/// `migrations` and exits.
pub fn main<C, B>(name: &'static str, defaults: &'static str, build: B, migrations: Migrations) -> ExitCode
where
    C: ServiceConfig,
    B: AsyncFnOnce(&C, &Lifecycle) -> anyhow::Result<Service>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    if args.len() > 1 {
        eprintln!("{name}: unexpected argument `{}`\n\n{}", args[1], USAGE.replace("{name}", name));
        return ExitCode::from(2);
    }
    match command {
        "--version" | "-V" => {
            println!("{name} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "--help" | "-h" => {
            println!("{}", USAGE.replace("{name}", name));
            ExitCode::SUCCESS
        }
        "--print-config" => match load::<C>(name, defaults) {
            Ok(config) => {
                print!("{}", config::render_redacted(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        "healthcheck" => match load::<C>(name, defaults) {
            Ok(config) => healthcheck(config.sections().server),
            Err(code) => code,
        },
        "serve" => match load::<C>(name, defaults) {
            Ok(config) => serve(name, config, build),
            Err(code) => code,
        },
        "migrate" => match load::<MigrationConfig>(name, defaults) {
            Ok(config) => execute(name, "migrate", config, async move |config: &MigrationConfig| {
                crate::db::run_migrations(&config.database, migrations.schema, migrations.migrator).await
            }),
            Err(code) => code,
        },
        other => {
            eprintln!("{name}: unknown command `{other}`\n\n{}", USAGE.replace("{name}", name));
            ExitCode::from(2)
        }
    }
}

/// What `migrate` reads of a service's configuration. The other sections (cache, webhook keys…)
/// are ignored, neither required nor validated, so the migration Job is given no credential but
/// the migration role's (docs/adr/0008).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct MigrationConfig {
    #[serde(deserialize_with = "without_listener_tls")]
    server: config::ServerConfig,
    telemetry: config::TelemetryConfig,
    #[serde(default)]
    aws: config::AwsConfig,
    database: config::DatabaseConfig,
}

impl ServiceConfig for MigrationConfig {
    fn sections(&self) -> config::Sections<'_> {
        config::Sections { server: &self.server, telemetry: &self.telemetry, aws: &self.aws }
    }

    fn validate(&self) -> Result<(), config::ConfigError> {
        self.database.validate()
    }
}

/// `migrate` listens on nothing, so the listener's certificate files (which the migration Job does
/// not mount) are neither needed nor checked.
fn without_listener_tls<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<config::ServerConfig, D::Error> {
    let mut server = <config::ServerConfig as serde::Deserialize>::deserialize(deserializer)?;
    server.tls = None;
    Ok(server)
}

fn load<C: ServiceConfig>(name: &str, defaults: &'static str) -> Result<C, ExitCode> {
    config::load(&Sources::from_process(defaults)).map_err(|error| {
        eprintln!("{name}: {error}");
        ExitCode::from(78) // EX_CONFIG
    })
}

fn serve<C, B>(name: &'static str, config: C, build: B) -> ExitCode
where
    C: ServiceConfig,
    B: AsyncFnOnce(&C, &Lifecycle) -> anyhow::Result<Service>,
{
    execute(name, "serve", config, async move |config: &C| {
        let lifecycle = Lifecycle::new();
        lifecycle.shutdown_on_signals();
        run(config, lifecycle, build).await
    })
}

/// Runs `command`'s `work` with telemetry, an async runtime and the config's secret references
/// resolved; any failure is logged and mapped to the exit status.
fn execute<C, W>(name: &'static str, command: &'static str, mut config: C, work: W) -> ExitCode
where
    C: ServiceConfig,
    W: AsyncFnOnce(&C) -> anyhow::Result<()>,
{
    install_crypto_provider();
    if let Err(message) = crate::telemetry::init(name, config.sections().telemetry) {
        eprintln!("{name}: {message}");
        return ExitCode::from(78);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if let Err(error) = crate::secret_references::resolve_references(&mut config).await {
            tracing::error!(%error, "startup failed");
            eprintln!("{name}: {error}");
            return ExitCode::from(78);
        }
        let result = work(&config).await;
        tokio::task::spawn_blocking(crate::telemetry::shutdown).await.ok();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(command, error = format!("{error:#}"), "{name} {command} failed");
                eprintln!("{name}: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run<C, B>(config: &C, lifecycle: Lifecycle, build: B) -> anyhow::Result<()>
where
    C: ServiceConfig,
    B: AsyncFnOnce(&C, &Lifecycle) -> anyhow::Result<Service>,
{
    let server = config.sections().server;
    let listeners = crate::server::Listeners::bind(server)?;
    let service = build(config, &lifecycle).await?;
    crate::server::serve(service, server.clone(), listeners, lifecycle).await
}

/// rustls needs one process-wide crypto provider when several are compiled in; we use ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Distroless images have no curl: the binary checks itself, on the port that serves `/health`
/// (the admin port when there is one), over HTTPS when the listener speaks it.
fn healthcheck(server: &crate::config::ServerConfig) -> ExitCode {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, server.admin_port.unwrap_or(server.port)));
    let attempt = || -> Result<String, Box<dyn std::error::Error>> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.set_write_timeout(Some(Duration::from_secs(3)))?;
        let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut head = [0u8; 64];
        let read = match &server.tls {
            None => {
                stream.write_all(request)?;
                stream.read(&mut head)?
            }
            Some(tls) => {
                let mut tls = crate::tls::pinned_client(&tls.cert_path, stream)?;
                tls.write_all(request)?;
                tls.read(&mut head)?
            }
        };
        Ok(String::from_utf8_lossy(&head[..read]).into_owned())
    };
    match attempt() {
        Ok(head) if head.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(head) => {
            eprintln!("healthcheck: unexpected answer: {}", head.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthcheck: {address}: {error}");
            ExitCode::FAILURE
        }
    }
}
