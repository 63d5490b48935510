//! `agora-admin suspend | unsuspend | standing NAME`: a user's standing as a
//! seller (sales, lost disputes) and the suspension that takes its
//! listings off sale and out of search.

use agora_peer::{ledger, new_request_id};
use agora_proto::admin::UserStanding;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// A user, by name.
#[derive(Debug, clap::Args)]
pub struct User {
    /// The account's name.
    name: String,
}

/// What to do with the user.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Suspend.
    Suspend,
    /// Lift the suspension.
    Unsuspend,
    /// Only show the standing.
    Show,
}

impl User {
    /// Runs `action` on the user and prints its standing.
    pub async fn run(self, console: &Console, action: Action) -> anyhow::Result<()> {
        let standing = match action {
            Action::Show => ledger::standing(&console.client, &self.name).await,
            Action::Suspend | Action::Unsuspend => {
                ledger::set_suspended(
                    &console.client,
                    &self.name,
                    matches!(action, Action::Suspend),
                    &new_request_id(),
                )
                .await
            }
        }
        .with_context(|| format!("could not reach the standing of {}", self.name))?;
        print(console, &standing)
    }
}

fn print(console: &Console, s: &UserStanding) -> anyhow::Result<()> {
    if console.json {
        return Console::print_json(&json!({
            "user_id": s.user_id,
            "username": s.username,
            "suspended": s.suspended,
            "sales": s.sales,
            "strikes": s.strikes,
            "active_listings": s.active_listings,
            "index": s.index,
        }));
    }
    println!(
        "{} (user {}): {}; {} sale(s), {} lost dispute(s), {} listing(s) on sale",
        s.username,
        s.user_id,
        if s.suspended {
            "suspended"
        } else {
            "in good standing"
        },
        s.sales,
        s.strikes,
        s.active_listings
    );
    Ok(())
}
