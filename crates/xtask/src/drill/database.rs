//! Drill `database-unreachable` (docs/runbooks/database-unreachable.md): transaction-api with a
//! database it cannot use, four ways: the port closed (a security group without the rule), a host
//! name that does not resolve, a server that accepts and never answers, and a pool exhausted by
//! queries stuck on a lock while PostgreSQL itself is fine.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use platform::testkit::{free_port, wait_until};

use super::{Checks, Process, Scrape, Stack, describe, log_lines, new_transaction, show};

/// A pool wait this short keeps the drill fast; production's is `database.acquire_timeout` (3 s).
const ACQUIRE_TIMEOUT: &str = "1s";

pub async fn run(stack: &Stack, checks: &mut Checks) -> Result<()> {
    let closed = free_port();
    unreachable_case(
        stack,
        checks,
        "wrong security group: the port is closed (connection refused)",
        &format!("postgres://postgres@127.0.0.1:{closed}/quilla"),
        Causes { logged: "pool timed out while waiting for an open connection", diagnosed: "Connection refused" },
    )
    .await?;
    // RFC 6761: `.invalid` never resolves, anywhere.
    unreachable_case(
        stack,
        checks,
        "DNS: the host name does not resolve",
        "postgres://postgres@quilla-db.invalid:5432/quilla",
        Causes { logged: "failed to lookup address", diagnosed: "could not translate host name" },
    )
    .await?;
    // A firewall that drops packets, or a server too busy to answer: connections never complete.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let blackhole_port = blackhole.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut accepted = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            accepted.push(socket);
        }
    });
    unreachable_case(
        stack,
        checks,
        "timeout: the server accepts the connection and never answers",
        &format!("postgres://postgres@127.0.0.1:{blackhole_port}/quilla"),
        Causes { logged: "pool timed out while waiting for an open connection", diagnosed: "timeout expired" },
    )
    .await?;
    held.abort();
    pool_exhausted(stack, checks).await
}

/// What the service logs, and what `psql` from the same network says (which tells a closed port
/// from a silent one: sqlx retries both until `acquire_timeout` and logs a pool timeout).
struct Causes {
    logged: &'static str,
    diagnosed: &'static str,
}

/// The symptoms every unreachable database shows: `/ready` 503 naming postgres, writes answered
/// 503 problem+json with Retry-After, the 503s counted, the error logged; then the diagnosis.
async fn unreachable_case(stack: &Stack, checks: &mut Checks, title: &str, url: &str, causes: Causes) -> Result<()> {
    println!("\n--- {title}\n  database.url = {url}");
    // Clusters migrate in a Job; without it the service starts with the database down and says so.
    let env = [
        ("QUILLA_DATABASE__URL", url.to_owned()),
        ("QUILLA_DATABASE__MIGRATE_ON_START", "false".to_owned()),
        ("QUILLA_DATABASE__ACQUIRE_TIMEOUT", ACQUIRE_TIMEOUT.to_owned()),
    ];
    let mut api = stack.spawn("transaction-api", &env, "info,sqlx=warn")?;
    api.wait_listening(&stack.http).await?;
    let http = &stack.http;
    expect_not_ready(http, &api, checks).await?;
    expect_503_on_create(http, &api, checks).await?;
    expect_503s_counted(http, &api, checks).await?;
    api.stop();
    expect_logged_cause(&api, causes.logged, checks);
    // What `kubectl run --rm -it dbcheck --image=postgres -- psql …` shows from the pod's network.
    let psql = crate::infra::postgres_bin_dir().context("psql not found")?.join("psql");
    let output = Command::new(psql).arg(format!("{url}?connect_timeout=2")).args(["-c", "SELECT 1"]).output()?;
    let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    show("diagnosis: psql with connect_timeout=2 from the same network", said.lines());
    checks.expect(said.contains(causes.diagnosed), format!("psql tells the cause: `{}`", causes.diagnosed));
    Ok(())
}

async fn expect_not_ready(http: &reqwest::Client, api: &Process, checks: &mut Checks) -> Result<()> {
    let (status, content_type, _, body) = describe(http.get(api.url("/ready")).send().await?).await?;
    show("GET /ready", [format!("{status} {content_type}"), body.to_string()]);
    checks.expect(status == 503, "/ready answers 503");
    checks.expect(body["checks"]["postgres"] == "down", "/ready names the failing check: checks.postgres = down");
    checks.expect(body["checks"]["redis"] == "up", "/ready still reports Redis up (not the cause)");
    Ok(())
}

async fn expect_503_on_create(http: &reqwest::Client, api: &Process, checks: &mut Checks) -> Result<()> {
    let request = http
        .post(api.url("/transactions"))
        .header("idempotency-key", platform::ids::new_id("drill"))
        .json(&new_transaction("u1"));
    let started = std::time::Instant::now();
    let (status, content_type, retry_after, body) = describe(request.send().await?).await?;
    show(
        &format!("POST /transactions (answered in {:.1?})", started.elapsed()),
        [format!("{status} {content_type} retry-after: {}", retry_after.as_deref().unwrap_or("-")), body.to_string()],
    );
    checks.expect(status == 503, "the client gets 503");
    checks.expect(content_type == "application/problem+json", "as application/problem+json");
    checks.expect(retry_after.is_some(), "with Retry-After");
    Ok(())
}

async fn expect_503s_counted(http: &reqwest::Client, api: &Process, checks: &mut Checks) -> Result<()> {
    let scrape = Scrape::of(http, api).await?;
    let lines: Vec<&str> =
        scrape.lines(&["http_requests_total"]).into_iter().filter(|l| l.contains("status=\"503\"")).collect();
    show("GET /metrics (the series that moved)", &lines);
    let create = scrape.sum("http_requests_total", &[("route", "/transactions"), ("status", "503")]);
    let ready = scrape.sum("http_requests_total", &[("route", "/ready"), ("status", "503")]);
    checks.expect(create >= 1.0, "http_requests_total{route=\"/transactions\",status=\"503\"} counts the failed write");
    checks.expect(ready >= 1.0, "http_requests_total{route=\"/ready\",status=\"503\"} counts the failed probe");
    Ok(())
}

fn expect_logged_cause(api: &Process, cause: &str, checks: &mut Checks) {
    let logs = api.logs();
    let logged = log_lines(&logs, &["request failed"]);
    show("logs (level ERROR)", logged.iter().take(2));
    checks.expect(
        logged.iter().any(|line| line.contains(cause) && line.contains("\"level\":\"ERROR\"")),
        format!("the error log names the cause: `{cause}`"),
    );
}

/// A pool of two, both connections stuck behind a lock another session holds: PostgreSQL is up,
/// yet `/ready` and writes fail until the lock goes, then everything recovers by itself.
async fn pool_exhausted(stack: &Stack, checks: &mut Checks) -> Result<()> {
    println!("\n--- pool exhaustion: database.max_connections = 2, both held by queries waiting on a lock");
    let env = [
        ("QUILLA_DATABASE__MAX_CONNECTIONS", "2".to_owned()),
        ("QUILLA_DATABASE__ACQUIRE_TIMEOUT", ACQUIRE_TIMEOUT.to_owned()),
    ];
    let mut api = stack.spawn("transaction-api", &env, "info,sqlx=warn")?;
    api.wait_ready(&stack.http).await?;
    let http = &stack.http;
    let (status, ..) = describe(http.get(api.url("/ready")).send().await?).await?;
    checks.expect(status == 200, "before: /ready answers 200");

    // Another session (a migration, a manual `BEGIN` left open…) locks the table for 4 s.
    let psql = crate::infra::postgres_bin_dir().context("psql not found")?.join("psql");
    let mut locker = Command::new(&psql)
        .args(["-h", "127.0.0.1", "-p", &stack.postgres.port.to_string(), "-U", "postgres", "-d", "quilla", "-q"])
        .args([
            "-c",
            "BEGIN; LOCK TABLE transactions.transactions IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("start psql")?;
    let port = stack.postgres.port.to_string();
    wait_until("the lock was not taken", Duration::from_secs(10), Duration::from_millis(50), || {
        let output = Command::new(&psql)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "quilla", "-Atc"])
            .arg("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'transactions.transactions'::regclass AND granted")
            .output();
        async move { Ok(output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1").then_some(())) }
    })
    .await?;
    // Two reads take both connections and wait on the lock.
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let request = http.get(api.url(&format!("/transactions/{}", platform::ids::new_id("txn")))).send();
            tokio::spawn(request)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    expect_not_ready(http, &api, checks).await?;
    expect_503_on_create(http, &api, checks).await?;
    expect_503s_counted(http, &api, checks).await?;
    let active = Command::new(&psql)
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "quilla", "-Atc"])
        .arg("SELECT state || ' / ' || coalesce(wait_event_type, '-') || ' / ' || left(query, 60) FROM pg_stat_activity WHERE application_name = 'transactions'")
        .output()?;
    let sessions = String::from_utf8_lossy(&active.stdout).lines().map(str::to_owned).collect::<Vec<_>>();
    show("pg_stat_activity of the service (state / wait / query)", &sessions);
    checks.expect(
        sessions.iter().filter(|s| s.contains("Lock")).count() == 2,
        "PostgreSQL shows the pool's two sessions waiting on a lock",
    );
    let _ = locker.wait();
    for request in stuck {
        let _ = request.await;
    }
    let (status, ..) = describe(http.get(api.url("/ready")).send().await?).await?;
    checks.expect(status == 200, "after the lock is released: /ready answers 200 again, no restart needed");
    api.stop();
    expect_logged_cause(&api, "pool timed out while waiting for an open connection", checks);
    Ok(())
}
