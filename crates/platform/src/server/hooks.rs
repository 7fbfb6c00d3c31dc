//! What a service registers with the server: the named checks `/ready` runs, and the hooks run at shutdown.
//!
//! The server knows no database or cache: `platform::db` and `platform::cache` make these for
//! their own clients, and a service registers the ones it uses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

type Probe = dyn Fn() -> BoxFuture<'static, bool> + Send + Sync;

/// One dependency `/ready` checks, reported by `name` (`"up"` or `"down"`) in its JSON body.
#[derive(Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    timeout: Duration,
    required: bool,
    probe: Arc<Probe>,
}

impl ReadinessCheck {
    /// A check that must pass for `/ready` to answer 200: `probe` says whether the dependency
    /// answers; no answer within `timeout` counts as down.
    pub fn required<F, Fut>(name: &'static str, timeout: Duration, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self { name, timeout, required: true, probe: Arc::new(move || Box::pin(probe())) }
    }

    /// A check `/ready` reports but never fails on: a dependency the service degrades without
    /// (a cache in front of the source of truth).
    pub fn reported<F, Fut>(name: &'static str, timeout: Duration, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self { required: false, ..Self::required(name, timeout, probe) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether a failure makes `/ready` answer 503.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Runs the probe within the timeout: whether the dependency is up.
    pub async fn is_up(&self) -> bool {
        tokio::time::timeout(self.timeout, (self.probe)()).await.unwrap_or(false)
    }
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Work run once at shutdown, after HTTP has drained and the background workers have stopped
/// (so nothing uses what it closes): e.g. closing a connection pool.
pub struct StopHook {
    name: &'static str,
    run: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

impl StopHook {
    pub fn new<F, Fut>(name: &'static str, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self { name, run: Box::new(move || Box::pin(hook())) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(super) async fn run(self) {
        (self.run)().await;
        tracing::debug!(hook = self.name, "stop hook done");
    }
}

impl std::fmt::Debug for StopHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHook").field("name", &self.name).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_that_does_not_answer_in_time_is_down() {
        let slow = ReadinessCheck::required("slow", Duration::from_millis(20), || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            true
        });
        let started = std::time::Instant::now();
        assert!(!slow.is_up().await);
        assert!(started.elapsed() < Duration::from_secs(1), "the timeout bounds the check");
    }

    #[tokio::test]
    async fn a_probe_is_up_when_it_answers_true_in_time() {
        assert!(ReadinessCheck::required("fast", Duration::from_secs(1), || async { true }).is_up().await);
        assert!(!ReadinessCheck::required("down", Duration::from_secs(1), || async { false }).is_up().await);
    }

    #[test]
    fn reported_checks_are_not_required() {
        assert!(ReadinessCheck::required("db", Duration::from_secs(1), || async { true }).is_required());
        assert!(!ReadinessCheck::reported("cache", Duration::from_secs(1), || async { true }).is_required());
    }
}
