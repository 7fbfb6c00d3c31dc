//! The HTTP server every service runs: standard routes, middleware stack, TLS, graceful shutdown.
//!
//! Shutdown, in order: (1) a signal arrives; (2) `/ready` turns 503 so load balancers stop
//! sending traffic; (3) after `drain_delay` the listener stops accepting; (4) in-flight requests
//! get `shutdown_grace` to finish; (5) background workers are cancelled and awaited; (6) the
//! service's stop hooks run, in the order it registered them (e.g. closing its pool); (7) exit.
//!
//! The server knows no database or cache: a service registers what `/ready` checks and what
//! shutdown closes ([`ReadinessCheck`], [`StopHook`], made by `platform::db` and `platform::cache`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::Handle;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::{ServerConfig, TlsConfig};
use crate::extract::BodyLimit;
use crate::problem::{self, InternalCause, Problem};
use crate::rate_limit::RateLimiter;
use crate::{metrics as red, telemetry};

mod connections;
mod hooks;

use connections::{ConnectionLimits, GuardAcceptor, Limited};
pub use hooks::{ReadinessCheck, StopHook};

/// The liveness probe: cheap, and never rate limited (a refused liveness probe restarts the pod).
const HEALTH: &str = "/health";
/// The readiness probe: runs the service's checks (database round trips), so behind the admin rate limit.
const READY: &str = "/ready";
/// Renders every series, so behind the admin rate limit.
const METRICS: &str = "/metrics";
const OPENAPI: &str = "/openapi.json";

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
    /// What `/ready` checks, each reported by name; none: ready whenever not draining.
    pub readiness: Vec<ReadinessCheck>,
    /// Background workers; they must stop when `Lifecycle::workers_stop` is cancelled.
    pub workers: Vec<JoinHandle<()>>,
    /// Run in order once the workers have stopped.
    pub stop_hooks: Vec<StopHook>,
}

impl Service {
    /// A service of `routes` alone: an empty OpenAPI document, no checks, workers or hooks.
    pub fn new(name: &'static str, routes: Router) -> Self {
        Self {
            name,
            routes,
            openapi: utoipa::openapi::OpenApiBuilder::new().build(),
            readiness: Vec::new(),
            workers: Vec::new(),
            stop_hooks: Vec::new(),
        }
    }

    pub fn with_openapi(mut self, openapi: utoipa::openapi::OpenApi) -> Self {
        self.openapi = openapi;
        self
    }

    /// Adds a check to `/ready`.
    pub fn with_readiness(mut self, check: ReadinessCheck) -> Self {
        self.readiness.push(check);
        self
    }

    /// Adds a background worker, awaited at shutdown.
    pub fn with_worker(mut self, worker: JoinHandle<()>) -> Self {
        self.workers.push(worker);
        self
    }

    /// Adds a hook run at shutdown, after the workers and the hooks added before it.
    pub fn on_stop(mut self, hook: StopHook) -> Self {
        self.stop_hooks.push(hook);
        self
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("readiness", &self.readiness)
            .field("workers", &self.workers.len())
            .field("stop_hooks", &self.stop_hooks)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct ProbeState {
    lifecycle: Lifecycle,
    checks: Arc<[ReadinessCheck]>,
    openapi: Arc<String>,
}

/// The probe and introspection routes: `/health`, `/ready`, `/metrics`, `/openapi.json`.
fn admin_routes(service: &Service, lifecycle: &Lifecycle) -> Router {
    let state = ProbeState {
        lifecycle: lifecycle.clone(),
        checks: service.readiness.clone().into(),
        openapi: Arc::new(service.openapi.to_json().unwrap_or_else(|_| "{}".to_owned())),
    };
    Router::new()
        .route(HEALTH, get(health))
        .route(READY, get(ready))
        .route(OPENAPI, get(openapi))
        .with_state(state)
        .route(METRICS, get(red::render))
}

/// Builds the full router on one listener: service routes, `/health`, `/ready`, `/metrics`,
/// `/openapi.json`, RED metrics, timeouts, body limit, rate limits, request ids, problem+json
/// fallbacks, panic safety.
pub fn router(service: &Service, config: &ServerConfig, lifecycle: &Lifecycle) -> Router {
    let limits =
        RateLimits { api: RateLimiter::new(&config.rate_limit), admin: RateLimiter::new(&config.admin_rate_limit) };
    with_middleware(service.routes.clone().merge(admin_routes(service, lifecycle)), config, limits)
}

/// The API listener's router when the admin routes have a port of their own: the probes and
/// `/metrics` are not routed here at all (a 404 like any unknown path, and rate limited like one).
fn api_router(service: &Service, config: &ServerConfig) -> Router {
    let limits = RateLimits { api: RateLimiter::new(&config.rate_limit), admin: None };
    with_middleware(service.routes.clone(), config, limits)
}

/// The admin listener's router: probes and metrics, with the same fallbacks and timeouts, and
/// only the admin rate limit (on `/ready` and `/metrics`).
fn admin_router(service: &Service, config: &ServerConfig, lifecycle: &Lifecycle) -> Router {
    let limits = RateLimits { api: None, admin: RateLimiter::new(&config.admin_rate_limit) };
    with_middleware(admin_routes(service, lifecycle), config, limits)
}

/// The token buckets of one listener (docs/configuration.md, "Rate limits"):
/// - `api`: every request that is not a probe or `/metrics`: the service's routes, and the
///   404/405 answers to anything else (answering a scan costs as much as answering a client);
/// - `admin`: `/ready` and `/metrics`, which do real work, in a bucket of their own so that API
///   traffic never makes the kubelet's or Prometheus's requests wait;
/// - neither: `/health` (a refused liveness probe restarts the pod), `/openapi.json` (a static
///   document), and unknown paths on the admin listener (which the Ingress does not route).
#[derive(Debug, Default)]
struct RateLimits {
    api: Option<RateLimiter>,
    admin: Option<RateLimiter>,
}

impl RateLimits {
    /// The bucket a request to the route `matched` (`None`: no route) draws from.
    fn bucket(&self, matched: Option<&str>) -> Option<&RateLimiter> {
        match matched {
            Some(READY | METRICS) => self.admin.as_ref(),
            Some(HEALTH | OPENAPI) => None,
            _ => self.api.as_ref(),
        }
    }
}

/// The layers every route gets. `layer` (unlike `route_layer`) also wraps the fallbacks, and axum
/// applies it inside routing, so the matched route template is known to the middleware.
fn with_middleware(routes: Router, config: &ServerConfig, limits: RateLimits) -> Router {
    let timeout = config.request_timeout;
    let body_limit = config.body_limit_bytes;
    let limits = Arc::new(limits);
    routes
        .method_not_allowed_fallback(problem::method_not_allowed_fallback)
        .route_layer(middleware::from_fn(move |req, next| enforce_timeout(timeout, req, next)))
        .fallback(problem::not_found_fallback)
        .layer(middleware::from_fn(move |req, next| limit_rate(limits.clone(), req, next)))
        // Outside the rate limit, so that 429s are counted too.
        .layer(middleware::from_fn(red::record_red))
        .layer(middleware::from_fn(move |req, next| limit_body(body_limit, req, next)))
        .layer(CatchPanicLayer::custom(panic_problem))
        // Inside the request span, so each log line carries the request and trace ids.
        .layer(middleware::from_fn(log_internal_errors))
        .layer(middleware::from_fn(telemetry::request_context))
}

/// The one place internal errors are logged: a response whose problem carries an internal
/// cause ([`Problem::with_cause`]) is logged once here, at error level for a 5xx, with the cause's
/// whole chain. Handlers return their errors and never log them; 4xx never log at error level.
async fn log_internal_errors(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(InternalCause(cause)) = response.extensions_mut().remove::<InternalCause>() {
        let status = response.status().as_u16();
        if response.status().is_server_error() {
            tracing::error!(status, error = %cause, "request failed");
        } else {
            tracing::debug!(status, error = %cause, "request refused");
        }
    }
    response
}

/// A panicking handler answers a bare 500; the panic's message is its logged cause.
fn panic_problem(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|m| (*m).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text payload".to_owned());
    Problem::internal().with_cause_text(format!("handler panicked: {message}")).into_response()
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// 200 `{"status": "ready", "checks": {"<name>": "up" | "down", …}}` when every required check
/// passes (reported ones may be down); otherwise a 503 problem with the same `checks`, naming
/// the required checks that failed. While draining, 503 without running any.
async fn ready(State(state): State<ProbeState>) -> Response {
    if state.lifecycle.is_draining() {
        return Problem::service_unavailable("shutting down").with_extension("checks", json!({})).into_response();
    }
    let results = futures::future::join_all(state.checks.iter().map(async |check| (check, check.is_up().await))).await;
    let mut checks = serde_json::Map::new();
    let mut failed = Vec::new();
    for (check, up) in results {
        checks.insert(check.name().to_owned(), json!(if up { "up" } else { "down" }));
        if !up && check.is_required() {
            failed.push(check.name());
        }
    }
    if failed.is_empty() {
        axum::Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        Problem::service_unavailable(format!("not ready: {} down", failed.join(", ")))
            .with_extension("checks", checks.into())
            .into_response()
    }
}

async fn openapi(State(state): State<ProbeState>) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], state.openapi.as_str().to_owned()).into_response()
}

/// Header a client sends to make a non-idempotent request safe to repeat
/// (draft-ietf-httpapi-idempotency-key-header); a repeat with the same key replays the outcome.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Cuts a request off after `timeout`. What the client is told depends on whether repeating the
/// request is safe (docs/adr/0011): a timed-out request may have committed its work just before.
async fn enforce_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    let repeatable = request.method().is_safe() || request.headers().contains_key(IDEMPOTENCY_KEY);
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) if repeatable => {
            tracing::warn!(?timeout, "request timed out");
            Problem::service_unavailable(format!(
                "the request did not complete within {timeout:?}; repeating it is safe (same Idempotency-Key, if any)"
            ))
            .into_response()
        }
        Err(_) => {
            tracing::warn!(?timeout, "request timed out; its outcome is unknown");
            Problem::outcome_unknown(format!("the request did not complete within {timeout:?}")).into_response()
        }
    }
}

async fn limit_rate(limits: Arc<RateLimits>, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    match limits.bucket(matched).map(RateLimiter::try_acquire) {
        Some(Err(retry_after)) => Problem::too_many_requests(retry_after).into_response(),
        Some(Ok(())) | None => next.run(request).await,
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

/// The sockets a service serves on, bound before the service is built so that a port conflict
/// fails fast. Without `admin`, the probes and `/metrics` share the API listener.
#[derive(Debug)]
pub struct Listeners {
    pub api: std::net::TcpListener,
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds `server.port` and, when set, `server.admin_port` on `server.host`.
    pub fn bind(config: &ServerConfig) -> anyhow::Result<Self> {
        let bind = |port: u16| {
            std::net::TcpListener::bind((config.host, port))
                .map_err(|e| anyhow::anyhow!("cannot listen on {}:{port}: {e}", config.host))
        };
        Ok(Self { api: bind(config.port)?, admin: config.admin_port.map(bind).transpose()? })
    }
}

impl From<std::net::TcpListener> for Listeners {
    fn from(api: std::net::TcpListener) -> Self {
        Self { api, admin: None }
    }
}

/// How often the TLS certificate and key files are re-read.
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Serves until shutdown completes. The listeners are already bound (tests bind port 0).
pub async fn serve(
    service: Service,
    config: ServerConfig,
    listeners: impl Into<Listeners>,
    lifecycle: Lifecycle,
) -> anyhow::Result<()> {
    let Listeners { api, admin } = listeners.into();
    let (app, admin_app) = match &admin {
        Some(_) => (api_router(&service, &config), Some(admin_router(&service, &config, &lifecycle))),
        None => (router(&service, &config, &lifecycle), None),
    };
    let tls = match &config.tls {
        Some(tls) => Some(tls_config(&tls.cert_path, &tls.key_path).await?),
        None => None,
    };
    let reloader = config.tls.clone().zip(tls.clone()).map(|(files, rustls)| tokio::spawn(reload_tls(files, rustls)));
    let handle = Handle::new();
    let admin_handle = Handle::new();
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin_server = match (admin, admin_app) {
        (Some(listener), Some(app)) => {
            tracing::info!(service = service.name, address = %listener.local_addr()?, scheme, "admin listening");
            let limits = ConnectionLimits::new("admin", &config);
            Some(tokio::spawn(listen(listener, app, tls.clone(), admin_handle.clone(), limits)))
        }
        _ => None,
    };
    tracing::info!(service = service.name, address = %api.local_addr()?, scheme, "listening");
    let served = listen(api, app, tls, handle, ConnectionLimits::new("api", &config)).await;
    // The probes answer (503) until the API has drained; then they stop too.
    orchestrator.abort();
    admin_handle.shutdown();
    let admin_served = match admin_server {
        Some(task) => task.await.map_err(anyhow::Error::from).and_then(|result| result),
        None => Ok(()),
    };
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    lifecycle.workers_stop.cancel();
    for worker in service.workers {
        let _ = worker.await;
    }
    for hook in service.stop_hooks {
        hook.run().await;
    }
    tracing::info!(service = service.name, "stopped");
    served.and(admin_served)
}

/// Serves `app` on `listener` (HTTPS when `tls` is set) until `handle` shuts it down, with the
/// connection limits of `server/connections.rs` (under TLS too).
async fn listen(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<RustlsConfig>,
    handle: Handle,
    limits: ConnectionLimits,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let make_service = Limited::new(app.into_make_service_with_connect_info::<SocketAddr>(), limits);
    match tls {
        Some(tls) => {
            // The guard sits under TLS, so its head deadline covers the handshake as well.
            let acceptor =
                RustlsAcceptor::new(tls).handshake_timeout(limits.header_read_timeout).acceptor(GuardAcceptor);
            let mut server = axum_server::from_tcp(listener).acceptor(acceptor).handle(handle);
            connections::configure(server.http_builder(), &limits);
            server.serve(make_service).await?;
        }
        None => {
            let mut server = axum_server::from_tcp(listener).acceptor(GuardAcceptor).handle(handle);
            connections::configure(server.http_builder(), &limits);
            server.serve(make_service).await?;
        }
    }
    Ok(())
}

/// Re-reads the certificate and key, and swaps them in when they changed (cert-manager renews
/// the mounted Secret in place). A pair that does not load is logged and the old one kept.
async fn reload_tls(files: TlsConfig, rustls: RustlsConfig) {
    let mut current = read_pair(&files).await.ok();
    let mut ticks = tokio::time::interval(TLS_RELOAD_INTERVAL);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Ok(pair) = read_pair(&files).await else {
            tracing::warn!(cert = %files.cert_path.display(), "cannot read the TLS certificate; keeping the current one");
            continue;
        };
        if current.as_ref() == Some(&pair) {
            continue;
        }
        match server_config(&pair.0, &pair.1) {
            Ok(config) => {
                rustls.reload_from_config(Arc::new(config));
                tracing::info!(cert = %files.cert_path.display(), "TLS certificate reloaded");
                current = Some(pair);
            }
            Err(error) => tracing::warn!(%error, "the renewed TLS certificate does not load; keeping the current one"),
        }
    }
}

async fn read_pair(files: &TlsConfig) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    Ok((tokio::fs::read(&files.cert_path).await?, tokio::fs::read(&files.key_path).await?))
}

async fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<RustlsConfig> {
    let certs = tokio::fs::read(cert).await?;
    let key = tokio::fs::read(key).await?;
    Ok(RustlsConfig::from_config(Arc::new(server_config(&certs, &key)?)))
}

fn server_config(certs: &[u8], key: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(certs).collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // axum-server serves both (hyper's auto builder), so both are offered.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}
