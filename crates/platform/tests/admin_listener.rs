//! With `server.admin_port` set, probes and metrics live on their own listener: the API port
//! (the one the Ingress routes to) answers them with 404, and the admin port answers nothing else.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use platform::server::{Lifecycle, Listeners, ReadinessCheck, Service};
use platform::testkit;

#[tokio::test]
async fn probes_and_metrics_are_served_on_the_admin_port_only() {
    platform::bootstrap::install_crypto_provider();
    let routes = Router::new().route("/things", get(|| async { "things" }));
    // A required check that fails, as for a database that points nowhere.
    let service = Service::new("admin-test", routes).with_readiness(ReadinessCheck::required(
        "postgres",
        Duration::from_millis(100),
        || async { false },
    ));
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind api");
    let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind admin");
    let (api_url, admin_url) = (
        format!("http://{}", api.local_addr().expect("addr")),
        format!("http://{}", admin.local_addr().expect("addr")),
    );
    let mut config = testkit::server_config();
    config.admin_port = Some(admin.local_addr().expect("addr").port());
    // As in prod: a rate limit on the API must leave the admin listener alone.
    config.rate_limit.requests_per_second = 1000;
    config.rate_limit.burst = 100;
    let lifecycle = Lifecycle::new();
    let server = tokio::spawn(platform::server::serve(
        service,
        config,
        Listeners { api, admin: Some(admin) },
        lifecycle.clone(),
    ));
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.expect("request").status().as_u16() }
    };

    assert_eq!(status(format!("{api_url}/things")).await, 200);
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let response = http.get(format!("{api_url}{path}")).send().await.expect("request");
        assert_eq!(response.status(), 404, "{path} must not be served on the API port");
        let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
        assert_eq!(content_type, "application/problem+json", "{path}");
    }
    assert_eq!(status(format!("{admin_url}/health")).await, 200);
    assert_eq!(status(format!("{admin_url}/metrics")).await, 200);
    assert_eq!(status(format!("{admin_url}/openapi.json")).await, 200);
    // Readiness answers on the admin port, and says no.
    assert_eq!(status(format!("{admin_url}/ready")).await, 503);
    assert_eq!(status(format!("{admin_url}/things")).await, 404, "API routes are not on the admin port");

    lifecycle.shutdown();
    server.await.expect("join").expect("clean shutdown");
    assert!(http.get(format!("{admin_url}/health")).send().await.is_err(), "the admin listener stops with the server");
}
