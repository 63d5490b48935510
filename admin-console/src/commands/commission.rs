//! `agora-admin commission BPS`: set the operator's commission on every
//! sale, in basis points (a replicated setting).

use agora_peer::ledger::{self, MAX_COMMISSION_BPS};
use agora_peer::new_request_id;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Set the commission on sales, in basis points (100 = 1%).
#[derive(Debug, clap::Args)]
pub struct Commission {
    /// Basis points, 0 to 10000 (100 = 1%).
    #[arg(value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_COMMISSION_BPS)))]
    bps: u32,
}

impl Commission {
    /// Sets it on the leader, retrying with one request id.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let reply = ledger::set_commission(&console.client, self.bps, &new_request_id())
            .await
            .with_context(|| format!("could not set the commission to {} bps", self.bps))?;
        if console.json {
            Console::print_json(&json!({"bps": self.bps, "index": reply.index}))
        } else {
            println!(
                "the commission is now {} bps ({}.{:02}%) (index {})",
                self.bps,
                self.bps / 100,
                self.bps % 100,
                reply.index
            );
            Ok(())
        }
    }
}
