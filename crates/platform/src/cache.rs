//! Two-layer cache-aside: a bounded in-process layer in front of Redis (with a time budget and a
//! circuit breaker, so Redis trouble is never the client's).
//!
//! The in-process layer is for values that never change once written (a transaction): an entry
//! needs no invalidation, only a bound on memory and a time to live. It is `moka`'s sync cache
//! (<https://docs.rs/moka/0.12>): a concurrent hash map with TinyLFU admission (a one-off read
//! does not push out a hot id), a weigher for a byte bound, per-entry expiry and an eviction
//! listener for the metrics. `quick_cache` was the smaller alternative, but has no time to live,
//! which would have meant hand-written expiry beside it. A hit there costs a hash lookup and a
//! clone instead of a Redis round trip, which wakes Redis and then this process again
//! (docs/benchmarks.md has the profile).

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use deadpool_redis::{Pool, Runtime};
use metrics::{Counter, Gauge};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::breaker::CircuitBreaker;
use crate::config::{ConfigError, RedisConfig};

/// The in-process layer's bounds (a service's `[memory_cache]` section).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryCacheConfig {
    /// Upper bound on what the entries hold, estimated per entry as its key, its JSON and a fixed
    /// overhead ([`ENTRY_OVERHEAD_BYTES`]). 0 turns the layer off.
    pub max_bytes: u64,
    /// How long an entry is served from memory after it was stored.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// Bookkeeping counted for each in-process entry beside its key and JSON: the map's node, the
/// typed value's own fields and its allocations' headers (an estimate, on the safe side).
pub const ENTRY_OVERHEAD_BYTES: usize = 256;

/// The longest `ttl` accepted: memory holds hot ids, longer-lived reads are Redis's.
const MAX_MEMORY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl MemoryCacheConfig {
    /// Checks the bounds; `section` is the dotted prefix for error keys (`memory_cache`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.max_bytes > 0 && (self.ttl.is_zero() || self.ttl > MAX_MEMORY_TTL) {
            return Err(ConfigError::new(format!("{section}.ttl"), "must be longer than zero and at most 24h"));
        }
        Ok(())
    }
}

/// A JSON cache in Redis, fronted by a bounded in-process layer. Every failure (down, slow, bad
/// data) degrades to a miss: callers then read PostgreSQL, the source of truth; a warning is
/// logged and `cache_operations_total` counts it.
#[derive(Debug)]
pub struct Cache {
    name: &'static str,
    pool: Pool,
    breaker: CircuitBreaker,
    operation_timeout: Duration,
    memory: Option<Memory>,
}

/// The in-process layer and its metric handles (registered once: the hot path does no label lookups).
#[derive(Debug)]
struct Memory {
    entries: moka::sync::Cache<String, Entry>,
    hits: Counter,
    misses: Counter,
    stored: Counter,
    size_entries: Gauge,
    size_bytes: Gauge,
}

/// A cached value of any type (a cache holds one type per key prefix; a different one reads as a miss).
#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    weight: u32,
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
    /// Builds the pool (connections are made lazily, so a down Redis does not block startup) and
    /// the in-process layer, unless `memory.max_bytes` is 0.
    pub fn new(name: &'static str, config: &RedisConfig, memory: &MemoryCacheConfig) -> Result<Self, ConfigError> {
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
            memory: (memory.max_bytes > 0).then(|| Memory::new(name, memory)),
        })
    }

    /// Reads a cached value, from memory first, then from Redis (a Redis hit is then kept in
    /// memory); any failure is reported as a miss.
    pub async fn get<T>(&self, key: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if let Some(hit) = self.memory.as_ref().and_then(|memory| memory.get(key)) {
            return Some(hit);
        }
        // `None` here means the read failed or was skipped; `run` has already counted it.
        let raw = self.run("get", async |mut conn| conn.get::<_, Option<String>>(key).await).await?;
        let Some(text) = raw else {
            self.count("get", Outcome::Miss);
            return None;
        };
        match serde_json::from_str::<T>(&text) {
            Ok(value) => {
                self.count("get", Outcome::Hit);
                if let Some(memory) = &self.memory {
                    memory.insert(key, value.clone(), text.len());
                }
                Some(value)
            }
            Err(error) => {
                self.count("get", Outcome::Error);
                tracing::warn!(cache = self.name, key, %error, "undecodable cache entry ignored");
                None
            }
        }
    }

    /// Stores a value in memory and in Redis with a time to live (memory keeps it for its own,
    /// configured one); Redis failures are logged and otherwise ignored.
    pub async fn set<T>(&self, key: &str, value: &T, ttl: Duration)
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let Ok(text) = serde_json::to_string(value) else { return };
        if let Some(memory) = &self.memory {
            memory.insert(key, value.clone(), text.len());
        }
        let seconds = ttl.as_secs().max(1);
        if self.run("set", async |mut conn| conn.set_ex::<_, _, ()>(key, text, seconds).await).await.is_some() {
            self.count("set", Outcome::Stored);
        }
    }

    /// Cache-aside: the cached value, or `load()` (then cached when it returns `Some`).
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, ttl: Duration, load: F) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
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
        redis_counter(self.name, op, outcome).increment(1);
    }
}

fn redis_counter(cache: &'static str, op: &'static str, outcome: Outcome) -> Counter {
    metrics::counter!("cache_operations_total", "cache" => cache, "layer" => "redis", "op" => op, "outcome" => outcome.label())
}

fn memory_counter(cache: &'static str, op: &'static str, outcome: Outcome) -> Counter {
    metrics::counter!("cache_operations_total", "cache" => cache, "layer" => "memory", "op" => op, "outcome" => outcome.label())
}

impl Memory {
    fn new(name: &'static str, config: &MemoryCacheConfig) -> Self {
        let expired = metrics::counter!("cache_memory_evictions_total", "cache" => name, "reason" => "expired");
        let evicted = metrics::counter!("cache_memory_evictions_total", "cache" => name, "reason" => "size");
        // Zero from the start, so a rate over a fresh process is 0 rather than absent.
        for counter in [&expired, &evicted] {
            counter.increment(0);
        }
        for outcome in [Outcome::Hit, Outcome::Miss] {
            redis_counter(name, "get", outcome).increment(0);
        }
        let entries = moka::sync::Cache::builder()
            .name(name)
            .max_capacity(config.max_bytes)
            .weigher(|_key: &String, entry: &Entry| entry.weight)
            .time_to_live(config.ttl)
            .eviction_listener(move |_key, _entry, cause| match cause {
                moka::notification::RemovalCause::Expired => expired.increment(1),
                moka::notification::RemovalCause::Size => evicted.increment(1),
                // Replaced or removed on purpose: nothing was lost.
                moka::notification::RemovalCause::Replaced | moka::notification::RemovalCause::Explicit => {}
            })
            .build();
        let memory = Self {
            entries,
            hits: memory_counter(name, "get", Outcome::Hit),
            misses: memory_counter(name, "get", Outcome::Miss),
            stored: memory_counter(name, "set", Outcome::Stored),
            size_entries: metrics::gauge!("cache_memory_entries", "cache" => name),
            size_bytes: metrics::gauge!("cache_memory_bytes", "cache" => name),
        };
        for counter in [&memory.hits, &memory.misses, &memory.stored] {
            counter.increment(0);
        }
        memory.size_entries.set(0.0);
        memory.size_bytes.set(0.0);
        memory
    }

    fn get<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        let found = self.entries.get(key).and_then(|entry| entry.value.downcast_ref::<T>().cloned());
        if found.is_some() {
            self.hits.increment(1);
        } else {
            self.misses.increment(1);
            // Expiry and eviction happen in moka's maintenance, without a handle to this struct.
            self.publish_size();
        }
        found
    }

    fn insert<T: Send + Sync + 'static>(&self, key: &str, value: T, json_bytes: usize) {
        let weight = u32::try_from(key.len() + json_bytes + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX);
        self.entries.insert(key.to_owned(), Entry { value: Arc::new(value), weight });
        self.stored.increment(1);
        self.publish_size();
    }

    /// moka's counts trail its pending maintenance a little; good enough for a gauge.
    fn publish_size(&self) {
        self.size_entries.set(self.entries.entry_count() as f64);
        self.size_bytes.set(self.entries.weighted_size() as f64);
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("weight", &self.weight).finish_non_exhaustive()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::secret::Secret;

    /// A cache whose Redis refuses connections: whatever it answers comes from memory.
    fn without_redis(max_bytes: u64, ttl: Duration) -> Cache {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let redis = RedisConfig {
            url: Secret::new(format!("redis://127.0.0.1:{}", port.expect("a free port"))),
            pool_size: 2,
            operation_timeout: Duration::from_millis(200),
            breaker_failure_threshold: 1000,
            breaker_open_for: Duration::from_secs(1),
        };
        Cache::new("test", &redis, &MemoryCacheConfig { max_bytes, ttl }).expect("cache")
    }

    /// Loads `value` through the cache, counting the loads.
    async fn read(cache: &Cache, key: &str, value: &str, loads: &AtomicUsize) -> Option<String> {
        let load = async || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Some(value.to_owned()))
        };
        cache.get_or_load(key, Duration::from_secs(60), load).await.expect("loads")
    }

    #[tokio::test]
    async fn a_loaded_value_is_served_from_memory_when_redis_is_down() {
        let cache = without_redis(1 << 20, Duration::from_secs(60));
        let loads = AtomicUsize::new(0);
        assert_eq!(read(&cache, "k", "v1", &loads).await.as_deref(), Some("v1"));
        assert_eq!(read(&cache, "k", "v2", &loads).await.as_deref(), Some("v1"), "the first value, from memory");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get::<String>("other").await, None);
    }

    #[tokio::test]
    async fn a_stored_value_is_read_from_memory_and_another_type_is_a_miss() {
        let cache = without_redis(1 << 20, Duration::from_secs(60));
        cache.set("k", &42_u32, Duration::from_secs(60)).await;
        assert_eq!(cache.get::<u32>("k").await, Some(42));
        assert_eq!(cache.get::<String>("k").await, None);
    }

    #[tokio::test]
    async fn zero_bytes_turns_the_memory_layer_off() {
        let cache = without_redis(0, Duration::from_secs(60));
        let loads = AtomicUsize::new(0);
        read(&cache, "k", "v", &loads).await;
        read(&cache, "k", "v", &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2, "nothing remembered");
    }

    #[tokio::test]
    async fn entries_expire_after_the_memory_ttl() {
        let cache = without_redis(1 << 20, Duration::from_millis(100));
        let loads = AtomicUsize::new(0);
        read(&cache, "k", "v", &loads).await;
        read(&cache, "k", "v", &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        read(&cache, "k", "v", &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2, "expired, so loaded again");
    }

    #[tokio::test]
    async fn the_memory_layer_stays_within_its_byte_bound() {
        let max_bytes = 10 * (ENTRY_OVERHEAD_BYTES as u64 + 64);
        let cache = without_redis(max_bytes, Duration::from_secs(60));
        for i in 0..200 {
            cache.set(&format!("key-{i}"), &format!("value-{i}"), Duration::from_secs(60)).await;
        }
        let memory = cache.memory.as_ref().expect("on");
        memory.entries.run_pending_tasks();
        assert!(memory.entries.weighted_size() <= max_bytes, "{} > {max_bytes}", memory.entries.weighted_size());
        let held = memory.entries.entry_count();
        assert!(held > 0 && held * ENTRY_OVERHEAD_BYTES as u64 <= max_bytes, "{held} of 200 entries kept");
    }

    #[test]
    fn a_memory_ttl_of_zero_or_beyond_a_day_names_the_key() {
        let config = |max_bytes, ttl| MemoryCacheConfig { max_bytes, ttl };
        for ttl in [Duration::ZERO, Duration::from_secs(25 * 3600)] {
            let error = config(1024, ttl).validate("memory_cache").expect_err("refused");
            assert_eq!(error.key, "memory_cache.ttl");
        }
        config(1024, Duration::from_secs(600)).validate("memory_cache").expect("ten minutes");
        config(0, Duration::ZERO).validate("memory_cache").expect("off: the ttl is unused");
    }
}
