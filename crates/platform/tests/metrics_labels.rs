//! Clients cannot mint metric series: methods, paths and routes they make up all fall into the
//! bounded label values (`OTHER`, `unmatched`), so `/metrics` keeps the same series however many
//! made-up requests arrive.

use std::collections::BTreeSet;

use axum::Router;
use axum::routing::get;
use platform::server::{Lifecycle, Service};
use platform::testkit::{self, TestServer};

/// The series in a Prometheus text exposition: each sample line without its value.
fn series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _value)| series.to_owned()))
        .collect()
}

#[tokio::test]
async fn made_up_methods_and_paths_add_no_series() {
    platform::metrics::install(&[]);
    let routes = Router::new().route("/things/{id}", get(|| async { "a thing" }));
    let lifecycle = Lifecycle::new();
    let server = TestServer::start(Service::new("labels", routes), &testkit::server_config(), lifecycle).await;
    let http = reqwest::Client::new();
    let send = |method: &str, path: &str| {
        let request = http.request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), server.url(path));
        async move { request.send().await.expect("sent").status().as_u16() }
    };
    let scrape =
        || async { http.get(server.url("/metrics")).send().await.expect("scrape").text().await.expect("text") };

    // Once each, so that every label value these requests can produce exists before the baseline
    // (the scrape itself included: a request is counted once it is answered).
    assert_eq!(send("FOO0", "/health").await, 405);
    assert_eq!(send("FOO0", "/things/0").await, 405);
    assert_eq!(send("FOO0", "/nowhere/0").await, 404);
    assert_eq!(send("GET", "/nowhere/0").await, 404);
    assert_eq!(send("GET", "/things/0").await, 200);
    scrape().await;
    let before = scrape().await;

    for i in 1..=50 {
        let method = format!("FOO{i}");
        assert_eq!(send(&method, "/health").await, 405);
        assert_eq!(send(&method, &format!("/things/{i}")).await, 405);
        assert_eq!(send(&method, &format!("/nowhere/{i}")).await, 404);
        assert_eq!(send("GET", &format!("/nowhere/{i}")).await, 404);
        assert_eq!(send("GET", &format!("/things/{i}")).await, 200);
    }
    let after = scrape().await;

    let new: Vec<_> = series(&after).difference(&series(&before)).cloned().collect();
    assert!(new.is_empty(), "made-up requests minted series: {new:#?}");
    assert!(!after.contains("FOO") && !after.contains("/nowhere"), "{after}");
    for expected in [
        r#"http_requests_total{method="OTHER",route="/health",status="405"}"#,
        r#"http_requests_total{method="OTHER",route="unmatched",status="404"}"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"}"#,
        r#"http_requests_total{method="GET",route="/things/{id}",status="200"}"#,
    ] {
        assert!(after.contains(expected), "{expected} missing:\n{after}");
    }
    server.stop().await;
}
