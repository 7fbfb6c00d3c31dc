//! Black-box tests of transaction-api: the real service on a random port, a fresh database each.

mod auth;
mod cache;
mod cli;
mod database_roles;
mod delivery;
mod helpers;
mod idempotency;
mod outbox_lease;
mod retention;
mod secrets;
mod shutdown;
mod timeouts;
mod transactions;

#[test]
fn the_schema_is_the_one_nix_services_toml_lists() {
    platform::testkit::assert_listed_schema(transaction_api::SERVICE, transaction_api::SCHEMA);
}
