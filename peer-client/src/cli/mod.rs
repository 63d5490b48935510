//! The `agora` binary's commands that need more than a few lines. Part of
//! the binary, not of the library: they print, and they fail with `anyhow`.

pub mod account;
pub mod catalogue;
pub mod ledger;
pub mod trade;
