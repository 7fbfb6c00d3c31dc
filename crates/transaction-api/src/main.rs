//! transaction-api binary: see `platform::cli` for commands and configuration.

use std::process::ExitCode;

use transaction_api::{Config, DEFAULTS, SERVICE, build};

fn main() -> ExitCode {
    platform::cli::main::<Config, _>(SERVICE, DEFAULTS, build)
}
