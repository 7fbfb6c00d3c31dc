//! Slow or stuck clients cannot hold a connection: a request head must arrive within
//! `server.header_read_timeout` (a TLS handshake included), an idle kept-alive connection lives
//! until `server.idle_timeout`, at most `server.max_connections` are served at once per listener
//! (the others wait for a free slot), and a request head over `server.max_header_bytes` gets 431.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use platform::config::{ServerConfig, TlsConfig};
use platform::server::{Lifecycle, Listeners, Service};
use platform::testkit::{self, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Room for a busy test machine, well below the other timeout each test tells apart.
const SLACK: Duration = Duration::from_millis(700);

fn config() -> ServerConfig {
    let mut config = testkit::server_config();
    config.request_timeout = Duration::from_secs(1);
    config.header_read_timeout = HEADER_TIMEOUT;
    config.idle_timeout = IDLE_TIMEOUT;
    config
}

struct Server {
    api: SocketAddr,
    admin: Option<SocketAddr>,
    lifecycle: Lifecycle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(mut config: ServerConfig, with_admin: bool) -> Self {
        platform::bootstrap::install_crypto_provider();
        platform::metrics::install(&[]);
        let routes = Router::new().route("/things", get(|| async { "things" }));
        let service = Service::new("slow-clients", routes);
        let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = with_admin.then(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
        let (api_address, admin_address) =
            (api.local_addr().expect("addr"), admin.as_ref().map(|l| l.local_addr().expect("addr")));
        config.admin_port = admin_address.map(|a| a.port());
        let lifecycle = Lifecycle::new();
        let task = tokio::spawn(platform::server::serve(service, config, Listeners { api, admin }, lifecycle.clone()));
        Self { api: api_address, admin: admin_address, lifecycle, task }
    }

    async fn stop(self) {
        self.lifecycle.shutdown();
        self.task.await.expect("join").expect("clean shutdown");
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Reads one HTTP/1.1 response (its head and a `content-length` body) and returns it as text.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let read = stream.read(&mut chunk).await.expect("read a response");
        assert!(read > 0, "the connection closed mid-response: {text:?}");
        received.extend_from_slice(&chunk[..read]);
    }
}

/// Waits until the server closes `stream` (end of stream or reset), at most `within`; returns how
/// long that took from `since`.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    since: Instant,
    within: Duration,
) -> Duration {
    let mut sink = [0u8; 4096];
    let drained = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "still open after {within:?}");
    since.elapsed()
}

#[tokio::test]
async fn a_half_sent_request_is_closed_within_the_header_timeout() {
    let server = Server::start(config(), false).await;

    // The request line and some headers, then silence.
    let mut slow = TcpStream::connect(server.api).await.expect("connect");
    let sent = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slowloris\r\n").await.expect("write");
    let took = closed_by_server(&mut slow, sent, HEADER_TIMEOUT + SLACK).await;
    assert!(took >= HEADER_TIMEOUT - Duration::from_millis(50), "closed before its deadline: {took:?}");

    // A connection that never sends a byte is cut off the same way.
    let mut silent = TcpStream::connect(server.api).await.expect("connect");
    closed_by_server(&mut silent, Instant::now(), HEADER_TIMEOUT + SLACK).await;

    // On a kept-alive connection, a later request's head gets the header timeout too, counted
    // from its first byte, not the idle timeout.
    let mut kept = TcpStream::connect(server.api).await.expect("connect");
    kept.write_all(HEALTH).await.expect("write");
    assert!(read_response(&mut kept).await.starts_with("HTTP/1.1 200"));
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: local").await.expect("write");
    closed_by_server(&mut kept, Instant::now(), HEADER_TIMEOUT + SLACK).await;

    server.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_lives_until_the_idle_timeout() {
    let server = Server::start(config(), false).await;
    let mut idle = TcpStream::connect(server.api).await.expect("connect");
    idle.write_all(HEALTH).await.expect("write");
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let answered = Instant::now();

    // Well past the header timeout it still serves: idle between requests is not a slow head.
    tokio::time::sleep(HEADER_TIMEOUT * 2).await;
    idle.write_all(HEALTH).await.expect("write");
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"), "kept alive past the header timeout");
    let answered_again = Instant::now();
    assert!(answered_again - answered < IDLE_TIMEOUT, "the test machine is too slow for this test");

    let took = closed_by_server(&mut idle, answered_again, IDLE_TIMEOUT + SLACK).await;
    assert!(took >= IDLE_TIMEOUT - Duration::from_millis(50), "closed before the idle timeout: {took:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_tls_client_that_stops_mid_handshake_is_cut_off() {
    let dir = TempDir::new("slow-tls");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, generated.cert.pem()).expect("write cert");
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).expect("write key");
    let mut config = config();
    config.tls = Some(TlsConfig { cert_path, key_path });
    let server = Server::start(config, false).await;

    let hello = client_hello();
    // Half a ClientHello, then silence: the server waits for the rest.
    let mut half = TcpStream::connect(server.api).await.expect("connect");
    let sent = Instant::now();
    half.write_all(&hello[..hello.len() / 2]).await.expect("write");
    let took = closed_by_server(&mut half, sent, HEADER_TIMEOUT + SLACK).await;
    assert!(took >= HEADER_TIMEOUT - Duration::from_millis(50), "closed before its deadline: {took:?}");

    // The whole ClientHello, and then nothing: the server answers with its flight and waits for
    // the client's Finished, which never comes.
    let mut stalled = TcpStream::connect(server.api).await.expect("connect");
    stalled.write_all(&hello).await.expect("write");
    closed_by_server(&mut stalled, Instant::now(), HEADER_TIMEOUT + SLACK).await;

    // A client that completes the handshake is served as before.
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).expect("pem"))
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/health", server.api.port());
    assert_eq!(trusted.get(url).send().await.expect("HTTPS").status(), 200);
    server.stop().await;
}

/// The first flight of a real TLS client (a ClientHello for `localhost`).
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).expect("ClientHello");
    assert!(hello.len() > 100, "a ClientHello: {} bytes", hello.len());
    hello
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let mut config = config();
    config.max_connections = 2;
    // Long enough that no slot is freed by a timeout during the test.
    config.header_read_timeout = Duration::from_secs(20);
    config.idle_timeout = Duration::from_secs(30);
    let server = Server::start(config, true).await;
    let admin = server.admin.expect("an admin listener");

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = TcpStream::connect(server.api).await.expect("connect");
        connection.write_all(b"GET /things HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
        assert!(read_response(&mut connection).await.starts_with("HTTP/1.1 200"));
        held.push(connection);
    }

    // A third connection is not refused: the kernel completes it, but it is not served...
    let mut waiting = TcpStream::connect(server.api).await.expect("connect: the kernel queues it");
    waiting.write_all(b"GET /things HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond max_connections: {early:?}");

    // ...while the admin listener, with slots of its own, still answers the probes.
    let mut probe = TcpStream::connect(admin).await.expect("connect");
    probe.write_all(HEALTH).await.expect("write");
    assert!(read_response(&mut probe).await.starts_with("HTTP/1.1 200"));
    probe.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let metrics = read_response(&mut probe).await;
    assert!(metrics.contains(r#"http_server_connection_limit_reached_total{listener="api"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"http_server_connections{listener="api"}"#), "{metrics}");

    // A slot frees up: the waiting connection is served.
    drop(held.remove(0));
    let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut waiting)).await;
    let response = response.expect("served once a slot was free");
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("things"), "{response}");

    drop((held, waiting, probe));
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let config = config();
    let limit = config.max_header_bytes;
    let server = Server::start(config, false).await;

    let mut connection = TcpStream::connect(server.api).await.expect("connect");
    let head = format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n", "a".repeat(limit));
    // The server may stop reading (and close) before all of it is written.
    let _ = connection.write_all(head.as_bytes()).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");

    let mut fine = TcpStream::connect(server.api).await.expect("connect");
    let head = format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n", "a".repeat(limit / 2));
    fine.write_all(head.as_bytes()).await.expect("write");
    assert!(read_response(&mut fine).await.starts_with("HTTP/1.1 200"), "a head under the limit is served");
    server.stop().await;
}
