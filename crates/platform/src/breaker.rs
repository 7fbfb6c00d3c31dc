//! Circuit breaker (closed → open → half-open) so a dead dependency costs no latency per request.
//!
//! A call asks for a [`Permit`] and reports its outcome on it. A permit dropped without a report
//! (the caller's future was cancelled: a request timeout, a client that went away, shutdown) is
//! *abandoned*: it proves nothing about the dependency, so it counts as neither success nor
//! failure, and when it held the half-open trial the trial passes to the next caller. Before
//! permits, a cancelled trial kept the breaker half-open with its only trial "in flight" forever,
//! refusing every call until a restart (the Redis cache stayed off).
//!
//! Hand-written rather than a crate: it is a small state machine whose exact semantics (one
//! half-open trial, abandoned permits, the `circuit_breaker_state` gauge) are tested here, and
//! the crates on offer bring their own windowing and backoff models that we would have to adapt.

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
/// through (half-open); a trial success closes it, a trial failure opens it again, an abandoned
/// trial lets the next call be the trial.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`]. Report the call's outcome with
/// [`Permit::succeeded`] or [`Permit::failed`]; dropping it unreported abandons it (see the module
/// docs), which is what happens when the future holding it is cancelled.
#[derive(Debug)]
#[must_use = "report the call's outcome with `succeeded` or `failed`; a dropped permit is abandoned"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// This permit is the half-open trial.
    trial: bool,
    reported: bool,
}

impl Permit<'_> {
    /// The dependency answered: the breaker closes (or stays closed).
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.on_success(self.trial);
    }

    /// The dependency failed: counts towards opening, or re-opens after a failed trial.
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.on_failure(self.trial);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.on_abandoned(self.trial);
        }
    }
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

    /// A permit when a call may proceed now; `None` when the circuit refuses it (open, or
    /// half-open with the trial already taken). In half-open state the permit is the single trial.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        let trial = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                let elapsed = inner.opened_at.map_or(Duration::MAX, |t| t.elapsed());
                if elapsed < self.open_for {
                    return None;
                }
                inner.state = BreakerState::HalfOpen;
                self.publish(BreakerState::HalfOpen);
                true
            }
            BreakerState::HalfOpen if inner.trial_in_flight => return None,
            BreakerState::HalfOpen => true,
        };
        if trial {
            inner.trial_in_flight = true;
        }
        Some(Permit { breaker: self, trial, reported: false })
    }

    fn on_success(&self, trial: bool) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        if trial {
            inner.trial_in_flight = false;
        }
        // Any success is evidence the dependency works, whichever permit reports it.
        if inner.state != BreakerState::Closed {
            inner.state = BreakerState::Closed;
            inner.opened_at = None;
            inner.trial_in_flight = false;
            tracing::info!(breaker = self.name, "circuit closed");
            self.publish(BreakerState::Closed);
        }
    }

    fn on_failure(&self, trial: bool) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        // A call let through before the circuit opened does not decide the trial: only the
        // trial's own failure re-opens a half-open circuit.
        let should_open = match inner.state {
            BreakerState::Closed => inner.consecutive_failures >= self.failure_threshold,
            BreakerState::HalfOpen => trial,
            BreakerState::Open => false,
        };
        if trial {
            inner.trial_in_flight = false;
        }
        if should_open {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(Instant::now());
            inner.trial_in_flight = false;
            tracing::warn!(breaker = self.name, failures = inner.consecutive_failures, "circuit opened");
            self.publish(BreakerState::Open);
        }
    }

    fn on_abandoned(&self, trial: bool) {
        let mut inner = self.lock();
        if trial && inner.state == BreakerState::HalfOpen {
            inner.trial_in_flight = false;
            tracing::debug!(breaker = self.name, "half-open trial abandoned; the next call is the trial");
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

    fn fail(breaker: &CircuitBreaker) {
        breaker.try_acquire().expect("a call is allowed").failed();
    }

    #[test]
    fn opens_after_threshold_and_blocks_calls() {
        let breaker = CircuitBreaker::new("test", 3, Duration::from_secs(60));
        for _ in 0..2 {
            fail(&breaker);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.is_rejecting());
        assert!(breaker.try_acquire().is_none());
    }

    #[test]
    fn success_resets_the_failure_count() {
        let breaker = CircuitBreaker::new("test", 2, Duration::from_secs(60));
        fail(&breaker);
        breaker.try_acquire().expect("closed").succeeded();
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_allows_one_trial_then_closes_or_reopens() {
        let breaker = CircuitBreaker::new("test", 1, Duration::ZERO);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.is_rejecting(), "open_for elapsed: a trial is due");
        let trial = breaker.try_acquire().expect("open_for elapsed: one trial");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_none(), "only one trial at a time");
        trial.failed();
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker.try_acquire().expect("the next trial").succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        let (first, second) = (breaker.try_acquire(), breaker.try_acquire());
        assert!(first.is_some() && second.is_some(), "closed: every call may proceed");
    }

    #[test]
    fn an_abandoned_trial_passes_the_trial_to_the_next_call() {
        let breaker = CircuitBreaker::new("test", 1, Duration::ZERO);
        fail(&breaker);
        let trial = breaker.try_acquire().expect("a trial");
        drop(trial); // its caller was cancelled
        assert_eq!(breaker.state(), BreakerState::HalfOpen, "an abandoned trial proves nothing");
        breaker.try_acquire().expect("the next call is the trial").succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_call_is_neither_a_success_nor_a_failure() {
        let breaker = CircuitBreaker::new("test", 2, Duration::from_secs(60));
        fail(&breaker);
        drop(breaker.try_acquire());
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open, "the abandoned call did not reset the count");
    }

    #[test]
    fn a_late_failure_from_before_the_opening_does_not_decide_the_trial() {
        let breaker = CircuitBreaker::new("test", 1, Duration::ZERO);
        let late = breaker.try_acquire().expect("closed");
        fail(&breaker);
        let trial = breaker.try_acquire().expect("a trial");
        late.failed();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_none(), "the trial is still the one in flight");
        trial.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
