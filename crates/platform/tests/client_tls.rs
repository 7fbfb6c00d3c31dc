//! The resilient client with `ca_path` trusts only that CA: a receiver whose certificate another
//! CA signed is refused, plain HTTP is refused, and redirects are never followed.

use std::time::Duration;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use platform::client::{ClientConfig, ClientError, ResilientClient};
use platform::config::TlsConfig;
use platform::server::{Lifecycle, Service};
use platform::testkit::{self, TempDir, TestCa};

fn client(ca_path: Option<std::path::PathBuf>) -> ResilientClient {
    let config = ClientConfig {
        timeout: Duration::from_secs(5),
        max_attempts: 1,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        breaker_failure_threshold: 100,
        breaker_open_for: Duration::from_secs(1),
        ca_path,
    };
    ResilientClient::new("tls-test", config).expect("client builds")
}

#[tokio::test]
async fn the_client_verifies_the_receiver_against_its_ca_and_never_follows_redirects() {
    platform::bootstrap::install_crypto_provider();
    let dir = TempDir::new("client-tls");
    let (our_ca, other_ca) = (TestCa::new("quilla internal CA"), TestCa::new("some other CA"));
    let (server_certificate, server_key) = our_ca.issue(&["localhost"]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    let (ours, others) = (write("ours.pem", &our_ca.pem()), write("others.pem", &other_ca.pem()));
    let tls = TlsConfig { cert_path: write("tls.crt", &server_certificate), key_path: write("tls.key", &server_key) };

    let routes = Router::new()
        .route("/hook", get(|| async { "delivered" }))
        .route("/moved", get(|| async { Redirect::temporary("/hook") }));
    let service = Service::new("receiver", routes);
    let mut config = testkit::server_config();
    config.tls = Some(tls);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let lifecycle = Lifecycle::new();
    let server = tokio::spawn(platform::server::serve(service, config, listener, lifecycle.clone()));
    let url = |path: &str| format!("https://localhost:{port}{path}");

    let trusting = client(Some(ours));
    let response = trusting.send_idempotent(None, |http| http.get(url("/hook"))).await.expect("verified receiver");
    assert_eq!(response.text().await.expect("body"), "delivered");

    let distrusting = client(Some(others));
    match distrusting.send_idempotent(None, |http| http.get(url("/hook"))).await {
        Err(ClientError::Transport(message)) => assert!(message.to_lowercase().contains("certificate"), "{message}"),
        other => panic!("a receiver signed by another CA must be refused, got {other:?}"),
    }
    let plain = trusting.send_idempotent(None, |http| http.get(format!("http://localhost:{port}/hook"))).await;
    assert!(matches!(plain, Err(ClientError::Transport(_))), "plain HTTP must be refused: {plain:?}");

    match trusting.send_idempotent(None, |http| http.get(url("/moved"))).await {
        Err(ClientError::Status { status: 307, .. }) => {}
        other => panic!("a redirect must be reported, not followed: {other:?}"),
    }

    lifecycle.shutdown();
    server.await.expect("join").expect("clean shutdown");
}
