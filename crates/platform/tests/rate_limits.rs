//! The API listener's rate limit covers everything it answers, fallbacks included; the admin
//! listener's own bucket covers `/ready` and `/metrics` only, and `/health` is never limited.

use axum::Router;
use axum::routing::get;
use platform::rate_limit::RateLimitConfig;
use platform::server::{Lifecycle, Listeners, Service};
use platform::testkit;

/// A bucket of `burst` requests that refills at one a second: nothing refills during a test.
fn bucket(burst: u32) -> RateLimitConfig {
    RateLimitConfig { requests_per_second: 1, burst }
}

async fn status(http: &reqwest::Client, url: String) -> u16 {
    http.get(url).send().await.expect("request").status().as_u16()
}

#[tokio::test]
async fn fallbacks_count_against_the_api_limit_and_probes_have_their_own() {
    let routes = Router::new().route("/things", get(|| async { "things" }));
    let service = Service::new("limits", routes);
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind api");
    let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind admin");
    let api_url = format!("http://{}", api.local_addr().expect("addr"));
    let admin_url = format!("http://{}", admin.local_addr().expect("addr"));
    let mut config = testkit::server_config();
    config.admin_port = Some(admin.local_addr().expect("addr").port());
    config.rate_limit = bucket(3);
    config.admin_rate_limit = bucket(2);
    let lifecycle = Lifecycle::new();
    let listeners = Listeners { api, admin: Some(admin) };
    let server = tokio::spawn(platform::server::serve(service, config, listeners, lifecycle.clone()));
    let http = reqwest::Client::new();

    // Unknown paths, wrong methods and the probes' paths (404 here) draw from the API's bucket.
    assert_eq!(status(&http, format!("{api_url}/nowhere")).await, 404);
    assert_eq!(http.delete(format!("{api_url}/things")).send().await.expect("sent").status(), 405);
    assert_eq!(status(&http, format!("{api_url}/ready")).await, 404);
    assert_eq!(status(&http, format!("{api_url}/things")).await, 429, "the scan used up the bucket");
    assert_eq!(status(&http, format!("{api_url}/nowhere")).await, 429);

    // None of that touched the admin listener: its bucket covers /ready and /metrics...
    assert_eq!(status(&http, format!("{admin_url}/metrics")).await, 200);
    assert_eq!(status(&http, format!("{admin_url}/metrics")).await, 200);
    assert_eq!(status(&http, format!("{admin_url}/metrics")).await, 429);
    // /ready shares that bucket (refused at once, before any database round trip).
    let refused = http.get(format!("{admin_url}/ready")).send().await.expect("sent");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // ...and never /health (liveness), nor the cheap answers to anything else.
    for _ in 0..10 {
        assert_eq!(status(&http, format!("{admin_url}/health")).await, 200);
        assert_eq!(status(&http, format!("{admin_url}/nowhere")).await, 404);
    }

    lifecycle.shutdown();
    server.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn on_a_shared_listener_the_probes_keep_their_own_bucket() {
    let routes = Router::new().route("/things", get(|| async { "things" }));
    let service = Service::new("limits", routes);
    let mut config = testkit::server_config();
    config.rate_limit = bucket(2);
    config.admin_rate_limit = bucket(1);
    let server = testkit::TestServer::start(service, &config, Lifecycle::new()).await;
    let http = reqwest::Client::new();

    assert_eq!(status(&http, server.url("/things")).await, 200);
    assert_eq!(status(&http, server.url("/nowhere")).await, 404);
    assert_eq!(status(&http, server.url("/things")).await, 429);
    assert_eq!(status(&http, server.url("/metrics")).await, 200, "the API's bucket is not the probes'");
    assert_eq!(status(&http, server.url("/metrics")).await, 429);
    for _ in 0..5 {
        assert_eq!(status(&http, server.url("/health")).await, 200);
    }
    server.stop().await;
}
