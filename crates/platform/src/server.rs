//! The HTTP server every service runs: standard routes, middleware stack, TLS, graceful shutdown.
//!
//! Shutdown, in order: (1) a signal arrives; (2) `/ready` turns 503 so load balancers stop
//! sending traffic; (3) after `drain_delay` the listener stops accepting; (4) in-flight requests
//! get `shutdown_grace` to finish; (5) background workers are cancelled and awaited; (6) exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::cache::Cache;
use crate::config::ServerConfig;
use crate::extract::BodyLimit;
use crate::problem::{self, Problem};
use crate::rate_limit::RateLimiter;
use crate::{metrics as red, telemetry};

/// Shared shutdown state: readiness flag, the shutdown trigger, and background workers.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    draining: Arc<AtomicBool>,
    shutdown: CancellationToken,
    workers_stop: CancellationToken,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Cancelled when background workers must stop (after HTTP has drained).
    pub fn workers_stop(&self) -> CancellationToken {
        self.workers_stop.clone()
    }

    /// Triggers shutdown on SIGTERM or SIGINT.
    pub fn shutdown_on_signals(&self) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        });
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Everything a service hands to the platform to be served.
pub struct Service {
    pub name: &'static str,
    /// The service's own routes, state already applied.
    pub routes: Router,
    pub openapi: utoipa::openapi::OpenApi,
    pub database: PgPool,
    pub cache: Option<Arc<Cache>>,
    /// Background workers; they must stop when `Lifecycle::workers_stop` is cancelled.
    pub workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct ProbeState {
    lifecycle: Lifecycle,
    database: PgPool,
    cache: Option<Arc<Cache>>,
    openapi: Arc<String>,
}

/// Builds the full router: service routes, `/health`, `/ready`, `/metrics`, `/openapi.json`,
/// RED metrics, timeouts, body limit, request ids, problem+json fallbacks, panic safety.
pub fn router(service: &Service, config: &ServerConfig, lifecycle: &Lifecycle) -> Router {
    let state = ProbeState {
        lifecycle: lifecycle.clone(),
        database: service.database.clone(),
        cache: service.cache.clone(),
        openapi: Arc::new(service.openapi.to_json().unwrap_or_else(|_| "{}".to_owned())),
    };
    let probes = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .with_state(state)
        .route("/metrics", get(red::render));
    let timeout = config.request_timeout;
    let body_limit = config.body_limit_bytes;
    let mut routes = service.routes.clone();
    if let Some(limiter) = RateLimiter::new(&config.rate_limit).map(Arc::new) {
        routes = routes.route_layer(middleware::from_fn(move |req, next| limit_rate(limiter.clone(), req, next)));
    }
    routes
        .merge(probes)
        .method_not_allowed_fallback(problem::method_not_allowed_fallback)
        .route_layer(middleware::from_fn(move |req, next| enforce_timeout(timeout, req, next)))
        .route_layer(middleware::from_fn(red::record_red))
        .fallback(problem::not_found_fallback)
        .layer(middleware::from_fn(move |req, next| limit_body(body_limit, req, next)))
        .layer(middleware::from_fn(telemetry::request_context))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            Problem::internal().into_response()
        }))
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn ready(State(state): State<ProbeState>) -> Response {
    if state.lifecycle.is_draining() {
        return Problem::service_unavailable("shutting down").with_extension("checks", json!({})).into_response();
    }
    let probe_timeout = Duration::from_secs(2);
    let postgres = tokio::time::timeout(probe_timeout, crate::db::is_reachable(&state.database)).await.unwrap_or(false);
    let redis = match &state.cache {
        Some(cache) => Some(cache.is_reachable().await),
        None => None,
    };
    let status = |up: bool| if up { "up" } else { "down" };
    let mut checks = json!({ "postgres": status(postgres) });
    if let Some(up) = redis {
        // Reported, never fatal: reads and writes fall back to PostgreSQL.
        checks["redis"] = json!(status(up));
    }
    if postgres {
        axum::Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        Problem::service_unavailable("PostgreSQL is unreachable").with_extension("checks", checks).into_response()
    }
}

async fn openapi(State(state): State<ProbeState>) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], state.openapi.as_str().to_owned()).into_response()
}

async fn enforce_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?timeout, "request timed out");
            Problem::service_unavailable(format!("the request did not complete within {timeout:?}")).into_response()
        }
    }
}

async fn limit_rate(limiter: Arc<RateLimiter>, request: Request, next: Next) -> Response {
    match limiter.try_acquire() {
        Ok(()) => next.run(request).await,
        Err(retry_after) => Problem::too_many_requests(retry_after).into_response(),
    }
}

/// Applies the body limit and records it so extractors can answer 413 with the number.
async fn limit_body(limit: usize, mut request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Problem::payload_too_large(limit).into_response();
    }
    request.extensions_mut().insert(BodyLimit(limit));
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}

/// Serves until shutdown completes. `listener` is already bound (tests bind port 0).
pub async fn serve(
    service: Service,
    config: ServerConfig,
    listener: std::net::TcpListener,
    lifecycle: Lifecycle,
) -> anyhow::Result<()> {
    let app = router(&service, &config, &lifecycle);
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let handle = Handle::new();
    let orchestrator = {
        let (handle, lifecycle, config) = (handle.clone(), lifecycle.clone(), config.clone());
        tokio::spawn(async move {
            lifecycle.shutdown.cancelled().await;
            lifecycle.draining.store(true, Ordering::SeqCst);
            tracing::info!(drain_delay = ?config.drain_delay, "readiness failing; waiting for load balancers");
            tokio::time::sleep(config.drain_delay).await;
            tracing::info!(grace = ?config.shutdown_grace, "draining in-flight requests");
            handle.graceful_shutdown(Some(config.shutdown_grace));
        })
    };
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    tracing::info!(service = service.name, address = %local, scheme, "listening");
    let served = match &config.tls {
        Some(tls) => {
            let rustls = tls_config(&tls.cert_path, &tls.key_path).await?;
            axum_server::from_tcp_rustls(listener, rustls).handle(handle).serve(make_service).await
        }
        None => axum_server::from_tcp(listener).handle(handle).serve(make_service).await,
    };
    orchestrator.abort();
    lifecycle.workers_stop.cancel();
    for worker in service.workers {
        let _ = worker.await;
    }
    service.database.close().await;
    tracing::info!(service = service.name, "stopped");
    Ok(served?)
}

async fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<RustlsConfig> {
    let certs = tokio::fs::read(cert).await?;
    let key = tokio::fs::read(key).await?;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&certs).collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // axum-server serves both (hyper's auto builder), so both are offered.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(server)))
}
