//! `cargo xtask bench`: a bounded load benchmark of both services on loopback, printed as markdown,
//! with the issue's two ratios (cached GET / `/health`, delivered POST / pgbench) from the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use platform::testkit::TempDir;
use serde_json::{Value, json};

use crate::args::BenchArgs;
use crate::infra::{Postgres, postgres_bin_dir};
use crate::prereqs::{self, Needs};
use crate::services::{self, Output, Profile, StackOptions};

const CONCURRENCY: &[usize] = &[1, 16, 64, 256];
/// The concurrency both ratios compare at (pgbench runs with as many clients).
const RATIO_CONCURRENCY: usize = 64;
/// Cached GET throughput ≥ this × `/health` through the same stack (issue 12).
const GET_TARGET: f64 = 0.6;
/// Delivered POST /transactions throughput ≥ this × pgbench's two-row transactions (issue 12).
const POST_TARGET: f64 = 0.5;
/// The longest wait for the outbox to drain after a POST cell before the run fails.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// One benchmarked request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Health,
    CachedGet,
    CreateTransaction,
    Notify,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Self::Health => "GET /health",
            Self::CachedGet => "GET /transactions/{id} (cached)",
            Self::CreateTransaction => "POST /transactions",
            Self::Notify => "POST /notify",
        }
    }
}

/// The base URLs of the two services, from nix/services.toml.
struct Urls {
    api: String,
    notifier: String,
}

/// Throughput and latency (microseconds) of one (scenario, concurrency) cell.
struct Cell {
    scenario: Scenario,
    concurrency: usize,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    /// POST /transactions only: how long after the cell the last of its events was delivered.
    drained_after: Option<Duration>,
    p50: u64,
    p99: u64,
    max: u64,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Requests per second counted until every event they produced was delivered.
    fn delivered_rate(&self) -> Option<f64> {
        self.drained_after.map(|drain| self.requests as f64 / (self.elapsed + drain).as_secs_f64())
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let quick = args.quick;
    let duration = args.duration();
    prereqs::ensure(Needs { python_tools: false, wrk: true, nix: false, gitops: false })?;
    let pgbench = postgres_bin_dir().map(|bin| bin.join("pgbench")).filter(|p| p.is_file());
    let pgbench = pgbench.context("pgbench not found beside PostgreSQL's server binaries")?;
    let urls =
        Urls { api: services::local_url("transaction-api")?, notifier: services::local_url("notification-service")? };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let stack = services::start_stack(StackOptions {
            profile: Profile::Release,
            output: Output::Quiet,
            log: ("json", "warn"),
            ready_within: Duration::from_secs(30),
        })
        .await?;
        // Every request is authenticated, as in production: a service token acts for any user.
        let token = stack.keys.issuer.token("bench", "service", Duration::from_secs(3600));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        let http = reqwest::Client::builder().pool_max_idle_per_host(512).default_headers(headers).build()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss: Vec<(&str, Option<u64>)> = stack.running.iter().map(|s| (s.name, s.rss_kib())).collect();

        let ids = seed_transactions(&http, &urls, 200).await?;
        let scratch = TempDir::try_new("bench")?;
        let mut cells = Vec::new();
        for scenario in [Scenario::Health, Scenario::CachedGet, Scenario::CreateTransaction, Scenario::Notify] {
            for &concurrency in CONCURRENCY {
                eprintln!("xtask: {} at concurrency {concurrency} for {duration:?}", scenario.label());
                let mut cell = load(scenario, concurrency, duration, &urls, &ids, &token, scratch.path())?;
                if scenario == Scenario::CreateTransaction {
                    cell.drained_after = Some(wait_for_outbox_drain(&stack.postgres)?);
                }
                cells.push(cell);
                settle(&http, &urls).await;
            }
        }
        eprintln!("xtask: pgbench, two-row transactions, {RATIO_CONCURRENCY} clients for {duration:?}");
        let reference = pgbench_two_row_tps(&pgbench, &stack.postgres, duration, scratch.path())?;
        let loaded_rss: Vec<(&str, Option<u64>)> = stack.running.iter().map(|s| (s.name, s.rss_kib())).collect();
        let end_to_end = end_to_end_latency(&http, &urls, if quick { 20 } else { 50 }).await?;
        print_report(duration, &cells, &stack.ready, &idle_rss, &loaded_rss, &end_to_end);
        print_ratios(&cells, reference);
        stack.stop();
        Ok(())
    })
}

async fn seed_transactions(http: &reqwest::Client, urls: &Urls, count: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let body = json!({"user_id": format!("seed-{i}"), "amount": "10.00", "currency": "EUR"});
        let created: Value = http.post(format!("{}/transactions", urls.api)).json(&body).send().await?.json().await?;
        ids.push(created["id"].as_str().context("create answered without id")?.to_owned());
    }
    Ok(ids)
}

/// Lets the outbox drain between cells so one cell's backlog does not slow the next.
async fn settle(http: &reqwest::Client, urls: &Urls) {
    let _ = http.get(format!("{}/ready", urls.api)).send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Runs SQL with psql against database `database` of the throwaway cluster; returns its output.
fn psql(postgres: &Postgres, database: &str, sql: &str) -> Result<String> {
    let psql = postgres_bin_dir().context("PostgreSQL binaries not found")?.join("psql");
    let output = Command::new(psql)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &postgres.url(database), "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("run psql")?;
    if !output.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Waits until no outbox event is pending: every POST of the cell has been delivered end to end.
fn wait_for_outbox_drain(postgres: &Postgres) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let pending = psql(postgres, "quilla", "SELECT count(*) FROM transactions.outbox WHERE status = 'pending'")?;
        if pending == "0" {
            return Ok(started.elapsed());
        }
        if started.elapsed() > DRAIN_LIMIT {
            bail!("{pending} events still pending {DRAIN_LIMIT:?} after the POST cell");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reference: pgbench committing a transaction row and its outbox row (with the same keys,
/// foreign key and partial index as transaction-api's) in one transaction, on the same
/// PostgreSQL (fsync and synchronous_commit on), with as many clients as the POST cell.
fn pgbench_two_row_tps(pgbench: &Path, postgres: &Postgres, duration: Duration, scratch: &Path) -> Result<f64> {
    postgres.create_database("pgbench_reference").context("create the pgbench database")?;
    psql(postgres, "pgbench_reference", PGBENCH_SCHEMA)?;
    let script = scratch.join("two-row.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let output = Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-c", &RATIO_CONCURRENCY.to_string(), "-j", "2"])
        .args(["-T", &duration.as_secs().max(1).to_string(), "-f"])
        .arg(&script)
        .arg(postgres.url("pgbench_reference"))
        .stdin(Stdio::null())
        .output()
        .context("run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_pgbench_tps(&stdout).with_context(|| format!("pgbench printed no tps: {stdout}"))
}

const PGBENCH_SCHEMA: &str = "
CREATE TABLE transactions (id text PRIMARY KEY DEFAULT 'txn_' || gen_random_uuid(), user_id text NOT NULL,
    amount numeric(24, 4) NOT NULL CHECK (amount > 0), currency char(3) NOT NULL,
    status text NOT NULL DEFAULT 'completed', created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX transactions_user_id ON transactions (user_id, id DESC);
CREATE TABLE outbox (event_id text PRIMARY KEY, event_type text NOT NULL,
    transaction_id text NOT NULL REFERENCES transactions (id), payload text NOT NULL,
    status text NOT NULL DEFAULT 'pending', next_attempt_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';";

const PGBENCH_SCRIPT: &str = r#"BEGIN;
INSERT INTO transactions (user_id, amount, currency) VALUES ('bench', 12.34, 'EUR') RETURNING id \gset
INSERT INTO outbox (event_id, event_type, transaction_id, payload)
    VALUES ('evt_' || gen_random_uuid(), 'transaction.created', :id, '{"type":"transaction.created","data":{}}');
END;
"#;

/// The `tps = N (without initial connection time)` figure of pgbench's summary.
fn parse_pgbench_tps(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("tps = "))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Runs one cell with wrk (an efficient C load generator, so the numbers measure the services
/// rather than the client) and reads the summary its Lua `done` hook prints.
fn load(
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    urls: &Urls,
    ids: &[String],
    token: &str,
    scratch: &Path,
) -> Result<Cell> {
    let (url, script) = match scenario {
        Scenario::Health => (format!("{}/health", urls.api), String::new()),
        Scenario::CachedGet => {
            let list: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
            let script = format!(
                "ids = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", \"/transactions/\" .. ids[(i % #ids) + 1], wrk.headers)\nend\n",
                list.join(",")
            );
            (urls.api.clone(), script)
        }
        Scenario::CreateTransaction => (
            format!("{}/transactions", urls.api),
            post_script(r#"{\"user_id\":\"bench\",\"amount\":\"12.34\",\"currency\":\"EUR\"}"#),
        ),
        Scenario::Notify => {
            (format!("{}/notify", urls.notifier), post_script(r#"{\"user_id\":\"bench\",\"message\":\"hello\"}"#))
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
        .arg(&url)
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
        drained_after: None,
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
async fn end_to_end_latency(http: &reqwest::Client, urls: &Urls, samples: usize) -> Result<Histogram<u64>> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..samples {
        let user = format!("e2e-{i}-{}", rand::random::<u32>());
        let started = Instant::now();
        let created = http
            .post(format!("{}/transactions", urls.api))
            .json(&json!({"user_id": user, "amount": "1.00", "currency": "EUR"}))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!("create failed: {}", created.status());
        }
        loop {
            let page: Value = http.get(format!("{}/notifications/{user}", urls.notifier)).send().await?.json().await?;
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
    println!("| scenario | concurrency | requests/s | delivered/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for cell in cells {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            cell.scenario.label(),
            cell.concurrency,
            cell.rate(),
            cell.delivered_rate().map_or_else(String::new, |rate| format!("{rate:.0}")),
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

/// The issue's two targets, as ratios measured in this run.
fn print_ratios(cells: &[Cell], pgbench_tps: f64) {
    let at = |scenario: Scenario| cells.iter().find(|c| c.scenario == scenario && c.concurrency == RATIO_CONCURRENCY);
    println!("\n## Against the targets (same run, {RATIO_CONCURRENCY} connections)\n");
    println!("| ratio | measured | ratio | target | |\n|---|---:|---:|---:|---|");
    if let (Some(get), Some(health)) = (at(Scenario::CachedGet), at(Scenario::Health)) {
        println!("{}", ratio_row("cached GET / `/health`", get.rate(), health.rate(), GET_TARGET));
    }
    if let Some(delivered) = at(Scenario::CreateTransaction).and_then(Cell::delivered_rate) {
        println!(
            "{}",
            ratio_row(
                "POST /transactions delivered / pgbench two-row transaction",
                delivered,
                pgbench_tps,
                POST_TARGET
            )
        );
    }
}

/// One row of the targets table: `numerator / denominator` against `target`, met or MISS.
fn ratio_row(what: &str, numerator: f64, denominator: f64, target: f64) -> String {
    let ratio = if denominator > 0.0 { numerator / denominator } else { 0.0 };
    let verdict = if ratio >= target { "met" } else { "**MISS**" };
    format!("| {what} | {numerator:.0} / {denominator:.0} | {ratio:.2} | ≥ {target} | {verdict} |")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_tps_is_read_from_its_summary() {
        let summary = "number of failed transactions: 0 (0.000%)\nlatency average = 6.716 ms\n\
                       initial connection time = 41.906 ms\ntps = 9529.512081 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(summary), Some(9529.512081));
        assert_eq!(parse_pgbench_tps("pgbench: error: connection refused\n"), None);
    }

    #[test]
    fn a_ratio_below_its_target_prints_miss_and_at_or_above_prints_met() {
        assert_eq!(
            ratio_row("GET / health", 3000.0, 10000.0, 0.6),
            "| GET / health | 3000 / 10000 | 0.30 | ≥ 0.6 | **MISS** |"
        );
        assert_eq!(
            ratio_row("GET / health", 6000.0, 10000.0, 0.6),
            "| GET / health | 6000 / 10000 | 0.60 | ≥ 0.6 | met |"
        );
        assert!(
            ratio_row("x", 1.0, 0.0, 0.5).ends_with("**MISS** |"),
            "no reference is a miss, not a division by zero"
        );
    }

    #[test]
    fn the_delivered_rate_counts_the_drain_after_the_cell() {
        let cell = Cell {
            scenario: Scenario::CreateTransaction,
            concurrency: 64,
            requests: 10_000,
            errors: 0,
            elapsed: Duration::from_secs(4),
            drained_after: Some(Duration::from_secs(1)),
            p50: 1,
            p99: 1,
            max: 1,
        };
        assert_eq!(cell.rate(), 2500.0);
        assert_eq!(cell.delivered_rate(), Some(2000.0));
    }
}
