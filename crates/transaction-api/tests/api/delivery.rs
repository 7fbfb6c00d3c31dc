//! The webhook outbox end to end, against a real notification-service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use platform::testkit::{TestServer, free_port};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Options, SIGNING_KEY, TestApp, brl, notifications, spawn_app_with, start_notification_service};

/// Fast retries so the tests finish quickly.
const FAST_RETRIES: &str = r#"
[webhook.client]
breaker_open_for = "200ms"
[outbox]
max_attempts = 200
"#;

/// Creates `count` transactions for `user` and returns their ids.
async fn create_transactions(app: &TestApp, user: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let response = app.post_transaction(&brl(user, "12.34")).await;
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// Polls until `user` has `expected` notifications (or the deadline passes) and returns them.
async fn await_notifications(http: &reqwest::Client, notifier: &TestServer, user: &str, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let items = notifications(http, notifier, user).await;
        if items.len() >= expected || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_one_notification_per_transaction(items: &[Value], ids: &[String]) {
    assert_eq!(items.len(), ids.len(), "exactly one notification per transaction");
    for id in ids {
        let mentions = items.iter().filter(|n| n["message"].as_str().is_some_and(|m| m.contains(id.as_str()))).count();
        assert_eq!(mentions, 1, "transaction {id} announced {mentions} times");
    }
}

async fn outbox_statuses(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status")
        .fetch_all(&app.pool)
        .await
        .expect("outbox statuses")
}

#[tokio::test]
async fn notification_follows_each_transaction() {
    let database_url = platform::testkit::fresh_database().await;
    let port = free_port();
    let notifier = start_notification_service(&database_url, port, SIGNING_KEY).await;
    let app = spawn_app_with(Options {
        database_url: Some(database_url),
        webhook_url: format!("http://127.0.0.1:{port}/webhooks/transactions"),
        ..Default::default()
    })
    .await;
    let ids = create_transactions(&app, "u-live", 1).await;
    let items = await_notifications(&app.http, &notifier, "u-live", 1).await;
    assert_one_notification_per_transaction(&items, &ids);
    assert!(items[0]["message"].as_str().is_some_and(|m| m.contains("12.34 BRL")), "{items:?}");
}

#[tokio::test]
async fn events_created_while_notification_service_is_down_are_all_delivered_once() {
    let database_url = platform::testkit::fresh_database().await;
    let port = free_port();
    let app = spawn_app_with(Options {
        database_url: Some(database_url.clone()),
        webhook_url: format!("http://127.0.0.1:{port}/webhooks/transactions"),
        extra_toml: FAST_RETRIES.to_owned(),
        ..Default::default()
    })
    .await;
    let ids = create_transactions(&app, "u-outage", 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(outbox_statuses(&app).await, [("pending".to_owned(), 50)], "nothing is lost or dropped while down");

    let notifier = start_notification_service(&database_url, port, SIGNING_KEY).await;
    let items = await_notifications(&app.http, &notifier, "u-outage", 50).await;
    assert_one_notification_per_transaction(&items, &ids);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(outbox_statuses(&app).await, [("delivered".to_owned(), 50)]);
}

#[tokio::test]
async fn a_delivery_whose_response_is_lost_is_not_duplicated() {
    let database_url = platform::testkit::fresh_database().await;
    let notifier = start_notification_service(&database_url, 0, SIGNING_KEY).await;
    let (proxy_port, connections) = lossy_proxy(notifier.address, 1).await;
    let app = spawn_app_with(Options {
        database_url: Some(database_url),
        webhook_url: format!("http://127.0.0.1:{proxy_port}/webhooks/transactions"),
        extra_toml: FAST_RETRIES.to_owned(),
        ..Default::default()
    })
    .await;
    let ids = create_transactions(&app, "u-lossy", 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox_statuses(&app).await != [("delivered".to_owned(), 1)] {
        assert!(Instant::now() < deadline, "event never delivered: {:?}", outbox_statuses(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connections.load(Ordering::SeqCst) >= 2, "the first response was dropped, so it was sent again");
    let items = notifications(&app.http, &notifier, "u-lossy").await;
    assert_one_notification_per_transaction(&items, &ids);
}

#[tokio::test]
async fn events_that_exhaust_their_attempts_become_dead_letters() {
    let database_url = platform::testkit::fresh_database().await;
    // A receiver with another key answers 401 to every delivery.
    let notifier = start_notification_service(&database_url, 0, "a-different-key-0123456789abcdef").await;
    let app = spawn_app_with(Options {
        database_url: Some(database_url),
        webhook_url: notifier.url("/webhooks/transactions"),
        extra_toml: "[outbox]\nmax_attempts = 3\n".to_owned(),
        ..Default::default()
    })
    .await;
    let ids = create_transactions(&app, "u-dead", 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox_statuses(&app).await != [("dead".to_owned(), 1)] {
        assert!(Instant::now() < deadline, "never dead-lettered: {:?}", outbox_statuses(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (transaction_id, attempts, last_error): (String, i32, String) =
        sqlx::query_as("SELECT transaction_id, attempts, last_error FROM dead_letters")
            .fetch_one(&app.pool)
            .await
            .expect("dead letter is queryable");
    assert_eq!(transaction_id, ids[0]);
    assert_eq!(attempts, 3);
    assert!(last_error.contains("401"), "{last_error}");
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains(r#"outbox_events_total{outcome="dead_lettered"} 1"#), "{metrics}");
    assert!(notifications(&app.http, &notifier, "u-dead").await.is_empty());
}

/// A TCP proxy that forwards the first `drop_first` connections' requests upstream but closes
/// them as soon as the upstream answers, so the caller never sees the (successful) response.
async fn lossy_proxy(upstream: SocketAddr, drop_first: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                if n >= drop_first {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut client_read, _client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let forward = tokio::io::copy(&mut client_read, &mut server_write);
                let mut first_byte = [0u8; 1];
                tokio::select! {
                    _ = forward => {}
                    _ = server_read.read(&mut first_byte) => {}
                }
                // Both halves drop here: the response is lost on the way back.
            });
        }
    });
    (port, connections)
}
