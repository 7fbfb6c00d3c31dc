//! transaction-api binary: see `platform::bootstrap` for commands and configuration.

use std::process::ExitCode;

use platform::bootstrap::Migrations;
use transaction_api::{Config, DEFAULTS, MIGRATOR, SCHEMA, SERVICE, build};

fn main() -> ExitCode {
    platform::bootstrap::main::<Config, _>(SERVICE, DEFAULTS, build, Migrations { schema: SCHEMA, migrator: &MIGRATOR })
}
