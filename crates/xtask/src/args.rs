//! The command line of `cargo xtask`: one parser for every command, so an unknown flag or a stray
//! argument is an error (clap's message, exit code 2) instead of being ignored.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The developer workflow (up, test, bench) in one place.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
pub struct Cli {
    // None: no command given, which prints the help.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start PostgreSQL, Redis and every service locally; Ctrl-C stops everything
    Up,
    /// Print a bearer token the running `up` stack accepts (on the last line)
    Token(TokenArgs),
    /// fmt, clippy, cargo-deny, image checks and all tests against throwaway PostgreSQL, Redis and moto
    Test(TestArgs),
    /// Load benchmark on loopback; prints a markdown table
    Bench(BenchArgs),
    /// Build every service's OCI image layout (static binary, CA certificates, user 65532) without a daemon
    Images(ImagesArgs),
    /// Start every Deployment's pod from its image as the kubelet would (root)
    ///
    /// Start every Deployment's pod from its image as the kubelet would (root): ports, probes,
    /// certificates, health check, SIGTERM; and check the Services' and NetworkPolicies' ports
    /// against what the pods listen on.
    #[command(verbatim_doc_comment)]
    Pods(PodsArgs),
    /// Render every environment and Argo CD path and check them
    ///
    /// Render every environment and Argo CD path; check them against the upstream schemas
    /// (strict), the policy (security, isolation, residency), the Prometheus rules (promtool) and
    /// a security scan (checkov).
    #[command(verbatim_doc_comment)]
    Validate,
    /// Reproduce a troubleshooting scenario on a throwaway local stack and check its symptoms
    ///
    /// Reproduce one of the seed's troubleshooting scenarios on a local stack of its own (free
    /// ports, throwaway PostgreSQL and Redis): print what /ready, the logs, the metrics, the
    /// clients and the alerts show, and fail if an expected symptom is missing. The runbooks in
    /// docs/runbooks/ (database-unreachable.md, crashloop.md, service-latency.md) show the output.
    #[command(verbatim_doc_comment)]
    Drill(DrillArgs),
    /// Internal: the container side of `pods`, run inside its mount namespace
    /// (`xtask pod-exec <spec file>`, started by pods/kubelet.rs).
    #[command(hide = true)]
    PodExec(PodExecArgs),
}

/// `token --sub USER [--role customer|service] [--ttl 15m]`
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token acts for (or the service's name)
    #[arg(long, value_name = "USER")]
    pub sub: String,
    /// The token's role: `service` acts for any user
    #[arg(long, value_enum, default_value_t = Role::Customer)]
    pub role: Role,
    /// How long the token is valid, between 1s and 24h (e.g. 15m, 1h)
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// The roles the services know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Customer,
    Service,
}

impl Role {
    /// The role claim's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Service => "service",
        }
    }
}

/// A `--ttl`: a humantime duration from 1s to 24h.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|error| format!("{error} (e.g. 15m, 1h)"))?;
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(24 * 3600) {
        return Err("must be between 1s and 24h".to_owned());
    }
    Ok(ttl)
}

/// `test [-- ARGS]`
#[derive(Debug, Default, Args)]
pub struct TestArgs {
    /// Arguments for cargo nextest, after `--` (e.g. -- -E 'test(outbox)')
    #[arg(last = true, value_name = "ARGS")]
    pub nextest: Vec<String>,
}

/// `bench [--quick] [--duration SECS]`
#[derive(Debug, Default, Args)]
pub struct BenchArgs {
    /// 2 s per cell (instead of 5 s) and fewer end-to-end samples
    #[arg(long)]
    pub quick: bool,
    /// Seconds per cell (instead of 5, or 2 with --quick)
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
}

impl BenchArgs {
    /// How long each (scenario, concurrency) cell runs.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration.unwrap_or(if self.quick { 2 } else { 5 }))
    }
}

/// `images [--check]`
#[derive(Debug, Default, Args)]
pub struct ImagesArgs {
    /// Verify size, user, no shell, and that the binary runs in an empty root
    #[arg(long)]
    pub check: bool,
}

/// `pods [--environment REGION/STAGE] [--layouts DIR] [--no-self-check]`
#[derive(Debug, Default, Args)]
pub struct PodsArgs {
    /// Only this environment (e.g. spain/dev); default: all
    #[arg(long, value_name = "REGION/STAGE")]
    pub environment: Option<String>,
    /// Where the OCI layouts are (one directory per service); default: `cargo xtask images`' output
    #[arg(long, value_name = "DIR")]
    pub layouts: Option<PathBuf>,
    /// Skip the self-check (a copy of the tree with a wrong containerPort must fail)
    #[arg(long)]
    pub no_self_check: bool,
}

/// `drill <scenario>`
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The scenario to reproduce
    #[arg(value_enum)]
    pub scenario: DrillScenario,
}

/// The troubleshooting scenarios of seed 000, each with its runbook in docs/runbooks/.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrillScenario {
    /// PostgreSQL unreachable: port closed, DNS failure, connect timeout, pool exhausted
    DatabaseUnreachable,
    /// The binary exits at startup: a bad config value, a missing secret file
    Crashloop,
    /// Latency injected between transaction-api and notification-service (the webhook path)
    ServiceLatency,
}

/// `pod-exec <spec>` (internal)
#[derive(Debug, Args)]
pub struct PodExecArgs {
    /// The JSON file `pods` wrote: the container's root, mounts, user and argv
    pub spec: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))?;
        Ok(cli.command.expect("a command"))
    }

    fn error(args: &[&str]) -> clap::Error {
        parse(args).expect_err("should not parse")
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_means_no_command() {
        assert!(Cli::try_parse_from(["xtask"]).expect("parses").command.is_none());
    }

    #[test]
    fn a_misspelt_flag_is_an_error_naming_it_and_suggesting_the_real_one() {
        let error = error(&["images", "--chek"]);
        assert_eq!(error.kind(), ErrorKind::UnknownArgument);
        assert_eq!(error.exit_code(), 2);
        let message = error.to_string();
        assert!(message.contains("--chek"), "{message}");
        assert!(message.contains("--check"), "{message}");
    }

    #[test]
    fn stray_arguments_are_errors() {
        for args in [&["validate", "extra"][..], &["up", "--now"], &["test", "-E", "x"], &["bogus"]] {
            let error = error(args);
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }

    #[test]
    fn images_check_parses() {
        assert!(matches!(parse(&["images", "--check"]), Ok(Command::Images(ImagesArgs { check: true }))));
        assert!(matches!(parse(&["images"]), Ok(Command::Images(ImagesArgs { check: false }))));
    }

    #[test]
    fn token_takes_sub_ttl_and_role() {
        let Ok(Command::Token(token)) = parse(&["token", "--sub", "u1", "--ttl", "5m", "--role", "service"]) else {
            panic!("token should parse");
        };
        assert_eq!(token.sub, "u1");
        assert_eq!(token.ttl, Duration::from_secs(300));
        assert_eq!(token.role, Role::Service);
        assert_eq!(token.role.as_str(), "service");
    }

    #[test]
    fn token_defaults_to_a_customer_for_15_minutes() {
        let Ok(Command::Token(token)) = parse(&["token", "--sub", "u1"]) else {
            panic!("token should parse");
        };
        assert_eq!(token.role, Role::Customer);
        assert_eq!(token.role.as_str(), "customer");
        assert_eq!(token.ttl, Duration::from_secs(15 * 60));
    }

    #[test]
    fn token_without_sub_is_an_error() {
        let error = error(&["token", "--role", "service"]);
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert!(error.to_string().contains("--sub"), "{error}");
    }

    #[test]
    fn token_refuses_unknown_roles_and_bad_ttls() {
        assert_eq!(error(&["token", "--sub", "u1", "--role", "admin"]).kind(), ErrorKind::InvalidValue);
        for ttl in ["soon", "0s", "25h"] {
            let error = error(&["token", "--sub", "u1", "--ttl", ttl]);
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{ttl}: {error}");
        }
    }

    #[test]
    fn test_passes_the_arguments_after_the_separator_to_nextest() {
        let Ok(Command::Test(test)) = parse(&["test", "--", "-E", "test(x)"]) else {
            panic!("test should parse");
        };
        assert_eq!(test.nextest, ["-E", "test(x)"]);
        let Ok(Command::Test(test)) = parse(&["test"]) else {
            panic!("test should parse");
        };
        assert!(test.nextest.is_empty());
    }

    #[test]
    fn bench_duration_is_seconds_and_quick_shortens_the_default() {
        let duration = |args: &[&str]| match parse(args) {
            Ok(Command::Bench(bench)) => bench.duration(),
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(duration(&["bench"]), Duration::from_secs(5));
        assert_eq!(duration(&["bench", "--quick"]), Duration::from_secs(2));
        assert_eq!(duration(&["bench", "--quick", "--duration", "7"]), Duration::from_secs(7));
        assert_eq!(error(&["bench", "--duration", "5s"]).kind(), ErrorKind::ValueValidation);
        assert_eq!(error(&["bench", "--duration"]).kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn pods_takes_its_three_flags_and_refuses_a_typo() {
        let Ok(Command::Pods(pods)) =
            parse(&["pods", "--environment", "spain/dev", "--layouts", "/tmp/layouts", "--no-self-check"])
        else {
            panic!("pods should parse");
        };
        assert_eq!(pods.environment.as_deref(), Some("spain/dev"));
        assert_eq!(pods.layouts, Some(PathBuf::from("/tmp/layouts")));
        assert!(pods.no_self_check);
        let error = error(&["pods", "--layout", "x"]);
        assert!(error.to_string().contains("--layout"), "{error}");
    }

    #[test]
    fn drill_takes_one_known_scenario_and_lists_them_otherwise() {
        let Ok(Command::Drill(drill)) = parse(&["drill", "service-latency"]) else {
            panic!("drill should parse");
        };
        assert_eq!(drill.scenario, DrillScenario::ServiceLatency);
        let unknown = error(&["drill", "disk-full"]);
        assert_eq!((unknown.kind(), unknown.exit_code()), (ErrorKind::InvalidValue, 2));
        let message = unknown.to_string();
        for scenario in ["database-unreachable", "crashloop", "service-latency"] {
            assert!(message.contains(scenario), "{message}");
        }
        assert_eq!(error(&["drill"]).exit_code(), 2);
    }

    /// As pods/kubelet.rs starts it: `<xtask> pod-exec <spec file>`.
    #[test]
    fn pod_exec_takes_the_spec_file_and_stays_out_of_the_help() {
        let Ok(Command::PodExec(exec)) = parse(&["pod-exec", "/tmp/pod/exec.json"]) else {
            panic!("pod-exec should parse");
        };
        assert_eq!(exec.spec, PathBuf::from("/tmp/pod/exec.json"));
        assert_eq!(error(&["pod-exec"]).kind(), ErrorKind::MissingRequiredArgument);
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("images") && !help.contains("pod-exec"), "{help}");
    }
}
