//! Circuit breaker (closed → open → half-open) so a dead dependency costs no latency per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker state, exported as the `circuit_breaker_state` gauge (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// Opens after `failure_threshold` consecutive failures; after `open_for` lets one trial call
/// through (half-open); a trial success closes it, a trial failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(name: &'static str, failure_threshold: u32, open_for: Duration) -> Self {
        let breaker = Self {
            name,
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    /// Whether a call may proceed now. A `true` in half-open state reserves the single trial call.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                let elapsed = inner.opened_at.map_or(Duration::MAX, |t| t.elapsed());
                if elapsed >= self.open_for {
                    inner.state = BreakerState::HalfOpen;
                    inner.trial_in_flight = true;
                    self.publish(BreakerState::HalfOpen);
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if inner.trial_in_flight {
                    false
                } else {
                    inner.trial_in_flight = true;
                    true
                }
            }
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.trial_in_flight = false;
        if inner.state != BreakerState::Closed {
            inner.state = BreakerState::Closed;
            inner.opened_at = None;
            tracing::info!(breaker = self.name, "circuit closed");
            self.publish(BreakerState::Closed);
        }
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        inner.trial_in_flight = false;
        let should_open = inner.state == BreakerState::HalfOpen
            || (inner.state == BreakerState::Closed && inner.consecutive_failures >= self.failure_threshold);
        if should_open {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(Instant::now());
            tracing::warn!(breaker = self.name, failures = inner.consecutive_failures, "circuit opened");
            self.publish(BreakerState::Open);
        }
    }

    /// Whether a call now would be refused without trying (open, and not yet due for a trial).
    pub fn is_rejecting(&self) -> bool {
        let inner = self.lock();
        inner.state == BreakerState::Open && inner.opened_at.is_some_and(|t| t.elapsed() < self.open_for)
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("circuit_breaker_state", "breaker" => self.name).set(state.gauge_value());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_blocks_calls() {
        let breaker = CircuitBreaker::new("test", 3, Duration::from_secs(60));
        for _ in 0..2 {
            assert!(breaker.allow());
            breaker.record_failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.is_rejecting());
        assert!(!breaker.allow());
    }

    #[test]
    fn success_resets_the_failure_count() {
        let breaker = CircuitBreaker::new("test", 2, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_allows_one_trial_then_closes_or_reopens() {
        let breaker = CircuitBreaker::new("test", 1, Duration::ZERO);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.is_rejecting(), "open_for elapsed: a trial is due");
        assert!(breaker.allow(), "open_for elapsed: one trial");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow(), "only one trial at a time");
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.allow());
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow() && breaker.allow());
    }
}
