//! A circuit breaker whose half-open trial is cancelled (its caller timed out or went away) still
//! recovers: the next call is tried, and its success closes the circuit. Before, the cancelled
//! trial stayed "in flight" forever and every call was refused until a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use platform::breaker::BreakerState;
use platform::client::{ClientConfig, ClientError, ResilientClient};

const OPEN_FOR: Duration = Duration::from_millis(200);

/// A dependency on 127.0.0.1 that answers its first request 503, hangs on its second, and
/// answers 200 after that. Returns its URL and how many requests reached it.
async fn dependency() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let counter = counter.clone();
            async move {
                match counter.fetch_add(1, Ordering::SeqCst) {
                    0 => http::StatusCode::SERVICE_UNAVAILABLE,
                    1 => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        http::StatusCode::OK
                    }
                    _ => http::StatusCode::OK,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn a_cancelled_half_open_trial_lets_the_breaker_recover() {
    let (url, seen) = dependency().await;
    let config = ClientConfig {
        timeout: Duration::from_secs(30),
        max_attempts: 1,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        breaker_failure_threshold: 1,
        breaker_open_for: OPEN_FOR,
        ca_path: None,
    };
    let client = ResilientClient::new("dependency", config).expect("client");
    let call = || client.send_idempotent(None, |http| http.get(&url));

    // One failure opens the circuit; calls are then refused without reaching the dependency.
    assert!(matches!(call().await, Err(ClientError::Status { status: 503, .. })));
    assert_eq!(client.circuit_state(), BreakerState::Open);
    assert!(matches!(call().await, Err(ClientError::CircuitOpen(_))));
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // After the open period, one trial goes through; it hangs, and its caller gives up on it.
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(50)).await;
    let cancelled = tokio::time::timeout(Duration::from_millis(300), call()).await;
    assert!(cancelled.is_err(), "the trial was cancelled mid-call: {cancelled:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "the trial reached the dependency");
    assert_eq!(client.circuit_state(), BreakerState::HalfOpen);

    // The next call is the new trial: it is attempted, succeeds, and closes the circuit.
    let response = call().await.expect("the next call is tried and succeeds");
    assert_eq!(response.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(client.circuit_state(), BreakerState::Closed);
}

#[tokio::test]
async fn the_redis_cache_comes_back_after_a_cancelled_trial() {
    let mut redis = platform::testkit::RedisServer::start();
    let config: platform::config::RedisConfig = toml::from_str(&format!(
        r#"url = "{}"
pool_size = 2
operation_timeout = "500ms"
breaker_failure_threshold = 1
breaker_open_for = "{}ms""#,
        redis.url(),
        OPEN_FOR.as_millis()
    ))
    .expect("redis config");
    // Redis alone: an in-process hit would hide whether Redis answers again.
    let memory_off = platform::cache::MemoryCacheConfig { max_bytes: 0, ttl: Duration::ZERO };
    let cache = platform::cache::Cache::new("test", &config, &memory_off).expect("cache");

    redis.stop();
    assert_eq!(cache.get::<String>("key").await, None);
    assert_eq!(cache.circuit_state(), BreakerState::Open, "one failure opens the circuit");
    redis.restart();
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(50)).await;

    // The trial is polled once (it takes the permit and starts connecting), then dropped.
    let cancelled = tokio::time::timeout(Duration::ZERO, cache.get::<String>("key")).await;
    assert!(cancelled.is_err(), "the trial was cancelled before it finished");
    assert_eq!(cache.circuit_state(), BreakerState::HalfOpen);

    // Redis is used again: the next call is the trial, and it closes the circuit.
    cache.set("key", &"value".to_owned(), Duration::from_secs(60)).await;
    assert_eq!(cache.circuit_state(), BreakerState::Closed);
    assert_eq!(cache.get::<String>("key").await.as_deref(), Some("value"));
}
