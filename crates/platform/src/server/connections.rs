//! What each listener enforces per connection, so that slow or stuck clients cannot hold the
//! server: a deadline for request heads, an idle timeout, a cap on open connections and on the
//! size of a request head.
//!
//! What the stack offers, and why some of it is done here (sources in `~/.cargo/registry`):
//! - hyper 1.12 has an HTTP/1 `header_read_timeout` (`server/conn/http1.rs`), but it acts only
//!   with a timer set (`common/time.rs`, `Time::check`), and axum-server 0.7.3 sets none
//!   (`server.rs`: `Builder::new(TokioExecutor::new())`): so, before this module, no deadline at
//!   all. Its clock also starts as soon as a connection waits for a head, kept-alive ones
//!   included (`proto/h1/conn.rs`: `poll_read_head`, and `State::idle` sets `notify_read` to
//!   restart it), so it cannot tell an idle keep-alive connection (fine for a long while: the
//!   ALB's are) from a request head that trickles in (a slowloris, cut quickly). Nor does it
//!   cover a connection that never sends its first byte: hyper-util's auto builder first waits,
//!   without any deadline, for the bytes that tell HTTP/1 from HTTP/2 (`server/conn/auto`).
//!   [`Guarded`] therefore keeps both clocks itself, under the TLS layer, so that a TLS
//!   handshake that stalls is cut off by the same deadline; hyper's timeout is kept as a
//!   backstop that can never fire first.
//! - hyper has no idle timeout for kept-alive HTTP/1 connections and, for HTTP/2, only
//!   keep-alive pings (`http2().keep_alive_interval`), which detect a dead peer, not an idle
//!   live one: the idle timeout is [`Guarded`]'s too.
//! - axum-server's `RustlsAcceptor::handshake_timeout` (10 s by default, `tls_rustls/mod.rs`)
//!   bounds the TLS handshake on its own; it is set to the header read timeout as well.
//! - Request head size: hyper's `http1::Builder::max_header_size` is not reachable through
//!   hyper-util 0.1.21's auto builder, but `http1().max_buf_size` is, and a head that fills the
//!   read buffer is answered 431 (`proto/h1/io.rs`, `parse`; `role.rs` maps `TooLarge` to 431).
//!   HTTP/2 gets `http2().max_header_list_size`.
//! - Nothing in axum-server limits connections: its accept loop accepts and spawns without bound
//!   (`server.rs`, `serve`). It does wait for the make-service's `poll_ready` before making each
//!   connection's service, so [`Limited`] makes `poll_ready` wait for a free slot: at the limit
//!   the loop stops accepting and new connections wait in the kernel's accept queue (bounded by
//!   the listen backlog), rather than being accepted and refused. Waiting was chosen because a
//!   connection refused by a backend is an error (a 502) for a request that the ALB already
//!   accepted, while a wait is only latency; the slots that slow clients hold are freed by the
//!   timeouts above, so the wait is short, and it costs this process nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::HttpBody;
use axum_server::accept::Accept;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSemaphore;

use crate::config::ServerConfig;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The per-connection limits of one listener, from [`ServerConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// `api` or `admin`: the `listener` label of the connection metrics.
    pub listener: &'static str,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    pub fn new(listener: &'static str, config: &ServerConfig) -> Self {
        Self {
            listener,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections.max(1),
            max_header_bytes: config.max_header_bytes.max(crate::config::MIN_HEADER_BYTES),
        }
    }
}

/// Applies hyper's own knobs: the head size limit, and hyper's header timeout as a backstop.
pub(crate) fn configure(builder: &mut Builder<TokioExecutor>, limits: &ConnectionLimits) {
    builder
        .http1()
        .timer(TokioTimer::new())
        // Starts when hyper begins waiting for a head, so at most idle + header after ours.
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
}

/// Where a connection is between requests, for its deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head, since this instant (the accept, or its first byte).
    AwaitingHead(Instant),
    /// Between requests, nothing received, since this instant.
    Idle(Instant),
}

#[derive(Debug)]
struct Activity {
    /// Requests being served (HTTP/2 may have several at once), until their response is sent.
    in_flight: usize,
    phase: Phase,
    /// The last byte read or written.
    last_progress: Instant,
    /// HTTP/2 connections carry frames between requests (pings, window updates, settings acks),
    /// so bytes arriving between requests are not the start of a request head there.
    http2: bool,
}

/// The shared state of one connection: its I/O ([`Guarded`]) and its service ([`Tracked`]).
/// Holds the connection's slot under `max_connections` until both are gone.
#[derive(Debug)]
pub(crate) struct Connection {
    limits: ConnectionLimits,
    activity: Mutex<Activity>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connection {
    fn new(limits: ConnectionLimits, slot: Option<OwnedSemaphorePermit>) -> Self {
        let now = Instant::now();
        metrics::gauge!("http_server_connections", "listener" => limits.listener).increment(1.0);
        Self {
            limits,
            activity: Mutex::new(Activity {
                in_flight: 0,
                phase: Phase::AwaitingHead(now),
                last_progress: now,
                http2: false,
            }),
            _slot: slot,
        }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let now = Instant::now();
        let mut activity = self.activity();
        activity.last_progress = now;
        if activity.in_flight == 0 && !activity.http2 && matches!(activity.phase, Phase::Idle(_)) {
            activity.phase = Phase::AwaitingHead(now);
        }
    }

    fn bytes_written(&self) {
        self.activity().last_progress = Instant::now();
    }

    fn request_started(&self, version: http::Version) {
        let mut activity = self.activity();
        activity.in_flight += 1;
        activity.http2 |= version == http::Version::HTTP_2;
    }

    fn request_finished(&self) {
        let now = Instant::now();
        let mut activity = self.activity();
        activity.in_flight = activity.in_flight.saturating_sub(1);
        activity.last_progress = now;
        if activity.in_flight == 0 {
            activity.phase = Phase::Idle(now);
        }
    }

    /// When the connection is to be closed if it is still waiting then, and why.
    fn deadline(&self) -> (Instant, &'static str) {
        let activity = self.activity();
        if activity.in_flight > 0 {
            // Mid-request: only a connection on which nothing moves at all is dropped.
            return (activity.last_progress + self.limits.idle_timeout, "idle");
        }
        match activity.phase {
            Phase::AwaitingHead(since) => (since + self.limits.header_read_timeout, "header"),
            Phase::Idle(since) => (since + self.limits.idle_timeout, "idle"),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::gauge!("http_server_connections", "listener" => self.limits.listener).decrement(1.0);
    }
}

/// The make-service of a listener: one free slot under `max_connections` per new connection, or
/// `poll_ready` waits (and with it axum-server's accept loop).
pub(crate) struct Limited<M> {
    inner: M,
    limits: ConnectionLimits,
    slots: PollSemaphore,
    slot: Option<OwnedSemaphorePermit>,
    waiting: bool,
    /// The last warning that the limit was reached: one a minute at most, the counter has the rest.
    warned_at: Option<Instant>,
}

impl<M> Limited<M> {
    pub fn new(inner: M, limits: ConnectionLimits) -> Self {
        let slots = PollSemaphore::new(Arc::new(Semaphore::new(limits.max_connections)));
        Self { inner, limits, slots, slot: None, waiting: false, warned_at: None }
    }
}

/// How often, at most, a listener logs that its connection limit was reached.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl<M, T> tower::Service<T> for Limited<M>
where
    M: tower::Service<T>,
    M::Future: Send + 'static,
{
    type Response = Tracked<M::Response>;
    type Error = M::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.is_none() {
            match self.slots.poll_acquire(cx) {
                Poll::Pending => {
                    if !self.waiting {
                        self.waiting = true;
                        metrics::counter!("http_server_connection_limit_reached_total", "listener" => self.limits.listener)
                            .increment(1);
                        if self.warned_at.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL) {
                            self.warned_at = Some(Instant::now());
                            tracing::warn!(
                                listener = self.limits.listener,
                                max_connections = self.limits.max_connections,
                                "connection limit reached; new connections wait for a free slot"
                            );
                        }
                    }
                    return Poll::Pending;
                }
                // `None` only if the semaphore were closed, which it never is.
                Poll::Ready(slot) => {
                    self.waiting = false;
                    self.slot = slot;
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, target: T) -> Self::Future {
        let connection = Arc::new(Connection::new(self.limits, self.slot.take()));
        let making = self.inner.call(target);
        Box::pin(async move { making.await.map(|inner| Tracked { inner, connection }) })
    }
}

/// A connection's service: tells its [`Connection`] when requests start and end.
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Tracked<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.connection.request_started(request.version());
        // Ends the request when dropped: with the response body once it is sent, or with this
        // future if the connection goes away first.
        let in_flight = InFlight(self.connection.clone());
        let responding = self.inner.call(request);
        Box::pin(async move {
            let response = responding.await?;
            Ok(response.map(|body| TrackedBody { body, _in_flight: in_flight }))
        })
    }
}

#[derive(Debug)]
struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that ends its request when dropped (hyper drops it once sent).
#[derive(Debug)]
pub(crate) struct TrackedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: HttpBody + Unpin> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The acceptor under TLS (or alone): wraps each TCP stream in [`Guarded`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GuardAcceptor;

impl<I, S> Accept<I, Tracked<S>> for GuardAcceptor {
    type Stream = Guarded<I>;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Guarded<I>, Tracked<S>)>>;

    fn accept(&self, stream: I, service: Tracked<S>) -> Self::Future {
        let (deadline, _) = service.connection.deadline();
        let guarded = Guarded {
            io: stream,
            connection: service.connection.clone(),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            expired: false,
        };
        std::future::ready(Ok((guarded, service)))
    }
}

/// A connection's byte stream, which fails with `TimedOut` once its [`Connection`]'s deadline
/// passes while it waits for the client: hyper (or the TLS handshake) then closes it.
#[derive(Debug)]
pub(crate) struct Guarded<I> {
    io: I,
    connection: Arc<Connection>,
    timer: Pin<Box<Sleep>>,
    expired: bool,
}

impl<I> Guarded<I> {
    /// Called when the stream would wait: `Ready` with the error to return once the deadline has
    /// passed, otherwise `Pending` with a wake-up set for it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let (deadline, reason) = self.connection.deadline();
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        if !self.expired {
            self.expired = true;
            let listener = self.connection.limits.listener;
            metrics::counter!("http_server_connection_timeouts_total", "listener" => listener, "reason" => reason)
                .increment(1);
            tracing::debug!(listener, reason, "closing a connection that ran out of time");
        }
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, format!("connection {reason} timeout")))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.connection.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl<I> Guarded<I> {
    /// A write's outcome: bytes out count as progress; a pending write waits under the deadline.
    fn after_write(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.connection.bytes_written();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
