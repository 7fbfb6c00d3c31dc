//! Black-box tests of notification-service: the real service on a random port, a fresh database each.

mod helpers;
mod listing;
mod notify;
mod webhook;
