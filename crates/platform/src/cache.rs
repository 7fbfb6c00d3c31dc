//! Redis cache-aside with a time budget and a circuit breaker: Redis trouble is never the client's.

use std::future::Future;
use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use deadpool_redis::{Pool, Runtime};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::breaker::CircuitBreaker;
use crate::config::{ConfigError, RedisConfig};

/// A JSON cache in Redis. Every failure (down, slow, bad data) degrades to a miss: callers then
/// read PostgreSQL, the source of truth; a warning is logged and `cache_operations_total` counts it.
#[derive(Debug)]
pub struct Cache {
    name: &'static str,
    pool: Pool,
    breaker: CircuitBreaker,
    operation_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
    Stored,
    Error,
    /// Not attempted because the circuit is open.
    Skipped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stored => "stored",
            Self::Error => "error",
            Self::Skipped => "skipped",
        }
    }
}

impl Cache {
    /// Builds the pool; connections are made lazily, so a down Redis does not block startup.
    pub fn new(name: &'static str, config: &RedisConfig) -> Result<Self, ConfigError> {
        let mut pool_config = deadpool_redis::Config::from_url(config.url.expose());
        let mut pool = deadpool_redis::PoolConfig::new(config.pool_size.max(1));
        pool.timeouts.wait = Some(config.operation_timeout);
        pool.timeouts.create = Some(config.operation_timeout);
        pool.timeouts.recycle = Some(config.operation_timeout);
        pool_config.pool = Some(pool);
        let pool = pool_config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| ConfigError::new("redis.url", format!("cannot build a Redis pool: {e}")))?;
        Ok(Self {
            name,
            pool,
            breaker: CircuitBreaker::new("redis", config.breaker_failure_threshold, config.breaker_open_for),
            operation_timeout: config.operation_timeout,
        })
    }

    /// Reads a cached value; any failure is reported as a miss.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        // `None` here means the read failed or was skipped; `run` has already counted it.
        let raw = self.run("get", async |mut conn| conn.get::<_, Option<String>>(key).await).await?;
        let Some(text) = raw else {
            self.count("get", Outcome::Miss);
            return None;
        };
        match serde_json::from_str(&text) {
            Ok(value) => {
                self.count("get", Outcome::Hit);
                Some(value)
            }
            Err(error) => {
                self.count("get", Outcome::Error);
                tracing::warn!(cache = self.name, key, %error, "undecodable cache entry ignored");
                None
            }
        }
    }

    /// Stores a value with a time to live; failures are logged and otherwise ignored.
    pub async fn set<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        let Ok(text) = serde_json::to_string(value) else { return };
        let seconds = ttl.as_secs().max(1);
        if self.run("set", async |mut conn| conn.set_ex::<_, _, ()>(key, text, seconds).await).await.is_some() {
            self.count("set", Outcome::Stored);
        }
    }

    /// Cache-aside: the cached value, or `load()` (then cached when it returns `Some`).
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, ttl: Duration, load: F) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        if let Some(hit) = self.get(key).await {
            return Ok(Some(hit));
        }
        let loaded = load().await?;
        if let Some(value) = &loaded {
            self.set(key, value, ttl).await;
        }
        Ok(loaded)
    }

    /// The state of the breaker in front of Redis (open: the cache is skipped).
    pub fn circuit_state(&self) -> crate::breaker::BreakerState {
        self.breaker.state()
    }

    /// Whether Redis answers PING within the budget (reported by `/ready`, never fatal).
    pub async fn is_reachable(&self) -> bool {
        let ping = async {
            let mut conn = self.pool.get().await.ok()?;
            deadpool_redis::redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
        };
        matches!(tokio::time::timeout(self.operation_timeout, ping).await, Ok(Some(_)))
    }

    async fn run<R, F>(&self, op: &'static str, command: F) -> Option<R>
    where
        F: AsyncFnOnce(deadpool_redis::Connection) -> deadpool_redis::redis::RedisResult<R>,
    {
        // Held across the awaits below: if this future is dropped (the request timed out, the
        // client went away), the permit is abandoned, never left holding the half-open trial.
        let Some(permit) = self.breaker.try_acquire() else {
            self.count(op, Outcome::Skipped);
            return None;
        };
        let attempt = async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            command(conn).await.map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(self.operation_timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!("no answer within {:?}", self.operation_timeout)),
        };
        match result {
            Ok(value) => {
                permit.succeeded();
                Some(value)
            }
            Err(error) => {
                permit.failed();
                self.count(op, Outcome::Error);
                tracing::warn!(cache = self.name, op, %error, "cache unavailable; falling back to the database");
                None
            }
        }
    }

    fn count(&self, op: &'static str, outcome: Outcome) {
        metrics::counter!("cache_operations_total", "cache" => self.name, "op" => op, "outcome" => outcome.label())
            .increment(1);
    }
}

/// `/ready`'s `redis` check: reported, never required, since reads and writes fall back to
/// PostgreSQL without Redis. Bounded by the cache's operation timeout.
pub fn readiness_check(cache: &std::sync::Arc<Cache>) -> crate::server::ReadinessCheck {
    let (cache, timeout) = (cache.clone(), cache.operation_timeout);
    crate::server::ReadinessCheck::reported("redis", timeout, move || {
        let cache = cache.clone();
        async move { cache.is_reachable().await }
    })
}
