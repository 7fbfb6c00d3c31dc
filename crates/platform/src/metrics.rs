//! Prometheus metrics: the process-wide recorder, RED metrics per route template, `/metrics`.
//!
//! Every label value comes from a bounded set, whatever clients send: the method is one of the
//! standard nine or `OTHER`, the route is a route template or `unmatched`, the status one of the
//! few the services answer. A label copied from the request would let any client mint a new time
//! series per request (`curl -X FOO1`, `FOO2`, …) until the process or Prometheus runs out of memory.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for every `*_seconds` histogram: 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nothing scrapes: the
/// exporter's own default (`PrometheusBuilder::upkeep_timeout`, 5 s in 0.18).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The route label of requests that matched no route (404s): one value for every unknown path.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Installs the global recorder once and returns the handle that renders `/metrics`.
///
/// `extra_buckets` gives histogram buckets for business metrics that are not in seconds
/// (e.g. amounts), as `(metric name suffix, buckets)`.
pub fn install(extra_buckets: &[(&str, &[f64])]) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            builder = builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .unwrap_or_else(|_| unreachable!("non-empty bucket list"));
            for (suffix, buckets) in extra_buckets {
                builder = match builder.set_buckets_for_metric(Matcher::Suffix((*suffix).to_owned()), buckets) {
                    Ok(b) => b,
                    Err(e) => panic!("invalid buckets for {suffix}: {e}"),
                };
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder can only exist if a test installed one; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// `build_recorder` (unlike `install`, which needs the exporter's HTTP listener) spawns no upkeep
/// task: histogram samples then pile up, unbounded, until a scrape renders them (the crate's docs,
/// "Upkeep and maintenance"). A plain thread does it, so it runs for the whole process like the
/// recorder it keeps, whichever async runtime comes and goes.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".to_owned()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the metrics upkeep thread; histograms drain only when scraped");
    }
}

fn describe() {
    metrics::describe_counter!("http_requests_total", "HTTP requests by method, route template and status");
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    metrics::describe_counter!("cache_operations_total", "Cache reads and writes by outcome");
    metrics::describe_gauge!("circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open");
    metrics::describe_gauge!("http_server_connections", "Open connections by listener");
    metrics::describe_counter!(
        "http_server_connection_timeouts_total",
        "Connections closed for a request head not received in time (header) or no progress (idle), by listener"
    );
    metrics::describe_counter!("auth_failures_total", "Requests refused by authentication or authorisation, by reason");
    metrics::describe_counter!(
        "auth_jwks_refreshes_total",
        "Reads of the trusted issuers' keys after start-up, by outcome"
    );
    metrics::describe_counter!(
        "http_server_connection_limit_reached_total",
        "Times a listener had max_connections open and new connections waited for a free slot"
    );
}

/// The method as a metric label: the eight methods of RFC 9110 and PATCH (RFC 5789) as themselves, anything
/// else as `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

/// Middleware (a router layer, which axum applies inside routing, so the route template is known;
/// it covers the fallbacks too): counts and times requests.
pub async fn record_red(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    crate::telemetry::name_request_span(method, &route);
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render() -> Response {
    let body = HANDLE.get().map(PrometheusHandle::render).unwrap_or_default();
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labels_of_their_own() {
        for name in ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] {
            let method = http::Method::from_bytes(name.as_bytes()).expect("method");
            assert_eq!(method_label(&method), name);
        }
        for name in ["FOO1", "get", "PROPFIND", "X".repeat(200).as_str()] {
            let method = http::Method::from_bytes(name.as_bytes()).expect("method");
            assert_eq!(method_label(&method), "OTHER", "{name}");
        }
    }

    /// The names of this process's threads (Linux).
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("Linux /proc")
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    #[test]
    fn installing_the_recorder_starts_its_upkeep() {
        install(&[]);
        // A new thread names itself once it runs, a moment after `spawn` returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread_names().iter().any(|name| name == "metrics-upkeep") {
            assert!(Instant::now() < deadline, "no upkeep thread among {:?}", thread_names());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
