//! With `telemetry.otlp_endpoint` set, request spans reach an OTLP/HTTP collector in the caller's trace.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use platform::config::{LogFormat, TelemetryConfig};
use platform::server::{Lifecycle, Service};
use platform::testkit;
use prost::Message;
use tower::ServiceExt;

type Received = Arc<Mutex<Vec<Bytes>>>;

/// A stand-in collector that keeps every OTLP/HTTP export body it receives.
async fn start_collector() -> (u16, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| async move {
            sink.lock().expect("lock").push(body);
            ""
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, received)
}

#[test]
fn request_spans_are_exported_in_the_callers_trace() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (port, received) = runtime.block_on(start_collector());
    let telemetry = TelemetryConfig {
        log_format: LogFormat::Json,
        log_level: "info".to_owned(),
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
    };
    platform::telemetry::init("otlp-test", &telemetry).expect("telemetry");

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    runtime.block_on(async {
        let service = Service::new("otlp-test", Router::new().route("/hello/{name}", get(|| async { "hi" })));
        let app = platform::server::router(&service, &testkit::server_config(), &Lifecycle::new());
        let request = http::Request::get("/hello/world")
            .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("response");
        assert_eq!(response.status(), 200);
        tokio::task::spawn_blocking(platform::telemetry::shutdown).await.expect("flush");
    });

    let bodies = received.lock().expect("lock").clone();
    assert!(!bodies.is_empty(), "the collector received no export");
    let spans: Vec<_> = bodies
        .iter()
        .map(|body| ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf"))
        .flat_map(|export| export.resource_spans)
        .flat_map(|resource| resource.scope_spans)
        .flat_map(|scope| scope.spans)
        .collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let request_span = spans
        .iter()
        .find(|s| s.name == "GET /hello/{name}")
        .unwrap_or_else(|| panic!("no span named after the route template in {names:?}"));
    assert_eq!(hex::encode(&request_span.trace_id), caller_trace, "same trace as the caller");
    assert_eq!(hex::encode(&request_span.parent_span_id), caller_span, "child of the caller's span");
}
