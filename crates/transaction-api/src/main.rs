//! transaction-api binary: see `platform::cli` for commands and configuration.

use std::process::ExitCode;

use transaction_api::{Config, DEFAULTS, SERVICE, build};

fn main() -> ExitCode {
    platform::cli::main::<Config, _, _>(SERVICE, DEFAULTS, |config, lifecycle| async move {
        let listener = std::net::TcpListener::bind((config.server.host, config.server.port))?;
        let service = build(&config, &lifecycle).await?;
        platform::server::serve(service, config.server.clone(), listener, lifecycle).await
    })
}
