//! Domain rules as plain Rust: no tonic, no sqlx, no clock.

pub mod accounts;
pub mod catalogue;
pub mod kv;
pub mod ledger;
pub mod purchases;
pub mod settings;
