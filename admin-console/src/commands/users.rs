//! `agora-admin users find|show|suspend|unsuspend|delete`: find accounts,
//! see one in full, suspend or reinstate it, delete an inactive one.

use agora_peer::table::utc;
use agora_peer::{ledger, new_request_id, operator};
use agora_proto::admin::{UserDetail, UserSummary};
use agora_proto::amount::format_signed;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;
use crate::table::Table;

/// Users per page asked of the server.
const PAGE: u32 = 500;

/// Find, show, suspend, reinstate or delete user accounts.
#[derive(Debug, clap::Args)]
pub struct Users {
    #[command(subcommand)]
    action: Action,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List accounts whose name contains TEXT (every account without it).
    Find {
        /// Text the name contains (any case).
        text: Option<String>,
        /// At most this many accounts.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Everything about one account: balance, holds, sales, standing.
    Show {
        /// The account's name.
        name: String,
    },
    /// Suspend an account: its listings leave sale and search.
    Suspend {
        /// The account's name.
        name: String,
    },
    /// Lift an account's suspension.
    Unsuspend {
        /// The account's name.
        name: String,
    },
    /// Delete an inactive account (zero balance, no open holds, pending
    /// proceeds, active listings or purchases in progress; never an admin).
    Delete {
        /// The account's name.
        name: String,
    },
}

impl Users {
    /// Runs the action.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        match self.action {
            Action::Find { text, limit } => find(console, text.unwrap_or_default(), limit).await,
            Action::Show { name } => {
                let detail = show(console, &name).await?;
                print_detail(console.json, &detail)
            }
            Action::Suspend { name } => suspend(console, &name, true).await,
            Action::Unsuspend { name } => suspend(console, &name, false).await,
            Action::Delete { name } => delete(console, &name).await,
        }
    }
}

async fn find(console: &Console, text: String, limit: usize) -> anyhow::Result<()> {
    let mut users: Vec<UserSummary> = Vec::new();
    let mut after_id = 0;
    loop {
        let page = operator::find_users(&console.client, &text, after_id, PAGE)
            .await
            .context("could not search the users")?;
        users.extend(page.users);
        after_id = page.next_after_id;
        if after_id == 0 || users.len() >= limit {
            break;
        }
    }
    users.truncate(limit);
    if console.json {
        let views: Vec<_> = users
            .iter()
            .map(|u| {
                json!({
                    "user_id": u.user_id,
                    "username": u.username,
                    "role": u.role,
                    "created_at_ms": u.created_at_ms,
                    "balance": u.balance,
                    "suspended": u.suspended,
                })
            })
            .collect();
        return Console::print_json(&json!({ "users": views }));
    }
    if users.is_empty() {
        println!("no account matches {text:?}");
        return Ok(());
    }
    let mut table =
        Table::new(&["ID", "NAME", "ROLE", "CREATED (UTC)", "BALANCE", "STANDING"]).align_right(4);
    for u in &users {
        table.row(vec![
            u.user_id.to_string(),
            u.username.clone(),
            u.role.clone(),
            utc(u.created_at_ms),
            format_signed(u.balance),
            if u.suspended { "suspended" } else { "ok" }.to_owned(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

async fn show(console: &Console, name: &str) -> anyhow::Result<UserDetail> {
    operator::show_user(&console.client, name)
        .await
        .with_context(|| format!("could not show the account {name}"))
}

async fn suspend(console: &Console, name: &str, suspended: bool) -> anyhow::Result<()> {
    ledger::set_suspended(&console.client, name, suspended, &new_request_id())
        .await
        .with_context(|| {
            format!(
                "could not {} {name}",
                if suspended { "suspend" } else { "reinstate" }
            )
        })?;
    let detail = show(console, name).await?;
    print_detail(console.json, &detail)
}

async fn delete(console: &Console, name: &str) -> anyhow::Result<()> {
    let reply = operator::delete_user(&console.client, name, &new_request_id())
        .await
        .with_context(|| format!("could not delete the account {name}"))?;
    if console.json {
        return Console::print_json(&json!({
            "user_id": reply.user_id,
            "username": reply.username,
            "index": reply.index,
        }));
    }
    println!(
        "the account {} (id {}) was deleted; its name is free again (index {})",
        reply.username, reply.user_id, reply.index
    );
    Ok(())
}

fn print_detail(json: bool, u: &UserDetail) -> anyhow::Result<()> {
    if json {
        return Console::print_json(&json!({
            "user_id": u.user_id,
            "username": u.username,
            "role": u.role,
            "created_at_ms": u.created_at_ms,
            "balance": u.balance,
            "held": u.held,
            "suspended": u.suspended,
            "sales": u.sales,
            "strikes": u.strikes,
            "active_listings": u.active_listings,
            "open_holds": u.open_holds,
            "pending_proceeds": u.pending_proceeds,
            "last_login_ms": (u.last_login_ms != 0).then_some(u.last_login_ms),
            "deletable": u.delete_blocker.is_empty(),
            "delete_blocker": (!u.delete_blocker.is_empty()).then_some(&u.delete_blocker),
        }));
    }
    print!("{}", render_detail(u));
    Ok(())
}

/// One account as `field  value` lines.
fn render_detail(u: &UserDetail) -> String {
    let mut table = Table::new(&["FIELD", "VALUE"]);
    let rows = [
        ("id", u.user_id.to_string()),
        ("name", u.username.clone()),
        ("role", u.role.clone()),
        ("created (UTC)", utc(u.created_at_ms)),
        ("balance", format_signed(u.balance)),
        (
            "held",
            format_signed(i64::try_from(u.held).unwrap_or(i64::MAX)),
        ),
        (
            "standing",
            if u.suspended { "suspended" } else { "ok" }.to_owned(),
        ),
        ("sales", u.sales.to_string()),
        ("lost disputes", u.strikes.to_string()),
        ("active listings", u.active_listings.to_string()),
        ("open holds", u.open_holds.to_string()),
        (
            "sales with pending proceeds",
            u.pending_proceeds.to_string(),
        ),
        (
            "last login",
            if u.last_login_ms == 0 {
                "unknown to this node".to_owned()
            } else {
                utc(u.last_login_ms)
            },
        ),
        (
            "deletable",
            if u.delete_blocker.is_empty() {
                "yes".to_owned()
            } else {
                format!("no: {}", u.delete_blocker)
            },
        ),
    ];
    for (field, value) in rows {
        table.row(vec![field.to_owned(), value]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_says_why_it_cannot_be_deleted() {
        let text = render_detail(&UserDetail {
            user_id: 4,
            username: "ann".into(),
            role: "user".into(),
            balance: 1250,
            delete_blocker: "ann cannot be deleted: its balance is 12.50".into(),
            ..UserDetail::default()
        });
        assert!(text.contains("12.50"), "{text}");
        assert!(text.contains("no: ann cannot be deleted"), "{text}");
        assert!(text.contains("unknown to this node"), "{text}");
    }
}
