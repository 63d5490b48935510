//! The ledger from the client's side: a user's balance, cash flows and
//! withdrawals, and the operator's deposits, commission setting, holds and
//! audit.
//!
//! Amounts are integer cents (`u64`), as on the wire; the command lines
//! parse and print them with [`agora_proto::amount`]. Every function that
//! moves money refuses an amount of zero or above
//! [`MAX_AMOUNT`] before any call, so a typing mistake changes nothing.
//!
//! Writes go to the leader through [`ClusterClient::call_leader`]: one
//! request id per logical write, the same on every attempt, so a write that
//! outlives a leader crash is applied exactly once. Reads go to any node
//! and are linearizable unless the caller passes a [`ReadConsistency`].
//! User calls present the client's session ([`ClusterClient::with_token`]);
//! admin calls present an admin session or the operator certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agora_proto::admin::{
    AdminRequestId, AuditReply, AuditRequest, CloseHoldRequest, DepositRequest, HoldReply,
    LedgerWriteReply, OpenHoldRequest, SetCommissionRequest,
};
use agora_proto::amount::{format_amount, AmountError, MAX_AMOUNT};
use agora_proto::market::{
    BalanceReply, BalanceRequest, CashFlow, CashFlowsReply, CashFlowsRequest, ReadConsistency,
    RequestId, WithdrawReply, WithdrawRequest,
};
use tonic::{Response, Status};

use crate::{AdminClient, ClientError, ClusterClient};

/// The largest commission, in basis points (100%).
pub const MAX_COMMISSION_BPS: u32 = 10_000;

/// The most cash flows the cluster returns in one page.
pub const MAX_PAGE: u32 = 500;

/// Longest one node may take to audit its ledger (it reads every account,
/// hold and journal entry).
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times [`audit_cluster`] asks every node when their applied
/// indexes differ (writes were landing while it asked).
pub const AUDIT_ROUNDS: u32 = 5;

/// Pause between two rounds of [`audit_cluster`]: long enough for a
/// follower to apply what the leader just committed.
pub const AUDIT_PAUSE: Duration = Duration::from_millis(300);

/// Most pages [`all_cash_flows`] follows before deciding that the cluster's
/// cursors do not end (500 entries a page: two and a half million entries).
const MAX_PAGES: usize = 5_000;

/// Refuses an amount no ledger write accepts.
fn check_amount(amount: u64) -> Result<(), ClientError> {
    if amount == 0 {
        return Err(AmountError::Zero.into());
    }
    if amount > MAX_AMOUNT {
        return Err(AmountError::TooLarge(format_amount(amount)).into());
    }
    Ok(())
}

/// An admin request id on the wire.
pub(crate) fn admin_id(request_id: &str) -> Option<AdminRequestId> {
    Some(AdminRequestId {
        id: request_id.to_owned(),
    })
}

/// The balance of user `user_id` (0: the client's own session), from any
/// node; linearizable when `consistency` is `None`.
///
/// # Errors
/// [`ClientError::Rpc`] with `PERMISSION_DENIED` for another user's
/// balance without an admin session, `UNAUTHENTICATED` without a session,
/// or the last error when no node answered.
pub async fn balance(
    client: &ClusterClient,
    user_id: u64,
    consistency: Option<ReadConsistency>,
) -> Result<BalanceReply, ClientError> {
    let request = BalanceRequest {
        user_id,
        consistency,
    };
    Ok(client
        .call_any(|channel| {
            let mut ledger = client.ledger_on(channel);
            async move { ledger.balance(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// [`balance`] asked of exactly node `node`, once (to read on a chosen
/// follower).
///
/// # Errors
/// As [`balance`], and [`ClientError::UnknownNode`] for a node the client
/// does not know.
pub async fn balance_on(
    client: &ClusterClient,
    node: u64,
    user_id: u64,
    consistency: Option<ReadConsistency>,
) -> Result<BalanceReply, ClientError> {
    let mut ledger = client.ledger(node)?;
    let request = BalanceRequest {
        user_id,
        consistency,
    };
    bounded(node, client.retry_policy().read_timeout, async move {
        ledger.balance(request).await.map(Response::into_inner)
    })
    .await
}

/// One page of cash flows, from any node. The request says whose, which
/// kinds, how many and from where (its `cursor`).
///
/// # Errors
/// As [`balance`]; `INVALID_ARGUMENT` for a cursor the cluster did not
/// hand out.
pub async fn cash_flows(
    client: &ClusterClient,
    request: &CashFlowsRequest,
) -> Result<CashFlowsReply, ClientError> {
    Ok(client
        .call_any(|channel| {
            let request = request.clone();
            let mut ledger = client.ledger_on(channel);
            async move { ledger.cash_flows(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// Every cash flow of user `user_id` (0: the client's own) of the given
/// `kinds` (empty: all), newest first, following the cursors to the end.
///
/// # Errors
/// As [`cash_flows`], and [`ClientError::Protocol`] when the cluster's
/// cursors do not come to an end.
pub async fn all_cash_flows(
    client: &ClusterClient,
    user_id: u64,
    kinds: &[String],
    consistency: Option<ReadConsistency>,
) -> Result<Vec<CashFlow>, ClientError> {
    let mut request = CashFlowsRequest {
        user_id,
        kinds: kinds.to_vec(),
        limit: MAX_PAGE,
        consistency,
        ..CashFlowsRequest::default()
    };
    let mut entries = Vec::new();
    let mut cursors = BTreeSet::new();
    for _ in 0..MAX_PAGES {
        let page = cash_flows(client, &request).await?;
        entries.extend(page.entries);
        if page.next_cursor.is_empty() {
            return Ok(entries);
        }
        if !cursors.insert(page.next_cursor.clone()) {
            return Err(ClientError::Protocol(format!(
                "the cash flow cursor {:?} came back twice",
                page.next_cursor
            )));
        }
        request.cursor = page.next_cursor;
    }
    Err(ClientError::Protocol(format!(
        "the cash flows did not end after {MAX_PAGES} pages"
    )))
}

/// Withdraws `amount` cents of the session's available money to the
/// outside world. Reuse `request_id` to retry the same withdrawal.
///
/// # Errors
/// [`ClientError::Amount`] for zero or too much (before any call);
/// [`ClientError::Rpc`] with `FAILED_PRECONDITION` when less is available,
/// `ALREADY_EXISTS` when `request_id` was used for another write, or the
/// last error once the retries are used up.
pub async fn withdraw(
    client: &ClusterClient,
    amount: u64,
    request_id: RequestId,
) -> Result<WithdrawReply, ClientError> {
    check_amount(amount)?;
    let request = WithdrawRequest {
        request_id: Some(request_id),
        amount,
    };
    Ok(client
        .call_leader(|channel| {
            let request = request.clone();
            let mut ledger = client.ledger_on(channel);
            async move { ledger.withdraw(request).await.map(Response::into_inner) }
        })
        .await?)
}

/// Runs one admin read on any node, falling back to the others.
pub(crate) async fn admin_read<Req, T, F, Fut>(
    client: &ClusterClient,
    request: &Req,
    call: F,
) -> Result<T, ClientError>
where
    Req: Clone,
    F: Fn(AdminClient, Req) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    Ok(client
        .call_any(|channel| {
            let fut = call(client.admin_on(channel), request.clone());
            async move { fut.await.map(Response::into_inner) }
        })
        .await?)
}

/// Runs one admin write on the leader with the usual retries.
pub(crate) async fn admin_write<Req, T, F, Fut>(
    client: &ClusterClient,
    request: &Req,
    call: F,
) -> Result<T, ClientError>
where
    Req: Clone,
    F: Fn(AdminClient, Req) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    Ok(client
        .call_leader(|channel| {
            let fut = call(client.admin_on(channel), request.clone());
            async move { fut.await.map(Response::into_inner) }
        })
        .await?)
}

/// Puts `amount` cents on `username`'s account, from the external account
/// (admin). Reuse `request_id` to retry the same deposit.
///
/// # Errors
/// [`ClientError::Amount`] for zero or too much (before any call);
/// [`ClientError::Rpc`] with `NOT_FOUND` for an unknown user,
/// `PERMISSION_DENIED` without admin rights, `ALREADY_EXISTS` when
/// `request_id` was used for another write.
pub async fn deposit(
    client: &ClusterClient,
    username: &str,
    amount: u64,
    request_id: &str,
) -> Result<LedgerWriteReply, ClientError> {
    check_amount(amount)?;
    let request = DepositRequest {
        request_id: admin_id(request_id),
        username: username.to_owned(),
        amount,
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.deposit(request).await
    })
    .await
}

/// Sets the operator's commission to `bps` basis points (admin).
///
/// # Errors
/// [`ClientError::CommissionOutOfRange`] above 10000 (before any call);
/// [`ClientError::Rpc`] for the cluster's refusals.
pub async fn set_commission(
    client: &ClusterClient,
    bps: u32,
    request_id: &str,
) -> Result<LedgerWriteReply, ClientError> {
    if bps > MAX_COMMISSION_BPS {
        return Err(ClientError::CommissionOutOfRange(bps));
    }
    let request = SetCommissionRequest {
        request_id: admin_id(request_id),
        bps,
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.set_commission(request).await
    })
    .await
}

/// Sets how long a sale's proceeds stay held for disputes (an admin
/// call), retrying with one request id.
///
/// # Errors
/// `INVALID_ARGUMENT` above 90 days, or the last error once the retries
/// are used up.
pub async fn set_dispute_window(
    client: &ClusterClient,
    window_ms: u64,
    request_id: &str,
) -> Result<LedgerWriteReply, ClientError> {
    let request = agora_proto::admin::SetDisputeWindowRequest {
        request_id: admin_id(request_id),
        window_ms,
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.set_dispute_window(request).await
    })
    .await
}

/// Suspends `username` (`suspended`) or lifts the suspension (an admin
/// call); returns its standing after.
///
/// # Errors
/// `NOT_FOUND` for an unknown user, `FAILED_PRECONDITION` for an admin
/// account, or the last error once the retries are used up.
pub async fn set_suspended(
    client: &ClusterClient,
    username: &str,
    suspended: bool,
    request_id: &str,
) -> Result<agora_proto::admin::UserStanding, ClientError> {
    let request = agora_proto::admin::SetSuspendedRequest {
        request_id: admin_id(request_id),
        username: username.to_owned(),
        suspended,
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.set_suspended(request).await
    })
    .await
}

/// A user's standing (suspended, sales, lost disputes), from any node (an
/// admin call).
///
/// # Errors
/// `NOT_FOUND` for an unknown user, or the last error when no node
/// answered.
pub async fn standing(
    client: &ClusterClient,
    username: &str,
) -> Result<agora_proto::admin::UserStanding, ClientError> {
    let request = agora_proto::admin::StandingRequest {
        username: username.to_owned(),
    };
    admin_read(client, &request, |mut admin, request| async move {
        admin.standing(request).await
    })
    .await
}

/// A hold to open: `amount` cents of `holder`'s money reserved for
/// `payee`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    /// Whose money is held.
    pub holder: String,
    /// Who gets it when the hold is posted.
    pub payee: String,
    /// Cents, more than 0.
    pub amount: u64,
    /// How long until the cluster voids it; `None`: the cluster's default
    /// (15 minutes).
    pub ttl: Option<Duration>,
}

/// Opens a hold (admin): reserves the money, which stays on the holder's
/// account but is no longer available.
///
/// # Errors
/// [`ClientError::Amount`] for zero or too much (before any call);
/// [`ClientError::Rpc`] with `FAILED_PRECONDITION` when the holder has less
/// available, `NOT_FOUND` for an unknown user.
pub async fn open_hold(
    client: &ClusterClient,
    hold: &NewHold,
    request_id: &str,
) -> Result<HoldReply, ClientError> {
    check_amount(hold.amount)?;
    // 0 means "the default" on the wire, so a zero TTL becomes the
    // shortest one that is not.
    let ttl_ms = hold.ttl.map_or(0, |ttl| {
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    });
    let request = OpenHoldRequest {
        request_id: admin_id(request_id),
        username: hold.holder.clone(),
        payee: hold.payee.clone(),
        amount: hold.amount,
        ttl_ms,
    };
    admin_write(client, &request, |mut admin, request| async move {
        admin.open_hold(request).await
    })
    .await
}

/// Posts hold `hold_id` (admin): the holder pays, the payee gets the amount
/// less the commission, the operator the commission.
///
/// # Errors
/// [`ClientError::Rpc`] with `FAILED_PRECONDITION` when the hold was
/// already posted or voided (expired), `NOT_FOUND` for an unknown hold.
pub async fn post_hold(
    client: &ClusterClient,
    hold_id: u64,
    request_id: &str,
) -> Result<HoldReply, ClientError> {
    close_hold(client, hold_id, request_id, true).await
}

/// Voids hold `hold_id` (admin): the money is released, nothing moves.
///
/// # Errors
/// As [`post_hold`].
pub async fn void_hold(
    client: &ClusterClient,
    hold_id: u64,
    request_id: &str,
) -> Result<HoldReply, ClientError> {
    close_hold(client, hold_id, request_id, false).await
}

/// Posts (`post`) or voids hold `hold_id`.
async fn close_hold(
    client: &ClusterClient,
    hold_id: u64,
    request_id: &str,
    post: bool,
) -> Result<HoldReply, ClientError> {
    let request = CloseHoldRequest {
        request_id: admin_id(request_id),
        hold_id,
    };
    admin_write(client, &request, |mut admin, request| async move {
        if post {
            admin.post_hold(request).await
        } else {
            admin.void_hold(request).await
        }
    })
    .await
}

/// Audits the ledger of exactly node `node`, at whatever it has applied
/// (admin). Bounded by [`AUDIT_TIMEOUT`].
///
/// # Errors
/// [`ClientError::UnknownNode`], or [`ClientError::Rpc`] when the node
/// refuses or does not answer in time.
pub async fn audit_on(client: &ClusterClient, node: u64) -> Result<AuditReply, ClientError> {
    let mut admin = client.admin(node)?;
    bounded(node, AUDIT_TIMEOUT, async move {
        admin.audit(AuditRequest {}).await.map(Response::into_inner)
    })
    .await
}

/// One node's part of a [`ClusterAudit`].
#[derive(Debug, Clone)]
pub struct NodeAudit {
    /// The node.
    pub id: u64,
    /// Its audit, or why it gave none.
    pub result: Result<AuditReply, Status>,
}

/// The ledger audit of every node of a cluster, taken (when the nodes let
/// it) at one applied index, so that their digests can be compared.
#[derive(Debug, Clone)]
pub struct ClusterAudit {
    /// Every node of the client, in id order.
    pub nodes: Vec<NodeAudit>,
    /// How many times every node was asked.
    pub rounds: u32,
}

impl ClusterAudit {
    /// Every failed check, one sentence each: a node's own problems, a node
    /// that did not answer, two nodes at one index with different digests,
    /// and nodes that never reached one index (so not every digest could be
    /// compared). Empty when the ledger is clean everywhere.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for node in &self.nodes {
            match &node.result {
                Ok(reply) => problems.extend(
                    reply
                        .problems
                        .iter()
                        .map(|problem| format!("node {}: {problem}", node.id)),
                ),
                Err(status) => problems.push(format!(
                    "node {} could not be audited: {}",
                    node.id,
                    crate::describe_status(status)
                )),
            }
            if let Ok(reply) = &node.result {
                if !reply.clean && reply.problems.is_empty() {
                    problems.push(format!(
                        "node {} reports its ledger is not clean (without saying why)",
                        node.id
                    ));
                }
            }
        }
        let by_index = self.digests_by_index();
        for (index, digests) in &by_index {
            if digests.len() > 1 {
                let nodes: Vec<String> = digests
                    .iter()
                    .map(|(digest, ids)| format!("{ids:?} have {digest}"))
                    .collect();
                problems.push(format!(
                    "the nodes disagree at applied index {index}: nodes {}",
                    nodes.join(", nodes ")
                ));
            }
        }
        if by_index.len() > 1 {
            let at: Vec<String> = self
                .answers()
                .map(|(id, reply)| format!("node {id} at {}", reply.applied_index))
                .collect();
            problems.push(format!(
                "the nodes were at different applied indexes after {} rounds ({}), so not every digest could be compared; run the audit again when writes pause",
                self.rounds,
                at.join(", ")
            ));
        }
        problems
    }

    /// Whether every node answered, passed every check, and all stood at
    /// one applied index with one digest.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        !self.nodes.is_empty() && self.problems().is_empty()
    }

    /// The applied index and digest every node shares, when they do.
    #[must_use]
    pub fn agreed(&self) -> Option<(u64, String)> {
        if self.answers().count() != self.nodes.len() {
            return None;
        }
        let by_index = self.digests_by_index();
        let mut indexes = by_index.into_iter();
        match (indexes.next(), indexes.next()) {
            (Some((index, digests)), None) if digests.len() == 1 => {
                digests.into_keys().next().map(|digest| (index, digest))
            }
            _ => None,
        }
    }

    /// The nodes that answered.
    fn answers(&self) -> impl Iterator<Item = (u64, &AuditReply)> {
        self.nodes
            .iter()
            .filter_map(|node| node.result.as_ref().ok().map(|reply| (node.id, reply)))
    }

    /// index -> digest -> nodes.
    fn digests_by_index(&self) -> BTreeMap<u64, BTreeMap<String, Vec<u64>>> {
        let mut by_index: BTreeMap<u64, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
        for (id, reply) in self.answers() {
            by_index
                .entry(reply.applied_index)
                .or_default()
                .entry(reply.ledger_digest.clone())
                .or_default()
                .push(id);
        }
        by_index
    }

    /// Whether the nodes that answered stood at more than one index.
    fn indexes_differ(&self) -> bool {
        self.answers()
            .map(|(_, reply)| reply.applied_index)
            .collect::<BTreeSet<_>>()
            .len()
            > 1
    }
}

/// Audits every node of `client` at once; while the nodes that answer stand
/// at different applied indexes (writes landing meanwhile), asks them all
/// again, up to `rounds` times with `pause` in between, so that the digests
/// are compared at one index. A node that does not answer is reported,
/// never waited for.
pub async fn audit_cluster(client: &ClusterClient, rounds: u32, pause: Duration) -> ClusterAudit {
    let rounds = rounds.max(1);
    let mut round = 0;
    loop {
        round += 1;
        let mut tasks = tokio::task::JoinSet::new();
        for id in client.node_ids() {
            let client = client.clone();
            tasks.spawn(async move {
                let result = audit_on(&client, id).await.map_err(|err| match err {
                    ClientError::Rpc(status) => status,
                    other => Status::not_found(other.to_string()),
                });
                NodeAudit { id, result }
            });
        }
        let mut nodes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(node) => nodes.push(node),
                // Only a panic in the task (a bug) lands here; the node's
                // answer is lost, which the report shows as missing.
                Err(err) => tracing::warn!(error = %err, "an audit task failed"),
            }
        }
        nodes.sort_by_key(|node| node.id);
        let audit = ClusterAudit {
            nodes,
            rounds: round,
        };
        if round >= rounds || !audit.indexes_differ() {
            return audit;
        }
        tokio::time::sleep(pause).await;
    }
}

/// `call` on one node, bounded by `timeout`.
async fn bounded<T>(
    node: u64,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClientError::Rpc(Status::deadline_exceeded(format!(
            "node {node} did not answer within {:.1}s",
            timeout.as_secs_f64()
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(index: u64, digest: &str, problems: &[&str]) -> Result<AuditReply, Status> {
        Ok(AuditReply {
            clean: problems.is_empty(),
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            applied_index: index,
            ledger_digest: digest.to_owned(),
            ..AuditReply::default()
        })
    }

    fn audit(results: Vec<Result<AuditReply, Status>>) -> ClusterAudit {
        ClusterAudit {
            nodes: results
                .into_iter()
                .zip(1..)
                .map(|(result, id)| NodeAudit { id, result })
                .collect(),
            rounds: 1,
        }
    }

    #[test]
    fn clean_when_every_node_agrees() {
        let all = audit(vec![
            reply(7, "d", &[]),
            reply(7, "d", &[]),
            reply(7, "d", &[]),
        ]);
        assert!(all.is_clean(), "{:?}", all.problems());
        assert_eq!(all.agreed(), Some((7, "d".to_owned())));
    }

    #[test]
    fn reports_what_is_wrong() {
        let split = audit(vec![reply(7, "a", &[]), reply(7, "b", &[])]);
        assert!(!split.is_clean());
        assert!(split.problems()[0].contains("disagree at applied index 7"));
        assert_eq!(split.agreed(), None);

        let down = audit(vec![reply(7, "a", &[]), Err(Status::unavailable("gone"))]);
        assert_eq!(down.problems().len(), 1);
        assert!(down.problems()[0].starts_with("node 2 could not be audited"));

        let sick = audit(vec![reply(7, "a", &["the balances sum to 5"])]);
        assert_eq!(sick.problems(), vec!["node 1: the balances sum to 5"]);

        let apart = audit(vec![reply(7, "a", &[]), reply(8, "b", &[])]);
        assert!(apart.indexes_differ());
        assert!(apart.problems()[0].contains("different applied indexes"));
    }

    #[test]
    fn refuses_amounts_before_calling() {
        assert!(matches!(
            check_amount(0),
            Err(ClientError::Amount(AmountError::Zero))
        ));
        assert!(matches!(
            check_amount(MAX_AMOUNT + 1),
            Err(ClientError::Amount(AmountError::TooLarge(_)))
        ));
        assert!(check_amount(1).is_ok());
        assert!(check_amount(MAX_AMOUNT).is_ok());
    }
}
