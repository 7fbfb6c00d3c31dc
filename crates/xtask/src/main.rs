//! `cargo xtask <command>`: the developer workflow (up, test, bench) in one place.

mod args;
mod bench;
mod drill;
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

use clap::{CommandFactory, Parser};

use args::{Cli, Command};

fn main() -> ExitCode {
    // Help, an unknown command or flag and a stray argument end here (exit code 0 or 2).
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            // As `cargo xtask help`.
            print!("{}", Cli::command().render_help());
            return ExitCode::SUCCESS;
        }
        Some(Command::Up) => up::run(),
        Some(Command::Test(args)) => test::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Token(args)) => issuer::run(&args),
        Some(Command::Images(args)) => images::run(&args),
        Some(Command::Validate) => validate::run(),
        Some(Command::Pods(args)) => pods::run(&args),
        Some(Command::PodExec(args)) => pods::exec_in_pod(&args.spec),
        Some(Command::Drill(args)) => drill::run(args.scenario),
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
