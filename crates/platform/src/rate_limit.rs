//! A per-instance request rate limit (governor's GCRA): requests beyond it get 429 with `Retry-After`.
//!
//! GCRA with a burst of `b` cells replenished at `r` a second admits exactly what a token bucket
//! of capacity `b` refilled at `r` a second does, without a lock: one atomic compare-and-swap per
//! request (governor's docs, `governor::_guide` and `governor::gcra`).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use serde::{Deserialize, Serialize};

/// Rate limit settings; `requests_per_second = 0` turns the limiter off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

/// One limit shared by all requests of one instance (not keyed by client: the ALB and the WAF
/// see clients, this protects the instance).
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: Gcra<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `None` when the config disables limiting.
    pub fn new(config: &RateLimitConfig) -> Option<Self> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// The limiter reading time from `clock` (a fake one in tests).
    fn with_clock(config: &RateLimitConfig, clock: C) -> Option<Self> {
        let rate = NonZeroU32::new(config.requests_per_second)?;
        let burst = NonZeroU32::new(config.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self { limiter: Gcra::direct_with_clock(quota, clock.clone()), clock })
    }

    /// Admits one request; on refusal returns the whole seconds to wait for the next one (at
    /// least 1), for `Retry-After`.
    pub fn try_acquire(&self) -> Result<(), u32> {
        self.limiter.check().map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.clock.now());
            u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).unwrap_or(u32::MAX).max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(requests_per_second: u32, burst: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig { requests_per_second, burst };
        (RateLimiter::with_clock(&config, clock.clone()).expect("enabled"), clock)
    }

    #[test]
    fn allows_the_burst_then_refuses_until_refilled() {
        let (limiter, clock) = limiter(10, 3);
        for _ in 0..3 {
            assert_eq!(limiter.try_acquire(), Ok(()));
        }
        assert_eq!(limiter.try_acquire(), Err(1));
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.try_acquire(), Ok(()), "one request per 100 ms");
        assert!(limiter.try_acquire().is_err());
    }

    #[test]
    fn retry_after_rounds_the_wait_up_to_a_whole_second() {
        let (limiter, clock) = limiter(2, 1);
        assert_eq!(limiter.try_acquire(), Ok(()));
        clock.advance(Duration::from_millis(400));
        assert_eq!(limiter.try_acquire(), Err(1), "100 ms to wait is still a whole second");
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.try_acquire(), Ok(()), "one request per 500 ms");
    }

    #[test]
    fn a_zero_burst_still_admits_one_request() {
        let (limiter, _clock) = limiter(10, 0);
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert_eq!(limiter.try_acquire(), Err(1));
    }

    #[test]
    fn zero_rate_disables_the_limiter() {
        assert!(RateLimiter::new(&RateLimitConfig { requests_per_second: 0, burst: 10 }).is_none());
    }
}
