//! notification-service configuration: platform sections plus webhook verification and paging.

use std::time::Duration;

use platform::Secret;
use platform::auth::AuthConfig;
use platform::config::{
    AwsConfig, ConfigError, DatabaseConfig, Sections, ServerConfig, ServiceConfig, TelemetryConfig,
};
use platform::webhook_signature;
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
    /// Who may call the API (bearer tokens from the trusted issuers); the webhook is HMAC-signed instead.
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub webhook: WebhookConfig,
    pub pagination: PaginationConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub signing_key: Secret,
    /// The key transaction-api signed with before the current one, accepted beside it while a
    /// rotation is under way (docs/runbooks/webhook-key-rotation.md). Empty: only `signing_key`.
    #[serde(default)]
    pub previous_signing_key: Secret,
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

    fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate("auth")?;
        self.database.validate()?;
        webhook_signature::validate_key("webhook.signing_key", &self.webhook.signing_key, true)?;
        webhook_signature::validate_key("webhook.previous_signing_key", &self.webhook.previous_signing_key, false)?;
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

    const KEY: &str = "[webhook]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n";
    /// Appended to every layer: a service needs a trusted issuer to load at all.
    const ISSUER: &str =
        "\n[[auth.issuers]]\nissuer = \"https://issuer.test\"\njwks_url = \"https://issuer.test/jwks\"\n";

    fn with(overrides: &str) -> Result<Config, ConfigError> {
        load(&Sources::overridden(DEFAULTS, format!("{overrides}{ISSUER}")))
    }

    #[test]
    fn defaults_load_once_the_signing_key_is_set() {
        let config = with(KEY).expect("valid");
        assert_eq!(config.server.port, 8080);
        assert_eq!((config.pagination.default_limit, config.pagination.max_limit), (20, 100));
    }

    #[test]
    fn empty_signing_key_and_bad_paging_name_the_key() {
        assert_eq!(with("").expect_err("key required").key, "webhook.signing_key");
        let error = with(&format!("{KEY}[pagination]\ndefault_limit = 500\n")).expect_err("too big");
        assert_eq!(error.key, "pagination.default_limit");
    }

    #[test]
    fn both_webhook_keys_are_held_to_the_same_length_as_transaction_apis() {
        let short = with("[webhook]\nsigning_key = \"k\"\n").expect_err("too short");
        assert_eq!((short.key.as_str(), short.problem.contains("at least 32")), ("webhook.signing_key", true));
        let previous = with(&format!("{KEY}previous_signing_key = \"old\"\n")).expect_err("too short");
        assert_eq!(previous.key, "webhook.previous_signing_key");
        assert!(with(KEY).expect("no previous key").webhook.previous_signing_key.expose().is_empty());
    }
}
