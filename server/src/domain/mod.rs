//! Domain rules as plain Rust: no tonic, no sqlx, no clock.

pub mod accounts;
pub mod kv;
pub mod ledger;
