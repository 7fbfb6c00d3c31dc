//! `aws-sm://` references resolved against a real Secrets Manager API (moto), and never shown.

use aws_config::{BehaviorVersion, Region};
use platform::config::{Sources, load};
use platform::secrets_manager::resolve_references;
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
    load(&Sources::overridden(DEFAULTS, overrides)).expect("valid config")
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
        "[aws]\nendpoint_url = \"{endpoint}\"\n[database]\nurl = \"aws-sm://{database}#url\"\n[webhook]\nsigning_key = \"aws-sm://{hmac}\"\n",
        endpoint = platform::testkit::aws_endpoint(),
    ));
    resolve_references(&mut config).await.expect("references resolve");
    assert_eq!(config.database.url.expose(), format!("postgres://app:{password}@db:5432/quilla"));
    assert_eq!(config.webhook.signing_key.expose(), signing_key);

    let debug = format!("{config:?}");
    let printed = platform::config::render_redacted(&config);
    for shown in [&debug, &printed] {
        assert!(!shown.contains(password) && !shown.contains(signing_key), "a secret leaked:\n{shown}");
    }
}

#[tokio::test]
async fn a_missing_secret_or_field_names_the_config_key() {
    let client = secrets_client().await;
    let database = unique("database");
    client.create_secret().name(&database).secret_string(r#"{"username":"app"}"#).send().await.expect("create");
    let endpoint = platform::testkit::aws_endpoint();

    let mut missing_field = config_with(format!(
        "[aws]\nendpoint_url = \"{endpoint}\"\n[database]\nurl = \"aws-sm://{database}#url\"\n[webhook]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n"
    ));
    let error = resolve_references(&mut missing_field).await.expect_err("no such field");
    assert_eq!(error.key, "database.url");
    assert!(error.problem.contains("no field `url`"), "{error}");

    let mut missing_secret = config_with(format!(
        "[aws]\nendpoint_url = \"{endpoint}\"\n[webhook]\nsigning_key = \"aws-sm://{}\"\n",
        unique("absent")
    ));
    let error = resolve_references(&mut missing_secret).await.expect_err("no such secret");
    assert_eq!(error.key, "webhook.signing_key");
    assert!(error.problem.contains("cannot read AWS Secrets Manager secret"), "{error}");
}
