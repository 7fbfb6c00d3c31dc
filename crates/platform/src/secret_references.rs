//! Resolves secret references in config values once, at startup: `file://<path>` from a mounted file,
//! `aws-sm://<secret-id>[#json-key]` from AWS Secrets Manager.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region};

use crate::config::{AwsConfig, ConfigError, ServiceConfig};
use crate::secret::{AWS_SM_SCHEME, FILE_SCHEME};

/// Replaces every secret reference in `config` with the value it names, then validates the
/// configuration again, now with the real values.
///
/// Every `Secret` is found by serialising the config (crate::secret::find_all), so none can be
/// missed; afterwards no setting may still hold a reference (a plain-text setting given one
/// would otherwise keep its `aws-sm://…` text and, for a key, pass its length check). Each secret
/// id is fetched once even when several keys point into the same JSON document. Errors name the
/// config key, never the secret value.
pub async fn resolve_references<C: ServiceConfig>(config: &mut C) -> Result<(), ConfigError> {
    let aws = config.sections().aws.clone();
    let mut client = None;
    let mut fetched: HashMap<String, String> = HashMap::new();
    let secrets = crate::secret::find_all(&*config)
        .map_err(|error| ConfigError::new("<root>", format!("cannot walk the configuration: {error}")))?;
    for (key, secret) in secrets {
        if let Some(path) = secret.file_reference() {
            let value = read_secret_file(path).map_err(|problem| ConfigError::new(&key, problem))?;
            secret.resolve_to(value);
            continue;
        }
        let Some((secret_id, json_key)) = secret.aws_reference() else { continue };
        let (secret_id, json_key) = (secret_id.to_owned(), json_key.map(str::to_owned));
        let client = match &client {
            Some(c) => c,
            None => {
                let Some(region) = aws.region.as_deref() else {
                    return Err(ConfigError::new(
                        "aws.region",
                        format!(
                            "is required to resolve `{key}`'s aws-sm:// reference: set the environment's AWS region"
                        ),
                    ));
                };
                client.insert(secrets_manager_client(region, &aws).await)
            }
        };
        if !fetched.contains_key(&secret_id) {
            let value = fetch(client, &secret_id).await.map_err(|problem| ConfigError::new(&key, problem))?;
            fetched.insert(secret_id.clone(), value);
        }
        let document = &fetched[&secret_id];
        let value = match json_key {
            None => document.clone(),
            Some(field) => extract_field(document, &field).map_err(|problem| ConfigError::new(&key, problem))?,
        };
        secret.resolve_to(value);
    }
    if let Some(error) = unresolved_reference(&*config) {
        return Err(error);
    }
    config.validate()
}

/// The first setting that still holds a `file://` or `aws-sm://` reference, as an error naming it.
/// A resolved secret serialises redacted, an unresolved one as its reference, and every other
/// setting as itself, so this sees the whole config.
fn unresolved_reference(config: &impl serde::Serialize) -> Option<ConfigError> {
    let tree = match serde_json::to_value(config) {
        Ok(tree) => tree,
        Err(error) => return Some(ConfigError::new("<root>", format!("cannot walk the configuration: {error}"))),
    };
    let mut unresolved = None;
    crate::secret::for_each_string(&tree, &mut String::new(), &mut |key, text| {
        if unresolved.is_none() && (text.starts_with(AWS_SM_SCHEME) || text.starts_with(FILE_SCHEME)) {
            unresolved = Some(ConfigError::new(
                key,
                format!(
                    "still holds the reference `{text}` once references are resolved: only secret settings \
                     are resolved, one level deep (a secret must not name another reference)"
                ),
            ));
        }
    });
    unresolved
}

/// The secret in the file at `path` (absolute), without the line ending an editor or `echo` leaves.
pub(crate) fn read_secret_file(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`file://{path}` must name an absolute path, e.g. file:///var/run/secrets/…"));
    }
    let mut value =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read the secret file {path}: {error}"))?;
    value.truncate(value.trim_end_matches(['\n', '\r']).len());
    if value.is_empty() {
        return Err(format!("the secret file {path} is empty"));
    }
    Ok(value)
}

async fn secrets_manager_client(region: &str, aws: &AwsConfig) -> aws_sdk_secretsmanager::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.to_owned()));
    if let Some(endpoint) = &aws.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    aws_sdk_secretsmanager::Client::new(&loader.load().await)
}

async fn fetch(client: &aws_sdk_secretsmanager::Client, secret_id: &str) -> Result<String, String> {
    let output = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| format!("cannot read AWS Secrets Manager secret `{secret_id}`: {}", crate::error_chain(&e)))?;
    output
        .secret_string()
        .map(str::to_owned)
        .ok_or_else(|| format!("AWS Secrets Manager secret `{secret_id}` has no string value"))
}

fn extract_field(document: &str, field: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(document)
        .map_err(|_| format!("secret is not a JSON object, so `#{field}` cannot be read"))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!("field `{field}` of the secret is not a string or number")),
        None => Err(format!("secret has no field `{field}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::{extract_field, read_secret_file, resolve_references};
    use crate::Secret;
    use crate::config::{AwsConfig, ConfigError, Sections, ServerConfig, ServiceConfig, Sources, TelemetryConfig};
    use serde::{Deserialize, Serialize};

    /// A service config with secrets in places no list names: inside a list of tables.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct PluginsConfig {
        server: ServerConfig,
        telemetry: TelemetryConfig,
        #[serde(default)]
        aws: AwsConfig,
        note: String,
        plugins: Vec<Plugin>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Plugin {
        name: String,
        token: Secret,
    }

    impl ServiceConfig for PluginsConfig {
        fn sections(&self) -> Sections<'_> {
            Sections { server: &self.server, telemetry: &self.telemetry, aws: &self.aws }
        }
    }

    const DEFAULTS: &str = r#"
        note = "plain"
        [server]
        host = "127.0.0.1"
        port = 0
        request_timeout = "5s"
        body_limit_bytes = 1024
        drain_delay = "0s"
        shutdown_grace = "1s"
        header_read_timeout = "5s"
        idle_timeout = "75s"
        max_connections = 8
        max_header_bytes = 16384
        rate_limit = { requests_per_second = 0, burst = 1 }
        admin_rate_limit = { requests_per_second = 0, burst = 1 }
        [telemetry]
        log_format = "json"
        log_level = "info"
    "#;

    async fn resolved(overrides: String) -> Result<PluginsConfig, ConfigError> {
        let mut config: PluginsConfig = crate::config::load(&Sources::overridden(DEFAULTS, overrides))?;
        resolve_references(&mut config).await.map(|()| config)
    }

    fn secret_file(name: &str, contents: &str) -> String {
        let dir = std::env::temp_dir().join(format!("platform-unlisted-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        format!("file://{}", path.display())
    }

    #[tokio::test]
    async fn a_secret_anywhere_in_the_config_is_resolved_without_being_listed() {
        let reference = secret_file("second-token", "token-from-a-file\n");
        let config = resolved(format!(
            "[[plugins]]\nname = \"a\"\ntoken = \"literal-token\"\n[[plugins]]\nname = \"b\"\ntoken = \"{reference}\"\n"
        ))
        .await
        .expect("resolves");
        assert_eq!(config.plugins[0].token.expose(), "literal-token");
        assert_eq!(config.plugins[1].token.expose(), "token-from-a-file");
        assert_eq!(config.plugins[1].token.resolved_from(), Some(reference.as_str()));
        let printed = crate::config::render_redacted(&config);
        assert!(!printed.contains("token-from-a-file") && !printed.contains("literal-token"), "{printed}");
    }

    #[tokio::test]
    async fn a_reference_left_in_a_setting_fails_naming_its_key() {
        let error = resolved("note = \"aws-sm://prod/notes\"\nplugins = []\n".to_owned())
            .await
            .expect_err("a plain-text setting is never resolved");
        assert_eq!(error.key, "note");
        assert!(error.problem.contains("`aws-sm://prod/notes`"), "{error}");

        // A secret whose file names another reference is not resolved twice: it is refused too.
        let reference = secret_file("indirect", "file:///elsewhere");
        let error = resolved(format!("[[plugins]]\nname = \"a\"\ntoken = \"{reference}\"\n"))
            .await
            .expect_err("a reference to a reference");
        assert_eq!(error.key, "plugins.0.token");
    }

    #[test]
    fn secret_files_are_read_without_their_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("platform-secret-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("write");
            path.to_str().expect("utf-8 path").to_owned()
        };
        assert_eq!(read_secret_file(&file("exact", "s3cret")).as_deref(), Ok("s3cret"));
        assert_eq!(read_secret_file(&file("echoed", "s3cret\r\n")).as_deref(), Ok("s3cret"));
        assert_eq!(read_secret_file(&file("inner", " a\nb ")).as_deref(), Ok(" a\nb "));
        let empty = read_secret_file(&file("empty", "\n")).unwrap_err();
        assert!(empty.contains("is empty"), "{empty}");
        let missing = read_secret_file(&format!("{}/absent", dir.display())).unwrap_err();
        assert!(missing.starts_with("cannot read the secret file") && missing.contains("/absent"), "{missing}");
        let relative = read_secret_file("secrets/key").unwrap_err();
        assert!(relative.contains("absolute path"), "{relative}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn extracts_string_and_number_fields() {
        let doc = r#"{"username":"app","port":5432}"#;
        assert_eq!(extract_field(doc, "username").as_deref(), Ok("app"));
        assert_eq!(extract_field(doc, "port").as_deref(), Ok("5432"));
        assert!(extract_field(doc, "password").unwrap_err().contains("no field `password`"));
        assert!(extract_field("not json", "x").unwrap_err().contains("not a JSON object"));
    }
}
