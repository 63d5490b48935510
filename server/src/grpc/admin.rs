//! `agora.admin.v1.AdminService`: what operators call. Every call needs an
//! admin session, or the cluster's operator certificate (a client
//! certificate from the cluster CA, already verified by TLS).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use agora_proto::admin::admin_service_server::AdminService;
use agora_proto::admin::{
    AddLearnerRequest, InitializeReply, InitializeRequest, Member, MembershipReply, NodeStatus,
    PromoteVoterRequest, RemoveNodeRequest, ReplicationLag, StateDigestReply, StateDigestRequest,
    StatusRequest, TriggerSnapshotReply, TriggerSnapshotRequest,
};
use agora_proto::admin::{
    AddTopicRequest, AdminRequestId, AuditReply, AuditRequest, CloseHoldRequest, DepositRequest,
    HoldReply, LedgerWriteReply, OpenHoldRequest, RemoveTopicRequest, SetCommissionRequest,
};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use agora_proto::admin::{
    DeleteUserReply, DeleteUserRequest, Event, EventsReply, EventsRequest, FindUsersReply,
    FindUsersRequest, GetSettingsRequest, LogTailReply, LogTailRequest, SetSettingRequest,
    Settings, ShowUserRequest, UserDetail, UserSummary,
};
use agora_proto::auth::canonical_username;

use crate::auth::Session;
use crate::domain::catalogue;
use crate::domain::settings::{self, SettingChange};
use crate::error::WriteError;
use crate::events::EventKind;
use crate::node::Node;
use crate::node::{Applied, Freshness};
use crate::raft::command::{Op, Outcome, Proposal, RequestKey};
use crate::raft::typ::{NodeId, RaftMetrics};
use crate::raft::{NodeAddr, TypeConfig};
use crate::store;

/// Longest `AddLearner` waits for the new node to catch up.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);
/// Longest `TriggerSnapshot` waits for the snapshot to exist.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);
/// How long one snapshot trigger is given before it is repeated.
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(2);
/// A learner further behind than this many entries is not promoted.
const PROMOTE_MAX_LAG: u64 = 1000;
/// Below this many voters a cluster cannot survive a crash.
const SAFE_VOTERS: usize = 3;

/// The service, over a running node.
pub struct AdminApi {
    node: Arc<Node>,
    /// Whether `Crash` may abort this process (`--enable-fault-injection`).
    fault_injection: bool,
}

impl AdminApi {
    /// Serves `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            fault_injection: false,
        }
    }

    /// Lets `Crash` abort the process when `enabled`.
    #[must_use]
    pub fn with_fault_injection(mut self, enabled: bool) -> Self {
        self.fault_injection = enabled;
        self
    }
}

/// How long `Crash` lets its reply travel before the process aborts.
const CRASH_DELAY: Duration = Duration::from_millis(50);

fn members(metrics: &RaftMetrics) -> Vec<Member> {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            api_addr: node.api_addr.clone(),
            raft_addr: node.raft_addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

fn membership_reply(response: &ClientWriteResponse<TypeConfig>, node: &Node) -> MembershipReply {
    let metrics = node.raft.metrics().borrow().clone();
    MembershipReply {
        index: response.log_id.index,
        members: members(&metrics),
    }
}

fn membership_error(
    node: &Node,
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            match (f.leader_id, f.leader_node) {
                (Some(leader_id), Some(n)) => WriteError::NotLeader {
                    id: node.id,
                    leader_id,
                    leader_addr: n.api_addr,
                }
                .into(),
                _ => WriteError::NoLeader.into(),
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("the membership change was refused: {e}"))
        }
        RaftError::Fatal(f) => {
            Status::unavailable(format!("this node cannot change membership: {f}"))
        }
    }
}

fn node_addr(member: Option<Member>) -> Result<(NodeId, NodeAddr), Status> {
    let m = member.ok_or_else(|| Status::invalid_argument("member is missing"))?;
    if m.id == 0 {
        return Err(Status::invalid_argument("a node id must be 1 or more"));
    }
    for (what, addr) in [("api_addr", &m.api_addr), ("raft_addr", &m.raft_addr)] {
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "{what} {addr:?} of node {} is not a host:port address",
                m.id
            )));
        }
    }
    Ok((
        m.id,
        NodeAddr {
            api_addr: m.api_addr,
            raft_addr: m.raft_addr,
        },
    ))
}

// The page sizes live with the other limits.
use super::limits::{
    DEFAULT_EVENTS_PAGE, DEFAULT_LOG_LINES, DEFAULT_USERS_PAGE, MAX_EVENTS_PAGE, MAX_LOG_LINES,
    MAX_USERS_PAGE,
};
/// Longest user search text.
const MAX_USER_QUERY: usize = 64;
/// The bounds the setting commands enforce.
const SETTING_LIMITS: settings::Limits = settings::Limits {
    max_bps: crate::domain::ledger::MAX_BPS,
    max_hold_ttl_ms: crate::raft::command::MAX_PURCHASE_TTL_MS,
    max_dispute_window_ms: store::purchases::MAX_DISPUTE_WINDOW_MS,
};

/// A page size: `asked`, or `default` for 0, at most `max`.
fn page_limit(asked: u32, default: u32, max: u32) -> u32 {
    if asked == 0 {
        default
    } else {
        asked.min(max)
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Who made an admin change, for the event log.
fn who(session: Option<&Session>) -> String {
    session.map_or_else(
        || "the operator certificate".to_owned(),
        |s| format!("admin {}", s.claims.username),
    )
}

/// Why removing voter `id` would leave a cluster that cannot commit:
/// fewer of the `remaining` voters reachable (from the leader's view) than
/// a quorum of them. `None` when it is safe.
fn quorum_refusal(id: NodeId, remaining: usize, reachable: usize) -> Option<String> {
    let quorum = remaining / 2 + 1;
    (reachable < quorum).then(|| {
        format!(
            "removing node {id} would leave {remaining} voters of which only {reachable} answer the leader, fewer than the {quorum} needed to commit; bring the others back first or pass force"
        )
    })
}

/// Bytes of a SQLite database with its write-ahead log.
fn database_bytes(dir: &std::path::Path, name: &str) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(dir.join(format!("{name}{suffix}"))).ok())
        .map(|m| m.len())
        .sum()
}

/// Hold lifetime when the request gives none.
const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(15 * 60);

/// The request key of an admin write: keyed by the operator who sent it.
fn admin_key(session: Option<&Session>, id: Option<AdminRequestId>) -> Result<RequestKey, Status> {
    let id = id.map(|r| r.id).unwrap_or_default();
    if id.is_empty() || id.len() > 128 {
        return Err(Status::invalid_argument(
            "request_id is missing; every write needs one (1 to 128 characters, reused on retry)",
        ));
    }
    let client = match session {
        Some(s) => format!("admin:{}", s.user_id()),
        None => "operator".to_owned(),
    };
    Ok(RequestKey { client, id })
}

impl AdminApi {
    /// A user's standing as this node has it.
    async fn standing_of(
        &self,
        user_id: u64,
        index: u64,
    ) -> Result<agora_proto::admin::UserStanding, Status> {
        let readers = self.node.state.readers();
        let user = store::accounts::user_by_id(readers, user_id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("there is no user {user_id}")))?;
        let (suspended, sales, strikes, active_listings) =
            store::catalogue::standing(readers, user_id)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .unwrap_or_default();
        Ok(agora_proto::admin::UserStanding {
            user_id,
            username: user.username,
            suspended,
            sales,
            strikes,
            active_listings,
            index,
        })
    }

    /// The id of the account named `name`, read after everything committed
    /// before this call (so a user registered a moment ago is found).
    async fn user_id(&self, name: &str) -> Result<u64, Status> {
        let canonical =
            canonical_username(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let lookup = || store::accounts::user_by_name(self.node.state.readers(), &canonical);
        // An account's id never changes, so a local hit is good; only a miss
        // needs the leader's read index (the account may be seconds old).
        if let Some(user) = lookup()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
        {
            return Ok(user.id);
        }
        self.node
            .read_barrier(Freshness {
                min_index: 0,
                linearizable: true,
            })
            .await?;
        lookup()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(|u| u.id)
            .ok_or_else(|| Status::not_found(format!("there is no user {canonical:?}")))
    }

    /// Everything the console shows about one account.
    async fn user_detail(&self, user_id: u64) -> Result<UserDetail, Status> {
        let readers = self.node.state.readers();
        let user = store::accounts::user_by_id(readers, user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("there is no user {user_id}")))?;
        let (suspended, sales, strikes, active_listings) =
            store::catalogue::standing(readers, user_id)
                .await
                .map_err(internal)?
                .unwrap_or_default();
        let created_at_ms = store::users::created_ms(readers, user_id)
            .await
            .map_err(internal)?
            .unwrap_or_default();
        let mut conn = readers.acquire().await.map_err(internal)?;
        let ties = store::users::ties(&mut conn, user_id)
            .await
            .map_err(internal)?;
        let admin = user.role == agora_proto::auth::Role::Admin;
        Ok(UserDetail {
            user_id,
            delete_blocker: ties
                .delete_blocker(&user.username, admin)
                .unwrap_or_default(),
            username: user.username,
            role: user.role.as_str().to_owned(),
            created_at_ms,
            balance: ties.balance,
            held: ties.held,
            suspended,
            sales,
            strikes,
            active_listings,
            open_holds: ties.open_holds,
            pending_proceeds: ties.pending_proceeds,
            last_login_ms: self.node.logins.last(user_id).unwrap_or_default(),
        })
    }

    /// The replicated settings as this node has them.
    async fn settings(&self, index: u64) -> Result<Settings, Status> {
        let readers = self.node.state.readers();
        let ksf = store::accounts::ksf(readers).await.map_err(internal)?;
        Ok(Settings {
            commission_bps: store::ledger::commission_bps(readers)
                .await
                .map_err(internal)?,
            hold_ttl_ms: store::purchases::hold_ttl_ms(readers)
                .await
                .map_err(internal)?
                .unwrap_or(0),
            dispute_window_ms: store::purchases::dispute_window_ms(readers)
                .await
                .map_err(internal)?,
            argon2_memory_kib: ksf.memory_kib,
            argon2_iterations: ksf.iterations,
            argon2_parallelism: ksf.parallelism,
            index,
        })
    }

    /// Posts or voids a hold (`op` makes the command from the hold id).
    async fn close_hold(
        &self,
        request: Request<CloseHoldRequest>,
        op: impl FnOnce(i64) -> Op,
    ) -> Result<Response<HoldReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let hold_id = i64::try_from(req.hold_id)
            .map_err(|_| Status::invalid_argument("hold_id is out of range"))?;
        hold_reply(self.write(key, op(hold_id)).await?)
    }

    async fn write(&self, request: RequestKey, op: Op) -> Result<Applied, Status> {
        Ok(self
            .node
            .write(Proposal {
                request: Some(request),
                op,
            })
            .await?)
    }
}

fn hold_reply(applied: Applied) -> Result<Response<HoldReply>, Status> {
    match applied.outcome {
        Outcome::Hold {
            hold_id,
            state,
            expires_at_ms,
        } => Ok(Response::new(HoldReply {
            hold_id: u64::try_from(hold_id).unwrap_or_default(),
            state,
            index: applied.index,
            expires_at_ms,
        })),
        other => Err(Status::internal(format!(
            "unexpected outcome {other:?} for a hold"
        ))),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn deposit(
        &self,
        request: Request<DepositRequest>,
    ) -> Result<Response<LedgerWriteReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let user_id = self.user_id(&req.username).await?;
        let applied = self
            .write(
                key,
                Op::Deposit {
                    user_id,
                    amount: req.amount,
                },
            )
            .await?;
        Ok(Response::new(LedgerWriteReply {
            index: applied.index,
        }))
    }

    async fn set_commission(
        &self,
        request: Request<SetCommissionRequest>,
    ) -> Result<Response<LedgerWriteReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let applied = self.write(key, Op::SetCommission { bps: req.bps }).await?;
        Ok(Response::new(LedgerWriteReply {
            index: applied.index,
        }))
    }

    async fn set_suspended(
        &self,
        request: Request<agora_proto::admin::SetSuspendedRequest>,
    ) -> Result<Response<agora_proto::admin::UserStanding>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let user_id = self.user_id(&req.username).await?;
        let applied = self
            .write(
                key,
                Op::SetSuspended {
                    user_id,
                    suspended: req.suspended,
                },
            )
            .await?;
        self.node.wait_applied(applied.index).await?;
        self.standing_of(user_id, applied.index)
            .await
            .map(Response::new)
    }

    async fn standing(
        &self,
        request: Request<agora_proto::admin::StandingRequest>,
    ) -> Result<Response<agora_proto::admin::UserStanding>, Status> {
        self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let user_id = self.user_id(&req.username).await?;
        self.standing_of(user_id, 0).await.map(Response::new)
    }

    async fn set_dispute_window(
        &self,
        request: Request<agora_proto::admin::SetDisputeWindowRequest>,
    ) -> Result<Response<LedgerWriteReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let applied = self
            .write(key, Op::SetDisputeWindow { ms: req.window_ms })
            .await?;
        Ok(Response::new(LedgerWriteReply {
            index: applied.index,
        }))
    }

    async fn add_topic(
        &self,
        request: Request<AddTopicRequest>,
    ) -> Result<Response<LedgerWriteReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let name = catalogue::topic_name(&req.name).map_err(Status::invalid_argument)?;
        let description =
            catalogue::topic_description(&req.description).map_err(Status::invalid_argument)?;
        let applied = self.write(key, Op::AddTopic { name, description }).await?;
        Ok(Response::new(LedgerWriteReply {
            index: applied.index,
        }))
    }

    async fn remove_topic(
        &self,
        request: Request<RemoveTopicRequest>,
    ) -> Result<Response<LedgerWriteReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let name = catalogue::topic_name(&req.name).map_err(Status::invalid_argument)?;
        let applied = self.write(key, Op::RemoveTopic { name }).await?;
        Ok(Response::new(LedgerWriteReply {
            index: applied.index,
        }))
    }

    async fn open_hold(
        &self,
        request: Request<OpenHoldRequest>,
    ) -> Result<Response<HoldReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        // The expiry is counted from the command's (leader's) time when it
        // applies, so a retry carries the same body.
        let ttl_ms = crate::domain::ledger::hold_ttl_ms(
            req.ttl_ms,
            u64::try_from(DEFAULT_HOLD_TTL.as_millis()).unwrap_or(u64::MAX),
        )
        .map_err(Status::invalid_argument)?;
        let user_id = self.user_id(&req.username).await?;
        let payee_user_id = self.user_id(&req.payee).await?;
        let applied = self
            .write(
                key,
                Op::OpenHold {
                    user_id,
                    payee_user_id,
                    amount: req.amount,
                    ttl_ms,
                    purchase_id: None,
                },
            )
            .await?;
        hold_reply(applied)
    }

    async fn post_hold(
        &self,
        request: Request<CloseHoldRequest>,
    ) -> Result<Response<HoldReply>, Status> {
        self.close_hold(request, |hold_id| Op::PostHold { hold_id })
            .await
    }

    async fn void_hold(
        &self,
        request: Request<CloseHoldRequest>,
    ) -> Result<Response<HoldReply>, Status> {
        self.close_hold(request, |hold_id| Op::VoidHold { hold_id })
            .await
    }

    async fn audit(&self, request: Request<AuditRequest>) -> Result<Response<AuditReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let readers = self.node.state.readers();
        let mut conn = readers
            .acquire()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let report = store::audit::audit(&mut tx)
            .await
            .map_err(|e| Status::internal(format!("the audit could not read the ledger: {e}")))?;
        let bps = store::ledger::commission_bps(&mut *tx)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let _ = tx.rollback().await;
        if !report.problems.is_empty() {
            tracing::error!(problems = ?report.problems, "ledger audit failed");
            metrics::counter!("agora_audit_failures_total").increment(1);
            self.node.local.events.note(
                EventKind::AuditFailed,
                self.node.id,
                format!(
                    "the ledger audit on node {} failed at index {}: {}",
                    self.node.id,
                    report.applied_index,
                    report.problems.join("; ")
                ),
            );
        }
        let clean = report.problems.is_empty();
        let problems = super::limits::capped_problems(report.problems);
        Ok(Response::new(AuditReply {
            clean,
            problems,
            applied_index: report.applied_index,
            ledger_digest: report.ledger_digest,
            balance_sum: report.balance_sum,
            accounts: report.accounts,
            journal_entries: report.journal_entries,
            open_holds: report.open_holds,
            user_money: report.user_money,
            operator_balance: report.operator_balance,
            commission_bps: bps,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        self.node.auth.require_admin(&request).await?;
        let node = &self.node;
        let m = node.raft.metrics().borrow().clone();
        let last_log = m.last_log_index.unwrap_or(0);
        let last_event_id = store::events::last_id(node.state.readers())
            .await
            .map_err(internal)?;
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| {
                        let matched = matched.map_or(0, |l| l.index);
                        let health = node.peers.health(*id);
                        let me = *id == node.id;
                        ReplicationLag {
                            id: *id,
                            matched_index: matched,
                            lag: last_log.saturating_sub(matched),
                            reachable: me || health.failing_since.is_none(),
                            last_contact_ms_ago: if me {
                                0
                            } else {
                                health.last_ok.map_or(0, |t| {
                                    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
                                })
                            },
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(NodeStatus {
            id: node.id,
            api_addr: node.addr.api_addr.clone(),
            raft_addr: node.addr.raft_addr.clone(),
            pid: std::process::id(),
            role: Node::role(&m).to_owned(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: last_log,
            committed_index: node.log.committed_index(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            members: members(&m),
            uptime_secs: node.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            replication,
            state_db_bytes: database_bytes(&node.local.data_dir, "state.db"),
            log_db_bytes: database_bytes(&node.local.data_dir, "raft-log.db"),
            requests_per_sec: node.local.requests.per_sec(),
            requests_total: node.local.requests.total(),
            last_event_id,
        }))
    }

    async fn initialize(
        &self,
        request: Request<InitializeRequest>,
    ) -> Result<Response<InitializeReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let mut nodes = BTreeMap::new();
        for member in request.into_inner().members {
            let (id, addr) = node_addr(Some(member))?;
            nodes.insert(id, addr);
        }
        if !nodes.contains_key(&self.node.id) {
            return Err(Status::invalid_argument(format!(
                "the members must include this node ({})",
                self.node.id
            )));
        }
        match self.node.raft.initialize(nodes).await {
            Ok(()) => Ok(Response::new(InitializeReply {})),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Err(
                Status::already_exists("this cluster is already initialized"),
            ),
            Err(e) => Err(Status::failed_precondition(format!(
                "cannot initialize: {e}"
            ))),
        }
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let (id, addr) = node_addr(request.into_inner().member)?;
        let node = &self.node;
        let not_caught_up = || {
            Status::deadline_exceeded(format!(
                "node {id} was added as a learner but has not caught up within {} s; check that it runs, its address, and that its certificate is from the cluster CA",
                LEARNER_CATCH_UP.as_secs()
            ))
        };
        let response =
            match tokio::time::timeout(LEARNER_CATCH_UP, node.raft.add_learner(id, addr, false))
                .await
            {
                Err(_) => return Err(not_caught_up()),
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(membership_error(node, e)),
            };
        // openraft calls a learner caught up when it is within the lag
        // threshold, which a node that never received anything can be on a
        // young cluster; wait until it has really received the log up to its
        // own membership entry.
        let wanted = response.log_id.index;
        node.raft
            .wait(Some(LEARNER_CATCH_UP))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .is_some_and(|matched| matched.index >= wanted)
                },
                "learner caught up",
            )
            .await
            .map_err(|_| not_caught_up())?;
        node.local.events.note(
            EventKind::LearnerAdded,
            id,
            format!("node {id} joined as a learner and caught up"),
        );
        Ok(Response::new(membership_reply(&response, node)))
    }

    async fn promote_voter(
        &self,
        request: Request<PromoteVoterRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let id = request.into_inner().id;
        let node = &self.node;
        let metrics = node.raft.metrics().borrow().clone();
        // Judged by the leader, whose membership is the latest: a follower
        // that has not applied a learner's addition yet forwards (below)
        // rather than deny a learner that exists.
        let leads = metrics.current_leader == Some(node.id);
        if leads
            && metrics
                .membership_config
                .membership()
                .get_node(&id)
                .is_none()
        {
            return Err(Status::not_found(format!(
                "node {id} is not a member of the cluster; add it as a learner first (`agora-admin status` lists the members)"
            )));
        }
        if let Some(replication) = &metrics.replication {
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = replication
                .get(&id)
                .copied()
                .flatten()
                .map_or(0, |l| l.index);
            if matched.saturating_add(PROMOTE_MAX_LAG) < last {
                return Err(Status::failed_precondition(format!(
                    "node {id} has not caught up (it has {matched} of {last} log entries); promote it once it has"
                )));
            }
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        match node.raft.change_membership(change, false).await {
            Ok(response) => {
                node.local.events.note(
                    EventKind::VoterPromoted,
                    id,
                    format!("node {id} was promoted to voter"),
                );
                Ok(Response::new(membership_reply(&response, node)))
            }
            Err(e) => Err(membership_error(node, e)),
        }
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let node = &self.node;
        let metrics = node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if membership.get_node(&req.id).is_none() {
            return Err(Status::not_found(format!(
                "node {} is not a member of the cluster",
                req.id
            )));
        }
        let change = if voters.contains(&req.id) {
            let remaining = voters.len() - 1;
            if remaining == 0 {
                return Err(Status::failed_precondition(format!(
                    "node {} is the last voter; a cluster needs at least one",
                    req.id
                )));
            }
            if remaining < SAFE_VOTERS && voters.len() >= SAFE_VOTERS && !req.force {
                return Err(Status::failed_precondition(format!(
                    "removing node {} would leave {remaining} voters, and a cluster of fewer than {SAFE_VOTERS} cannot survive a crash; add a node first or pass force",
                    req.id
                )));
            }
            if !req.force {
                let remaining: BTreeSet<NodeId> =
                    voters.iter().copied().filter(|v| *v != req.id).collect();
                let reachable = remaining
                    .iter()
                    .filter(|v| **v == node.id || node.peers.health(**v).failing_since.is_none())
                    .count();
                if let Some(refusal) = quorum_refusal(req.id, remaining.len(), reachable) {
                    return Err(Status::failed_precondition(refusal));
                }
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([req.id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([req.id]))
        };
        match node.raft.change_membership(change, false).await {
            Ok(response) => {
                node.local.events.note(
                    EventKind::NodeRemoved,
                    req.id,
                    format!("node {} was removed from the cluster", req.id),
                );
                Ok(Response::new(membership_reply(&response, node)))
            }
            Err(e) => Err(membership_error(node, e)),
        }
    }

    async fn state_digest(
        &self,
        request: Request<StateDigestRequest>,
    ) -> Result<Response<StateDigestReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let (applied_index, digest) = self
            .node
            .state
            .digest()
            .await
            .map_err(|e| Status::internal(format!("digesting the state failed: {e}")))?;
        Ok(Response::new(StateDigestReply {
            applied_index,
            digest,
        }))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let node = &self.node;
        let applied = node
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        // openraft ignores a trigger while a snapshot is being built, and
        // that one may cover less than `applied`: trigger again until a
        // snapshot covers it.
        let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
        loop {
            node.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| Status::unavailable(format!("cannot snapshot: {e}")))?;
            let built = node
                .raft
                .wait(Some(SNAPSHOT_RETRIGGER))
                .metrics(
                    |m| m.snapshot.map_or(0, |l| l.index) >= applied,
                    "snapshot built",
                )
                .await;
            if let Ok(metrics) = built {
                return Ok(Response::new(TriggerSnapshotReply {
                    snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
                }));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!(
                    "no snapshot covering index {applied} was built within {} s",
                    SNAPSHOT_WAIT.as_secs()
                )));
            }
        }
    }

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<EventsReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let limit = page_limit(req.limit, DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE);
        let readers = self.node.state.readers();
        let rows = store::events::page(readers, req.since_id, limit)
            .await
            .map_err(internal)?;
        let last_id = store::events::last_id(readers).await.map_err(internal)?;
        Ok(Response::new(EventsReply {
            events: rows
                .into_iter()
                .map(|e| Event {
                    id: e.id,
                    time_ms: e.time_ms,
                    node_id: e.node_id,
                    kind: e.kind,
                    subject_node_id: e.subject_node_id,
                    term: e.term,
                    message: e.message,
                })
                .collect(),
            last_id,
        }))
    }

    async fn find_users(
        &self,
        request: Request<FindUsersRequest>,
    ) -> Result<Response<FindUsersReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        if req.query.len() > MAX_USER_QUERY {
            return Err(Status::invalid_argument(format!(
                "the search text has at most {MAX_USER_QUERY} characters"
            )));
        }
        let limit = page_limit(req.limit, DEFAULT_USERS_PAGE, MAX_USERS_PAGE);
        // Names are stored lower-case: search them the same way.
        let text = req.query.trim().to_ascii_lowercase();
        let rows = store::users::find(self.node.state.readers(), &text, req.after_id, limit)
            .await
            .map_err(internal)?;
        let next_after_id = if rows.len() == limit as usize {
            rows.last().map_or(0, |u| u.id)
        } else {
            0
        };
        Ok(Response::new(FindUsersReply {
            users: rows
                .into_iter()
                .map(|u| UserSummary {
                    user_id: u.id,
                    username: u.username,
                    role: u.role,
                    created_at_ms: u.created_ms,
                    balance: u.balance,
                    suspended: u.suspended,
                })
                .collect(),
            next_after_id,
        }))
    }

    async fn show_user(
        &self,
        request: Request<ShowUserRequest>,
    ) -> Result<Response<UserDetail>, Status> {
        self.node.auth.require_admin(&request).await?;
        let user_id = self.user_id(&request.into_inner().username).await?;
        self.user_detail(user_id).await.map(Response::new)
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserReply>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let user_id = self.user_id(&req.username).await?;
        let applied = self.write(key, Op::DeleteUser { user_id }).await?;
        match applied.outcome {
            Outcome::UserDeleted { user_id, username } => {
                self.node.local.events.note(
                    EventKind::UserDeleted,
                    0,
                    format!(
                        "account {username} (id {user_id}) was deleted by {}",
                        who(session.as_ref())
                    ),
                );
                Ok(Response::new(DeleteUserReply {
                    user_id,
                    username,
                    index: applied.index,
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected outcome {other:?} for a deletion"
            ))),
        }
    }

    async fn get_settings(
        &self,
        request: Request<GetSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        self.node.auth.require_admin(&request).await?;
        self.settings(0).await.map(Response::new)
    }

    async fn set_setting(
        &self,
        request: Request<SetSettingRequest>,
    ) -> Result<Response<Settings>, Status> {
        let session = self.node.auth.require_admin(&request).await?;
        let req = request.into_inner();
        let key = admin_key(session.as_ref(), req.request_id)?;
        let name = req.name.trim().to_ascii_lowercase();
        // Read the current Argon2id parameters after everything committed
        // so far: one of the three changes, the others stay.
        self.node
            .read_barrier(Freshness {
                min_index: 0,
                linearizable: true,
            })
            .await?;
        let current_ksf = store::accounts::ksf(self.node.state.readers())
            .await
            .map_err(internal)?;
        let change = settings::parse_change(&name, &req.value, current_ksf, SETTING_LIMITS)
            .map_err(Status::invalid_argument)?;
        let op = match change {
            SettingChange::CommissionBps(bps) => Op::SetCommission { bps },
            SettingChange::HoldTtlMs(ms) => Op::SetHoldTtl { ms },
            SettingChange::DisputeWindowMs(ms) => Op::SetDisputeWindow { ms },
            SettingChange::Ksf(ksf) => Op::SetKsf { ksf },
        };
        let applied = self.write(key, op).await?;
        self.node.local.events.note(
            EventKind::SettingChanged,
            0,
            format!(
                "{name} was set to {} by {}",
                req.value.trim(),
                who(session.as_ref())
            ),
        );
        self.node.wait_applied(applied.index).await?;
        self.settings(applied.index).await.map(Response::new)
    }

    async fn log_tail(
        &self,
        request: Request<LogTailRequest>,
    ) -> Result<Response<LogTailReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        let lines = page_limit(request.into_inner().lines, DEFAULT_LOG_LINES, MAX_LOG_LINES);
        let path = self.node.local.log_file.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "node {} was not started with --log-file, so it does not know where its log goes; read it where its output is kept",
                self.node.id
            ))
        })?;
        let reading = path.clone();
        let (file_bytes, tail) = tokio::task::spawn_blocking(move || {
            crate::log_tail::read_tail(&reading, lines as usize)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| {
            Status::failed_precondition(format!("cannot read the log file {}: {e}", path.display()))
        })?;
        Ok(Response::new(LogTailReply {
            node_id: self.node.id,
            path: path.display().to_string(),
            lines: tail,
            file_bytes,
        }))
    }

    async fn crash(
        &self,
        request: Request<agora_proto::admin::CrashRequest>,
    ) -> Result<Response<agora_proto::admin::CrashReply>, Status> {
        self.node.auth.require_admin(&request).await?;
        if !self.fault_injection {
            return Err(Status::failed_precondition(
                "fault injection is off on this node; start it with --enable-fault-injection to allow Crash",
            ));
        }
        if request.get_ref().raft_core_only {
            tracing::warn!(id = self.node.id, "Crash requested: stopping the Raft core");
            let raft = self.node.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CRASH_DELAY).await;
                let _ = raft.shutdown().await;
            });
            return Ok(Response::new(agora_proto::admin::CrashReply {
                id: self.node.id,
            }));
        }
        tracing::warn!(id = self.node.id, "Crash requested: aborting the process");
        // Abort from another task, after the reply has had time to leave,
        // so the caller knows the request was taken rather than lost.
        tokio::spawn(async {
            tokio::time::sleep(CRASH_DELAY).await;
            std::process::abort();
        });
        Ok(Response::new(agora_proto::admin::CrashReply {
            id: self.node.id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_needs_a_reachable_quorum_of_the_rest() {
        // 4 voters, one removed, 3 left: 2 must answer.
        assert!(quorum_refusal(4, 3, 3).is_none());
        assert!(quorum_refusal(4, 3, 2).is_none());
        assert!(quorum_refusal(4, 3, 1).is_some_and(|r| r.contains("2 needed")));
        // 5 left, 2 answer: no quorum.
        assert!(quorum_refusal(1, 5, 2).is_some());
    }

    #[test]
    fn page_limits_default_and_cap() {
        assert_eq!(page_limit(0, 100, 1000), 100);
        assert_eq!(page_limit(5, 100, 1000), 5);
        assert_eq!(page_limit(5000, 100, 1000), 1000);
    }
}
