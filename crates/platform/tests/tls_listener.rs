//! With `server.tls` set, the listener speaks HTTPS (rustls) with the configured certificate.

use std::time::Duration;

use axum::Router;
use platform::config::TlsConfig;
use platform::server::{Lifecycle, Service};
use platform::testkit;

#[tokio::test]
async fn serves_https_with_the_configured_certificate_and_refuses_plain_http() {
    platform::bootstrap::install_crypto_provider();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = testkit::TempDir::new("tls");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, generated.cert.pem()).expect("write cert");
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write key");

    let mut config = testkit::server_config();
    config.tls = Some(TlsConfig { cert_path, key_path });
    let service = Service::new("tls-test", Router::new());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let lifecycle = Lifecycle::new();
    let server = tokio::spawn(platform::server::serve(service, config, listener, lifecycle.clone()));

    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).expect("pem"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let response = trusted.get(format!("https://localhost:{port}/health")).send().await.expect("HTTPS request");
    assert_eq!(response.status(), 200);

    let untrusted = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    assert!(
        untrusted.get(format!("https://localhost:{port}/health")).send().await.is_err(),
        "a client that does not trust the certificate must fail the handshake"
    );
    let plain = trusted.get(format!("http://localhost:{port}/health")).send().await;
    assert!(plain.map_or(true, |r| !r.status().is_success()), "plain HTTP is not served on the TLS port");

    lifecycle.shutdown();
    server.await.expect("join").expect("clean shutdown");
}
