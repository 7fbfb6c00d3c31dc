//! Resolves secret references in config values once, at startup: `file://<path>` from a mounted file,
//! `aws-sm://<secret-id>[#json-key]` from AWS Secrets Manager.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region};

use crate::config::{AwsConfig, ConfigError, ServiceConfig};
use crate::secret::Secret;

/// Replaces every secret reference in `config` with the value it names, then validates the
/// configuration again, now with the real values.
///
/// Each secret id is fetched once even when several keys point into the same JSON document.
/// Errors name the config key, never the secret value.
pub async fn resolve_references<C: ServiceConfig>(config: &mut C) -> Result<(), ConfigError> {
    let aws = config.sections().aws.clone();
    let mut client = None;
    let mut fetched: HashMap<String, String> = HashMap::new();
    for (key, secret) in config.secrets_mut() {
        if let Some(path) = secret.file_reference() {
            let value = read_secret_file(path).map_err(|problem| ConfigError::new(key, problem))?;
            *secret = Secret::resolved(value, secret.expose());
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
            let value = fetch(client, &secret_id).await.map_err(|problem| ConfigError::new(key, problem))?;
            fetched.insert(secret_id.clone(), value);
        }
        let document = &fetched[&secret_id];
        let value = match json_key {
            None => document.clone(),
            Some(field) => extract_field(document, &field).map_err(|problem| ConfigError::new(key, problem))?,
        };
        *secret = Secret::resolved(value, secret.expose());
    }
    config.validate()
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
    use super::{extract_field, read_secret_file};

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
