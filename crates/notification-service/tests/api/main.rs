//! Black-box tests of notification-service: the real service on a random port, a fresh database each.

mod auth;
mod helpers;
mod listing;
mod notify;
mod webhook;

#[test]
fn the_schema_is_the_one_nix_services_toml_lists() {
    platform::testkit::assert_listed_schema(notification_service::SERVICE, notification_service::SCHEMA);
}
