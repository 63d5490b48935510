//! `agora-admin hold open | post | void`: pending transfers by hand. The
//! purchase flow opens and settles holds itself; these are for operators
//! (a manual refund or charge) and for tests.

use std::time::Duration;

use agora_peer::account::describe_expiry;
use agora_peer::ledger::{self, NewHold};
use agora_peer::new_request_id;
use agora_proto::admin::HoldReply;
use agora_proto::amount::format_amount;
use agora_proto::auth::canonical_username;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Open, post or void a hold.
#[derive(Debug, clap::Args)]
pub struct Hold {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Reserve USER's money for PAYEE (it stays on USER's account but is
    /// no longer available).
    Open {
        /// Whose money is held.
        user: String,
        /// Who gets it when the hold is posted.
        payee: String,
        /// How much, like 12.50.
        #[arg(value_parser = super::amount_arg, allow_hyphen_values = true)]
        amount: u64,
        /// Seconds until the cluster voids the hold (default 15 minutes).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        ttl_secs: Option<u64>,
    },
    /// Settle a hold: the payee gets the amount less the commission, the
    /// operator the commission.
    Post {
        /// The hold's id (as `hold open` printed it).
        id: u64,
    },
    /// Release a hold without moving money.
    Void {
        /// The hold's id.
        id: u64,
    },
}

impl Hold {
    /// Runs the action on the leader, retrying with one request id.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let client = &console.client;
        let request_id = new_request_id();
        match self.action {
            Action::Open {
                user,
                payee,
                amount,
                ttl_secs,
            } => {
                let hold = NewHold {
                    holder: canonical_username(&user)?,
                    payee: canonical_username(&payee)?,
                    amount,
                    ttl: ttl_secs.map(Duration::from_secs),
                };
                let reply = ledger::open_hold(client, &hold, &request_id)
                    .await
                    .with_context(|| {
                        format!(
                            "could not hold {} of {} for {}",
                            format_amount(amount),
                            hold.holder,
                            hold.payee
                        )
                    })?;
                print(console, &reply, || {
                    format!(
                        "hold {}: {} of {} held for {}; it expires {} (index {})",
                        reply.hold_id,
                        format_amount(amount),
                        hold.holder,
                        hold.payee,
                        describe_expiry(reply.expires_at_ms),
                        reply.index
                    )
                })
            }
            Action::Post { id } => {
                let reply = ledger::post_hold(client, id, &request_id)
                    .await
                    .with_context(|| format!("could not post hold {id}"))?;
                print(console, &reply, || {
                    format!("hold {id} is {} (index {})", reply.state, reply.index)
                })
            }
            Action::Void { id } => {
                let reply = ledger::void_hold(client, id, &request_id)
                    .await
                    .with_context(|| format!("could not void hold {id}"))?;
                print(console, &reply, || {
                    format!("hold {id} is {} (index {})", reply.state, reply.index)
                })
            }
        }
    }
}

fn print(
    console: &Console,
    reply: &HoldReply,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if console.json {
        Console::print_json(&json!({
            "hold_id": reply.hold_id,
            "state": reply.state,
            "index": reply.index,
            "expires_at_ms": reply.expires_at_ms,
        }))
    } else {
        println!("{}", text());
        Ok(())
    }
}
