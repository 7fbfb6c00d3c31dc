//! The binary's command line: version, healthcheck, --print-config and config errors.

use std::process::{Command, Output};

use crate::helpers::{SIGNING_KEY, spawn_app};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_transaction-api"));
    command.env_clear().args(args).env("QUILLA_AUTH__ISSUERS", crate::helpers::ISSUER.issuers_env());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_name_and_version() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    assert_eq!(text(&output.stdout).trim(), format!("transaction-api {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_value_exits_78_with_one_line_naming_the_key() {
    let output =
        run(&["--print-config"], &[("QUILLA_SERVER__PORT", "eighty"), ("QUILLA_WEBHOOK__SIGNING_KEY", SIGNING_KEY)]);
    assert_eq!(output.status.code(), Some(78));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("`server.port`") && stderr.contains("QUILLA_SERVER__PORT"), "{stderr}");
}

#[test]
fn a_missing_required_value_names_the_key() {
    let output = run(&["serve"], &[]);
    assert_eq!(output.status.code(), Some(78));
    assert!(text(&output.stderr).contains("`webhook.signing_key`"), "{}", text(&output.stderr));
}

#[test]
fn print_config_shows_overrides_and_redacts_secrets() {
    let output = run(
        &["--print-config"],
        &[
            ("QUILLA_WEBHOOK__SIGNING_KEY", SIGNING_KEY),
            ("QUILLA_DATABASE__URL", "postgres://app:hunter2hunter2@db:5432/quilla"),
            ("QUILLA_DATABASE__MAX_CONNECTIONS", "42"),
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    assert!(printed.contains("max_connections = 42"), "{printed}");
    assert!(!printed.contains("hunter2hunter2") && !printed.contains(SIGNING_KEY), "{printed}");
    assert!(printed.contains("[REDACTED]"));
}

#[tokio::test]
async fn healthcheck_succeeds_against_a_running_service_and_fails_without_one() {
    let app = spawn_app().await;
    let port = app.server.address.port().to_string();
    let running_port = port.clone();
    let healthy = tokio::task::spawn_blocking(move || {
        run(
            &["healthcheck"],
            &[("QUILLA_SERVER__PORT", running_port.as_str()), ("QUILLA_WEBHOOK__SIGNING_KEY", SIGNING_KEY)],
        )
    })
    .await
    .expect("join");
    assert!(healthy.status.success(), "{}", text(&healthy.stderr));
    app.server.stop().await;
    let env = [("QUILLA_SERVER__PORT", port.as_str()), ("QUILLA_WEBHOOK__SIGNING_KEY", SIGNING_KEY)];
    let down = run(&["healthcheck"], &env);
    assert_eq!(down.status.code(), Some(1));
}
