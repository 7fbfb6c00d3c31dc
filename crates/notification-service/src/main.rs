//! notification-service binary: see `platform::cli` for commands and configuration.

use std::process::ExitCode;

use notification_service::{Config, DEFAULTS, MIGRATOR, SCHEMA, SERVICE, build};
use platform::cli::Migrations;

fn main() -> ExitCode {
    platform::cli::main::<Config, _>(SERVICE, DEFAULTS, build, Migrations { schema: SCHEMA, migrator: &MIGRATOR })
}
