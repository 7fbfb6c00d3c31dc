//! transaction-api configuration: platform sections plus transactions, webhook, outbox and retention.

use std::time::Duration;

use platform::Secret;
use platform::auth::AuthConfig;
use platform::cache::MemoryCacheConfig;
use platform::client::ClientConfig;
use platform::config::{
    AwsConfig, ConfigError, DatabaseConfig, RedisConfig, Sections, ServerConfig, ServiceConfig, TelemetryConfig,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, de};

use crate::money::{Currencies, column_max, parse_amount};
use crate::{AMOUNT_PRECISION, AMOUNT_SCALE};

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    /// Optional as a section: `aws.region` has no default (see AwsConfig).
    #[serde(default)]
    pub aws: AwsConfig,
    /// Who may call the API (bearer tokens from the trusted issuers).
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    /// The in-process layer in front of Redis (platform::cache).
    pub memory_cache: MemoryCacheConfig,
    pub transactions: TransactionsConfig,
    pub webhook: WebhookConfig,
    pub outbox: OutboxConfig,
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsConfig {
    /// Parsed as strictly as API amounts (crate::money), and bounded by the amount column.
    #[serde(deserialize_with = "exact_decimal", serialize_with = "rust_decimal::serde::str::serialize")]
    pub max_amount: Decimal,
    /// ISO 4217 codes accepted besides the default currencies, e.g. fund codes such as `CLF`.
    pub extra_currencies: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a request waits behind a concurrent one holding the same Idempotency-Key
    /// before getting 409.
    #[serde(with = "humantime_serde")]
    pub idempotency_wait: Duration,
    /// How long an Idempotency-Key answers with its first transaction; past it the key is free
    /// again. At least as long as any client keeps retrying one request, or a late retry creates
    /// a second transaction.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub signing_key: Secret,
    pub client: ClientConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claimed event is this replica's to deliver; past it, another may claim it.
    /// Must outlast one delivery with all its in-call retries (checked at load).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub batch_size: u32,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

/// The retention job (crate::retention): what it deletes, how often, and how much per statement.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often each replica runs the job.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Delivered outbox events are deleted once delivered this long ago. Pending events and dead
    /// letters are never deleted.
    #[serde(with = "humantime_serde")]
    pub delivered_events: Duration,
    /// Rows deleted (and locked) by one statement.
    pub batch_size: u32,
}

impl RetentionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::new("retention.interval", "must be longer than zero"));
        }
        if self.delivered_events.is_zero() {
            return Err(ConfigError::new(
                "retention.delivered_events",
                "must be longer than zero: zero would delete each event as soon as it is delivered",
            ));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::new("retention.batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

impl TransactionsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let max = self.max_amount;
        let column = format!("the amount column is numeric({AMOUNT_PRECISION}, {AMOUNT_SCALE})");
        if max <= Decimal::ZERO {
            return Err(ConfigError::new("transactions.max_amount", "must be greater than zero"));
        }
        if max > column_max() {
            return Err(ConfigError::new(
                "transactions.max_amount",
                format!("must be at most {}: {column}", column_max()),
            ));
        }
        if max.normalize().scale() > AMOUNT_SCALE {
            return Err(ConfigError::new(
                "transactions.max_amount",
                format!("must have at most {AMOUNT_SCALE} decimal places: {column}"),
            ));
        }
        Currencies::new(&self.extra_currencies).map_err(|e| ConfigError::new("transactions.extra_currencies", e))?;
        if self.idempotency_ttl.is_zero() {
            return Err(ConfigError::new(
                "transactions.idempotency_ttl",
                "must be longer than zero, and at least as long as clients retry a request",
            ));
        }
        Ok(())
    }
}

/// A decimal from a string in the API's strict amount syntax (crate::money::parse_amount), or
/// from an integer. A float is refused: TOML and environment floats are binary, so inexact.
fn exact_decimal<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    struct Exact;
    impl de::Visitor<'_> for Exact {
        type Value = Decimal;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a decimal string such as \"1000000000\" or \"2500.50\"")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Decimal, E> {
            let amount = parse_amount(text).map_err(|e| E::custom(format!("`{text}` {e}")))?;
            amount.exact().ok_or_else(|| E::custom(format!("`{text}` is far beyond what the amount column holds")))
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(n))
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(n))
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Decimal, E> {
            Err(E::custom(format!(
                "{n} is a float, which may not be exact: write the amount as a string, e.g. \"{n}\" \
                 (in an environment variable, with the quotes)"
            )))
        }
    }
    deserializer.deserialize_any(Exact)
}

impl ServiceConfig for Config {
    fn sections(&self) -> Sections<'_> {
        Sections { server: &self.server, telemetry: &self.telemetry, aws: &self.aws }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate("auth")?;
        self.database.validate()?;
        self.memory_cache.validate("memory_cache")?;
        self.transactions.validate()?;
        platform::webhook_signature::validate_key("webhook.signing_key", &self.webhook.signing_key, true)?;
        match url::Url::parse(&self.webhook.url) {
            Ok(url) if url.scheme() == "https" => {}
            Ok(url) if url.scheme() == "http" && self.webhook.client.ca_path.is_none() => {}
            Ok(_) if self.webhook.client.ca_path.is_some() => {
                return Err(ConfigError::new("webhook.url", "must be an https URL when webhook.client.ca_path is set"));
            }
            _ => return Err(ConfigError::new("webhook.url", "must be an http or https URL")),
        }
        self.webhook.client.validate("webhook.client")?;
        let client = &self.webhook.client;
        let attempts = client.max_attempts.max(1);
        let worst_delivery = client.timeout * attempts + client.backoff_max * (attempts - 1);
        if self.outbox.lease <= worst_delivery {
            return Err(ConfigError::new(
                "outbox.lease",
                format!(
                    "must be longer than one delivery with its retries ({worst_delivery:?}: webhook.client.timeout × \
                     max_attempts + backoff_max × retries), or a slow delivery could be sent twice at once"
                ),
            ));
        }
        if self.outbox.batch_size == 0 {
            return Err(ConfigError::new("outbox.batch_size", "must be at least 1"));
        }
        if self.outbox.max_attempts == 0 {
            return Err(ConfigError::new("outbox.max_attempts", "must be at least 1"));
        }
        self.retention.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::config::{Sources, load};

    fn with(overrides: &str) -> Result<Config, ConfigError> {
        load(&Sources::overridden(DEFAULTS, format!("{overrides}{ISSUER}")))
    }

    const KEY: &str = "[webhook]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n";
    /// Appended to every layer: a service needs a trusted issuer to load at all.
    const ISSUER: &str =
        "\n[[auth.issuers]]\nissuer = \"https://issuer.test\"\njwks_url = \"https://issuer.test/jwks\"\n";

    #[test]
    fn defaults_load_once_the_signing_key_is_set() {
        let config = with(KEY).expect("valid");
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.transactions.max_amount, Decimal::from(1_000_000_000));
    }

    #[test]
    fn no_trusted_issuer_names_auth_issuers() {
        let error = load::<Config>(&Sources::overridden(DEFAULTS, KEY)).expect_err("issuers required");
        assert_eq!(error.key, "auth.issuers");
    }

    #[test]
    fn a_lease_shorter_than_one_delivery_with_its_retries_names_outbox_lease() {
        let error = with(&format!("{KEY}[outbox]\nlease = \"4s\"\n")).expect_err("2 × 2 s + 500 ms > 4 s");
        assert_eq!(error.key, "outbox.lease");
        with(&format!("{KEY}[outbox]\nlease = \"5s\"\n")).expect("longer than 4.5 s");
    }

    #[test]
    fn the_memory_cache_defaults_to_16_mib_for_ten_minutes_and_checks_its_ttl() {
        let memory = with(KEY).expect("defaults").memory_cache;
        assert_eq!((memory.max_bytes, memory.ttl), (16 * 1024 * 1024, Duration::from_secs(600)));
        let error = with(&format!("{KEY}[memory_cache]\nttl = \"0s\"\n")).expect_err("zero");
        assert_eq!(error.key, "memory_cache.ttl", "{error}");
        let off = with(&format!("{KEY}[memory_cache]\nmax_bytes = 0\n")).expect("0 turns it off");
        assert_eq!(off.memory_cache.max_bytes, 0);
    }

    #[test]
    fn missing_signing_key_names_the_key() {
        let error = with("").expect_err("signing key is required");
        assert_eq!(error.key, "webhook.signing_key");
    }

    #[test]
    fn wrong_types_and_unknown_keys_name_the_key() {
        let error = with(&format!("{KEY}[server]\nport = \"eighty\"\n")).expect_err("port must be a number");
        assert_eq!(error.key, "server.port", "{error}");
        let error = with(&format!("{KEY}[outbox]\nmax_attempts = 3\nmax_atempts = 4\n")).expect_err("typo");
        assert_eq!(error.key, "outbox.max_atempts", "{error}");
        let error = with(&format!("{KEY}[transactions]\nmax_amount = \"lots\"\n")).expect_err("not a decimal");
        assert_eq!(error.key, "transactions.max_amount", "{error}");
    }

    fn max_amount(value: &str) -> Result<Decimal, ConfigError> {
        with(&format!("{KEY}[transactions]\nmax_amount = {value}\n")).map(|c| c.transactions.max_amount)
    }

    #[test]
    fn max_amount_is_exact_and_within_the_amount_column() {
        for (value, expected) in [
            ("\"99999999999999999999.9999\"", "99999999999999999999.9999"),
            ("\"2500.50\"", "2500.50"),
            ("\"2500.500000\"", "2500.5"),
            ("\"1e6\"", "1000000"),
            ("5000", "5000"),
            ("\"0.0001\"", "0.0001"),
        ] {
            let expected: Decimal = expected.parse().expect("decimal");
            assert_eq!(max_amount(value), Ok(expected), "{value}");
        }
        for (value, hint) in [
            ("\"0\"", "greater than zero"),
            ("\"-5\"", "greater than zero"),
            ("-5", "greater than zero"),
            ("\"100000000000000000000\"", "at most 99999999999999999999.9999"),
            ("\"1e25\"", "at most 99999999999999999999.9999"),
            ("\"1e60\"", "far beyond"),
            ("\"1000.00001\"", "at most 4 decimal places"),
            ("\"1_000\"", "decimal number"),
            ("\" 1000\"", "decimal number"),
            ("\"+1000\"", "decimal number"),
            ("\"NaN\"", "decimal number"),
            ("\"99999999999999999999.99999\"", "at most 24 digits"),
            ("1000.5", "float"),
        ] {
            let error = max_amount(value).expect_err(value);
            assert_eq!(error.key, "transactions.max_amount", "{value}: {error}");
            assert!(error.problem.contains(hint), "{value}: {error}");
        }
    }

    #[test]
    fn idempotency_ttl_defaults_to_a_day_and_must_be_longer_than_zero() {
        assert_eq!(with(KEY).expect("defaults").transactions.idempotency_ttl, Duration::from_secs(24 * 60 * 60));
        let config = with(&format!("{KEY}[transactions]\nidempotency_ttl = \"90m\"\n")).expect("90 minutes");
        assert_eq!(config.transactions.idempotency_ttl, Duration::from_secs(90 * 60));
        let error = with(&format!("{KEY}[transactions]\nidempotency_ttl = \"0s\"\n")).expect_err("zero");
        assert_eq!(error.key, "transactions.idempotency_ttl", "{error}");
        let error = with(&format!("{KEY}[transactions]\nidempotency_ttl = \"a day\"\n")).expect_err("not a duration");
        assert_eq!(error.key, "transactions.idempotency_ttl", "{error}");
    }

    #[test]
    fn retention_defaults_and_each_key_must_be_non_zero() {
        let retention = with(KEY).expect("defaults").retention;
        assert_eq!(retention.interval, Duration::from_secs(60 * 60));
        assert_eq!(retention.delivered_events, Duration::from_secs(7 * 24 * 60 * 60));
        assert_eq!(retention.batch_size, 1000);
        for (key, zero) in [("interval", "\"0s\""), ("delivered_events", "\"0s\""), ("batch_size", "0")] {
            let error = with(&format!("{KEY}[retention]\n{key} = {zero}\n")).expect_err(key);
            assert_eq!(error.key, format!("retention.{key}"), "{error}");
        }
        let error = with(&format!("{KEY}[retention]\ndelivered_event = \"1d\"\n")).expect_err("typo");
        assert_eq!(error.key, "retention.delivered_event", "{error}");
        let config =
            with(&format!("{KEY}[retention]\ninterval = \"5m\"\ndelivered_events = \"30d\"\nbatch_size = 1\n"))
                .expect("all non-zero");
        assert_eq!(config.retention.delivered_events, Duration::from_secs(30 * 24 * 60 * 60));
        assert_eq!(config.retention.batch_size, 1);
    }

    #[test]
    fn extra_currencies_must_be_iso_codes_with_minor_units() {
        let extra = |list: &str| with(&format!("{KEY}[transactions]\nextra_currencies = {list}\n"));
        assert_eq!(with(KEY).expect("defaults").transactions.extra_currencies, Vec::<String>::new());
        assert_eq!(extra("[\"CLF\", \"MXV\"]").expect("fund codes").transactions.extra_currencies, ["CLF", "MXV"]);
        for list in ["[\"XAU\"]", "[\"clf\"]", "[\"ABC\"]", "[\"CLF\", \"XXX\"]"] {
            let error = extra(list).expect_err(list);
            assert_eq!(error.key, "transactions.extra_currencies", "{list}: {error}");
        }
    }
}
