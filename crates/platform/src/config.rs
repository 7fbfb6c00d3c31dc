//! Layered, typed service configuration: embedded defaults, then optional files, then env vars.
//!
//! Precedence (last wins):
//! 1. the service's `config/default.toml`, compiled into the binary;
//! 2. the TOML files named by `QUILLA_CONFIG`, if set, in order (a `:`-separated list, as `PATH`
//!    is). Kubernetes mounts two from the service's ConfigMap: what every pod shares (the base's
//!    `config.toml`), then what its environment changes (`environment.toml`);
//! 3. environment variables `QUILLA_<SECTION>__<KEY>` (`__` separates nesting levels, e.g.
//!    `QUILLA_DATABASE__MAX_CONNECTIONS=20`). Only names containing `__` are read, so unrelated
//!    `QUILLA_*` variables (such as `QUILLA_CONFIG` itself) never leak into the config.
//!
//! Unknown keys are errors (a misspelt override must not be silently ignored), and every error
//! names the exact key and the source that set it.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Prefix of every environment variable that overrides configuration.
pub const ENV_PREFIX: &str = "QUILLA_";
/// Environment variable naming optional override files (`:`-separated, applied in order).
pub const CONFIG_FILE_ENV: &str = "QUILLA_CONFIG";

/// A configuration problem, always tied to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `database.max_connections`.
    pub key: String,
    /// What is wrong with it, and where the bad value came from when known.
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: `{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The sections every service config has, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub server: &'a ServerConfig,
    pub telemetry: &'a TelemetryConfig,
    pub aws: &'a AwsConfig,
}

/// Implemented by each service's top-level config struct.
pub trait ServiceConfig: DeserializeOwned + Serialize + fmt::Debug + Send + Sync + 'static {
    /// The shared sections the platform reads (listener, logging, AWS).
    fn sections(&self) -> Sections<'_>;
    /// Cross-field checks that types alone cannot express. Default: none.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Where configuration comes from; tests build one explicitly instead of reading the process.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub defaults: &'static str,
    /// Override files, applied in order.
    pub files: Vec<PathBuf>,
    /// Read `QUILLA_*__*` environment variables.
    pub env: bool,
    /// Extra TOML applied last (tests use it to point at their database and ports).
    pub overrides: Option<String>,
}

impl Sources {
    /// Defaults plus one TOML layer, ignoring the process environment (tests and tools).
    pub fn overridden(defaults: &'static str, overrides: impl Into<String>) -> Self {
        Self { defaults, files: Vec::new(), env: false, overrides: Some(overrides.into()) }
    }

    /// The production layering: embedded defaults, `$QUILLA_CONFIG`, environment.
    pub fn from_process(defaults: &'static str) -> Self {
        let files = std::env::var_os(CONFIG_FILE_ENV)
            .map(|list| std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        Self { defaults, files, env: true, overrides: None }
    }
}

/// Loads and validates a service config from its sources.
pub fn load<C: ServiceConfig>(sources: &Sources) -> Result<C, ConfigError> {
    let mut figment = Figment::from(Toml::string(sources.defaults));
    for path in &sources.files {
        if !path.is_file() {
            return Err(ConfigError::new(
                CONFIG_FILE_ENV,
                format!("file {} does not exist or is not a file", path.display()),
            ));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    if sources.env {
        figment = figment.merge(Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__"));
    }
    if let Some(extra) = &sources.overrides {
        figment = figment.merge(Toml::string(extra));
    }
    let config: C = figment.extract().map_err(|e| from_figment(&e))?;
    config.sections().server.validate()?;
    config.validate()?;
    Ok(config)
}

fn from_figment(error: &figment::Error) -> ConfigError {
    let mut path = error.path.clone();
    let problem = match &error.kind {
        figment::error::Kind::MissingField(field) => {
            push_unless_last(&mut path, field);
            "is required but not set".to_owned()
        }
        figment::error::Kind::UnknownField(field, _) => {
            push_unless_last(&mut path, field);
            "is not a known setting".to_owned()
        }
        other => other.to_string(),
    };
    let origin = error.metadata.as_ref().map(|metadata| match &metadata.source {
        _ if metadata.name.contains("environment") => {
            format!("environment variable {ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
        }
        Some(source) => format!("{} ({source})", metadata.name),
        None => metadata.name.to_string(),
    });
    let key = if path.is_empty() { "<root>".to_owned() } else { path.join(".") };
    match origin {
        Some(origin) => ConfigError::new(key, format!("{problem} (from {origin})")),
        None => ConfigError::new(key, problem),
    }
}

fn push_unless_last(path: &mut Vec<String>, field: &str) {
    if path.last().map(String::as_str) != Some(field) {
        path.push(field.to_owned());
    }
}

/// Renders the effective config as TOML with every secret redacted (`--print-config`).
pub fn render_redacted<C: ServiceConfig>(config: &C) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

/// The smallest `server.max_header_bytes`: hyper refuses a smaller read buffer
/// (`MINIMUM_MAX_BUFFER_SIZE` in hyper 1's `proto/h1/io.rs`; `max_buf_size` panics below it).
pub const MIN_HEADER_BYTES: usize = 8192;

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: IpAddr,
    /// The API listener.
    pub port: u16,
    /// When set, `/health`, `/ready`, `/metrics` and `/openapi.json` are served on this port
    /// only, never on `port`, so the internet-facing route to the API cannot reach them. Unset,
    /// they share the API listener (local runs and tests). Images set it (nix/image.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_port: Option<u16>,
    /// A request that takes longer is answered 503 and its work is cancelled.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// After SIGTERM, `/ready` answers 503 for this long so load balancers stop routing here.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the drain delay, in-flight requests get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A connection must deliver a complete request head within this: from its accept (TLS
    /// handshake included) for its first request, from the request's first byte for later ones.
    /// Slower connections are closed (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and nothing received for this long is closed,
    /// as is one that moves no byte in either direction for this long mid-request (a client
    /// that stops reading its response). Longer than the ALB's idle timeout (60 s), so that the
    /// ALB closes its idle connections first and never sends a request on one we are closing.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections each listener (API, admin) serves at once. Beyond it, new connections wait in
    /// the kernel's accept queue until one closes; none is refused.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; larger get 431 (HTTP/2 too, as
    /// h2 answers an oversized header list). At least 8192, hyper's smallest read buffer.
    pub max_header_bytes: usize,
    /// Per-instance request rate of the API listener: the service's routes and the 404/405
    /// answers to everything else. Not the probes and `/metrics` (`admin_rate_limit`).
    pub rate_limit: crate::rate_limit::RateLimitConfig,
    /// A separate, generous bucket for the probe and metrics routes that do work, `/ready` (a
    /// PostgreSQL and a Redis round trip) and `/metrics` (renders every series). `/health`, the
    /// liveness probe, is never limited.
    pub admin_rate_limit: crate::rate_limit::RateLimitConfig,
    /// Serve HTTPS when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.request_timeout.is_zero() {
            return Err(ConfigError::new("server.request_timeout", "must be greater than zero"));
        }
        if self.body_limit_bytes == 0 {
            return Err(ConfigError::new("server.body_limit_bytes", "must be greater than zero"));
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::new("server.header_read_timeout", "must be greater than zero"));
        }
        if self.idle_timeout < self.request_timeout {
            return Err(ConfigError::new(
                "server.idle_timeout",
                format!(
                    "must be at least server.request_timeout ({:?}): a handler may work that long without a byte moving",
                    self.request_timeout
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("server.max_connections", "must be at least 1"));
        }
        if !(MIN_HEADER_BYTES..=u32::MAX as usize).contains(&self.max_header_bytes) {
            return Err(ConfigError::new(
                "server.max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES} (hyper's smallest read buffer) and fit in 32 bits"),
            ));
        }
        if self.admin_port.is_some_and(|admin| admin == self.port && admin != 0) {
            return Err(ConfigError::new("server.admin_port", format!("must differ from server.port ({})", self.port)));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("server.tls.cert_path", &tls.cert_path), ("server.tls.key_path", &tls.key_path)] {
                if !path.is_file() {
                    return Err(ConfigError::new(key, format!("file {} does not exist", path.display())));
                }
            }
        }
        Ok(())
    }
}

/// PEM files for the optional HTTPS listeners (API and admin). Both files are re-read
/// periodically, so a certificate renewed in place (cert-manager rewrites the mounted Secret)
/// is served without a restart.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Log format: JSON lines in clusters, human-readable locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Logging and tracing settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info,sqlx=warn`.
    pub log_level: String,
    /// OTLP/HTTP collector base URL (e.g. `http://otel-collector.observability:4318`); traces are
    /// exported to `<url>/v1/traces` when set, and not at all otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// AWS settings for Secrets Manager references.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The region whose Secrets Manager `aws-sm://` references read. No default: a binary that
    /// guessed one would read another country's secrets when an environment forgot to set it,
    /// so a reference without it is a startup error, and `cargo xtask validate` requires every
    /// environment to set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Custom endpoint (an emulator in tests); empty means the real AWS endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
}

/// PostgreSQL connection settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret,
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; clusters use `verify-full`.
    pub ssl_mode: SslMode,
    /// PEM bundle of the CAs that may sign the server's certificate (the region's RDS bundle in
    /// clusters). Required by `verify-ca` and `verify-full`; the file must exist when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<PathBuf>,
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Per-statement timeout enforced by PostgreSQL.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Run embedded migrations at startup.
    pub migrate_on_start: bool,
}

impl DatabaseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::new("database.max_connections", "must be at least 1"));
        }
        if self.min_connections > self.max_connections {
            return Err(ConfigError::new("database.min_connections", "must not exceed database.max_connections"));
        }
        match &self.ssl_root_cert {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::new(
                    "database.ssl_root_cert",
                    format!("file {} does not exist", path.display()),
                ));
            }
            // sqlx would otherwise check the server against its compiled-in public roots, which
            // RDS's CAs are not among: name the bundle explicitly (docs/adr/0008).
            None if matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(ConfigError::new(
                    "database.ssl_root_cert",
                    "is required with ssl_mode verify-ca or verify-full: the PEM bundle of the CAs that sign the server's certificate",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// PostgreSQL TLS mode, as libpq names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Redis connection and cache settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Secret,
    pub pool_size: usize,
    /// Budget for one cache operation; slower counts as a failure and falls back to PostgreSQL.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Consecutive failures that open the circuit.
    pub breaker_failure_threshold: u32,
    /// How long the circuit stays open before one trial call.
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;
    use proptest::prelude::*;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        server: ServerConfig,
        telemetry: TelemetryConfig,
        aws: AwsConfig,
        database: DatabaseConfig,
    }

    impl ServiceConfig for TestConfig {
        fn sections(&self) -> Sections<'_> {
            Sections { server: &self.server, telemetry: &self.telemetry, aws: &self.aws }
        }
        fn validate(&self) -> Result<(), ConfigError> {
            self.database.validate()
        }
    }

    const DEFAULTS: &str = r#"
        [server]
        host = "0.0.0.0"
        port = 8000
        request_timeout = "5s"
        body_limit_bytes = 1024
        drain_delay = "1s"
        shutdown_grace = "2s"
        header_read_timeout = "10s"
        idle_timeout = "75s"
        max_connections = 64
        max_header_bytes = 16384
        rate_limit = { requests_per_second = 0, burst = 1 }
        admin_rate_limit = { requests_per_second = 0, burst = 1 }
        [telemetry]
        log_format = "json"
        log_level = "info"
        [aws]
        region = "eu-south-2"
        [database]
        url = "postgres://app:s3cr3t-password@db:5432/quilla"
        ssl_mode = "require"
        max_connections = 5
        min_connections = 0
        acquire_timeout = "1s"
        statement_timeout = "1s"
        migrate_on_start = true
    "#;

    fn load_in(jail: &Jail, file: Option<&str>) -> Result<TestConfig, ConfigError> {
        let file = file.map(|name| jail.directory().join(name));
        load(&Sources { defaults: DEFAULTS, files: file.into_iter().collect(), env: true, overrides: None })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The last layer that sets a key wins: defaults < file < environment.
        #[test]
        fn later_layers_override_earlier_ones(file_port in prop::option::of(1u16..), env_port in prop::option::of(1u16..), env_pool in prop::option::of(1u32..100)) {
            Jail::expect_with(|jail| {
                let mut file = None;
                if let Some(port) = file_port {
                    jail.create_file("override.toml", &format!("[server]\nport = {port}\n"))?;
                    file = Some("override.toml");
                }
                if let Some(port) = env_port {
                    jail.set_env("QUILLA_SERVER__PORT", port.to_string());
                }
                if let Some(pool) = env_pool {
                    jail.set_env("QUILLA_DATABASE__MAX_CONNECTIONS", pool.to_string());
                }
                let config = load_in(jail, file).map_err(|e| e.to_string())?;
                let expected_port = env_port.or(file_port).unwrap_or(8000);
                assert_eq!(config.server.port, expected_port);
                assert_eq!(config.database.max_connections, env_pool.unwrap_or(5));
                assert_eq!(config.aws.region.as_deref(), Some("eu-south-2"), "untouched keys keep their default");
                Ok(())
            });
        }
    }

    #[test]
    fn bad_env_value_names_the_key_and_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("QUILLA_SERVER__PORT", "eighty");
            let error = load_in(jail, None).expect_err("not a port");
            assert_eq!(error.key, "server.port");
            assert!(error.problem.contains("QUILLA_SERVER__PORT"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unknown_env_key_is_an_error_but_unrelated_variables_are_ignored() {
        Jail::expect_with(|jail| {
            jail.set_env("QUILLA_TEST_DATABASE_URL", "postgres://elsewhere");
            jail.set_env("QUILLA_CONFIG_UNUSED", "x");
            load_in(jail, None).expect("variables without `__` are not config keys");
            jail.set_env("QUILLA_SERVER__PROT", "9000");
            let error = load_in(jail, None).expect_err("typo");
            assert_eq!(error.key, "server.prot");
            Ok(())
        });
    }

    #[test]
    fn config_files_apply_in_the_order_listed_and_each_keeps_what_the_next_does_not_set() {
        Jail::expect_with(|jail| {
            jail.create_file("base.toml", "[server]\nport = 8100\nbody_limit_bytes = 2048\n")?;
            jail.create_file("environment.toml", "[server]\nport = 8200\n")?;
            jail.set_env(CONFIG_FILE_ENV, "base.toml:environment.toml");
            let config: TestConfig = load(&Sources::from_process(DEFAULTS)).map_err(|e| e.to_string())?;
            assert_eq!(config.server.port, 8200, "the later file wins");
            assert_eq!(config.server.body_limit_bytes, 2048, "the earlier file's other keys stay");
            jail.set_env(CONFIG_FILE_ENV, "base.toml:absent.toml");
            let error = load::<TestConfig>(&Sources::from_process(DEFAULTS)).expect_err("a listed file is missing");
            assert!(error.key == CONFIG_FILE_ENV && error.problem.contains("absent.toml"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_and_cross_field_errors_name_the_key() {
        Jail::expect_with(|jail| {
            let error = load_in(jail, Some("absent.toml")).expect_err("missing file");
            assert_eq!(error.key, CONFIG_FILE_ENV);
            jail.set_env("QUILLA_DATABASE__MIN_CONNECTIONS", "50");
            let error = load_in(jail, None).expect_err("min > max");
            assert_eq!(error.key, "database.min_connections");
            Ok(())
        });
    }

    #[test]
    fn debug_and_printed_config_never_contain_secrets() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, None).expect("valid");
            let debug = format!("{config:?}");
            let printed = render_redacted(&config);
            for text in [&debug, &printed] {
                assert!(!text.contains("s3cr3t-password"), "{text}");
            }
            assert!(printed.contains("[REDACTED]") && printed.contains("port = 8000"), "{printed}");
            Ok(())
        });
    }

    #[test]
    fn connection_limits_are_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("QUILLA_SERVER__IDLE_TIMEOUT", "1s");
            let error = load_in(jail, None).expect_err("idle shorter than a request may take");
            assert_eq!(error.key, "server.idle_timeout", "{error}");
            jail.set_env("QUILLA_SERVER__IDLE_TIMEOUT", "75s");
            jail.set_env("QUILLA_SERVER__MAX_HEADER_BYTES", "4096");
            let error = load_in(jail, None).expect_err("below hyper's minimum buffer");
            assert_eq!(error.key, "server.max_header_bytes", "{error}");
            jail.set_env("QUILLA_SERVER__MAX_HEADER_BYTES", "8192");
            jail.set_env("QUILLA_SERVER__MAX_CONNECTIONS", "0");
            assert_eq!(load_in(jail, None).expect_err("no connection at all").key, "server.max_connections");
            jail.set_env("QUILLA_SERVER__MAX_CONNECTIONS", "1");
            jail.set_env("QUILLA_SERVER__HEADER_READ_TIMEOUT", "0s");
            assert_eq!(load_in(jail, None).expect_err("no time for a head").key, "server.header_read_timeout");
            jail.set_env("QUILLA_SERVER__HEADER_READ_TIMEOUT", "1s");
            load_in(jail, None).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn verified_database_tls_needs_an_existing_ca_bundle() {
        Jail::expect_with(|jail| {
            jail.set_env("QUILLA_DATABASE__SSL_MODE", "verify-full");
            let error = load_in(jail, None).expect_err("verify-full without a bundle");
            assert_eq!(error.key, "database.ssl_root_cert", "{error}");
            let absent = jail.directory().join("absent.pem");
            jail.set_env("QUILLA_DATABASE__SSL_ROOT_CERT", absent.display().to_string());
            let error = load_in(jail, None).expect_err("a bundle that does not exist");
            assert_eq!(error.key, "database.ssl_root_cert");
            assert!(error.problem.contains("absent.pem"), "{error}");
            jail.create_file("rds-ca.pem", "-----BEGIN CERTIFICATE-----\n")?;
            jail.set_env("QUILLA_DATABASE__SSL_ROOT_CERT", jail.directory().join("rds-ca.pem").display().to_string());
            for mode in ["verify-full", "verify-ca"] {
                jail.set_env("QUILLA_DATABASE__SSL_MODE", mode);
                let config = load_in(jail, None).map_err(|e| e.to_string())?;
                assert!(config.database.ssl_root_cert.is_some_and(|path| path.ends_with("rds-ca.pem")));
            }
            Ok(())
        });
    }
}
