//! The closing audit of a run: money is conserved on every node, every
//! purchase the load tester saw acknowledged is settled exactly once (the
//! buyer charged once, for its price), and every node's state digest is the
//! same at the same applied index.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agora_peer::{ledger, purchase, ClusterClient};
use agora_proto::admin::StateDigestRequest;
use agora_proto::market::{PurchaseRole, PurchaseState, ReadConsistency};
use futures::stream::{self, StreamExt as _};
use serde::Serialize;

use crate::sim::Market;

/// Longest the nodes get to converge (catch up after a restart) before the
/// audit gives its verdict.
pub const CONVERGE: Duration = Duration::from_secs(90);
/// Pause between two looks while waiting for the nodes to converge.
const POLL: Duration = Duration::from_millis(250);
/// How many accounts are checked at once.
const CHECK_CONCURRENCY: usize = 32;
/// Longest one node may take to digest its state.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the audit found.
#[derive(Debug, Serialize)]
pub struct Audit {
    /// Everything below holds.
    pub clean: bool,
    /// Every node's ledger audit is clean and they agree.
    pub ledger_clean: bool,
    /// Every node's state digest is equal at one applied index.
    pub digests_equal: bool,
    /// That index.
    pub applied_index: u64,
    /// That digest.
    pub state_digest: String,
    /// Purchases the load tester saw acknowledged.
    pub purchases_acknowledged: u64,
    /// Of those, found completed, once, with the buyer charged once.
    pub purchases_settled_once: u64,
    /// Every failed check, one sentence each.
    pub problems: Vec<String>,
}

/// Runs the audit (the run's writes must have stopped).
pub async fn run(operator: &ClusterClient, market: &Market) -> Audit {
    let mut problems = Vec::new();
    let started = Instant::now();

    // Money is conserved on every node, at one index.
    let mut ledger_clean = false;
    loop {
        let audit =
            ledger::audit_cluster(operator, ledger::AUDIT_ROUNDS, ledger::AUDIT_PAUSE).await;
        if audit.is_clean() {
            ledger_clean = true;
            break;
        }
        // A node that audits its own ledger as not clean is final.
        let broken = audit.nodes.iter().any(|n| {
            n.result
                .as_ref()
                .is_ok_and(|r| !r.clean || !r.problems.is_empty())
        });
        if broken || started.elapsed() > CONVERGE {
            problems.extend(audit.problems());
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    // Every node's whole state is the same.
    let (digests_equal, applied_index, state_digest) = loop {
        match digests(operator).await {
            Ok((index, digest)) => break (true, index, digest),
            Err(why) if started.elapsed() > CONVERGE => {
                problems.push(why);
                break (false, 0, String::new());
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };

    // Every acknowledged purchase is settled exactly once.
    let checks: Vec<(u64, Vec<String>)> = stream::iter(market.accounts.iter())
        .map(|account| async move {
            let acknowledged = account
                .acknowledged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if acknowledged.is_empty() {
                return (0, Vec::new());
            }
            check_account(&account.client, account.id, &acknowledged).await
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut settled = 0;
    for (ok, mut found) in checks {
        settled += ok;
        problems.append(&mut found);
    }
    let acknowledged = market
        .accounts
        .iter()
        .map(|a| {
            a.acknowledged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len() as u64
        })
        .sum();
    if settled != acknowledged && problems.is_empty() {
        problems.push(format!(
            "{acknowledged} purchases were acknowledged but only {settled} found settled once"
        ));
    }
    Audit {
        clean: problems.is_empty() && ledger_clean && digests_equal,
        ledger_clean,
        digests_equal,
        applied_index,
        state_digest,
        purchases_acknowledged: acknowledged,
        purchases_settled_once: settled,
        problems,
    }
}

/// Every node's state digest, when all stand at one index with one digest.
async fn digests(operator: &ClusterClient) -> Result<(u64, String), String> {
    let mut seen = BTreeMap::new();
    for id in operator.node_ids() {
        let mut admin = operator.admin(id).map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(DIGEST_TIMEOUT, admin.state_digest(StateDigestRequest {}))
            .await
            .map_err(|_| format!("node {id} did not digest its state in time"))?
            .map_err(|s| format!("node {id} could not digest its state: {}", s.message()))?
            .into_inner();
        seen.insert(id, (reply.applied_index, reply.digest));
    }
    let distinct: BTreeSet<_> = seen.values().cloned().collect();
    match (distinct.len(), distinct.into_iter().next()) {
        (1, Some(one)) => Ok(one),
        _ => Err(format!("the nodes' state digests differ: {seen:?}")),
    }
}

/// Checks one buyer: each acknowledged purchase is completed at its price,
/// acknowledged once, and the buyer's journal charges it exactly once (one
/// settled hold per completed purchase, for the prices' sum). Returns how
/// many acknowledged purchases passed, and the problems found.
async fn check_account(
    client: &ClusterClient,
    id: u64,
    acknowledged: &[(u64, u64)],
) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    let fresh = ReadConsistency {
        min_index: 0,
        linearizable: true,
    };
    let purchases = match purchase::list(client, PurchaseRole::Buyer, 0, fresh).await {
        Ok(p) => p,
        Err(e) => {
            return (
                0,
                vec![format!("account {id}: listing purchases failed: {e}")],
            )
        }
    };
    let flows = match ledger::all_cash_flows(
        client,
        0,
        &["sale".to_owned(), "commission".to_owned()],
        Some(fresh),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            return (
                0,
                vec![format!("account {id}: reading cash flows failed: {e}")],
            )
        }
    };
    let completed: BTreeMap<u64, u64> = purchases
        .iter()
        .filter(|p| p.state() == PurchaseState::Completed && !p.refunded)
        .map(|p| (p.id, p.price))
        .collect();
    let mut charged_holds: BTreeMap<u64, i64> = BTreeMap::new();
    for flow in flows.iter().filter(|f| f.amount < 0) {
        *charged_holds.entry(flow.hold_id).or_default() -= flow.amount;
    }
    let charged: i64 = charged_holds.values().sum();
    let expected: u64 = completed.values().sum();
    if charged_holds.len() != completed.len() || u64::try_from(charged).ok() != Some(expected) {
        problems.push(format!(
            "account {id}: {} completed purchases worth {expected} but {} charges totalling {charged}",
            completed.len(),
            charged_holds.len()
        ));
    }
    let mut ok = 0;
    let mut once = BTreeSet::new();
    for (purchase_id, price) in acknowledged {
        if !once.insert(*purchase_id) {
            problems.push(format!(
                "account {id}: purchase {purchase_id} was acknowledged twice"
            ));
            continue;
        }
        match completed.get(purchase_id) {
            Some(p) if p == price => ok += 1,
            Some(p) => problems.push(format!(
                "account {id}: purchase {purchase_id} was acknowledged at {price} but settled at {p}"
            )),
            None => problems.push(format!(
                "account {id}: acknowledged purchase {purchase_id} is not completed"
            )),
        }
    }
    (ok, problems)
}
