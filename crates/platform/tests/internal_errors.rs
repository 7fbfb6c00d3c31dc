//! Internal errors are logged in one place, the server's middleware: every 5xx whose problem
//! carries a cause is logged once at error level, with the cause's chain and the request id;
//! the client sees none of it, and a 4xx never logs at error level.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::routing::get;
use platform::Problem;
use platform::server::{Lifecycle, Service};
use platform::testkit::{self, TestServer};

/// Every log line of this test binary (tests run in parallel: each looks for its own marker).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Capture(writer.clone()))
            .init();
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines mentioning `marker`.
fn lines_with(marker: &str) -> Vec<String> {
    let text = String::from_utf8(logs().lock().expect("lock").clone()).expect("utf-8 logs");
    text.lines().filter(|line| line.contains(marker)).map(str::to_owned).collect()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot store the notification")]
struct StoreFailed(#[source] std::io::Error);

async fn serve(routes: Router) -> TestServer {
    logs();
    TestServer::start(Service::new("errors", routes), &testkit::server_config(), Lifecycle::new()).await
}

/// GETs `path`: status, `x-request-id`, body.
async fn get_from(server: &TestServer, path: &str) -> (u16, String, String) {
    let response = reqwest::get(server.url(path)).await.expect("sent");
    let status = response.status().as_u16();
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    (status, request_id, response.text().await.expect("body"))
}

#[tokio::test]
async fn a_500_is_logged_once_at_error_level_with_its_chain_and_request_id_and_never_shown() {
    let routes = Router::new().route(
        "/broken",
        get(|| async { Problem::internal_caused_by(&StoreFailed(std::io::Error::other("disk-on-fire-7f3a"))) }),
    );
    let server = serve(routes).await;
    let (status, request_id, body) = get_from(&server, "/broken").await;
    server.stop().await;
    assert_eq!(status, 500);
    assert!(!body.contains("disk-on-fire") && !body.contains("cannot store"), "the cause stays inside: {body}");
    let lines = lines_with("disk-on-fire-7f3a");
    assert_eq!(lines.len(), 1, "logged exactly once: {lines:#?}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(lines[0].contains("cannot store the notification: disk-on-fire-7f3a"), "the whole chain: {}", lines[0]);
    assert!(lines[0].contains(&request_id), "inside the request span: {}", lines[0]);
}

#[tokio::test]
async fn an_unavailable_database_is_a_503_with_retry_after_logged_once() {
    let routes = Router::new().route("/db-down", get(|| async { Problem::from(sqlx::Error::PoolTimedOut) }));
    let server = serve(routes).await;
    let response = reqwest::get(server.url("/db-down")).await.expect("sent");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    server.stop().await;
    let lines = lines_with(&request_id);
    let errors: Vec<_> = lines.iter().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(errors[0].contains("pool timed out"), "{}", errors[0]);
}

#[tokio::test]
async fn a_4xx_never_logs_at_error_level() {
    let routes = Router::new()
        .route("/missing", get(|| async { Problem::not_found("no such thing").with_cause_text("lookup-missed-91c2") }));
    let server = serve(routes).await;
    let (status, _, body) = get_from(&server, "/missing").await;
    server.stop().await;
    assert_eq!(status, 404);
    assert!(!body.contains("lookup-missed"), "{body}");
    let lines = lines_with("lookup-missed-91c2");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("DEBUG") && !lines[0].contains("ERROR"), "{}", lines[0]);
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_logged_once_with_the_panic_message() {
    let routes = Router::new().route(
        "/panics",
        get(|| async {
            if std::hint::black_box(true) {
                panic!("invariant-broken-5d1e");
            }
            "unreachable"
        }),
    );
    let server = serve(routes).await;
    let (status, request_id, body) = get_from(&server, "/panics").await;
    server.stop().await;
    assert_eq!(status, 500);
    assert!(!body.contains("invariant-broken"), "{body}");
    let logged: Vec<_> = lines_with("handler panicked: invariant-broken-5d1e");
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert!(logged[0].contains("ERROR") && logged[0].contains(&request_id), "{}", logged[0]);
}
