//! `agora-admin dispute-window SECONDS`: how long a sale's proceeds stay
//! held on the seller's account, open to disputes, before the seller can
//! spend them (a replicated setting).

use agora_peer::{ledger, new_request_id};
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Set the dispute window, in seconds (0 = proceeds available at once).
#[derive(Debug, clap::Args)]
pub struct DisputeWindow {
    /// Seconds, 0 to 7776000 (90 days); the default is 86400 (24 hours).
    #[arg(value_parser = clap::value_parser!(u64).range(0..=7_776_000))]
    seconds: u64,
}

impl DisputeWindow {
    /// Sets it on the leader, retrying with one request id.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let reply =
            ledger::set_dispute_window(&console.client, self.seconds * 1000, &new_request_id())
                .await
                .with_context(|| {
                    format!("could not set the dispute window to {} s", self.seconds)
                })?;
        if console.json {
            Console::print_json(&json!({"seconds": self.seconds, "index": reply.index}))
        } else {
            println!(
                "sale proceeds now stay open to disputes for {} s (index {})",
                self.seconds, reply.index
            );
            Ok(())
        }
    }
}
