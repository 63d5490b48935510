//! `agora balance | history | withdraw`: the logged-in user's money.
//!
//! Reads are linearizable (the cluster's default), so they show every write
//! acknowledged before they started, whichever node answers. A withdrawal
//! records the index it was applied at in the local database, like every
//! write of the peer.

use agora_peer::ledger;
use agora_peer::request_id;
use agora_peer::table::utc;
use agora_proto::amount::{format_amount, format_signed};
use agora_proto::market::{CashFlow, CashFlowsRequest};
use anyhow::Context as _;
use serde_json::json;

use crate::cli::account::Peer;
use agora_peer::table::Table;

/// `agora balance`.
pub async fn balance(peer: &Peer) -> anyhow::Result<()> {
    let me = peer.signed_in().await?;
    let reply = ledger::balance(&me.client, 0, None)
        .await
        .with_context(|| format!("could not read the balance of {}", me.session.username))?;
    if peer.json() {
        println!(
            "{}",
            json!({
                "user_id": reply.user_id,
                "username": me.session.username,
                "balance": format_amount(reply.balance),
                "held": format_amount(reply.held),
                "available": format_amount(reply.available),
                "balance_cents": reply.balance,
                "held_cents": reply.held,
                "available_cents": reply.available,
                "pending": format_amount(reply.pending),
                "pending_cents": reply.pending,
                "applied_index": reply.applied_index,
            })
        );
    } else {
        // Held money is the open purchases plus the sales still in their
        // dispute window ("pending").
        let amounts = [
            reply.balance,
            reply.held.saturating_sub(reply.pending),
            reply.pending,
            reply.available,
        ]
        .map(format_amount);
        let width = amounts.iter().map(String::len).max().unwrap_or(0);
        for (label, amount) in ["balance", "held", "pending", "available"]
            .iter()
            .zip(&amounts)
        {
            println!("{label:<9}  {amount:>width$}");
        }
    }
    Ok(())
}

/// What `agora history` asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only these kinds; empty: all.
    pub kinds: Vec<String>,
    /// Page size; `None`: the cluster's default.
    pub limit: Option<u32>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// `agora history`: one page of the user's cash flows, newest first.
pub async fn history(peer: &Peer, query: HistoryQuery) -> anyhow::Result<()> {
    let me = peer.signed_in().await?;
    let request = CashFlowsRequest {
        kinds: query.kinds.clone(),
        limit: query.limit.unwrap_or(0),
        cursor: query.cursor.clone().unwrap_or_default(),
        ..CashFlowsRequest::default()
    };
    let page = ledger::cash_flows(&me.client, &request)
        .await
        .with_context(|| format!("could not read the cash flows of {}", me.session.username))?;
    if peer.json() {
        let entries: Vec<serde_json::Value> = page.entries.iter().map(entry_json).collect();
        println!(
            "{}",
            json!({
                "username": me.session.username,
                "entries": entries,
                "next_cursor": (!page.next_cursor.is_empty()).then_some(&page.next_cursor),
                "applied_index": page.applied_index,
            })
        );
        return Ok(());
    }
    if page.entries.is_empty() {
        println!(
            "{}",
            if query.cursor.is_some() {
                "no more cash flows"
            } else {
                "no cash flows yet"
            }
        );
        return Ok(());
    }
    let mut table = Table::new(&["TIME (UTC)", "KIND", "AMOUNT", "COUNTERPARTY"]).align_right(2);
    for entry in &page.entries {
        table.row(vec![
            utc(entry.time_ms),
            entry.kind.clone(),
            signed(entry.amount),
            entry.counterparty.clone(),
        ]);
    }
    print!("{}", table.render());
    if !page.next_cursor.is_empty() {
        let mut more = String::from("agora history");
        for kind in &query.kinds {
            more.push_str(&format!(" --kind {kind}"));
        }
        if let Some(limit) = query.limit {
            more.push_str(&format!(" --limit {limit}"));
        }
        println!("older entries: {more} --cursor {}", page.next_cursor);
    }
    Ok(())
}

/// `agora withdraw AMOUNT` (already parsed into cents).
pub async fn withdraw(peer: &Peer, amount: u64) -> anyhow::Result<()> {
    let me = peer.signed_in().await?;
    // One id for this withdrawal, reused by every retry inside.
    let id = request_id(me.session.username.clone());
    let reply = ledger::withdraw(&me.client, amount, id)
        .await
        .with_context(|| format!("could not withdraw {}", format_amount(amount)))?;
    me.store.bump_max_seen_index(reply.index).await?;
    if peer.json() {
        println!(
            "{}",
            json!({
                "withdrawn": format_amount(amount),
                "withdrawn_cents": amount,
                "balance": format_amount(reply.balance),
                "available": format_amount(reply.available),
                "balance_cents": reply.balance,
                "available_cents": reply.available,
                "index": reply.index,
            })
        );
    } else {
        println!(
            "withdrew {}; balance {}, available {}",
            format_amount(amount),
            format_amount(reply.balance),
            format_amount(reply.available)
        );
    }
    Ok(())
}

fn entry_json(entry: &CashFlow) -> serde_json::Value {
    json!({
        "id": entry.id,
        "time_ms": entry.time_ms,
        "kind": entry.kind,
        "amount": format_signed(entry.amount),
        "amount_cents": entry.amount,
        "counterparty": entry.counterparty,
        "log_index": entry.log_index,
        "hold_id": (entry.hold_id != 0).then_some(entry.hold_id),
    })
}

/// Cents with an explicit sign: `+12.50`, `-3.00`.
fn signed(cents: i64) -> String {
    if cents > 0 {
        format!("+{}", format_signed(cents))
    } else {
        format_signed(cents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_amounts() {
        assert_eq!(signed(1250), "+12.50");
        assert_eq!(signed(-1), "-0.01");
        assert_eq!(signed(0), "0.00");
    }
}
