//! The read cache: an in-process layer, then Redis; used when up, invisible to clients when down,
//! scoped to the owner in both layers, Redis reached over TLS with AUTH.

use std::path::Path;

use platform::testkit::RedisServer;
use serde_json::Value;

use crate::helpers::{ISSUER, Options, TestApp, assert_problem, binary, brl, spawn_app_with, wait_until_ready};

/// Removes a transaction's rows behind the cache's back: only a cache can still answer for it.
async fn delete_rows(app: &TestApp, id: &str) {
    sqlx::query("DELETE FROM outbox WHERE transaction_id = $1").bind(id).execute(&app.pool).await.expect("delete");
    sqlx::query("DELETE FROM transactions WHERE id = $1").bind(id).execute(&app.pool).await.expect("delete");
}

/// `GET path` with a customer token for `user`.
async fn get_as(app: &TestApp, user: &str, path: &str) -> reqwest::Response {
    app.anonymous.get(app.server.url(path)).bearer_auth(ISSUER.customer(user)).send().await.expect("sent")
}

/// Only the owner (and a service) reads a cached transaction; to anyone else it is an unknown id.
async fn assert_scoped_to_u1(app: &TestApp, path: &str, created: &Value) {
    let owner = get_as(app, "u1", path).await;
    assert_eq!(owner.status().as_u16(), 200);
    assert_eq!(&owner.json::<Value>().await.expect("json"), created);
    let foreign = assert_problem(get_as(app, "u2", path).await, 404).await;
    let unknown = assert_problem(get_as(app, "u2", "/transactions/txn_01jc3v6p6m9x2s8q4r7t5w1y0z").await, 404).await;
    assert_eq!(foreign["title"], unknown["title"], "a foreign id looks exactly like an unknown one");
    let served: Value = app.get(path).await.json().await.expect("json");
    assert_eq!(&served, created, "a service reads it");
}

#[tokio::test]
async fn reads_are_served_from_redis_after_create_and_scoped_to_the_owner() {
    let redis = RedisServer::start();
    // Redis alone: the in-process layer would answer first.
    let extra_toml = "[memory_cache]\nmax_bytes = 0\n".to_owned();
    let app = spawn_app_with(Options { redis_url: redis.url(), extra_toml, ..Default::default() }).await;
    let created: Value = app.post_transaction(&brl("u1", "5.00")).await.json().await.expect("json");
    let id = created["id"].as_str().expect("id");
    delete_rows(&app, id).await;
    assert_scoped_to_u1(&app, &format!("/transactions/{id}"), &created).await;
}

#[tokio::test]
async fn reads_are_served_from_memory_without_redis_or_the_row_and_scoped_to_the_owner() {
    let mut redis = RedisServer::start();
    let database_url = platform::testkit::fresh_database().await;
    let options = Options { redis_url: redis.url(), database_url: Some(database_url), ..Default::default() };
    let writer = spawn_app_with(options.clone()).await;
    // A second replica on the same database and Redis: it learns of the transaction from Redis.
    let reader = spawn_app_with(options).await;
    let created: Value = writer.post_transaction(&brl("u1", "6.00")).await.json().await.expect("json");
    let path = format!("/transactions/{}", created["id"].as_str().expect("id"));
    assert_eq!(reader.get(&path).await.status().as_u16(), 200, "a Redis hit, now kept in the reader's memory");

    redis.stop();
    delete_rows(&writer, created["id"].as_str().expect("id")).await;
    // The writer kept it when it created it; the reader when Redis answered.
    for app in [&writer, &reader] {
        assert_scoped_to_u1(app, &path, &created).await;
    }

    let metrics = reader.get("/metrics").await.text().await.expect("text");
    let memory_hits = metrics
        .lines()
        .find(|l| {
            l.starts_with("cache_operations_total") && l.contains(r#"layer="memory""#) && l.contains(r#"outcome="hit""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert!(memory_hits.is_some_and(|n| n >= 3.0), "{metrics}");
    for family in ["cache_memory_entries", "cache_memory_bytes", "cache_memory_evictions_total"] {
        assert!(metrics.contains(family), "missing {family} in\n{metrics}");
    }
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
