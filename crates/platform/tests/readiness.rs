//! `/ready` runs the checks a service registered and reports each by name; shutdown runs the
//! service's stop hooks in order once its workers have stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use platform::server::{Lifecycle, ReadinessCheck, Service, StopHook};
use platform::testkit::{self, TestServer};
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(1);

fn check(name: &'static str, up: bool, required: bool) -> ReadinessCheck {
    let probe = move || async move { up };
    if required { ReadinessCheck::required(name, SOON, probe) } else { ReadinessCheck::reported(name, SOON, probe) }
}

async fn ready(server: &TestServer) -> (u16, Value) {
    let response = reqwest::get(server.url("/ready")).await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn serve(service: Service) -> TestServer {
    TestServer::start(service, &testkit::server_config(), Lifecycle::new()).await
}

#[tokio::test]
async fn every_check_is_reported_by_name_and_a_failing_reported_one_keeps_the_service_ready() {
    let service = Service::new("checks", Router::new())
        .with_readiness(check("database", true, true))
        .with_readiness(check("cache", false, false));
    let server = serve(service).await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "ready", "checks": {"database": "up", "cache": "down"}}));
    server.stop().await;
}

#[tokio::test]
async fn a_failing_required_check_is_a_503_problem_naming_it() {
    let service = Service::new("checks", Router::new())
        .with_readiness(check("database", false, true))
        .with_readiness(check("queue", true, true))
        .with_readiness(check("cache", true, false));
    let server = serve(service).await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"], json!({"database": "down", "queue": "up", "cache": "up"}));
    assert_eq!(body["type"], "https://quilla.dev/problems/service-unavailable");
    assert_eq!(body["detail"], "not ready: database down");
    server.stop().await;
}

#[tokio::test]
async fn a_check_that_hangs_is_down_after_its_timeout() {
    let hangs = ReadinessCheck::required("stuck", Duration::from_millis(100), std::future::pending::<bool>);
    let server = serve(Service::new("checks", Router::new()).with_readiness(hangs)).await;
    let started = std::time::Instant::now();
    let (status, body) = ready(&server).await;
    assert_eq!((status, &body["checks"]["stuck"]), (503, &json!("down")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn without_checks_the_service_is_ready() {
    let server = serve(Service::new("no-dependencies", Router::new())).await;
    assert_eq!(ready(&server).await, (200, json!({"status": "ready", "checks": {}})));
    server.stop().await;
}

#[tokio::test]
async fn while_draining_ready_is_503_and_runs_no_check() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = ReadinessCheck::required("database", SOON, {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            async { true }
        }
    });
    let mut config = testkit::server_config();
    config.drain_delay = Duration::from_secs(2);
    let server =
        TestServer::start(Service::new("draining", Router::new()).with_readiness(counted), &config, Lifecycle::new())
            .await;
    assert_eq!(ready(&server).await.0, 200);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    server.lifecycle.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = ready(&server).await;
    assert_eq!((status, &body["checks"]), (503, &json!({})), "{body}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no check runs while draining");
    server.stop().await;
}

#[tokio::test]
async fn stop_hooks_run_in_order_after_the_workers_have_stopped() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let record = |events: &Arc<Mutex<Vec<&'static str>>>, what: &'static str| events.lock().expect("lock").push(what);
    let lifecycle = Lifecycle::new();
    let worker = tokio::spawn({
        let (events, stop) = (events.clone(), lifecycle.workers_stop());
        async move {
            stop.cancelled().await;
            // A worker finishing its batch: the hooks must wait for it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            record(&events, "worker stopped");
        }
    });
    let hook = |what: &'static str| {
        let events = events.clone();
        StopHook::new(what, move || async move { record(&events, what) })
    };
    let service = Service::new("hooks", Router::new())
        .with_worker(worker)
        .on_stop(hook("close the pool"))
        .on_stop(hook("flush the exporter"));
    let server = TestServer::start(service, &testkit::server_config(), lifecycle).await;
    assert!(events.lock().expect("lock").is_empty(), "nothing runs before shutdown");
    server.stop().await;
    assert_eq!(*events.lock().expect("lock"), ["worker stopped", "close the pool", "flush the exporter"]);
}
