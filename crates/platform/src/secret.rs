//! A credential that cannot be printed by accident: `Debug`, `Display` and `Serialize` all redact it.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, OnceLock};

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

/// A secret config value (password, URL with credentials, signing key), or a reference naming
/// where it is until the reference is resolved at startup (crate::secret_references).
///
/// Clones share the resolution: a reference resolved once is resolved in every copy of the
/// config, which is how resolution reaches every `Secret` without a list of where they are.
#[derive(Clone)]
pub struct Secret {
    /// As configured: the secret itself, or a reference to it.
    value: SecretString,
    /// The value a reference named, once read.
    resolved: Arc<OnceLock<SecretString>>,
}

/// An empty secret: an optional setting that is not set.
impl Default for Secret {
    fn default() -> Self {
        Self::new("")
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self { value: SecretString::from(value.into()), resolved: Arc::default() }
    }

    /// `value`, read from `reference` (which stays known, e.g. to read the file again).
    pub fn resolved(value: impl Into<String>, reference: impl Into<String>) -> Self {
        let secret = Self::new(reference);
        secret.resolve_to(value.into());
        secret
    }

    /// Records what this reference names, in this secret and every clone of it. A secret
    /// resolves once: later calls change nothing.
    pub(crate) fn resolve_to(&self, value: String) {
        let _ = self.resolved.set(SecretString::from(value));
    }

    /// The only way to read the value: call sites are easy to audit.
    pub fn expose(&self) -> &str {
        self.resolved.get().unwrap_or(&self.value).expose_secret()
    }

    /// The reference this value was resolved from, if it was one.
    pub fn resolved_from(&self) -> Option<&str> {
        self.resolved.get().map(|_| self.value.expose_secret())
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
        if let Some(marker) = FOUND.with(|found| found.borrow_mut().as_mut().map(|found| found.mark(self))) {
            return serializer.serialize_str(&marker);
        }
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

/// Starts every marker [`find_all`] has a `Secret` write in its place.
const MARKER: &str = "\u{0}quilla-secret#";

/// The secrets met while [`find_all`] serialises a value, on this thread.
struct Found(Vec<Secret>);

impl Found {
    fn mark(&mut self, secret: &Secret) -> String {
        self.0.push(secret.clone());
        format!("{MARKER}{}", self.0.len() - 1)
    }
}

thread_local! {
    static FOUND: RefCell<Option<Found>> = const { RefCell::new(None) };
}

/// Ends the search on this thread even if serialising panics.
struct Searching;

impl Drop for Searching {
    fn drop(&mut self) {
        FOUND.with(|found| found.borrow_mut().take());
    }
}

/// Every `Secret` in `value`, wherever it is, with its dotted key (`database.url`,
/// `auth.issuers.0.key`). Serialises `value` once with each secret replaced by a marker: what
/// serde sees is all there is, so a secret cannot be left out by forgetting to list it.
pub(crate) fn find_all<T: Serialize + ?Sized>(value: &T) -> Result<Vec<(String, Secret)>, serde_json::Error> {
    let searching = Searching;
    FOUND.with(|found| *found.borrow_mut() = Some(Found(Vec::new())));
    let tree = serde_json::to_value(value);
    let secrets = FOUND.with(|found| found.borrow_mut().take()).map(|found| found.0).unwrap_or_default();
    drop(searching);
    let mut located = Vec::new();
    for_each_string(&tree?, &mut String::new(), &mut |key, text| {
        let index = text.strip_prefix(MARKER).and_then(|index| index.parse::<usize>().ok());
        if let Some(secret) = index.and_then(|index| secrets.get(index)) {
            located.push((key.to_owned(), secret.clone()));
        }
    });
    Ok(located)
}

/// Calls `visit` with the dotted key and text of every string in `tree`.
pub(crate) fn for_each_string(tree: &serde_json::Value, key: &mut String, visit: &mut impl FnMut(&str, &str)) {
    let mut descend = |key: &mut String, name: &str, child: &serde_json::Value| {
        let length = key.len();
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(name);
        for_each_string(child, key, visit);
        key.truncate(length);
    };
    match tree {
        serde_json::Value::String(text) => visit(key, text),
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                descend(key, &index.to_string(), item);
            }
        }
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                descend(key, name, field);
            }
        }
        _ => {}
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

    #[derive(Serialize)]
    struct Nested {
        plain: String,
        url: Secret,
        issuers: Vec<Issuer>,
        absent: Option<Secret>,
    }

    #[derive(Serialize)]
    struct Issuer {
        key: Secret,
    }

    #[test]
    fn every_secret_is_found_with_its_key_wherever_it_is() {
        let config = Nested {
            plain: "aws-sm://not/a/secret/field".to_owned(),
            url: Secret::new("postgres://app:pw@db/quilla"),
            issuers: vec![Issuer { key: Secret::new("aws-sm://one") }, Issuer { key: Secret::new("file:///two") }],
            absent: None,
        };
        let mut found: Vec<(String, String)> =
            find_all(&config).expect("serialises").into_iter().map(|(k, s)| (k, s.expose().to_owned())).collect();
        found.sort();
        let expected = [
            ("issuers.0.key", "aws-sm://one"),
            ("issuers.1.key", "file:///two"),
            ("url", "postgres://app:pw@db/quilla"),
        ];
        assert_eq!(found, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
        let shown = serde_json::to_string(&config).expect("serialises");
        assert!(!shown.contains(MARKER) && shown.contains(REDACTED), "the search leaves no trace: {shown}");
    }

    #[test]
    fn resolving_a_found_secret_resolves_it_in_the_config() {
        let config = Issuer { key: Secret::new("file:///run/key") };
        let (_, found) = find_all(&config).expect("serialises").pop().expect("one secret");
        found.resolve_to("the-value".to_owned());
        assert_eq!(config.key.expose(), "the-value");
        assert_eq!(config.key.resolved_from(), Some("file:///run/key"));
        assert!(!config.key.is_reference());
        assert_eq!(serde_json::to_string(&config).expect("serialises"), format!(r#"{{"key":"{REDACTED}"}}"#));
    }
}
