//! One place that sets up logging and request correlation: JSON logs, request ids, trace ids.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};
use crate::trace_context::{self, TRACEPARENT, TraceContext};

/// Header carrying the request id; accepted from the caller or generated, always returned.
pub const REQUEST_ID: &str = "x-request-id";

/// Installs the global tracing subscriber. Safe to call more than once (later calls are no-ops),
/// so in-process tests can start several services.
pub fn init(service: &'static str, config: &TelemetryConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("invalid configuration: `telemetry.log_level`: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().compact()).try_init(),
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "telemetry initialised");
    }
    Ok(())
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
    let context = parent.map(|p| p.child()).unwrap_or_else(TraceContext::new_root);
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        route = route.as_deref(),
        request_id = %request_id,
        trace_id = %context.trace_id_hex(),
        span_id = %context.span_id_hex(),
    );
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let mut response = trace_context::scope(context, next.run(request).instrument(span.clone())).await;
    span.in_scope(|| {
        tracing::debug!(status = response.status().as_u16(), "request finished");
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
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
