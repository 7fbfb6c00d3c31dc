//! notification-service binary: see `platform::bootstrap` for commands and configuration.

use std::process::ExitCode;

use notification_service::{Config, DEFAULTS, MIGRATOR, SCHEMA, SERVICE, build};
use platform::bootstrap::Migrations;

fn main() -> ExitCode {
    platform::bootstrap::main::<Config, _>(SERVICE, DEFAULTS, build, Migrations { schema: SCHEMA, migrator: &MIGRATOR })
}
