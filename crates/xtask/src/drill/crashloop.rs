//! Drill `crashloop` (docs/runbooks/crashloop.md): the binary started as the kubelet starts it,
//! with a bad value, a misspelt key, and a secret file that is not mounted. Each must exit at once
//! with 78 (EX_CONFIG) and a one-line reason naming the key (and the file), and say it again on
//! every restart: a restart cannot fix configuration, which is what CrashLoopBackOff means.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Checks, Stack, absent_file, show};

/// How the kubelet's back-off looks, scaled down: 10 s, 20 s, 40 s… become 100 ms, 200 ms, 400 ms.
const RESTARTS: [Duration; 3] = [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400)];

pub async fn run(stack: &Stack, checks: &mut Checks) -> Result<()> {
    crash(
        stack,
        checks,
        "a bad value: database.max_connections is not a number",
        ("QUILLA_DATABASE__MAX_CONNECTIONS", "twenty".to_owned()),
        &["`database.max_connections`", "QUILLA_DATABASE__MAX_CONNECTIONS"],
        true,
    )
    .await?;
    crash(
        stack,
        checks,
        "a misspelt key (an env var from a ConfigMap edit)",
        ("QUILLA_DATABASE__MAX_CONECTIONS", "20".to_owned()),
        &["`database.max_conections`", "is not a known setting"],
        false,
    )
    .await?;
    let missing = absent_file(stack, "var/run/secrets/quilla/database-url");
    crash(
        stack,
        checks,
        "a missing secret file: the Secret is not mounted (or its ExternalSecret has not synced)",
        ("QUILLA_DATABASE__URL", format!("file://{}", missing.display())),
        &["`database.url`", &missing.display().to_string(), "No such file or directory"],
        false,
    )
    .await
}

async fn crash(
    stack: &Stack,
    checks: &mut Checks,
    title: &str,
    env: (&str, String),
    named: &[&str],
    restart: bool,
) -> Result<()> {
    println!("\n--- {title}\n  {}={}", env.0, env.1);
    let runs = if restart { 1 + RESTARTS.len() } else { 1 };
    let mut outcomes = Vec::new();
    for run in 0..runs {
        if run > 0 {
            tokio::time::sleep(RESTARTS[run - 1]).await;
        }
        let started = Instant::now();
        let mut process = stack.spawn("transaction-api", &[(env.0, env.1.clone())], "info")?;
        let status = process.wait_exit(Duration::from_secs(20)).await?;
        let output = process.logs();
        outcomes.push((status.code(), started.elapsed(), output));
    }
    let (code, took, output) = &outcomes[0];
    show(
        &format!(
            "exit code {} after {took:.1?}; its output (stdout, stderr):",
            code.map_or("none".to_owned(), |c| c.to_string())
        ),
        output,
    );
    checks.expect(*code == Some(78), "exits 78 (EX_CONFIG)");
    checks.expect(*took < Duration::from_secs(10), "at once, before connecting to anything");
    let text = output.join("\n");
    for needle in named {
        checks.expect(text.contains(needle), format!("the message names {needle}"));
    }
    checks.expect(!text.contains(stack.signing_key()), "and prints no secret");
    if restart {
        let same = outcomes.iter().all(|(c, _, o)| c == code && o == output);
        println!(
            "  restarted {} times (back-off {RESTARTS:?}): exit codes {:?}",
            RESTARTS.len(),
            outcomes.iter().map(|o| o.0).collect::<Vec<_>>()
        );
        checks.expect(same, "every restart exits the same way with the same message (CrashLoopBackOff)");
    }
    Ok(())
}
