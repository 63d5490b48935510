//! One running node: the Raft handle, its storage, and the write and read
//! paths every gRPC service goes through.
//!
//! - **Writes** go to Raft on this node; when this node is not the leader the
//!   proposal is forwarded to the leader over the internal (mutual-TLS)
//!   channel. Every client write carries a request id, so forwarding after
//!   an unclear failure is just a safe retry.
//! - **Batching**: on the leader, proposals wait in a queue while earlier
//!   batches are being committed; the batcher takes everything queued as one
//!   log entry. openraft appends one entry per log flush, so without this a
//!   node would commit one client write per fsync.
//! - **Reads** wait (bounded) until this node has applied `min_index`, and,
//!   for linearizable reads, until it has applied the leader's
//!   quorum-confirmed commit index (read-index).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_proto::raft::{ForwardWriteRequest, ReadIndexRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::activity::{LastLogins, RequestRate};
use crate::auth::Authenticator;
use crate::error::{ReadError, WriteError};
use crate::events::EventSink;
use crate::raft::command::{Answer, Command, Outcome, Proposal};
use crate::raft::log_store::LogStore;
use crate::raft::network::{decode, encode, PeerChannels};
use crate::raft::state_machine::StateMachine;
use crate::raft::typ::{self, NodeId};
use crate::raft::NodeAddr;

/// Longest a write waits to be committed and applied before its outcome is
/// reported unknown.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a read waits for this node to reach the index it needs.
pub const READ_WAIT: Duration = Duration::from_secs(5);
/// Longest a follower waits for the leader's read index.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// Most proposals in one log entry.
const MAX_BATCH_PROPOSALS: usize = 2048;
/// Batches proposed and not yet applied, at most. While they are in flight
/// new proposals queue up and form the next batch.
const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Proposals waiting for the batcher, at most (back-pressure beyond).
const PROPOSAL_QUEUE: usize = 65_536;

/// A write's result: the outcome and the log index it was applied at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Log index of the command.
    pub index: u64,
    /// What applying it produced (never `Rejected`: that is an error).
    pub outcome: Outcome,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Freshness {
    /// Applied index the node must reach first.
    pub min_index: u64,
    /// Also reach the leader's commit index as of now.
    pub linearizable: bool,
}

/// The shared state of a running node.
pub struct Node {
    /// This node's Raft id.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: typ::Raft,
    /// The state machine (for reads).
    pub state: StateMachine,
    /// The log store (for its commit index).
    pub log: LogStore,
    /// Channels to the other nodes' Raft listeners.
    pub peers: PeerChannels,
    /// How other nodes and clients reach this one.
    pub addr: NodeAddr,
    /// When this process started, for uptime.
    pub started: Instant,
    /// Sessions and cluster secrets.
    pub auth: Authenticator,
    /// This node's files, counters and event sink (not replicated).
    pub local: NodeLocal,
    /// The last login of each account this node served.
    pub logins: LastLogins,
    /// Proposals waiting to be batched into a log entry.
    proposals: mpsc::Sender<Pending>,
}

/// What a node knows about itself that is not replicated.
#[derive(Debug, Clone)]
pub struct NodeLocal {
    /// Where this node's parts drop events for the replicated event log.
    pub events: EventSink,
    /// The data directory (database sizes).
    pub data_dir: PathBuf,
    /// The file its output goes to, if its launcher said so (`--log-file`).
    pub log_file: Option<PathBuf>,
    /// Its gRPC request counter.
    pub requests: RequestRate,
    /// Whether it abstains from elections (after log damage).
    pub abstention: crate::raft::recovery::Abstention,
}

/// A proposal waiting for the batcher, with where to send its result.
struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Node {
    /// Wraps a started Raft instance.
    #[must_use]
    pub fn new(
        id: NodeId,
        raft: typ::Raft,
        state: StateMachine,
        log: LogStore,
        peers: PeerChannels,
        addr: NodeAddr,
        local: NodeLocal,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(run_batcher(id, raft.clone(), rx));
        Arc::new(Self {
            id,
            raft,
            auth: Authenticator::new(state.readers().clone()),
            state,
            log,
            peers,
            addr,
            started: Instant::now(),
            local,
            logins: LastLogins::default(),
            proposals: tx,
        })
    }

    /// The leader's id and address as this node knows them.
    #[must_use]
    pub fn leader(&self) -> Option<(NodeId, NodeAddr)> {
        // On every write: borrow, do not clone the whole metrics.
        let rx = self.raft.metrics();
        let metrics = rx.borrow();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, node))
    }

    /// Proposes a client write; forwards it to the leader when this node is
    /// not the leader.
    ///
    /// # Errors
    /// A [`WriteError`] (refusal, no leader, unknown outcome).
    pub async fn write(&self, proposal: Proposal) -> Result<Applied, WriteError> {
        proposal.op.validate()?;
        // A follower that knows the leader forwards at once.
        if let Some((leader_id, _)) = self.leader().filter(|(l, _)| *l != self.id) {
            return self.forward(leader_id, proposal).await;
        }
        match self.write_local(proposal.clone()).await {
            Err(WriteError::NotLeader { leader_id, .. }) if leader_id != self.id => {
                self.forward(leader_id, proposal).await
            }
            other => other,
        }
    }

    /// Proposes on this node only (the leader side of a forwarded write).
    ///
    /// # Errors
    /// [`WriteError::NotLeader`] when this node is not the leader, and the
    /// other write errors.
    pub async fn write_local(&self, proposal: Proposal) -> Result<Applied, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .send(Pending { proposal, reply })
            .await
            .map_err(|_| WriteError::Unavailable("this node is shutting down".into()))?;
        match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
            Err(_) => Err(WriteError::Unknown(format!(
                "not applied within {} s",
                WRITE_TIMEOUT.as_secs()
            ))),
            Ok(Err(_)) => Err(WriteError::Unknown(
                "this node stopped while writing".into(),
            )),
            Ok(Ok(result)) => result,
        }
    }

    async fn forward(&self, leader_id: NodeId, proposal: Proposal) -> Result<Applied, WriteError> {
        let Some((_, leader)) = self.leader().filter(|(id, _)| *id == leader_id) else {
            return Err(WriteError::NoLeader);
        };
        let mut client = self
            .peers
            .client(&leader.raft_addr)
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        let bytes = encode(&proposal).map_err(|e| WriteError::Unavailable(e.to_string()))?;
        metrics::counter!("agora_writes_forwarded_total").increment(1);
        let reply = tokio::time::timeout(
            WRITE_TIMEOUT + Duration::from_secs(1),
            client.forward_write(ForwardWriteRequest { proposal: bytes }),
        )
        .await
        .map_err(|_| WriteError::Unknown("the leader did not answer in time".into()))?
        .map_err(|status| match status.code() {
            // Nothing reached the leader: safe to say so plainly.
            tonic::Code::Unavailable => WriteError::NoLeader,
            _ => WriteError::Unknown(status.message().to_owned()),
        })?
        .into_inner();
        decode::<Result<Applied, WriteError>>(&reply.result)
            .map_err(|e| WriteError::Unknown(format!("undecodable answer from the leader: {e}")))?
    }

    /// Waits until this node is fresh enough for a read, and returns the
    /// applied index the read will see (at least).
    ///
    /// # Errors
    /// When the node cannot get there in time.
    pub async fn read_barrier(&self, freshness: Freshness) -> Result<u64, ReadError> {
        let mut wanted = freshness.min_index;
        if freshness.linearizable {
            wanted = wanted.max(self.read_index().await?);
        }
        self.wait_applied(wanted).await
    }

    /// Waits (bounded) until this node has applied `index`.
    ///
    /// # Errors
    /// [`ReadError::Behind`] after [`READ_WAIT`].
    pub async fn wait_applied(&self, index: u64) -> Result<u64, ReadError> {
        let mut applied = self.state.applied();
        let current = *applied.borrow();
        if current >= index {
            return Ok(current);
        }
        let reached = tokio::time::timeout(READ_WAIT, async {
            applied.wait_for(|a| *a >= index).await.map(|a| *a)
        })
        .await;
        match reached {
            Ok(Ok(a)) => Ok(a),
            _ => Err(ReadError::Behind {
                applied: *self.state.applied().borrow(),
                wanted: index,
            }),
        }
    }

    /// The leader's quorum-confirmed commit index (read-index): asked of
    /// Raft on the leader, over the internal channel on a follower.
    ///
    /// # Errors
    /// When no leader confirms in time.
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        let local = tokio::time::timeout(READ_INDEX_TIMEOUT, self.raft.get_read_log_id()).await;
        match local {
            Err(_) => Err(ReadError::NoQuorum(
                "the leader did not confirm in time".into(),
            )),
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                _,
            )))) => {
                let (_, leader) = self
                    .leader()
                    .ok_or_else(|| ReadError::NoQuorum("no leader is known".into()))?;
                let mut client = self
                    .peers
                    .client(&leader.raft_addr)
                    .map_err(|e| ReadError::NoQuorum(e.to_string()))?;
                let reply = tokio::time::timeout(
                    READ_INDEX_TIMEOUT,
                    client.read_index(ReadIndexRequest {}),
                )
                .await
                .map_err(|_| ReadError::NoQuorum("the leader did not answer in time".into()))?
                .map_err(|s| ReadError::NoQuorum(s.message().to_owned()))?;
                Ok(reply.into_inner().read_index)
            }
            Ok(Err(e)) => Err(ReadError::NoQuorum(e.to_string())),
        }
    }

    /// A short name of this node's Raft role.
    #[must_use]
    pub fn role(metrics: &typ::RaftMetrics) -> &'static str {
        match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
    }
}

/// Takes queued proposals in batches and proposes each batch as one entry,
/// keeping at most [`MAX_BATCHES_IN_FLIGHT`] batches in Raft at once.
async fn run_batcher(id: NodeId, raft: typ::Raft, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    // The leader's clock never runs backwards in the log, even if the wall
    // clock does.
    let mut last_time_ms = 0;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_PROPOSALS {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        last_time_ms = now_ms().max(last_time_ms);
        let raft = raft.clone();
        let time_ms = last_time_ms;
        tokio::spawn(async move {
            propose_batch(id, &raft, time_ms, batch).await;
            drop(permit);
        });
    }
}

async fn propose_batch(id: NodeId, raft: &typ::Raft, time_ms: u64, batch: Vec<Pending>) {
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("agora_write_batch_entries").record(batch.len() as f64);
    let (proposals, replies): (Vec<Proposal>, Vec<_>) =
        batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
    let command = Command { time_ms, proposals };
    let started = Instant::now();
    let result = raft.client_write(command).await;
    metrics::histogram!("agora_write_commit_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => {
            let mut outcomes = response.data.into_iter();
            for reply in replies {
                let result = match outcomes.next() {
                    Some(Answer {
                        outcome: Outcome::Rejected(rejection),
                        ..
                    }) => Err(WriteError::Rejected(rejection)),
                    Some(Answer { index, outcome }) => Ok(Applied { index, outcome }),
                    None => Err(WriteError::Unknown(
                        "the batch produced fewer outcomes than proposals".into(),
                    )),
                };
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let error = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                    match (forward.leader_id, forward.leader_node) {
                        (Some(leader_id), Some(node)) => WriteError::NotLeader {
                            id,
                            leader_id,
                            leader_addr: node.api_addr,
                        },
                        _ => WriteError::NoLeader,
                    }
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    WriteError::Unavailable(e.to_string())
                }
                RaftError::Fatal(fatal) => WriteError::Unavailable(fatal.to_string()),
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// How often the leader re-checks its duties when nothing changes.
const DUTY_INTERVAL: Duration = Duration::from_millis(500);
/// How often the leader looks for expired holds.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// Work only the leader does: bootstrapping the cluster secrets once (made
/// here, at random, so they travel inside the replicated command), and
/// voiding expired holds with a replicated `ExpireHolds` stamped with the
/// leader's clock.
pub async fn run_leader_duties(node: Arc<Node>, load_test_ksf: bool) {
    let mut metrics = node.raft.metrics();
    let mut initialized = false;
    let mut last_expiry = Instant::now();
    loop {
        let is_leader = metrics.borrow_and_update().state == ServerState::Leader;
        if is_leader && !initialized {
            initialized = ensure_cluster_secrets(&node, load_test_ksf).await;
        }
        // Metrics change on every commit; look for expired holds at most
        // every EXPIRY_INTERVAL.
        if is_leader && last_expiry.elapsed() >= EXPIRY_INTERVAL {
            last_expiry = Instant::now();
            expire_holds(&node).await;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(DUTY_INTERVAL) => {}
        }
    }
}

/// Proposes `ExpireHolds` when an open hold or a live purchase (a free one
/// has no hold) is past its expiry. Checking
/// first keeps idle clusters from writing an entry every second.
async fn expire_holds(node: &Node) {
    let now = crate::auth::now_ms();
    let readers = node.state.readers();
    let holds = crate::store::ledger::expired_holds(readers, now, 1).await;
    let purchases = crate::store::purchases::expired(readers, now, 1).await;
    let proceeds = crate::store::purchases::due_proceeds(readers, now, 1).await;
    if matches!(holds, Ok(ref ids) if !ids.is_empty())
        || matches!(purchases, Ok(ref ids) if !ids.is_empty())
        || matches!(proceeds, Ok(ref ids) if !ids.is_empty())
    {
        let proposal = Proposal {
            request: None,
            op: crate::raft::command::Op::ExpireHolds,
        };
        if let Err(e) = node.write_local(proposal).await {
            tracing::warn!(error = %e, "expiring holds failed; will retry");
        }
    }
}

/// Proposes the bootstrap secrets unless they exist; true once they do.
async fn ensure_cluster_secrets(node: &Node, load_test_ksf: bool) -> bool {
    match crate::store::accounts::secrets(node.state.readers()).await {
        Ok(Some(_)) => return true,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster secrets");
            return false;
        }
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let ksf = if load_test_ksf {
        tracing::warn!("bootstrapping with cheap Argon2id parameters: for load tests only");
        agora_proto::auth::KsfParams::LOAD_TEST
    } else {
        agora_proto::auth::KsfParams::OWASP
    };
    let server_setup =
        opaque_ke::ServerSetup::<agora_proto::auth::AgoraOpaque>::new(&mut rand::rngs::OsRng)
            .serialize()
            .to_vec();
    let proposal = Proposal {
        request: None,
        op: crate::raft::command::Op::InitCluster {
            server_setup,
            token_seed: seed,
            ksf,
        },
    };
    match node.write_local(proposal).await {
        Ok(_) => {
            tracing::info!("cluster secrets bootstrapped");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot bootstrap the cluster secrets yet");
            false
        }
    }
}
