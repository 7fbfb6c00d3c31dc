//! `cargo xtask test`: every check CI runs, in order, each reported with its duration.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::args::{ImagesArgs, PodsArgs, TestArgs};
use crate::infra::{Daemon, Durability, Postgres, which};
use crate::prereqs::{self, Needs};

/// One step: a name and the command it runs.
struct Step {
    name: &'static str,
    command: Command,
}

fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.args(args).current_dir(crate::workspace_root());
    command
}

pub fn run(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    let mut steps = vec![
        Step { name: "rustfmt", command: cargo(&["fmt", "--all", "--", "--check"]) },
        Step {
            name: "clippy",
            command: cargo(&["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]),
        },
    ];
    match which("cargo-deny") {
        Some(_) => steps.push(Step {
            name: "cargo-deny (licenses, bans, sources)",
            command: cargo(&["deny", "--all-features", "check", "licenses", "bans", "sources"]),
        }),
        None if std::env::var_os("CI").is_some() => {
            bail!("cargo-deny is required in CI: cargo install cargo-deny --locked")
        }
        None => eprintln!("xtask: cargo-deny not installed, skipping it (cargo install cargo-deny --locked)"),
    }
    // Keeps unused dependencies gone (a string-only use is listed in the crate's
    // `[package.metadata.cargo-machete]`).
    match which("cargo-machete") {
        Some(machete) => {
            // Called directly: run as `cargo machete` it takes the word `machete` for a path.
            let mut command = Command::new(machete);
            command.current_dir(crate::workspace_root());
            steps.push(Step { name: "cargo-machete (no unused dependencies)", command });
        }
        None if std::env::var_os("CI").is_some() => {
            bail!("cargo-machete is required in CI: cargo install cargo-machete --locked")
        }
        None => eprintln!("xtask: cargo-machete not installed, skipping it (cargo install cargo-machete --locked)"),
    }
    for step in steps {
        run_step(step)?;
    }
    prereqs::ensure(Needs { python_tools: true, wrk: false, nix: true, gitops: true })?;
    let mut yamllint = Command::new("yamllint");
    yamllint
        .args([
            "--strict",
            "-c",
            ".yamllint.yaml",
            ".github",
            ".pre-commit-config.yaml",
            ".yamllint.yaml",
            ".checkov.yaml",
        ])
        .args(["gitops", "environments"])
        .current_dir(crate::workspace_root());
    run_step(Step { name: "yamllint (workflows, GitOps tree)", command: yamllint })?;
    // Offline (no GitHub API); a workflow that does not parse is an error, not a skip.
    let mut zizmor = Command::new("zizmor");
    zizmor
        .args(["--offline", "--strict-collection", "--no-progress", "--min-severity", "medium", ".github/workflows"])
        .current_dir(crate::workspace_root());
    run_step(Step { name: "zizmor (workflow audit, no medium or high finding)", command: zizmor })?;
    run_step(Step { name: "secret scan", command: secret_scan()? })?;
    let nix_started = Instant::now();
    println!("xtask: run nix checks");
    crate::nix::check()?;
    println!("xtask: ok  nix checks ({:.1?})", nix_started.elapsed());
    let images_started = Instant::now();
    println!("xtask: run images --check");
    crate::images::run(&ImagesArgs { check: true }).context("image checks")?;
    println!("xtask: ok  images --check ({:.1?})", images_started.elapsed());

    let pods_started = Instant::now();
    println!("xtask: run pods");
    crate::pods::run(&PodsArgs::default()).context("pod-start test")?;
    println!("xtask: ok  pods ({:.1?})", pods_started.elapsed());

    let validate_started = Instant::now();
    println!("xtask: run validate");
    crate::validate::run().context("GitOps validation")?;
    println!("xtask: ok  validate ({:.1?})", validate_started.elapsed());

    let infra_started = Instant::now();
    let postgres = Postgres::start(Durability::Disposable)?;
    let redis = Daemon::redis()?;
    let moto = Daemon::moto()?;
    println!(
        "xtask: ok  throwaway PostgreSQL :{}, Redis :{}, moto :{} ({:.1?})",
        postgres.port,
        redis.port,
        moto.port,
        infra_started.elapsed()
    );
    let mut nextest = cargo(&["nextest", "run", "--workspace", "--all-features", "--no-fail-fast"]);
    nextest
        .args(&args.nextest)
        .env("QUILLA_TEST_DATABASE_URL", postgres.url("postgres"))
        .env("QUILLA_TEST_REDIS_URL", format!("redis://127.0.0.1:{}", redis.port))
        .env("QUILLA_TEST_AWS_ENDPOINT", format!("http://127.0.0.1:{}", moto.port))
        // The emulator accepts any credentials; these keep the SDK off the network.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let result = run_step(Step { name: "tests (nextest)", command: nextest });
    drop((moto, redis, postgres));
    result?;

    // Each drill starts its own stack and fails when a symptom its runbook shows is missing.
    let drills_started = Instant::now();
    println!("xtask: run drills");
    crate::drill::run_all().context("troubleshooting drills (docs/runbooks)")?;
    println!("xtask: ok  drills ({:.1?})", drills_started.elapsed());
    println!("xtask: all checks passed in {:.1?}", started.elapsed());
    Ok(())
}

/// `.ci/check-no-secrets` over every tracked file (except the scanner, which names the patterns).
fn secret_scan() -> Result<Command> {
    let root = crate::workspace_root();
    let listed = Command::new("git").args(["ls-files", "-z"]).current_dir(&root).output().context("git ls-files")?;
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split('\0')
        .filter(|f| !f.is_empty() && *f != ".ci/check-no-secrets" && root.join(f).is_file())
        .map(str::to_owned)
        .collect();
    let mut command = Command::new(root.join(".ci/check-no-secrets"));
    command.args(files).current_dir(root);
    Ok(command)
}

fn run_step(mut step: Step) -> Result<()> {
    let started = Instant::now();
    println!("xtask: run {}", step.name);
    let status = step.command.status().with_context(|| format!("start {}", step.name))?;
    let took = started.elapsed();
    if !status.success() {
        bail!("{} failed after {took:.1?} ({status})", step.name);
    }
    println!("xtask: ok  {} ({took:.1?})", step.name);
    Ok(())
}
