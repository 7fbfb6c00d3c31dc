//! transaction-api binary: see `platform::cli` for commands and configuration.

use std::process::ExitCode;

use platform::cli::Migrations;
use transaction_api::{Config, DEFAULTS, MIGRATOR, SCHEMA, SERVICE, build};

fn main() -> ExitCode {
    platform::cli::main::<Config, _>(SERVICE, DEFAULTS, build, Migrations { schema: SCHEMA, migrator: &MIGRATOR })
}
