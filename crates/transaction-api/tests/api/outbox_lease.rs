//! Outbox leases: a dispatcher killed in the middle of a delivery holds no lock and loses its
//! claim when the lease ends; another dispatcher then delivers the event, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform::Secret;
use platform::client::{ClientConfig, ResilientClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use transaction_api::config::OutboxConfig;
use transaction_api::outbox::Dispatcher;

use crate::helpers::{Options, SIGNING_KEY, brl, spawn_app_with};

/// A webhook receiver that never answers its first request (the dispatcher sending it is then
/// killed) and answers 200 to every later one. Returns its URL and the requests it has read.
async fn receiver_that_hangs_first() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/webhooks/transactions", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut read = 0;
                // The whole request: headers, then as much body as they announce.
                loop {
                    let Ok(n) = stream.read(&mut buffer[read..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    read += n;
                    let text = String::from_utf8_lossy(&buffer[..read]);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if read >= end + 4 + length {
                            break;
                        }
                    }
                }
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    (url, requests)
}

fn dispatcher(pool: &sqlx::PgPool, url: &str, name: &'static str, lease: Duration) -> Dispatcher {
    let client = ClientConfig {
        timeout: Duration::from_secs(30),
        max_attempts: 1,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
        breaker_failure_threshold: 100,
        breaker_open_for: Duration::from_secs(1),
        ca_path: None,
    };
    Dispatcher {
        pool: pool.clone(),
        client: ResilientClient::new(name, client).expect("client"),
        url: url.to_owned(),
        signing_key: Secret::new(SIGNING_KEY),
        config: OutboxConfig {
            poll_interval: Duration::from_secs(1),
            lease,
            batch_size: 10,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
        },
        wake: Arc::default(),
    }
}

#[tokio::test]
async fn a_dispatcher_killed_mid_delivery_loses_its_lease_and_another_delivers_the_event_once() {
    // One pending event, then the app (and its own dispatcher) stopped.
    let app = spawn_app_with(Options::default()).await;
    assert_eq!(app.post_transaction(&brl("lease", "1.00")).await.status().as_u16(), 201);
    let pool = app.pool.clone();
    app.server.stop().await;
    sqlx::query("UPDATE outbox SET next_attempt_at = now(), attempts = 0, claim = NULL")
        .execute(&pool)
        .await
        .expect("reset");

    let (url, requests) = receiver_that_hangs_first().await;
    let lease = Duration::from_secs(1);
    let first = dispatcher(&pool, &url, "first", lease);
    let killed = tokio::spawn(async move { first.dispatch_batch().await });
    for _ in 0..200 {
        if requests.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the first dispatcher is mid-delivery");
    killed.abort();

    let second = dispatcher(&pool, &url, "second", lease);
    assert_eq!(second.dispatch_batch().await.expect("batch"), 0, "the lease still holds the event");
    // Nothing is locked while the first one was delivering: the row can be read and updated.
    let status: String = sqlx::query_scalar("SELECT status FROM outbox").fetch_one(&pool).await.expect("status");
    assert_eq!(status, "pending");

    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(second.dispatch_batch().await.expect("batch"), 1, "the expired lease made the event claimable");
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM outbox").fetch_one(&pool).await.expect("row");
    assert_eq!((status.as_str(), attempts), ("delivered", 1));
    assert_eq!(second.dispatch_batch().await.expect("batch"), 0);
    assert_eq!(requests.load(Ordering::SeqCst), 2, "delivered once after the takeover, never again");
}
