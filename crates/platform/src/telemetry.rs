//! One place that sets up logging and request correlation: JSON logs, request ids, trace ids,
//! and optional OpenTelemetry (OTLP/HTTP) trace export.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};
use crate::trace_context::{self, TRACEPARENT, TraceContext};

/// Header carrying the request id; accepted from the caller or generated, always returned.
pub const REQUEST_ID: &str = "x-request-id";

/// Set when traces are exported; flushed by [`shutdown`].
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global tracing subscriber. Later calls are no-ops, so in-process tests can start
/// several services. Call it before starting the async runtime (the exporter runs on its own thread).
pub fn init(service: &'static str, config: &TelemetryConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("invalid configuration: `telemetry.log_level`: {e}"))?;
    let otel = match &config.otlp_endpoint {
        Some(endpoint) if TRACER_PROVIDER.get().is_none() => {
            let provider = tracer_provider(service, endpoint)?;
            let tracer = provider.tracer(service);
            let _ = TRACER_PROVIDER.set(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        _ => None,
    };
    let json = (config.log_format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false)
    });
    let pretty = (config.log_format == LogFormat::Pretty).then(|| tracing_subscriber::fmt::layer().compact());
    let installed = tracing_subscriber::registry().with(filter).with(otel).with(json).with(pretty).try_init();
    if installed.is_ok() {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            otlp = config.otlp_endpoint.is_some(),
            "telemetry ready"
        );
    }
    Ok(())
}

fn tracer_provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(std::time::Duration::from_secs(5))
        .with_headers(Default::default())
        .build()
        .map_err(|e| format!("invalid configuration: `telemetry.otlp_endpoint`: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Exports the spans still buffered. Call once, when the service stops.
pub fn shutdown() {
    if let Some(Err(error)) = TRACER_PROVIDER.get().map(SdkTracerProvider::shutdown) {
        eprintln!("telemetry: flushing traces failed: {error}");
    }
}

/// Request id carried in request extensions for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: assigns the request id and trace context, opens the request span, echoes the id.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    let parent = request.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    // Named after the route template once routing has matched (`name_request_span`).
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = tracing::field::Empty,
        path = %request.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let context = join_trace(&span, parent);
    span.record("trace_id", context.trace_id_hex());
    span.record("span_id", context.span_id_hex());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let mut response = trace_context::scope(context, next.run(request).instrument(span.clone())).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "request finished"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Makes `span` part of the caller's trace (or a new one) and returns its position in it.
///
/// With export on, the ids are OpenTelemetry's, so logs, exported spans and the `traceparent`
/// sent downstream all agree; otherwise they are generated here.
pub fn join_trace(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    if TRACER_PROVIDER.get().is_none() {
        return parent.map(|p| p.child()).unwrap_or_else(TraceContext::new_root);
    }
    if let Some(parent) = parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            if parent.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let otel = span.context();
    let current = otel.span();
    let ids = current.span_context();
    if !ids.is_valid() {
        return parent.map(|p| p.child()).unwrap_or_else(TraceContext::new_root);
    }
    TraceContext { trace_id: ids.trace_id().to_bytes(), span_id: ids.span_id().to_bytes(), sampled: ids.is_sampled() }
}

/// Names the current request span after its route template (`GET /transactions/{id}`), once
/// routing has matched; raw paths would make span names unbounded.
pub fn name_request_span(method: &str, route: &str) {
    let span = tracing::Span::current();
    span.record("route", route);
    if TRACER_PROVIDER.get().is_some() {
        span.context().span().update_name(format!("{method} {route}"));
    }
}

/// Caller-supplied ids are kept only when short and printable, so logs cannot be forged or flooded.
fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::is_acceptable_request_id;

    #[test]
    fn request_ids_must_be_short_and_printable() {
        assert!(is_acceptable_request_id("abc-123"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("has space"));
        assert!(!is_acceptable_request_id(&"x".repeat(129)));
    }
}
