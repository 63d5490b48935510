//! `agora-admin deposit USER AMOUNT`: put money on a user's account (the
//! admin side of a payment), from the external account.

use agora_peer::{ledger, new_request_id};
use agora_proto::amount::format_amount;
use agora_proto::auth::canonical_username;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Put money on a user's account.
#[derive(Debug, clap::Args)]
pub struct Deposit {
    /// The user's name.
    user: String,
    /// How much, like 12.50.
    #[arg(value_parser = super::amount_arg, allow_hyphen_values = true)]
    amount: u64,
}

impl Deposit {
    /// Deposits on the leader, retrying with one request id.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let user = canonical_username(&self.user)?;
        let amount = format_amount(self.amount);
        let reply = ledger::deposit(&console.client, &user, self.amount, &new_request_id())
            .await
            .with_context(|| format!("could not deposit {amount} for {user}"))?;
        if console.json {
            Console::print_json(&json!({
                "username": user,
                "amount": amount,
                "amount_cents": self.amount,
                "index": reply.index,
            }))
        } else {
            println!("deposited {amount} for {user} (index {})", reply.index);
            Ok(())
        }
    }
}
