//! Every metric the monitoring rules and dashboards query is exported by the running services.
//!
//! The queried names come from gitops/platform/monitoring/queried-metrics.txt, which xtask derives from
//! the PrometheusRule and dashboard JSON (`cargo xtask validate` fails when it is stale), so the PromQL
//! parsing lives in one place and this test needs no YAML parser.

#[path = "api/helpers.rs"]
#[allow(dead_code, reason = "this binary uses only part of the shared transaction-api test helpers")]
mod helpers;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use platform::testkit::TestServer;
use serde_json::Value;

use helpers::{Options, SIGNING_KEY, TestApp, brl, spawn_app_with, start_notification_service};

const QUERIED: &str = include_str!("../../../gitops/platform/monitoring/queried-metrics.txt");

/// The metric names the rules and dashboards query.
fn queried() -> BTreeSet<&'static str> {
    QUERIED.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// The metric families in a Prometheus text exposition, from its `# TYPE <name> <kind>` lines.
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Both services' `/metrics` (in one process they share a recorder, but scraping both keeps the test honest
/// if that ever changes).
async fn scrape(app: &TestApp, notifier: &TestServer) -> BTreeSet<String> {
    let mut names = exported(&app.get("/metrics").await.text().await.expect("text"));
    let notifier_metrics = app.http.get(notifier.url("/metrics")).send().await.expect("scrape");
    names.extend(exported(&notifier_metrics.text().await.expect("text")));
    names
}

#[tokio::test]
async fn every_queried_metric_is_exported() {
    let queried = queried();
    assert!(queried.contains("http_requests_total"), "queried-metrics.txt looks empty: {queried:?}");

    let database_url = platform::testkit::fresh_database().await;
    let notifier = start_notification_service(&database_url, 0, SIGNING_KEY).await;
    let app = spawn_app_with(Options {
        database_url: Some(database_url),
        webhook_url: notifier.url("/webhooks/transactions"),
        ..Default::default()
    })
    .await;

    // A transaction (and a cached read of it) that is delivered as a notification.
    let created: Value = app.post_transaction(&brl("u-metrics", "9.99")).await.json().await.expect("json");
    let id = created["id"].as_str().expect("id");
    assert_eq!(app.get(&format!("/transactions/{id}")).await.status().as_u16(), 200);
    // An unsigned webhook: the receiver rejects it.
    let rejected = app
        .http
        .post(notifier.url("/webhooks/transactions"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(rejected.status().as_u16(), 401);

    // The outbox gauges and the delivery metrics appear once the dispatcher has run.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exported = scrape(&app, &notifier).await;
        let missing: Vec<_> = queried.iter().filter(|name| !exported.contains(**name)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queried by rules or dashboards but never exported: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
