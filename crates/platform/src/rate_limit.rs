//! A per-instance token bucket: requests beyond the configured rate get 429 with `Retry-After`.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Rate limit settings; `requests_per_second = 0` turns the limiter off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// Token bucket shared by all requests of one instance.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    capacity: f64,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// `None` when the config disables limiting.
    pub fn new(config: &RateLimitConfig) -> Option<Self> {
        if config.requests_per_second == 0 {
            return None;
        }
        let capacity = f64::from(config.burst.max(1));
        Some(Self {
            rate: f64::from(config.requests_per_second),
            capacity,
            bucket: Mutex::new(Bucket { tokens: capacity, refilled_at: Instant::now() }),
        })
    }

    /// Takes one token; on refusal returns the whole seconds to wait for the next one.
    pub fn try_acquire(&self) -> Result<(), u32> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> Result<(), u32> {
        let mut bucket = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_refuses_until_refilled() {
        let limiter = RateLimiter::new(&RateLimitConfig { requests_per_second: 10, burst: 3 }).expect("enabled");
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.try_acquire_at(start), Ok(()));
        }
        assert_eq!(limiter.try_acquire_at(start), Err(1));
        assert_eq!(limiter.try_acquire_at(start + Duration::from_millis(100)), Ok(()), "one token per 100 ms");
        assert!(limiter.try_acquire_at(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_rate_disables_the_limiter() {
        assert!(RateLimiter::new(&RateLimitConfig { requests_per_second: 0, burst: 10 }).is_none());
    }
}
