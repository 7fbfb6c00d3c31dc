//! System programs the workflow needs: found, installed with apt when we may, or explained.

use std::process::Command;

use anyhow::{Result, bail};

use crate::infra::{is_root, postgres_bin_dir, run, which};

/// What a command needs besides Rust.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// The Python tools of .ci/requirements.txt: moto (AWS emulator), yamllint, kubectl and
    /// kubernetes-validate.
    pub python_tools: bool,
    /// The wrk load generator (benchmarks).
    pub wrk: bool,
    /// `nix-instantiate`, to parse the flake where nixpkgs cannot be fetched.
    pub nix: bool,
    /// What `validate` needs: promtool (Debian's prometheus) and Node.js for the CRD schemas.
    pub gitops: bool,
}

/// Makes sure PostgreSQL and Redis (and the other tools `needs` asks for) are present. As root on a machine with
/// apt, installs what is missing; otherwise prints how to install it and fails.
pub fn ensure(needs: Needs) -> Result<()> {
    let mut missing_apt = Vec::new();
    if postgres_bin_dir().is_none() {
        missing_apt.push("postgresql");
    }
    if which("redis-server").is_none() {
        missing_apt.push("redis-server");
    }
    if needs.wrk && which("wrk").is_none() {
        missing_apt.push("wrk");
    }
    if needs.nix && which("nix-instantiate").is_none() {
        missing_apt.push("nix-bin");
    }
    if needs.gitops && which("promtool").is_none() {
        missing_apt.push("prometheus");
    }
    if needs.gitops && which("node").is_none() {
        missing_apt.push("nodejs");
    }
    let missing_python_tools = needs.python_tools
        && ["moto_server", "yamllint", "kubectl", "kubernetes-validate", "zizmor"]
            .iter()
            .any(|tool| which(tool).is_none());
    if missing_apt.is_empty() && !missing_python_tools {
        return Ok(());
    }
    let can_install = is_root() && which("apt-get").is_some();
    if !can_install {
        print_instructions(&missing_apt, missing_python_tools);
        bail!("missing system programs (see above)");
    }
    if !missing_apt.is_empty() {
        eprintln!("xtask: installing {} with apt-get", missing_apt.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing_apt)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if missing_python_tools {
        eprintln!("xtask: installing the Python tools of .ci/requirements.txt with pip");
        let requirements = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/requirements.txt");
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "-r", requirements]))?;
    }
    Ok(())
}

fn print_instructions(apt: &[&str], python_tools: bool) {
    eprintln!("xtask: these programs are needed and missing:");
    if !apt.is_empty() {
        let brew: Vec<&str> = apt.iter().map(|p| brew_name(p)).collect();
        let nix: Vec<String> = apt.iter().map(|p| format!("nixpkgs#{}", nix_name(p))).collect();
        eprintln!("  Debian/Ubuntu: sudo apt-get install -y {}", apt.join(" "));
        eprintln!("  macOS:         brew install {}", brew.join(" "));
        eprintln!("  Nix:           nix shell {}   (or: nix develop)", nix.join(" "));
    }
    if python_tools {
        eprintln!(
            "  moto, yamllint, zizmor, kubectl, kubernetes-validate: python3 -m pip install -r .ci/requirements.txt"
        );
    }
}

fn brew_name(apt: &str) -> &str {
    match apt {
        "postgresql" => "postgresql@16",
        "redis-server" => "redis",
        "nix-bin" => "nix",
        other => other,
    }
}

fn nix_name(apt: &str) -> &str {
    match apt {
        "redis-server" => "redis",
        "nix-bin" => "nix",
        other => other,
    }
}
