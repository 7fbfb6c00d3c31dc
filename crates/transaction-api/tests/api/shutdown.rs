//! SIGTERM on the real binary: readiness fails first, in-flight requests complete, exit 0.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{binary, brl, wait_until_ready};

#[tokio::test]
async fn sigterm_lets_in_flight_requests_complete() {
    let database_url = platform::testkit::fresh_database().await;
    let port = platform::testkit::free_port();
    let mut child = binary(&database_url, port)
        .env("QUILLA_SERVER__DRAIN_DELAY", "300ms")
        .env("QUILLA_SERVER__SHUTDOWN_GRACE", "10s")
        .env("QUILLA_SERVER__REQUEST_TIMEOUT", "20s")
        .spawn()
        .expect("binary starts");
    let http = crate::helpers::ISSUER.service_client();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;

    // Hold the idempotency key in an open transaction: the request below blocks on it in flight.
    let mut blocker = sqlx::PgConnection::connect(&database_url).await.expect("connect");
    let mut tx = blocker.begin().await.expect("begin");
    sqlx::query("INSERT INTO transactions.idempotency_keys (key, fingerprint, transaction_id) VALUES ('held', '\\x00', 'txn_x')")
        .execute(&mut *tx)
        .await
        .expect("hold key");
    let in_flight = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/transactions"))
                .header("content-type", "application/json")
                .header("idempotency-key", "held")
                .body(brl("u1", "42.00").to_string())
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());

    // While draining, readiness fails so the load balancer stops sending traffic.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = http.get(format!("{base}/ready")).send().await.expect("still serving while draining");
    assert_eq!(ready.status().as_u16(), 503);

    // Let the held request finish well after the drain started; it must still complete.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tx.rollback().await.expect("release the key");
    let response = in_flight.await.expect("task").expect("in-flight request answered");
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["amount"], "42.00");

    let exit = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    assert!(http.get(format!("{base}/health")).send().await.is_err(), "listener is closed after shutdown");
}
