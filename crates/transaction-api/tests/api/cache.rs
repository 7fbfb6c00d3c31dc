//! The Redis read cache: used when up, invisible to clients when down, reached over TLS with AUTH.

use std::path::Path;

use platform::testkit::RedisServer;
use serde_json::Value;

use crate::helpers::{Options, binary, brl, spawn_app_with, wait_until_ready};

#[tokio::test]
async fn reads_are_served_from_redis_after_create() {
    let redis = RedisServer::start();
    let app = spawn_app_with(Options { redis_url: redis.url(), ..Default::default() }).await;
    let created: Value = app.post_transaction(&brl("u1", "5.00")).await.json().await.expect("json");
    let id = created["id"].as_str().expect("id");
    // Remove the row behind the cache's back: only the cache can still answer.
    sqlx::query("DELETE FROM outbox WHERE transaction_id = $1").bind(id).execute(&app.pool).await.expect("delete");
    sqlx::query("DELETE FROM transactions WHERE id = $1").bind(id).execute(&app.pool).await.expect("delete");
    let cached: Value = app.get(&format!("/transactions/{id}")).await.json().await.expect("json");
    assert_eq!(cached, created);
}

#[tokio::test]
async fn every_request_succeeds_when_redis_stops_mid_test() {
    let mut redis = RedisServer::start();
    let app = spawn_app_with(Options { redis_url: redis.url(), ..Default::default() }).await;
    let before: Value = app.post_transaction(&brl("u1", "1.00")).await.json().await.expect("json");

    redis.stop();
    for round in 0..20 {
        let created = app.post_transaction(&brl("u1", "2.00")).await;
        assert_eq!(created.status().as_u16(), 201, "create #{round} with Redis down");
        let created: Value = created.json().await.expect("json");
        for id in [&before["id"], &created["id"]] {
            let fetched = app.get(&format!("/transactions/{}", id.as_str().expect("id"))).await;
            assert_eq!(fetched.status().as_u16(), 200, "read #{round} with Redis down");
        }
    }
    let ready: Value = app.get("/ready").await.json().await.expect("json");
    assert_eq!(ready["status"], "ready", "Redis is reported, not fatal");
    assert_eq!(ready["checks"]["redis"], "down");
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains(r#"outcome="error""#) || metrics.contains(r#"outcome="skipped""#), "{metrics}");

    redis.restart();
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await; // the breaker's open period
    let after = app.post_transaction(&brl("u1", "3.00")).await;
    assert_eq!(after.status().as_u16(), 201);
}

/// What the real binary's `/ready` says of Redis when its URL is read from `url_file` (a `file://`
/// reference, as in the cluster) and `SSL_CERT_FILE` names `trusted_ca` (as the image's does).
async fn redis_check_of_the_binary(database_url: &str, url_file: &Path, trusted_ca: Option<&Path>) -> String {
    let port = platform::testkit::free_port();
    let mut command = binary(database_url, port);
    command.env("QUILLA_REDIS__URL", format!("file://{}", url_file.display()));
    // Room for a first TLS handshake on a busy CI machine: this test is about trust and AUTH, not
    // speed. A refused certificate or password still fails at once.
    command.env("QUILLA_REDIS__OPERATION_TIMEOUT", "2s");
    if let Some(ca) = trusted_ca {
        command.env("SSL_CERT_FILE", ca);
    }
    let _child = KillOnDrop(command.spawn().expect("binary starts"));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&http, &base).await;
    let ready: Value = http.get(format!("{base}/ready")).send().await.expect("ready").json().await.expect("json");
    ready["checks"]["redis"].as_str().expect("a redis check").to_owned()
}

/// A spawned binary that is killed when the test ends, whether it passed or panicked.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_tls_redis_with_auth_is_reached_only_with_its_ca_and_password() {
    let redis = RedisServer::start_tls("auth-token-0123456789");
    let ca = redis.ca_file().expect("a TLS server has a CA");
    let database_url = platform::testkit::fresh_database().await;
    let dir = platform::testkit::TempDir::new("redis-url");
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, format!("{}\n", redis.url())).expect("write");
    std::fs::write(&wrong, redis.url().replace("auth-token-0123456789", "not-the-token")).expect("write");

    assert_eq!(redis_check_of_the_binary(&database_url, &right, Some(&ca)).await, "up");
    assert_eq!(redis_check_of_the_binary(&database_url, &right, None).await, "down", "an untrusted certificate");
    assert_eq!(redis_check_of_the_binary(&database_url, &wrong, Some(&ca)).await, "down", "a wrong password");
}
