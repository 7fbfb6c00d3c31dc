//! With no OTLP endpoint, the OpenTelemetry SDK still carries the W3C trace context: calls made
//! while serving a request continue the caller's trace (or a new one), work resumed from a stored
//! `traceparent` joins it too, and logs show the trace id, even when only warnings are logged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::get;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use platform::client::{ClientConfig, ResilientClient};
use platform::config::{LogFormat, TelemetryConfig};
use platform::server::Lifecycle;
use platform::testkit;
use tower::ServiceExt;
use tracing::Instrument;

type Seen = Arc<Mutex<Vec<String>>>;

/// A downstream service that keeps the `traceparent` of every request it receives.
async fn start_downstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let app = Router::new().route(
        "/hook",
        get(move |headers: HeaderMap| async move {
            let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("<none>");
            sink.lock().expect("lock").push(traceparent.to_owned());
            ""
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn downstream_client() -> Arc<ResilientClient> {
    let config = ClientConfig {
        timeout: Duration::from_secs(5),
        max_attempts: 1,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        breaker_failure_threshold: 10,
        breaker_open_for: Duration::from_secs(1),
        ca_path: None,
    };
    Arc::new(ResilientClient::new("downstream", config).expect("client"))
}

/// What the W3C propagator reads from a header value (invalid if it is not one).
fn parsed(traceparent: &str) -> SpanContext {
    let carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier).span().span_context().clone()
}

#[test]
fn without_export_the_trace_context_reaches_downstream_calls_and_the_logs() {
    let telemetry = TelemetryConfig { log_format: LogFormat::Json, log_level: "warn".to_owned(), otlp_endpoint: None };
    let logs = platform::telemetry::init_capturing_logs("trace-test", &telemetry).expect("telemetry");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    let (seen, answers) = runtime.block_on(async {
        let (url, seen) = start_downstream().await;
        let client = downstream_client();
        // Calls downstream, logs a warning, and answers with the traceparent it would store.
        let call = get(move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client.send_idempotent(|http| http.get(&url)).await.expect("downstream answers");
                tracing::warn!("called downstream");
                platform::telemetry::current_traceparent().unwrap_or_default()
            }
        });
        let service = platform::server::Service::new("trace-test", Router::new().route("/call", call));
        let app = platform::server::router(&service, &testkit::server_config(), &Lifecycle::new());
        let mut answers = Vec::new();
        for incoming in [
            Some(format!("00-{caller_trace}-{caller_span}-01")),
            None,
            Some(format!("00-{}-{caller_span}-01", caller_trace.to_uppercase())),
        ] {
            let mut request = http::Request::get("/call");
            if let Some(traceparent) = incoming {
                request = request.header("traceparent", traceparent);
            }
            let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
            assert_eq!(response.status(), 200);
            let body = axum::body::to_bytes(response.into_body(), 1024).await.expect("body");
            answers.push(String::from_utf8(body.to_vec()).expect("utf-8"));
        }

        // The outbox's path: a delivery span resumed from the stored traceparent.
        let delivery =
            tracing::info_span!("webhook delivery", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
        platform::telemetry::follow_traceparent(&delivery, Some(&answers[0]));
        let (url, delivered) = start_downstream().await;
        downstream_client().send_idempotent(|http| http.get(&url)).instrument(delivery).await.expect("delivered");
        let mut all = seen.lock().expect("lock").clone();
        all.extend(delivered.lock().expect("lock").iter().cloned());
        (all, answers)
    });

    assert_eq!(seen.len(), 4, "{seen:?}");
    let contexts: Vec<SpanContext> = seen.iter().map(|t| parsed(t)).collect();
    assert!(contexts.iter().all(SpanContext::is_valid), "every call carries a valid traceparent: {seen:?}");
    // The caller's trace continues downstream, from a span of this service's own.
    assert_eq!(contexts[0].trace_id().to_string(), caller_trace);
    assert_ne!(contexts[0].span_id().to_string(), caller_span);
    assert!(contexts[0].is_sampled(), "the caller's sampling decision is kept");
    assert_eq!(answers[0], seen[0], "what the outbox stores is what downstream calls carry");
    // Without a (valid) traceparent, each request starts a trace of its own.
    for fresh in [&contexts[1], &contexts[2]] {
        assert_ne!(fresh.trace_id().to_string(), caller_trace, "{seen:?}");
    }
    assert_ne!(contexts[1].trace_id(), contexts[2].trace_id());
    // A delivery resumed from the stored traceparent is in the caller's trace, as a child of it.
    assert_eq!(contexts[3].trace_id().to_string(), caller_trace);
    assert_ne!(contexts[3].span_id(), contexts[0].span_id());

    let logs = String::from_utf8(logs.lock().expect("lock").clone()).expect("utf-8");
    let warning = logs
        .lines()
        .find(|line| line.contains("called downstream") && line.contains(caller_trace))
        .unwrap_or_else(|| panic!("no warning logged with the caller's trace id:\n{logs}"));
    assert!(warning.contains(&format!("\"trace_id\":\"{caller_trace}\"")), "{warning}");
    assert!(!logs.contains("request finished"), "debug events stay filtered out at warn:\n{logs}");
}
