//! `agora-admin audit`: check the ledger on every node.
//!
//! Each node checks its own copy (the zero-sum invariant, balances against
//! the journal, holds against held money) and digests its ledger tables.
//! Digests are only comparable at one applied index, so while the nodes
//! stand at different indexes (writes landing meanwhile) the audit is asked
//! again, a few times, briefly apart. A node that does not answer makes the
//! result not clean: an audit that skipped a node proves nothing about it.

use agora_peer::ledger::{self, ClusterAudit, AUDIT_PAUSE, AUDIT_ROUNDS};
use agora_proto::amount::{format_amount, format_signed};
use serde::Serialize;

use crate::console::Console;

/// Check the ledger on every node and compare their digests.
#[derive(Debug, clap::Args)]
pub struct Audit {}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// Every node answered, passed every check, and all agree at one index.
    clean: bool,
    /// The index and digest every node shares, when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_digest: Option<String>,
    /// Every failed check, one sentence each.
    problems: Vec<String>,
    /// How many times every node was asked.
    rounds: u32,
    nodes: Vec<NodeReport>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    id: u64,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    audit: Option<NodeFigures>,
}

#[derive(Debug, Serialize)]
struct NodeFigures {
    clean: bool,
    problems: Vec<String>,
    applied_index: u64,
    ledger_digest: String,
    balance_sum_cents: i64,
    accounts: u64,
    journal_entries: u64,
    open_holds: u64,
    user_money: String,
    user_money_cents: u64,
    operator_balance: String,
    operator_balance_cents: i64,
    commission_bps: u32,
}

impl Audit {
    /// Audits every node, prints the outcome, fails unless clean.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let audit = ledger::audit_cluster(&console.client, AUDIT_ROUNDS, AUDIT_PAUSE).await;
        let problems = audit.problems();
        let agreed = audit.agreed();
        let clean = audit.is_clean();
        if console.json {
            Console::print_json(&report(&audit, problems.clone(), clean))?;
        } else if let (true, Some((index, digest))) = (clean, &agreed) {
            println!(
                "ledger audit: clean on all {} nodes at index {index} (digest {digest})",
                audit.nodes.len()
            );
            if let Some(figures) = audit
                .nodes
                .iter()
                .find_map(|node| node.result.as_ref().ok())
            {
                println!(
                    "{} accounts, {} journal entries, {} open holds; users hold {}, operator revenue {}, commission {} bps",
                    figures.accounts,
                    figures.journal_entries,
                    figures.open_holds,
                    format_amount(figures.user_money),
                    format_signed(figures.operator_balance),
                    figures.commission_bps
                );
            }
        } else {
            println!("ledger audit: NOT clean");
            for problem in &problems {
                println!("- {problem}");
            }
        }
        if !clean {
            anyhow::bail!(
                "the ledger audit found {} problem{} on {} node{}",
                problems.len().max(1),
                if problems.len() == 1 { "" } else { "s" },
                audit.nodes.len(),
                if audit.nodes.len() == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }
}

fn report(audit: &ClusterAudit, problems: Vec<String>, clean: bool) -> Report {
    let agreed = audit.agreed();
    Report {
        clean,
        applied_index: agreed.as_ref().map(|(index, _)| *index),
        ledger_digest: agreed.map(|(_, digest)| digest),
        problems,
        rounds: audit.rounds,
        nodes: audit
            .nodes
            .iter()
            .map(|node| match &node.result {
                Ok(reply) => NodeReport {
                    id: node.id,
                    reachable: true,
                    error: None,
                    audit: Some(NodeFigures {
                        clean: reply.clean,
                        problems: reply.problems.clone(),
                        applied_index: reply.applied_index,
                        ledger_digest: reply.ledger_digest.clone(),
                        balance_sum_cents: reply.balance_sum,
                        accounts: reply.accounts,
                        journal_entries: reply.journal_entries,
                        open_holds: reply.open_holds,
                        user_money: format_amount(reply.user_money),
                        user_money_cents: reply.user_money,
                        operator_balance: format_signed(reply.operator_balance),
                        operator_balance_cents: reply.operator_balance,
                        commission_bps: reply.commission_bps,
                    }),
                },
                Err(status) => NodeReport {
                    id: node.id,
                    reachable: false,
                    error: Some(agora_peer::describe_status(status)),
                    audit: None,
                },
            })
            .collect(),
    }
}
