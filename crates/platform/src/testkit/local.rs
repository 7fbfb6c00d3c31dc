//! The one set of local-process helpers for tests and `cargo xtask`: temp dirs, free ports, waiting.
//!
//! Temp dirs are the `tempfile` crate's (unique names, removed on drop, also on panic); ports come
//! from the kernel (bind port 0); waits poll until a deadline and name what they waited for.

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

/// A fresh directory `<system temp dir>/quilla-<label>-<random>`, removed with everything in it
/// when dropped. Mode 0755: other users (the `postgres` user, a pod's user) may enter it.
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// For tests: panics if the directory cannot be created.
    pub fn new(label: &str) -> Self {
        Self::try_new(label).unwrap_or_else(|error| panic!("create a temp dir for {label}: {error}"))
    }

    /// For tools: the error says which directory could not be created.
    pub fn try_new(label: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(&format!("quilla-{label}-"))
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .map(Self)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("no free port on 127.0.0.1: {error}"))
}

/// Blocks until something accepts TCP connections on the loopback port, or `timeout` passes.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing accepted connections on 127.0.0.1:{port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Calls `check` every `interval` until it returns `Ok(Some(value))`; an `Err` ends the wait at
/// once (e.g. the process being waited for has exited); after `timeout`, fails naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, interval: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what} within {timeout:?}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `GET <base>/ready` until it answers 2xx.
pub async fn wait_until_ready(http: &reqwest::Client, base: &str, timeout: Duration) -> anyhow::Result<()> {
    let url = format!("{base}/ready");
    wait_until(&format!("{url} did not answer 2xx"), timeout, Duration::from_millis(20), || async {
        Ok(http.get(&url).send().await.is_ok_and(|r| r.status().is_success()).then_some(()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_labelled_enterable_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("helpers");
        let path = dir.path().to_owned();
        std::fs::write(path.join("file"), "x").expect("write into it");
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        assert!(name.starts_with("quilla-helpers-"), "{name}");
        assert_eq!(std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777, 0o755);
        let other = TempDir::try_new("helpers").expect("a second one");
        assert_ne!(other.path(), path, "names are unique");
        drop(dir);
        assert!(!path.exists(), "{} is left behind", path.display());
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn waiting_for_a_port_ends_when_it_listens_and_fails_naming_it_otherwise() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("address").port();
        wait_for_port(open, Duration::from_secs(1)).expect("it listens");
        drop(listener);
        let error = wait_for_port(open, Duration::from_millis(100)).expect_err("nothing listens any more");
        assert!(error.to_string().contains(&format!("127.0.0.1:{open}")), "{error}");
    }

    #[tokio::test]
    async fn wait_until_returns_the_first_value_stops_on_an_error_and_times_out() {
        let mut calls = 0;
        let value = wait_until("never", Duration::from_secs(1), Duration::from_millis(1), || {
            calls += 1;
            let ready = calls == 3;
            async move { Ok(ready.then_some(calls)) }
        })
        .await
        .expect("ready on the third call");
        assert_eq!(value, 3);
        let started = Instant::now();
        let error = wait_until::<(), _, _>("x", Duration::from_secs(10), Duration::from_millis(1), || async {
            bail!("the process exited")
        })
        .await
        .expect_err("an error ends the wait");
        assert!(error.to_string().contains("exited") && started.elapsed() < Duration::from_secs(1), "{error}");
        let error = wait_until::<(), _, _>(
            "the thing was not ready",
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { Ok(None) },
        )
        .await
        .expect_err("times out");
        assert_eq!(error.to_string(), "the thing was not ready within 50ms");
    }

    #[tokio::test]
    async fn wait_until_ready_needs_a_2xx_from_ready() {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let app = axum::Router::new().route(
            "/ready",
            get(move || {
                let up = flag.load(std::sync::atomic::Ordering::SeqCst);
                async move { if up { http::StatusCode::OK } else { http::StatusCode::SERVICE_UNAVAILABLE } }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let error = wait_until_ready(&http, &base, Duration::from_millis(100)).await.expect_err("503 is not ready");
        assert!(error.to_string().contains("/ready did not answer 2xx"), "{error}");
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        wait_until_ready(&http, &base, Duration::from_secs(2)).await.expect("200 is ready");
    }
}
