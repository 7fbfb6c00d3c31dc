//! `cargo xtask drill <scenario>`: seed 000's troubleshooting scenarios reproduced on a stack of
//! their own (throwaway PostgreSQL and Redis, the debug binaries on free ports, with the
//! environment `cargo xtask up` gives them). Each drill prints what it observes, fails when an
//! expected symptom is missing, and removes everything it started. Runbooks: docs/runbooks/.

mod crashloop;
mod database;
mod latency;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use platform::testkit::{TempDir, free_port, wait_until};

use crate::args::DrillScenario;
use crate::infra::{Daemon, Durability, Postgres};
use crate::services::{self, LocalKeys, Output, Profile, RunningService, SERVICES, ServiceSpec};

/// `cargo xtask drill <scenario>`.
pub fn run(scenario: DrillScenario) -> Result<()> {
    let bin_dir = services::build(Profile::Debug)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let stack = Stack::start(bin_dir)?;
        run_on(&stack, scenario).await
    })
}

/// Every drill, on one stack (`cargo xtask test`).
pub fn run_all() -> Result<()> {
    let bin_dir = services::build(Profile::Debug)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let stack = Stack::start(bin_dir)?;
        for scenario in DrillScenario::value_variants() {
            run_on(&stack, *scenario).await?;
        }
        Ok(())
    })
}

async fn run_on(stack: &Stack, scenario: DrillScenario) -> Result<()> {
    let name = scenario.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
    println!("\n=== drill: {name}");
    let started = Instant::now();
    let mut checks = Checks::default();
    match scenario {
        DrillScenario::DatabaseUnreachable => database::run(stack, &mut checks).await?,
        DrillScenario::Crashloop => crashloop::run(stack, &mut checks).await?,
        DrillScenario::ServiceLatency => latency::run(stack, &mut checks).await?,
    }
    checks.finish(&name, started.elapsed())
}

/// The expected symptoms of one drill: each is printed as it is checked; any missing fails it.
#[derive(Debug, Default)]
pub struct Checks {
    missing: Vec<String>,
}

impl Checks {
    pub fn expect(&mut self, seen: bool, symptom: impl Into<String>) {
        let symptom = symptom.into();
        println!("  [{}] {symptom}", if seen { "ok" } else { "MISSING" });
        if !seen {
            self.missing.push(symptom);
        }
    }

    fn finish(self, name: &str, took: Duration) -> Result<()> {
        if self.missing.is_empty() {
            println!("=== drill {name}: every expected symptom seen ({took:.1?})");
            return Ok(());
        }
        bail!("drill {name}: {} expected symptom(s) missing:\n  {}", self.missing.len(), self.missing.join("\n  "))
    }
}

/// PostgreSQL, Redis, the binaries and a token issuer of the drills' own (not `up`'s key).
pub struct Stack {
    bin_dir: PathBuf,
    pub postgres: Postgres,
    redis: Daemon,
    keys: LocalKeys,
    /// A client sending a service token (acts for any user) on every request.
    pub http: reqwest::Client,
    pub scratch: TempDir,
}

impl Stack {
    fn start(bin_dir: PathBuf) -> Result<Self> {
        let postgres = Postgres::start(Durability::Disposable)?;
        let redis = Daemon::redis()?;
        services::create_database(&postgres)?;
        let scratch = TempDir::try_new("drill")?;
        let issuer = crate::issuer::LocalIssuer::create_in(scratch.path().join("issuer"))?;
        let keys = LocalKeys { signing_key: hex::encode(rand::random::<[u8; 32]>()), issuer };
        let token = keys.issuer.token("drill", "service", Duration::from_secs(3600));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        let http = reqwest::Client::builder().default_headers(headers).timeout(Duration::from_secs(15)).build()?;
        println!("drill: PostgreSQL :{}, Redis :{}, binaries in {}", postgres.port, redis.port, bin_dir.display());
        Ok(Self { bin_dir, postgres, redis, keys, http, scratch })
    }

    /// Starts `name` (`serve`) on a free port with `up`'s environment plus `env`, JSON logs at
    /// `log_level`, its output kept for [`Process::logs`].
    pub fn spawn(&self, name: &str, env: &[(&str, String)], log_level: &str) -> Result<Process> {
        let listed = SERVICES.iter().find(|s| s.name == name).with_context(|| format!("no service {name}"))?;
        let mut local_env = listed.local_env.clone();
        local_env.extend(env.iter().map(|(key, value)| ((*key).to_owned(), value.clone())));
        let spec = ServiceSpec { name: listed.name, port: free_port(), schema: listed.schema, local_env };
        let mut service = services::start(
            &self.bin_dir,
            &spec,
            &self.postgres,
            &self.redis,
            &self.keys,
            Output::Piped,
            ("json", log_level),
        )?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            service.child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            service.child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
                }
            }));
        }
        Ok(Process { service, lines, readers })
    }

    /// The signing key the services share: it must never appear in any output.
    pub fn signing_key(&self) -> &str {
        &self.keys.signing_key
    }
}

/// A running (or exited) service binary and everything it printed.
pub struct Process {
    service: RunningService,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn url(&self, path: &str) -> String {
        self.service.url(path)
    }

    pub fn port(&self) -> u16 {
        self.service.port
    }

    /// Everything printed so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Until `GET /health` answers 200 (the process is up, whatever its dependencies).
    pub async fn wait_listening(&mut self, http: &reqwest::Client) -> Result<()> {
        let (name, url, child) = (self.service.name, self.service.url("/health"), &mut self.service.child);
        wait_until(&format!("{name} did not listen"), Duration::from_secs(30), Duration::from_millis(20), || {
            let exited = child.try_wait();
            let response = http.get(&url).send();
            async move {
                if let Ok(Some(status)) = exited {
                    bail!("{name} exited during startup ({status})");
                }
                Ok(response.await.is_ok_and(|r| r.status().is_success()).then_some(()))
            }
        })
        .await
    }

    /// Until `GET /ready` answers 200.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        services::wait_ready(http, &mut self.service, Duration::from_secs(30)).await.map(drop)
    }

    /// Waits for the process to exit by itself (as a crashing container does), then for its
    /// output to be read to the end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let (name, child) = (self.service.name, &mut self.service.child);
        let status = wait_until(&format!("{name} did not exit"), timeout, Duration::from_millis(20), || {
            let exited = child.try_wait();
            async move { Ok(exited?) }
        })
        .await?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// SIGTERM, as `kubectl delete pod` does, and waits for the exit.
    pub fn stop(&mut self) {
        self.service.stop();
    }
}

/// One `/metrics` scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape(String);

impl Scrape {
    pub async fn of(http: &reqwest::Client, process: &Process) -> Result<Self> {
        Ok(Self(http.get(process.url("/metrics")).send().await?.error_for_status()?.text().await?))
    }

    /// Each sample of `name` whose labels include every `key="value"` of `labels`: (labels, value).
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(Vec<(String, String)>, f64)> {
        let mut found = Vec::new();
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                continue;
            }
            let parsed = parse_labels(label_text);
            let matches = labels.iter().all(|(k, v)| parsed.iter().any(|(pk, pv)| pk == k && pv == v));
            if let (true, Ok(value)) = (matches, value.parse::<f64>()) {
                found.push((parsed, value));
            }
        }
        found
    }

    /// The sum of the matching samples (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).iter().map(|(_, value)| value).sum()
    }

    /// The lines of the metric families named, as Prometheus would store them.
    pub fn lines(&self, names: &[&str]) -> Vec<&str> {
        self.0
            .lines()
            .filter(|line| {
                !line.starts_with('#')
                    && names.iter().any(|n| line.strip_prefix(n).is_some_and(|r| r.starts_with(['{', ' '])))
            })
            .collect()
    }
}

/// `a="1",b="x"` as pairs (the exporter escapes no quote in the values the services use).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else { break };
        labels.push((key.trim_start_matches(',').trim().to_owned(), value.to_owned()));
        rest = tail;
    }
    labels
}

/// Prints `lines` indented under a heading.
pub fn show<S: AsRef<str>>(heading: &str, lines: impl IntoIterator<Item = S>) {
    println!("  {heading}");
    for line in lines {
        println!("    {}", line.as_ref());
    }
}

/// Log lines (JSON) whose text contains every one of `needles`.
pub fn log_lines<'a>(logs: &'a [String], needles: &[&str]) -> Vec<&'a String> {
    logs.iter().filter(|line| needles.iter().all(|n| line.contains(n))).collect()
}

/// What a client got: status, the headers that matter, and the body.
pub async fn describe(response: reqwest::Response) -> Result<(u16, String, Option<String>, serde_json::Value)> {
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, content_type, retry_after, body))
}

/// A POST /transactions body for `user`, as a client sends it.
pub fn new_transaction(user: &str) -> serde_json::Value {
    serde_json::json!({"user_id": user, "amount": "100.50", "currency": "BRL"})
}

/// The path of a workspace file, for messages.
pub fn workspace_file(relative: &str) -> PathBuf {
    crate::workspace_root().join(relative)
}

/// A file under the drill's scratch directory that does not exist.
pub fn absent_file(stack: &Stack, relative: &str) -> PathBuf {
    let path: &Path = stack.scratch.path();
    path.join(relative)
}
