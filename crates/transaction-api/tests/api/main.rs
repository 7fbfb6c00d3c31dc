//! Black-box tests of transaction-api: the real service on a random port, a fresh database each.

mod cache;
mod cli;
mod delivery;
mod helpers;
mod idempotency;
mod secrets;
mod shutdown;
mod transactions;
