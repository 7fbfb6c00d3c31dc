//! Resilient outgoing HTTP: per-attempt timeout, retries with backoff + jitter, circuit breaker,
//! and W3C trace propagation.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::breaker::CircuitBreaker;
use crate::trace_context::{self, TRACEPARENT, TraceContext};

/// Retry and breaker settings for one downstream dependency.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub breaker_failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// PEM file of the CA that signs the dependency's certificate (the in-cluster CA). When set,
    /// only this CA is trusted and plain `http://` URLs are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<std::path::PathBuf>,
}

impl ClientConfig {
    /// Checks what types cannot; `key` is where this config sits (e.g. `webhook.client`).
    pub fn validate(&self, key: &str) -> Result<(), crate::config::ConfigError> {
        if self.max_attempts == 0 {
            return Err(crate::config::ConfigError::new(format!("{key}.max_attempts"), "must be at least 1"));
        }
        if let Some(path) = &self.ca_path
            && !path.is_file()
        {
            return Err(crate::config::ConfigError::new(
                format!("{key}.ca_path"),
                format!("file {} does not exist", path.display()),
            ));
        }
        Ok(())
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read the CA file {path}: {source}")]
    CaFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("the CA file {0} holds no PEM certificate")]
    NoCertificate(std::path::PathBuf),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// Why a call failed after all attempts.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("circuit open for {0}: call not attempted")]
    CircuitOpen(&'static str),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("downstream answered {status}")]
    Status { status: u16, retry_after: Option<Duration> },
}

/// An HTTP client for one dependency (e.g. notification-service).
#[derive(Debug)]
pub struct ResilientClient {
    name: &'static str,
    http: reqwest::Client,
    config: ClientConfig,
    breaker: CircuitBreaker,
}

impl ResilientClient {
    pub fn new(name: &'static str, config: ClientConfig) -> Result<Self, ClientBuildError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // A dependency that redirects is misconfigured or compromised: never follow it
            // somewhere else with our signed payload.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("quilla-platform/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_path {
            let pem = std::fs::read(path).map_err(|source| ClientBuildError::CaFile { path: path.clone(), source })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)?;
            if certificates.is_empty() {
                return Err(ClientBuildError::NoCertificate(path.clone()));
            }
            builder = builder.tls_certs_only(certificates).https_only(true);
        }
        let http = builder.build()?;
        let breaker = CircuitBreaker::new(name, config.breaker_failure_threshold, config.breaker_open_for);
        Ok(Self { name, http, config, breaker })
    }

    /// Whether calls are currently refused by the open circuit (callers may skip work).
    pub fn is_circuit_open(&self) -> bool {
        self.breaker.is_rejecting()
    }

    /// The breaker's state (closed, half-open, open), as the `circuit_breaker_state` gauge shows it.
    pub fn circuit_state(&self) -> crate::breaker::BreakerState {
        self.breaker.state()
    }

    /// Sends the request built by `build` (called once per attempt), retrying transport errors,
    /// 429 and 5xx. Only use it for idempotent requests: a retry may repeat a request whose
    /// response was lost. `trace` is the parent context (the current request's when `None`).
    pub async fn send_idempotent<F>(
        &self,
        trace: Option<TraceContext>,
        build: F,
    ) -> Result<reqwest::Response, ClientError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let parent = trace.or_else(trace_context::current).unwrap_or_else(TraceContext::new_root);
        let mut attempt = 1;
        loop {
            // Dropped unreported if this future is cancelled mid-attempt: the breaker then treats
            // the attempt as abandoned (and hands a half-open trial to the next call).
            let Some(permit) = self.breaker.try_acquire() else {
                return Err(ClientError::CircuitOpen(self.name));
            };
            let started = std::time::Instant::now();
            // The receiver's parent is the span making this call (the request or delivery span).
            let outcome = build(&self.http).header(TRACEPARENT, parent.to_string()).send().await;
            let result = match outcome {
                Ok(response) if response.status().is_success() => Ok(response),
                Ok(response) => {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Err(ClientError::Status { status: response.status().as_u16(), retry_after })
                }
                Err(error) => Err(ClientError::Transport(crate::error_chain(&error))),
            };
            // Every attempt counts, whether it succeeded or not.
            metrics::histogram!("http_client_request_duration_seconds", "client" => self.name)
                .record(started.elapsed().as_secs_f64());
            let retryable = match &result {
                Ok(_) => {
                    permit.succeeded();
                    return result;
                }
                Err(ClientError::Status { status, .. }) if *status < 500 && *status != 429 => {
                    // The dependency is healthy; the request itself is wrong. Retrying will not help.
                    permit.succeeded();
                    false
                }
                Err(_) => {
                    permit.failed();
                    true
                }
            };
            if !retryable || attempt >= self.config.max_attempts {
                return result;
            }
            let server_hint = match &result {
                Err(ClientError::Status { retry_after, .. }) => *retry_after,
                _ => None,
            };
            let delay =
                server_hint.unwrap_or_else(|| backoff(attempt, self.config.backoff_base, self.config.backoff_max));
            tracing::debug!(client = self.name, attempt, ?delay, error = ?result.as_ref().err(), "retrying");
            tokio::time::sleep(delay.min(self.config.backoff_max)).await;
            attempt += 1;
        }
    }
}

/// Exponential backoff with full jitter: a random delay in `[0, min(max, base * 2^(attempt-1))]`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << exponent).min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local server that answers 503 to its first `failures` requests and 200 after that.
    fn flaky_server(failures: usize) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let seen = Arc::clone(&seen);
                async move {
                    let code = if seen.fetch_add(1, Ordering::SeqCst) < failures { 503 } else { 200 };
                    http::StatusCode::from_u16(code).expect("status")
                }
            }),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        format!("http://{address}/")
    }

    #[test]
    fn every_attempt_is_timed_whether_it_fails_or_succeeds() {
        let url = flaky_server(2);
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let config = ClientConfig {
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            breaker_failure_threshold: 10,
            breaker_open_for: Duration::from_secs(1),
            ca_path: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        // The recorder is local to this thread, and the current-thread runtime polls the call on it.
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let client = ResilientClient::new("flaky", config).expect("client");
                let response = client.send_idempotent(None, |http| http.get(&url)).await.expect("third attempt");
                assert_eq!(response.status().as_u16(), 200);
            });
        });
        let exposition = handle.render();
        let count = exposition
            .lines()
            .find_map(|line| line.strip_prefix("http_client_request_duration_seconds_count{client=\"flaky\"} "))
            .unwrap_or_else(|| panic!("no attempt timed:\n{exposition}"));
        assert_eq!(count, "3", "two 503s and the 200 are three attempts");
    }

    proptest! {
        #[test]
        fn backoff_stays_within_exponential_ceiling(attempt in 1u32..40, base_ms in 1u64..1000, max_ms in 1u64..60_000) {
            let base = Duration::from_millis(base_ms);
            let max = Duration::from_millis(max_ms);
            let delay = backoff(attempt, base, max);
            let ceiling = base.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            prop_assert!(delay <= ceiling);
        }
    }
}
