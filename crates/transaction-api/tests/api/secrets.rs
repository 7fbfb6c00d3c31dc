//! Secret references: `file://` from mounted files, `aws-sm://` against a real Secrets Manager API (moto);
//! resolved values are validated and never shown.

use aws_config::{BehaviorVersion, Region};
use platform::config::{Sources, load};
use platform::secret_references::resolve_references;
use transaction_api::{Config, DEFAULTS};

async fn secrets_client() -> aws_sdk_secretsmanager::Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-south-2"))
        .endpoint_url(platform::testkit::aws_endpoint())
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&config)
}

fn config_with(overrides: String) -> Config {
    load(&Sources::overridden(DEFAULTS, format!("{overrides}\n{}", crate::helpers::ISSUER.auth_toml())))
        .expect("valid config")
}

/// Neither `Debug` nor `--print-config` shows any of `secrets`.
fn assert_not_shown(config: &Config, secrets: &[&str]) {
    for shown in [format!("{config:?}"), platform::config::render_redacted(config)] {
        assert!(secrets.iter().all(|secret| !shown.contains(secret)), "a secret leaked:\n{shown}");
    }
}

fn unique(name: &str) -> String {
    format!("quilla-test/{}/{name}", platform::ids::new_id("run"))
}

#[tokio::test]
async fn references_resolve_from_secrets_manager_and_stay_redacted() {
    let client = secrets_client().await;
    let (database, hmac) = (unique("database"), unique("webhook"));
    let password = "pa55-from-secrets-manager";
    let signing_key = "signing-key-from-secrets-manager-0123456789";
    client
        .create_secret()
        .name(&database)
        .secret_string(format!(r#"{{"url":"postgres://app:{password}@db:5432/quilla","username":"app"}}"#))
        .send()
        .await
        .expect("create database secret");
    client.create_secret().name(&hmac).secret_string(signing_key).send().await.expect("create hmac secret");

    let mut config = config_with(format!(
        "[aws]\nregion = \"eu-south-2\"\nendpoint_url = \"{endpoint}\"\n[database]\nurl = \"aws-sm://{database}#url\"\n[webhook]\nsigning_key = \"aws-sm://{hmac}\"\n",
        endpoint = platform::testkit::aws_endpoint(),
    ));
    resolve_references(&mut config).await.expect("references resolve");
    assert_eq!(config.database.url.expose(), format!("postgres://app:{password}@db:5432/quilla"));
    assert_eq!(config.webhook.signing_key.expose(), signing_key);

    assert_not_shown(&config, &[password, signing_key]);
}

#[tokio::test]
async fn a_missing_secret_or_field_names_the_config_key() {
    let client = secrets_client().await;
    let database = unique("database");
    client.create_secret().name(&database).secret_string(r#"{"username":"app"}"#).send().await.expect("create");
    let endpoint = platform::testkit::aws_endpoint();

    let mut missing_field = config_with(format!(
        "[aws]\nregion = \"eu-south-2\"\nendpoint_url = \"{endpoint}\"\n[database]\nurl = \"aws-sm://{database}#url\"\n[webhook]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n"
    ));
    let error = resolve_references(&mut missing_field).await.expect_err("no such field");
    assert_eq!(error.key, "database.url");
    assert!(error.problem.contains("no field `url`"), "{error}");

    let mut missing_secret = config_with(format!(
        "[aws]\nregion = \"eu-south-2\"\nendpoint_url = \"{endpoint}\"\n[webhook]\nsigning_key = \"aws-sm://{}\"\n",
        unique("absent")
    ));
    let error = resolve_references(&mut missing_secret).await.expect_err("no such secret");
    assert_eq!(error.key, "webhook.signing_key");
    assert!(error.problem.contains("cannot read AWS Secrets Manager secret"), "{error}");
}

#[tokio::test]
async fn an_aws_reference_without_a_region_is_refused_naming_aws_region() {
    // No region compiled in: an environment that forgot `[aws] region` must not read another's.
    let mut config = config_with(format!(
        "[aws]\nendpoint_url = \"{}\"\n[webhook]\nsigning_key = \"aws-sm://{}\"\n",
        platform::testkit::aws_endpoint(),
        unique("anything")
    ));
    let error = resolve_references(&mut config).await.expect_err("no region");
    assert_eq!(error.key, "aws.region");
    assert!(error.problem.contains("webhook.signing_key"), "{error}");
}

#[tokio::test]
async fn file_references_resolve_are_validated_and_stay_redacted() {
    let dir = platform::testkit::TempDir::new("secret-files");
    let file = |name: &str| dir.path().join(name);
    let (database_file, key_file, short_file) = (file("database-url"), file("signing-key"), file("short"));
    let password = "pa55-from-a-mounted-file";
    let signing_key = "signing-key-from-a-mounted-file-0123456789";
    std::fs::write(&database_file, format!("postgres://app:{password}@db:5432/quilla\n")).expect("write");
    std::fs::write(&key_file, signing_key).expect("write");
    std::fs::write(&short_file, "too-short").expect("write");
    let references = |key: &std::path::Path| {
        format!(
            "[database]\nurl = \"file://{}\"\n[webhook]\nsigning_key = \"file://{}\"\n",
            database_file.display(),
            key.display()
        )
    };

    let mut config = config_with(references(&key_file));
    let printed = platform::config::render_redacted(&config);
    assert!(printed.contains(&format!("file://{}", key_file.display())), "references are shown:\n{printed}");
    resolve_references(&mut config).await.expect("references resolve");
    assert_eq!(config.database.url.expose(), format!("postgres://app:{password}@db:5432/quilla"));
    assert_eq!(config.webhook.signing_key.expose(), signing_key);
    assert_not_shown(&config, &[password, signing_key]);

    // The resolved key is held to the same rules as one written in the config.
    let mut short = config_with(references(&short_file));
    let error = resolve_references(&mut short).await.expect_err("a 9-character key");
    assert_eq!((error.key.as_str(), error.problem.as_str()), ("webhook.signing_key", "must be at least 32 characters"));
    assert!(!error.to_string().contains("too-short"), "{error}");

    let mut missing = config_with(references(&file("absent")));
    let error = resolve_references(&mut missing).await.expect_err("no such file");
    assert_eq!(error.key, "webhook.signing_key");
    assert!(error.problem.contains("cannot read the secret file"), "{error}");
}
