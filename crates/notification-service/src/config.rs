//! notification-service configuration: platform sections plus webhook verification and paging.

use std::time::Duration;

use platform::Secret;
use platform::config::{
    AwsConfig, ConfigError, DatabaseConfig, Sections, ServerConfig, ServiceConfig, TelemetryConfig,
};
use serde::{Deserialize, Serialize};

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
    pub webhook: WebhookConfig,
    pub pagination: PaginationConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub signing_key: Secret,
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaginationConfig {
    pub default_limit: u32,
    pub max_limit: u32,
}

impl ServiceConfig for Config {
    fn sections(&self) -> Sections<'_> {
        Sections { server: &self.server, telemetry: &self.telemetry, aws: &self.aws }
    }

    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        vec![("database.url", &mut self.database.url), ("webhook.signing_key", &mut self.webhook.signing_key)]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        if self.webhook.signing_key.expose().is_empty() {
            return Err(ConfigError::new(
                "webhook.signing_key",
                "is required: set it to the key transaction-api signs events with",
            ));
        }
        if self.webhook.tolerance.is_zero() {
            return Err(ConfigError::new("webhook.tolerance", "must be greater than zero"));
        }
        if self.pagination.max_limit == 0 {
            return Err(ConfigError::new("pagination.max_limit", "must be at least 1"));
        }
        if self.pagination.default_limit == 0 || self.pagination.default_limit > self.pagination.max_limit {
            return Err(ConfigError::new("pagination.default_limit", "must be between 1 and pagination.max_limit"));
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

    #[test]
    fn defaults_load_once_the_signing_key_is_set() {
        let config = with("[webhook]\nsigning_key = \"k\"\n").expect("valid");
        assert_eq!(config.server.port, 8080);
        assert_eq!((config.pagination.default_limit, config.pagination.max_limit), (20, 100));
    }

    #[test]
    fn empty_signing_key_and_bad_paging_name_the_key() {
        assert_eq!(with("").expect_err("key required").key, "webhook.signing_key");
        let error = with("[webhook]\nsigning_key = \"k\"\n[pagination]\ndefault_limit = 500\n").expect_err("too big");
        assert_eq!(error.key, "pagination.default_limit");
    }
}
