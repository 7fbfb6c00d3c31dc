//! notification-service binary: see `platform::cli` for commands and configuration.

use std::process::ExitCode;

use notification_service::{Config, DEFAULTS, SERVICE, build};

fn main() -> ExitCode {
    platform::cli::main::<Config, _>(SERVICE, DEFAULTS, build)
}
