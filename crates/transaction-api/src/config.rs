//! transaction-api configuration: platform sections plus transactions, webhook and outbox.

use std::time::Duration;

use platform::Secret;
use platform::client::ClientConfig;
use platform::config::{
    AwsConfig, ConfigError, DatabaseConfig, RedisConfig, Sections, ServerConfig, ServiceConfig, TelemetryConfig,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::Currencies;

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
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub transactions: TransactionsConfig,
    pub webhook: WebhookConfig,
    pub outbox: OutboxConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsConfig {
    #[serde(with = "rust_decimal::serde::str")]
    pub max_amount: Decimal,
    /// ISO 4217 codes accepted besides the default currencies, e.g. fund codes such as `CLF`.
    pub extra_currencies: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a request waits behind a concurrent one holding the same Idempotency-Key
    /// before getting 409.
    #[serde(with = "humantime_serde")]
    pub idempotency_wait: Duration,
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
    pub batch_size: u32,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl ServiceConfig for Config {
    fn sections(&self) -> Sections<'_> {
        Sections { server: &self.server, telemetry: &self.telemetry, aws: &self.aws }
    }

    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        vec![
            ("database.url", &mut self.database.url),
            ("redis.url", &mut self.redis.url),
            ("webhook.signing_key", &mut self.webhook.signing_key),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        if self.transactions.max_amount <= Decimal::ZERO {
            return Err(ConfigError::new("transactions.max_amount", "must be greater than zero"));
        }
        Currencies::new(&self.transactions.extra_currencies)
            .map_err(|e| ConfigError::new("transactions.extra_currencies", e))?;
        if self.webhook.signing_key.expose().is_empty() {
            return Err(ConfigError::new(
                "webhook.signing_key",
                "is required: set it to the key shared with notification-service",
            ));
        }
        if !self.webhook.signing_key.is_reference() && self.webhook.signing_key.expose().len() < 32 {
            return Err(ConfigError::new("webhook.signing_key", "must be at least 32 characters"));
        }
        match url::Url::parse(&self.webhook.url) {
            Ok(url) if url.scheme() == "https" => {}
            Ok(url) if url.scheme() == "http" && self.webhook.client.ca_path.is_none() => {}
            Ok(_) if self.webhook.client.ca_path.is_some() => {
                return Err(ConfigError::new("webhook.url", "must be an https URL when webhook.client.ca_path is set"));
            }
            _ => return Err(ConfigError::new("webhook.url", "must be an http or https URL")),
        }
        self.webhook.client.validate("webhook.client")?;
        if self.outbox.batch_size == 0 {
            return Err(ConfigError::new("outbox.batch_size", "must be at least 1"));
        }
        if self.outbox.max_attempts == 0 {
            return Err(ConfigError::new("outbox.max_attempts", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::config::{Sources, load};

    fn with(overrides: &str) -> Result<Config, ConfigError> {
        load(&Sources::overridden(DEFAULTS, overrides))
    }

    const KEY: &str = "[webhook]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn defaults_load_once_the_signing_key_is_set() {
        let config = with(KEY).expect("valid");
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.transactions.max_amount, Decimal::from(1_000_000_000));
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
