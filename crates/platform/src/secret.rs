//! A credential that cannot be printed by accident: `Debug`, `Display` and `Serialize` all redact it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every redacted secret renders as.
pub const REDACTED: &str = "[REDACTED]";

/// Prefix of a value that names an AWS Secrets Manager entry instead of holding the secret itself:
/// `aws-sm://<secret-id>` or `aws-sm://<secret-id>#<json-key>`.
pub const AWS_SM_SCHEME: &str = "aws-sm://";

/// Prefix of a value that names a file holding the secret (a mounted Kubernetes Secret):
/// `file:///var/run/secrets/quilla/database-url`.
pub const FILE_SCHEME: &str = "file://";

/// A secret config value (password, URL with credentials, signing key).
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    /// The reference the value was read from, once resolved (`file://…`, `aws-sm://…`).
    resolved_from: Option<String>,
}

/// An empty secret: an optional setting that is not set.
impl Default for Secret {
    fn default() -> Self {
        Self::new("")
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self { value: SecretString::from(value.into()), resolved_from: None }
    }

    /// `value`, read from `reference` (which stays known, e.g. to read the file again).
    pub fn resolved(value: impl Into<String>, reference: impl Into<String>) -> Self {
        Self { value: SecretString::from(value.into()), resolved_from: Some(reference.into()) }
    }

    /// The only way to read the value: call sites are easy to audit.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// The reference this value was resolved from, if it was one.
    pub fn resolved_from(&self) -> Option<&str> {
        self.resolved_from.as_deref()
    }

    /// The Secrets Manager reference this value holds, if it is one (`(secret_id, json_key)`).
    pub fn aws_reference(&self) -> Option<(&str, Option<&str>)> {
        let rest = self.expose().strip_prefix(AWS_SM_SCHEME)?;
        Some(match rest.split_once('#') {
            Some((id, key)) => (id, Some(key)),
            None => (rest, None),
        })
    }

    /// The file this value names, if it is a `file://` reference (the path as written).
    pub fn file_reference(&self) -> Option<&str> {
        self.expose().strip_prefix(FILE_SCHEME)
    }

    /// Whether the value names where the secret is rather than holding it.
    pub fn is_reference(&self) -> bool {
        self.aws_reference().is_some() || self.file_reference().is_some()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_reference() {
            // A reference is not itself secret, and showing it helps operators.
            serializer.serialize_str(self.expose())
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_never_show_the_value() {
        let secret = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{secret:?}"), REDACTED);
        let json = serde_json::to_string(&secret).expect("serializes");
        assert!(!json.contains("hunter2"), "{json}");
    }

    #[test]
    fn aws_reference_is_parsed_with_and_without_json_key() {
        assert_eq!(Secret::new("aws-sm://prod/db#password").aws_reference(), Some(("prod/db", Some("password"))));
        assert_eq!(Secret::new("aws-sm://prod/hmac").aws_reference(), Some(("prod/hmac", None)));
        assert_eq!(Secret::new("plain").aws_reference(), None);
    }

    #[test]
    fn file_references_are_shown_but_values_are_not() {
        let reference = Secret::new("file:///var/run/secrets/quilla/database-url");
        assert_eq!(reference.file_reference(), Some("/var/run/secrets/quilla/database-url"));
        assert!(reference.is_reference() && !Secret::new("plain").is_reference());
        let json = serde_json::to_string(&reference).expect("serializes");
        assert_eq!(json, r#""file:///var/run/secrets/quilla/database-url""#);
    }
}
