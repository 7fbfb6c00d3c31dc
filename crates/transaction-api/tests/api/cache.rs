//! The Redis read cache: used when up, invisible to clients when down.

use platform::testkit::RedisServer;
use serde_json::Value;

use crate::helpers::{Options, brl, spawn_app_with};

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
