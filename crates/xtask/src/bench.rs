//! `cargo xtask bench`: a bounded load benchmark of both services on loopback, printed as markdown.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use platform::testkit::TempDir;
use serde_json::{Value, json};

use crate::args::BenchArgs;
use crate::infra::{Daemon, Durability, Postgres};
use crate::prereqs::{self, Needs};
use crate::services::{self, Output, Profile, RunningService, SERVICES};

const CONCURRENCY: &[usize] = &[1, 16, 64, 256];

/// One benchmarked request kind.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    CachedGet,
    CreateTransaction,
    Notify,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Self::CachedGet => "GET /transactions/{id} (cached)",
            Self::CreateTransaction => "POST /transactions",
            Self::Notify => "POST /notify",
        }
    }
}

/// Throughput and latency (microseconds) of one (scenario, concurrency) cell.
struct Cell {
    scenario: Scenario,
    concurrency: usize,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50: u64,
    p99: u64,
    max: u64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let quick = args.quick;
    let duration = args.duration();
    prereqs::ensure(Needs { python_tools: false, wrk: true, nix: false, gitops: false })?;
    services::check_ports_free()?;
    let bin_dir = services::build(Profile::Release)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let postgres = Postgres::start(Durability::Production)?;
        let redis = Daemon::redis()?;
        services::create_database(&postgres)?;
        let keys = services::LocalKeys::create()?;
        // Every request is authenticated, as in production: a service token acts for any user.
        let token = keys.issuer.token("bench", "service", Duration::from_secs(3600));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        let http = reqwest::Client::builder().pool_max_idle_per_host(512).default_headers(headers).build()?;
        let mut running = Vec::new();
        let mut ready_times = Vec::new();
        for service in SERVICES.iter().rev() {
            let mut started =
                services::start(&bin_dir, service, &postgres, &redis, &keys, Output::Quiet, ("json", "warn"))?;
            ready_times.push((service.name, services::wait_ready(&http, &mut started, Duration::from_secs(30)).await?));
            running.push(started);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss: Vec<(&str, Option<u64>)> = running.iter().map(|s| (s.name, s.rss_kib())).collect();

        let ids = seed_transactions(&http, 200).await?;
        let scratch = TempDir::try_new("bench")?;
        let mut cells = Vec::new();
        for scenario in [Scenario::CachedGet, Scenario::CreateTransaction, Scenario::Notify] {
            for &concurrency in CONCURRENCY {
                eprintln!("xtask: {} at concurrency {concurrency} for {duration:?}", scenario.label());
                cells.push(load(scenario, concurrency, duration, &ids, &token, scratch.path())?);
                settle(&http).await;
            }
        }
        let loaded_rss: Vec<(&str, Option<u64>)> = running.iter().map(|s| (s.name, s.rss_kib())).collect();
        let end_to_end = end_to_end_latency(&http, if quick { 20 } else { 50 }).await?;
        print_report(duration, &cells, &ready_times, &idle_rss, &loaded_rss, &end_to_end);
        stop_all(&mut running);
        drop((redis, postgres));
        Ok(())
    })
}

fn stop_all(running: &mut [RunningService]) {
    for service in running.iter_mut().rev() {
        service.stop();
    }
}

async fn seed_transactions(http: &reqwest::Client, count: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let body = json!({"user_id": format!("seed-{i}"), "amount": "10.00", "currency": "EUR"});
        let created: Value = http.post("http://127.0.0.1:8080/transactions").json(&body).send().await?.json().await?;
        ids.push(created["id"].as_str().context("create answered without id")?.to_owned());
    }
    Ok(ids)
}

/// Lets the outbox drain between cells so one cell's backlog does not slow the next.
async fn settle(http: &reqwest::Client) {
    let _ = http.get("http://127.0.0.1:8080/ready").send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Runs one cell with wrk (an efficient C load generator, so the numbers measure the services
/// rather than the client) and reads the summary its Lua `done` hook prints.
fn load(
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    ids: &[String],
    token: &str,
    scratch: &Path,
) -> Result<Cell> {
    let (url, script) = match scenario {
        Scenario::CachedGet => {
            let list: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
            let script = format!(
                "ids = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", \"/transactions/\" .. ids[(i % #ids) + 1], wrk.headers)\nend\n",
                list.join(",")
            );
            ("http://127.0.0.1:8080", script)
        }
        Scenario::CreateTransaction => (
            "http://127.0.0.1:8080/transactions",
            post_script(r#"{\"user_id\":\"bench\",\"amount\":\"12.34\",\"currency\":\"EUR\"}"#),
        ),
        Scenario::Notify => {
            ("http://127.0.0.1:8081/notify", post_script(r#"{\"user_id\":\"bench\",\"message\":\"hello\"}"#))
        }
    };
    let script_path = scratch.join("scenario.lua");
    std::fs::write(&script_path, format!("wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n{script}{DONE_HOOK}"))?;
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script_path)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("run wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .find_map(|line| line.strip_prefix("QUILLA "))
        .with_context(|| format!("wrk printed no summary: {stdout}{}", String::from_utf8_lossy(&output.stderr)))?;
    let numbers: Vec<u64> = summary.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let [requests, duration_us, status_errors, socket_errors, p50, p99, max] = numbers[..] else {
        bail!("unexpected wrk summary: {summary}");
    };
    Ok(Cell {
        scenario,
        concurrency,
        requests,
        errors: status_errors + socket_errors,
        elapsed: Duration::from_micros(duration_us),
        p50,
        p99,
        max,
    })
}

fn post_script(body: &str) -> String {
    format!("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = \"{body}\"\n")
}

/// Prints `QUILLA requests duration_us non2xx socket_errors p50_us p99_us max_us` when wrk ends.
const DONE_HOOK: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("QUILLA %d %d %d %d %d %d %d\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// Create → notification visible, measured by polling the notification list.
async fn end_to_end_latency(http: &reqwest::Client, samples: usize) -> Result<Histogram<u64>> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..samples {
        let user = format!("e2e-{i}-{}", rand::random::<u32>());
        let started = Instant::now();
        let created = http
            .post("http://127.0.0.1:8080/transactions")
            .json(&json!({"user_id": user, "amount": "1.00", "currency": "EUR"}))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!("create failed: {}", created.status());
        }
        loop {
            let page: Value =
                http.get(format!("http://127.0.0.1:8081/notifications/{user}")).send().await?.json().await?;
            if page["items"].as_array().is_some_and(|items| !items.is_empty()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("no notification for {user} after 10 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        latency.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1))?;
    }
    Ok(latency)
}

fn ms(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn print_report(
    duration: Duration,
    cells: &[Cell],
    ready: &[(&str, Duration)],
    idle: &[(&str, Option<u64>)],
    loaded: &[(&str, Option<u64>)],
    end_to_end: &Histogram<u64>,
) {
    println!("## Machine\n");
    println!("- CPU: {} ({} cores online)", cpu_model(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("- Memory: {}", mem_total());
    println!("- Kernel: {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());
    println!("- Load generator, services, PostgreSQL (fsync on, synchronous_commit on) and Redis share these cores.");
    println!("- {duration:?} per cell, wrk (1 thread, keep-alive connections), release build.\n");
    println!("## Throughput and latency\n");
    println!("| scenario | concurrency | requests/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for cell in cells {
        let rate = cell.requests as f64 / cell.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            cell.scenario.label(),
            cell.concurrency,
            rate,
            ms(cell.p50),
            ms(cell.p99),
            ms(cell.max),
            cell.errors
        );
    }
    println!("\n## End to end: POST /transactions → notification listed\n");
    println!(
        "| samples | p50 ms | p99 ms | max ms |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |",
        end_to_end.len(),
        ms(end_to_end.value_at_quantile(0.50)),
        ms(end_to_end.value_at_quantile(0.99)),
        ms(end_to_end.max())
    );
    println!("\n## Processes\n");
    println!("| service | start → ready | RSS idle | RSS after load |\n|---|---:|---:|---:|");
    for (name, took) in ready {
        let idle_rss = idle.iter().find(|(n, _)| n == name).and_then(|(_, r)| *r);
        let loaded_rss = loaded.iter().find(|(n, _)| n == name).and_then(|(_, r)| *r);
        println!(
            "| {name} | {} ms | {} | {} |",
            ms(u64::try_from(took.as_micros()).unwrap_or(0)),
            mib(idle_rss),
            mib(loaded_rss)
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().map(|l| l.trim_start_matches("MemTotal:").trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}
