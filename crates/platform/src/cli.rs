//! The command line every service binary shares: serve, healthcheck, --print-config, --version.

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
  healthcheck      exit 0 if the local service answers GET /health with 200
  --print-config   print the effective configuration (secrets redacted) and exit
  --version, -V    print the version and exit
  --help, -h       print this help

configuration: embedded defaults, then the TOML file in $QUILLA_CONFIG, then
environment variables QUILLA_<SECTION>__<KEY> (e.g. QUILLA_SERVER__PORT=9000).";

/// Runs a service binary: parses the command line, loads the config and, for `serve`, calls
/// `build` (with secrets resolved) and serves the result until shutdown.
pub fn main<C, B>(name: &'static str, defaults: &'static str, build: B) -> ExitCode
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
            Ok(config) => healthcheck(config.sections().server.port),
            Err(code) => code,
        },
        "serve" => match load::<C>(name, defaults) {
            Ok(config) => serve(name, config, build),
            Err(code) => code,
        },
        other => {
            eprintln!("{name}: unknown command `{other}`\n\n{}", USAGE.replace("{name}", name));
            ExitCode::from(2)
        }
    }
}

fn load<C: ServiceConfig>(name: &str, defaults: &'static str) -> Result<C, ExitCode> {
    config::load(&Sources::from_process(defaults)).map_err(|error| {
        eprintln!("{name}: {error}");
        ExitCode::from(78) // EX_CONFIG
    })
}

fn serve<C, B>(name: &'static str, mut config: C, build: B) -> ExitCode
where
    C: ServiceConfig,
    B: AsyncFnOnce(&C, &Lifecycle) -> anyhow::Result<Service>,
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
        let lifecycle = Lifecycle::new();
        lifecycle.shutdown_on_signals();
        let result = run(&config, lifecycle, build).await;
        tokio::task::spawn_blocking(crate::telemetry::shutdown).await.ok();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "service failed");
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
    let listener = std::net::TcpListener::bind((server.host, server.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", server.host, server.port))?;
    let service = build(config, &lifecycle).await?;
    crate::server::serve(service, server.clone(), listener, lifecycle).await
}

/// rustls needs one process-wide crypto provider when several are compiled in; we use ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Distroless images have no curl: the binary checks itself. Plain HTTP on loopback.
fn healthcheck(port: u16) -> ExitCode {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let attempt = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 64];
        let read = stream.read(&mut head)?;
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
