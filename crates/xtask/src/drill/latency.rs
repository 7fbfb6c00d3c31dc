//! Drill `service-latency` (docs/runbooks/service-latency.md): a TCP proxy between
//! transaction-api and notification-service delays every request on the webhook path, first
//! below the webhook client's timeout (2 s), then beyond it. Shown: the client and delivery
//! histograms, the receiver's lag, the outbox gauges and breaker, one trace id in both services'
//! logs, and, through promtool on the scraped values, which alerts of prometheus-rules.yaml fire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Checks, Process, Scrape, Stack, log_lines, new_transaction, show};

/// Below the webhook client's timeout (`webhook.client.timeout`, 2 s): deliveries succeed, late.
const SLOW: Duration = Duration::from_millis(400);
/// Beyond it: every attempt times out, the breaker opens, the outbox holds the events.
const BEYOND_TIMEOUT: Duration = Duration::from_millis(2500);
/// Logs with the request spans' trace ids: `request finished` is logged at debug.
const LOG_LEVEL: &str = "info,sqlx=warn,platform::telemetry=debug";

pub async fn run(stack: &Stack, checks: &mut Checks) -> Result<()> {
    let http = &stack.http;
    let mut notifier = stack.spawn("notification-service", &[], LOG_LEVEL)?;
    notifier.wait_ready(http).await?;
    let delay = Arc::new(AtomicU64::new(0));
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = proxy.local_addr()?.port();
    let proxying = tokio::spawn(delay_proxy(proxy, notifier.port(), delay.clone()));
    let webhook = format!("http://127.0.0.1:{proxy_port}/webhooks/transactions");
    let mut api = stack.spawn("transaction-api", &[("QUILLA_WEBHOOK__URL", webhook.clone())], LOG_LEVEL)?;
    api.wait_ready(http).await?;
    println!(
        "  transaction-api :{} -> delay proxy :{proxy_port} -> notification-service :{}",
        api.port(),
        notifier.port()
    );

    println!("\n--- no delay (baseline)");
    let start = (Scrape::of(http, &api).await?, Scrape::of(http, &notifier).await?);
    create(http, &api, 5, None).await?;
    wait_delivered(http, &notifier, 5.0, Duration::from_secs(30)).await?;
    let baseline = (Scrape::of(http, &api).await?, Scrape::of(http, &notifier).await?);
    let base = Means::between(&start, &baseline);
    base.show();

    println!("\n--- {SLOW:?} on every request to notification-service (below the client's 2 s timeout)");
    delay.store(millis(SLOW), Ordering::SeqCst);
    let trace_id = hex::encode(rand::random::<[u8; 16]>());
    create(http, &api, 10, Some(&trace_id)).await?;
    wait_delivered(http, &notifier, 15.0, Duration::from_secs(30)).await?;
    let slow = (Scrape::of(http, &api).await?, Scrape::of(http, &notifier).await?);
    let late = Means::between(&baseline, &slow);
    late.show();
    let slow_s = SLOW.as_secs_f64();
    checks.expect(base.client < slow_s, format!("baseline: webhook calls take {:.3}s on average", base.client));
    checks.expect(
        late.client >= slow_s,
        format!(
            "http_client_request_duration_seconds{{client=\"notification-service\"}} mean rises to {:.3}s",
            late.client
        ),
    );
    checks.expect(
        late.delivery >= slow_s,
        format!("webhook_delivery_duration_seconds mean rises to {:.3}s", late.delivery),
    );
    checks.expect(
        late.lag >= slow_s,
        format!("notification_delivery_lag_seconds (receiver side) mean rises to {:.3}s", late.lag),
    );
    checks.expect(
        late.create < slow_s,
        format!(
            "POST /transactions stays fast ({:.3}s mean): the outbox decouples the client from the webhook",
            late.create
        ),
    );
    expect_trace_in_both_logs(&api, &notifier, &trace_id, checks);

    println!("\n--- {BEYOND_TIMEOUT:?} on every request (beyond the client's 2 s timeout)");
    delay.store(millis(BEYOND_TIMEOUT), Ordering::SeqCst);
    create(http, &api, 10, None).await?;
    let stalled = platform::testkit::wait_until(
        "the breaker did not open and the outbox gauge did not show the backlog",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let scrape = Scrape::of(http, &api).await?;
            let open = scrape.sum("circuit_breaker_state", &[("breaker", "notification-service")]) > 0.0;
            Ok((open && scrape.sum("outbox_pending_events", &[]) > 0.0).then_some(scrape))
        },
    )
    .await;
    let stalled = match stalled {
        Ok(scrape) => scrape,
        Err(error) => {
            checks.expect(false, format!("{error:#}"));
            Scrape::of(http, &api).await?
        }
    };
    show(
        "GET transaction-api /metrics",
        stalled.lines(&[
            "circuit_breaker_state",
            "outbox_pending_events",
            "outbox_dead_letter_events",
            "outbox_events_total",
        ]),
    );
    checks.expect(
        stalled.sum("circuit_breaker_state", &[("breaker", "notification-service")]) > 0.0,
        "circuit_breaker_state{breaker=\"notification-service\"} > 0 (open or half-open)",
    );
    checks.expect(
        stalled.sum("outbox_pending_events", &[]) > 0.0,
        "outbox_pending_events > 0: the events wait in the outbox",
    );
    checks.expect(
        stalled.sum("outbox_events_total", &[("outcome", "retried")]) > 0.0,
        "outbox_events_total{outcome=\"retried\"} counts the failed deliveries",
    );
    let logs = api.logs();
    let failed = log_lines(&logs, &["webhook delivery failed; will retry"]);
    let opened = log_lines(&logs, &["circuit opened"]);
    show("transaction-api logs (WARN)", failed.iter().take(1).chain(opened.iter().take(1)));
    checks.expect(
        !failed.is_empty() && !opened.is_empty(),
        "the logs say the deliveries time out and the circuit opened",
    );
    alerts(&baseline.0, &stalled, checks)?;

    println!("\n--- delay removed (the fix)");
    delay.store(0, Ordering::SeqCst);
    // An event claimed just before is leased for `outbox.lease` (30 s): at worst it waits that long.
    let recovered = wait_delivered(http, &notifier, 25.0, Duration::from_secs(45)).await;
    checks.expect(recovered.is_ok(), "once the delay is gone every held event is delivered, none lost");
    let after = Scrape::of(http, &api).await?;
    show(
        "GET transaction-api /metrics",
        after.lines(&[
            "circuit_breaker_state",
            "outbox_pending_events",
            "outbox_dead_letter_events",
            "outbox_events_total",
        ]),
    );
    show("GET notification-service /metrics", Scrape::of(http, &notifier).await?.lines(&["webhook_events_total"]));
    api.stop();
    notifier.stop();
    proxying.abort();
    Ok(())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Forwards every connection to `upstream`, holding each chunk the client sends for `delay` ms:
/// a slow network on the request direction (as Chaos Mesh's NetworkChaos delay on the pod).
async fn delay_proxy(listener: TcpListener, upstream: u16, delay: Arc<AtomicU64>) {
    while let Ok((client, _)) = listener.accept().await {
        let delay = delay.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let requests = async {
                let mut buffer = vec![0; 16 * 1024];
                while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
                    tokio::time::sleep(Duration::from_millis(delay.load(Ordering::SeqCst))).await;
                    if to_server.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
                let _ = to_server.shutdown().await;
            };
            let _ = tokio::join!(requests, tokio::io::copy(&mut from_server, &mut to_client));
        });
    }
}

/// Creates `count` transactions; the first carries `traceparent` with `trace_id` when given.
async fn create(http: &reqwest::Client, api: &Process, count: usize, trace_id: Option<&str>) -> Result<()> {
    for i in 0..count {
        let mut request = http
            .post(api.url("/transactions"))
            .header("idempotency-key", platform::ids::new_id("drill"))
            .json(&new_transaction("u-latency"));
        if let (0, Some(trace_id)) = (i, trace_id) {
            request =
                request.header("traceparent", format!("00-{trace_id}-{}-01", hex::encode(rand::random::<[u8; 8]>())));
        }
        let response = request.send().await?;
        if response.status() != 201 {
            bail!("POST /transactions answered {}: {}", response.status(), response.text().await?);
        }
    }
    Ok(())
}

/// Until notification-service has created `total` notifications from webhooks.
async fn wait_delivered(http: &reqwest::Client, notifier: &Process, total: f64, timeout: Duration) -> Result<()> {
    platform::testkit::wait_until(
        &format!("{total} webhooks were not received"),
        timeout,
        Duration::from_millis(100),
        || async {
            let created = Scrape::of(http, notifier).await?.sum("webhook_events_total", &[("outcome", "created")]);
            Ok((created >= total).then_some(()))
        },
    )
    .await
}

/// Mean durations (seconds) over an interval, from the histograms' `_sum` and `_count`.
struct Means {
    client: f64,
    delivery: f64,
    lag: f64,
    create: f64,
}

impl Means {
    fn between(from: &(Scrape, Scrape), to: &(Scrape, Scrape)) -> Self {
        let mean = |from: &Scrape, to: &Scrape, name: &str, labels: &[(&str, &str)]| {
            let sum = to.sum(&format!("{name}_sum"), labels) - from.sum(&format!("{name}_sum"), labels);
            let count = to.sum(&format!("{name}_count"), labels) - from.sum(&format!("{name}_count"), labels);
            if count > 0.0 { sum / count } else { f64::NAN }
        };
        let create = [("method", "POST"), ("route", "/transactions")];
        Self {
            client: mean(&from.0, &to.0, "http_client_request_duration_seconds", &[("client", "notification-service")]),
            delivery: mean(&from.0, &to.0, "webhook_delivery_duration_seconds", &[]),
            lag: mean(&from.1, &to.1, "notification_delivery_lag_seconds", &[]),
            create: mean(&from.0, &to.0, "http_request_duration_seconds", &create),
        }
    }

    fn show(&self) {
        show(
            "mean over the interval (histogram _sum / _count)",
            [
                format!(
                    "transaction-api   http_client_request_duration_seconds{{client=\"notification-service\"}}  {:.3}s",
                    self.client
                ),
                format!(
                    "transaction-api   webhook_delivery_duration_seconds                                     {:.3}s",
                    self.delivery
                ),
                format!(
                    "transaction-api   http_request_duration_seconds{{method=\"POST\",route=\"/transactions\"}}    {:.3}s",
                    self.create
                ),
                format!(
                    "notification-svc  notification_delivery_lag_seconds                                     {:.3}s",
                    self.lag
                ),
            ],
        );
    }
}

/// The request the drill sent with a `traceparent` is logged with its trace id by
/// transaction-api, and the webhook it caused by notification-service, in the same trace.
fn expect_trace_in_both_logs(api: &Process, notifier: &Process, trace_id: &str, checks: &mut Checks) {
    let (api_logs, notifier_logs) = (api.logs(), notifier.logs());
    let sent = log_lines(&api_logs, &[trace_id, "\"route\":\"/transactions\""]);
    let received = log_lines(&notifier_logs, &[trace_id, "\"route\":\"/webhooks/transactions\""]);
    show(&format!("logs with trace_id {trace_id}"), sent.iter().take(1).chain(received.iter().take(1)));
    checks.expect(!sent.is_empty(), "transaction-api logs POST /transactions with the trace id");
    checks.expect(!received.is_empty(), "notification-service logs the webhook with the same trace id");
}

/// Which alerts fire if what was scraped went on: promtool evaluates prometheus-rules.yaml on
/// series built from the scrape (gauges held at their value, counters growing as in the drill).
fn alerts(before: &Scrape, stalled: &Scrape, checks: &mut Checks) -> Result<()> {
    let rules_path = super::workspace_file("gitops/platform/monitoring/prometheus-rules.yaml");
    let rule: Value = serde_norway::from_str(&std::fs::read_to_string(&rules_path)?)
        .with_context(|| format!("parse {}", rules_path.display()))?;
    let dir = platform::testkit::TempDir::try_new("drill-alerts")?;
    std::fs::write(dir.path().join("quilla.rules.yaml"), serde_json::to_string_pretty(&rule["spec"])?)?;
    let target = [("namespace", "quilla"), ("job", "transaction-api"), ("pod", "drill")];
    let series = |name: &str, extra: &[(&str, &str)]| {
        let labels: Vec<String> = target.iter().chain(extra).map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", labels.join(","))
    };
    let breaker = stalled.sum("circuit_breaker_state", &[("breaker", "notification-service")]);
    let pending = stalled.sum("outbox_pending_events", &[]);
    let dead = stalled.sum("outbox_dead_letter_events", &[]);
    let mut input = vec![
        json!({"series": series("circuit_breaker_state", &[("breaker", "notification-service")]), "values": format!("{breaker}x20")}),
        json!({"series": series("outbox_pending_events", &[]), "values": format!("{pending}x20")}),
        json!({"series": series("outbox_dead_letter_events", &[]), "values": format!("{dead}x20")}),
    ];
    // Each minute brings what the whole drill brought, so rates keep the drill's proportions.
    for (labels, value) in stalled.samples("http_requests_total", &[]) {
        let label = |key: &str| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_default();
        let matching: Vec<(&str, &str)> = ["method", "route", "status"].iter().map(|k| (*k, label(k))).collect();
        let grown = value - before.sum("http_requests_total", &matching);
        input.push(json!({"series": series("http_requests_total", &matching), "values": format!("0+{grown}x20")}));
    }
    let annotations = |alert: &str, labels: &[(&str, &str)]| -> Value {
        let rule = rule["spec"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .find(|r| r["alert"] == alert)
            .cloned()
            .unwrap_or_default();
        let mut annotations = rule["annotations"].clone();
        for value in annotations.as_object_mut().into_iter().flat_map(|a| a.values_mut()) {
            let mut text = value.as_str().unwrap_or_default().to_owned();
            for (key, label) in labels {
                text = text.replace(&format!("{{{{ $labels.{key} }}}}"), label);
            }
            *value = Value::String(text);
        }
        annotations
    };
    let breaker_labels = [target.as_slice(), &[("breaker", "notification-service"), ("severity", "warning")]].concat();
    let breaker_alert = json!({
        "exp_labels": breaker_labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "exp_annotations": annotations("QuillaCircuitBreakerOpen", &breaker_labels),
    });
    let expectations = [
        ("QuillaCircuitBreakerOpen", json!([breaker_alert])),
        ("QuillaOutboxBacklogHigh", json!([])),
        ("QuillaOutboxBacklogGrowing", json!([])),
        ("QuillaWebhookDeadLetters", json!([])),
        ("QuillaErrorBudgetBurnFast", json!([])),
    ];
    let test = json!({
        "rule_files": ["quilla.rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "name": "the drill's scrape, held for 20 minutes",
            "interval": "1m",
            "input_series": input,
            "alert_rule_test": expectations.iter().map(|(alert, expected)| json!({"eval_time": "15m", "alertname": alert, "exp_alerts": expected})).collect::<Vec<_>>(),
        }],
    });
    std::fs::write(dir.path().join("drill.test.yaml"), serde_json::to_string_pretty(&test)?)?;
    let output = std::process::Command::new("promtool")
        .current_dir(dir.path())
        .args(["test", "rules", "drill.test.yaml"])
        .output()
        .context("run promtool (Debian: apt-get install prometheus)")?;
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    show(
        &format!("promtool test rules (breaker {breaker}, pending {pending}, dead {dead}, held 15 min)"),
        printed.lines().filter(|l| !l.trim().is_empty()),
    );
    let fired =
        |alert: &str| expectations.iter().any(|(a, e)| *a == alert && e.as_array().is_some_and(|e| !e.is_empty()));
    println!(
        "  expected: {} fires; {} stay silent",
        expectations.iter().filter(|(a, _)| fired(a)).map(|(a, _)| *a).collect::<Vec<_>>().join(", "),
        expectations.iter().filter(|(a, _)| !fired(a)).map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
    );
    checks.expect(
        output.status.success(),
        "promtool: QuillaCircuitBreakerOpen fires, the backlog, dead-letter and error-budget alerts do not",
    );
    Ok(())
}
