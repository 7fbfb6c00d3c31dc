//! Quilla's shared runtime: everything a service needs besides its own domain logic.

pub mod auth;
pub mod bootstrap;
pub mod breaker;
pub mod cache;
pub mod client;
pub mod config;
pub mod db;
pub mod events;
pub mod extract;
pub mod ids;
pub mod metrics;
pub mod problem;
pub mod rate_limit;
pub mod secret;
pub mod secret_references;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod webhook_signature;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use problem::{FieldError, Problem};

/// An error and all its causes on one line (`outer: cause: root cause`), for logs and messages.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
pub use secret::Secret;
