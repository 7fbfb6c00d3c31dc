//! One place that sets up logging and request correlation: JSON logs, request ids, and W3C trace
//! context through OpenTelemetry, with OTLP/HTTP trace export when configured.
//!
//! The OpenTelemetry SDK always runs, so trace ids, span ids and the `traceparent` read and sent
//! come from one implementation whether or not traces are exported: the SDK's
//! `TraceContextPropagator` (opentelemetry_sdk 0.33, `src/propagation/trace_context.rs`: strict
//! W3C parsing, unknown flags dropped) over `opentelemetry_http::{HeaderExtractor,
//! HeaderInjector}`, with tracing spans bridged by tracing-opentelemetry (0.34,
//! `OpenTelemetrySpanExt::set_parent` must run before the span is first used, `context()` for
//! what to inject). `telemetry.otlp_endpoint` only decides whether a batch exporter is attached.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// Header carrying the request id; accepted from the caller or generated, always returned.
pub const REQUEST_ID: &str = "x-request-id";

/// Header carrying the W3C trace context between services.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying vendor trace state beside `traceparent`.
const TRACESTATE: &str = "tracestate";

/// Set by the first [`init`]; flushed by [`shutdown`].
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// Whether spans leave the process (an OTLP endpoint is configured).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs the global tracing subscriber. Later calls are no-ops, so in-process tests can start
/// several services. Call it before starting the async runtime (the exporter runs on its own thread).
pub fn init(service: &'static str, config: &TelemetryConfig) -> Result<(), String> {
    install(service, config, std::io::stdout)
}

/// [`init`], with the log lines written to the returned buffer instead of stdout.
#[cfg(feature = "testkit")]
pub fn init_capturing_logs(
    service: &'static str,
    config: &TelemetryConfig,
) -> Result<std::sync::Arc<std::sync::Mutex<Vec<u8>>>, String> {
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = logs.clone();
    install(service, config, move || CapturedLogs(sink.clone()))?;
    Ok(logs)
}

#[cfg(feature = "testkit")]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(feature = "testkit")]
impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install<W>(service: &'static str, config: &TelemetryConfig, writer: W) -> Result<(), String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("invalid configuration: `telemetry.log_level`: {e}"))?;
    if TRACER_PROVIDER.get().is_some() {
        return Ok(());
    }
    let provider = tracer_provider(service, config.otlp_endpoint.as_deref())?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let logs: Box<dyn Layer<_> + Send + Sync> = match config.log_format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(writer),
        ),
        LogFormat::Pretty => Box::new(tracing_subscriber::fmt::layer().compact().with_writer(writer)),
    };
    // Spans at info and above are always on, whatever the log level: the request and delivery
    // spans carry the trace context, which must propagate even when only warnings are logged
    // (and warnings logged inside them then show the trace id).
    let spans = filter_fn(|metadata| metadata.is_span() && *metadata.level() <= tracing::Level::INFO);
    let installed = tracing_subscriber::registry().with(otel.and_then(logs).with_filter(filter.or(spans))).try_init();
    if installed.is_ok() {
        EXPORTING.store(config.otlp_endpoint.is_some(), Ordering::Relaxed);
        let _ = TRACER_PROVIDER.set(provider);
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            otlp = config.otlp_endpoint.is_some(),
            "telemetry ready"
        );
    }
    Ok(())
}

/// The SDK's provider: it makes the ids either way; with `endpoint`, spans are also exported.
fn tracer_provider(service: &'static str, endpoint: Option<&str>) -> Result<SdkTracerProvider, String> {
    let mut provider =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service).build());
    if let Some(endpoint) = endpoint {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(std::time::Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("invalid configuration: `telemetry.otlp_endpoint`: {e}"))?;
        provider = provider.with_batch_exporter(exporter);
    }
    Ok(provider.build())
}

/// Exports the spans still buffered. Call once, when the service stops.
pub fn shutdown() {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
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
    follow_parent(&span, request.headers());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "request finished"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Makes `span` a child of the trace context in `headers` (`traceparent`), or the root of a new
/// trace when there is none or it is malformed, and records its `trace_id` and `span_id` fields
/// (declared `Empty` by the span) for the logs. Call it before the span is entered.
pub fn follow_parent(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only for a span no subscriber records (telemetry not initialised, or filtered out).
    let _ = span.set_parent(parent);
    let context = span.context();
    let current = context.span();
    let ids = current.span_context();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
}

/// [`follow_parent`] for a `traceparent` kept as text (the outbox stores the creating request's).
pub fn follow_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let mut headers = HeaderMap::new();
    if let Some(value) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(TRACEPARENT, value);
    }
    follow_parent(span, &headers);
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to outgoing `headers`, so
/// the receiver's span is a child of this one. Adds nothing outside a recorded span.
pub fn inject_current(headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut HeaderInjector(headers));
    // The propagator writes `tracestate` even when it is empty; an empty one means nothing.
    if headers.get(TRACESTATE).is_some_and(HeaderValue::is_empty) {
        headers.remove(TRACESTATE);
    }
}

/// The `traceparent` that [`inject_current`] would send now, e.g. to store with work done later.
pub fn current_traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    inject_current(&mut headers);
    headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Names the current request span after its route template (`GET /transactions/{id}`), once
/// routing has matched; raw paths would make span names unbounded.
pub fn name_request_span(method: &str, route: &str) {
    let span = tracing::Span::current();
    span.record("route", route);
    if EXPORTING.load(Ordering::Relaxed) {
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
