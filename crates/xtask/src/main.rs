//! `cargo xtask <command>`: the developer workflow (up, test, bench) in one place.

mod bench;
mod images;
mod infra;
mod issuer;
mod nix;
mod pods;
mod prereqs;
mod services;
mod test;
mod up;
mod validate;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  up                 start PostgreSQL, Redis and every service locally; Ctrl-C stops everything
  token --sub USER [--role customer|service] [--ttl 15m]
                     print a bearer token the running `up` stack accepts (on the last line)
  test [-- ARGS]     fmt, clippy, cargo-deny, image checks and all tests against throwaway
                     PostgreSQL, Redis and moto (ARGS go to cargo nextest, e.g. -- -E 'test(outbox)')
  bench [--quick] [--duration SECS]
                     load benchmark on loopback; prints a markdown table
  images [--check]   build every service's OCI image layout (static binary, CA certificates,
                     user 65532) without a daemon; --check verifies size, user, no shell, and
                     that the binary runs in an empty root
  pods [--environment REGION/STAGE] [--layouts DIR] [--no-self-check]
                     start every Deployment's pod from its image as the kubelet would (root):
                     ports, probes, certificates, health check, SIGTERM; and the Services' and
                     NetworkPolicies' ports against what the pods listen on
  validate           render every environment and Argo CD path; check them against the upstream
                     schemas (strict), the policy (security, isolation, residency), the Prometheus
                     rules (promtool) and a security scan (checkov)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up::run(),
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("token") => issuer::run(&args[1..]),
        Some("images") => images::run(&args[1..]),
        Some("validate") => validate::run(&args[1..]),
        Some("pods") => pods::run(&args[1..]),
        // Internal: the container side of `pods`, run inside its mount namespace.
        Some("pod-exec") => pods::exec_in_pod(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives in crates/xtask).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| ".".into())
}
