//! The cluster's event log, seen from the node that records it.
//!
//! Whoever notices something (the Raft watcher for elections and
//! unreachable followers, the state machine for snapshots, the admin
//! handlers for membership changes and audit failures, startup for
//! crashes) drops an [`EventNote`] into the node's [`EventSink`]; one task
//! turns each note into a replicated `RecordEvent` command, retrying until
//! a leader takes it. The command carries no time: the event gets the
//! leader's timestamp of the entry, like every other command.
//!
//! A crash is seen when the node starts again: a graceful stop leaves a
//! [`CLEAN_SHUTDOWN_MARKER`] file in the data directory, startup removes it,
//! so a start without it (on a data directory that was used before) was
//! preceded by an unclean stop. The leader also records a follower it
//! cannot reach for [`UNREACHABLE_AFTER`], and when it answers again.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::mpsc;

use crate::node::Node;
use crate::raft::command::{Op, Proposal, RequestKey};

/// Name of the file a graceful stop leaves in the data directory.
pub const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";
/// How long the leader's RPCs to a follower must have failed before the
/// follower is recorded unreachable (heartbeats go every 200 ms).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);
/// Notes waiting to be proposed, at most; more are dropped with a warning
/// (the event log is for people, and a node must never block on it).
const SINK_CAPACITY: usize = 256;
/// How long one note is retried (for example while no leader is known)
/// before it is given up.
const RECORD_BUDGET: Duration = Duration::from_secs(120);
/// Pause between attempts to propose a note.
const RECORD_RETRY: Duration = Duration::from_millis(500);
/// How often the watcher looks at followers' reachability.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A node became leader.
    LeaderElected,
    /// A node joined as a learner.
    LearnerAdded,
    /// A learner became a voter.
    VoterPromoted,
    /// A node left the cluster.
    NodeRemoved,
    /// A node started (first start, or after a clean stop).
    NodeStarted,
    /// A node is stopping gracefully.
    NodeStopped,
    /// A node started after an unclean stop (crash, SIGKILL, power loss).
    NodeRestartedAfterCrash,
    /// The leader cannot reach a node.
    NodeUnreachable,
    /// A node the leader could not reach answers again.
    NodeReachable,
    /// A node built a snapshot.
    SnapshotBuilt,
    /// A node installed a snapshot sent by the leader.
    SnapshotInstalled,
    /// A ledger audit found problems.
    AuditFailed,
    /// An admin deleted an account.
    UserDeleted,
    /// An admin changed a setting.
    SettingChanged,
    /// A node found its raft log damaged at start and repaired it, or
    /// caught up after such a repair.
    LogRepaired,
}

impl EventKind {
    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeaderElected => "leader_elected",
            Self::LearnerAdded => "learner_added",
            Self::VoterPromoted => "voter_promoted",
            Self::NodeRemoved => "node_removed",
            Self::NodeStarted => "node_started",
            Self::NodeStopped => "node_stopped",
            Self::NodeRestartedAfterCrash => "node_restarted_after_crash",
            Self::NodeUnreachable => "node_unreachable",
            Self::NodeReachable => "node_reachable",
            Self::SnapshotBuilt => "snapshot_built",
            Self::SnapshotInstalled => "snapshot_installed",
            Self::AuditFailed => "audit_failed",
            Self::UserDeleted => "user_deleted",
            Self::SettingChanged => "setting_changed",
            Self::LogRepaired => "log_repaired",
        }
    }
}

/// Something a node saw, waiting to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    /// What happened.
    pub kind: EventKind,
    /// The node it is about (0: none).
    pub subject_node_id: u64,
    /// A sentence for people.
    pub message: String,
}

/// Where a node's parts drop what they see. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<EventNote>,
}

impl EventSink {
    /// A sink and the receiver [`run_recorder`] drains.
    #[must_use]
    pub fn channel() -> (Self, mpsc::Receiver<EventNote>) {
        let (tx, rx) = mpsc::channel(SINK_CAPACITY);
        (Self { tx }, rx)
    }

    /// Notes an event (dropped with a warning when the queue is full).
    pub fn note(&self, kind: EventKind, subject_node_id: u64, message: impl Into<String>) {
        let note = EventNote {
            kind,
            subject_node_id,
            message: message.into(),
        };
        if let Err(e) = self.tx.try_send(note) {
            tracing::warn!(error = %e, "an event was not recorded: the queue is full or closed");
        }
    }
}

/// What a start finds in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A data directory never used before.
    First,
    /// The previous run stopped gracefully.
    AfterCleanStop,
    /// The previous run did not stop gracefully.
    AfterCrash,
}

/// Looks at `data_dir` before the node opens its databases: whether the
/// previous run stopped cleanly (and removes the marker, so the next start
/// finds none unless this run stops cleanly too).
///
/// # Errors
/// When the marker exists but cannot be removed.
pub fn start_kind(data_dir: &Path) -> std::io::Result<StartKind> {
    let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker)?;
        return Ok(StartKind::AfterCleanStop);
    }
    if data_dir.join("raft-log.db").exists() {
        Ok(StartKind::AfterCrash)
    } else {
        Ok(StartKind::First)
    }
}

/// The event a start records.
#[must_use]
pub fn start_note(id: u64, kind: StartKind) -> EventNote {
    let (kind, message) = match kind {
        StartKind::First => (
            EventKind::NodeStarted,
            format!("node {id} started for the first time"),
        ),
        StartKind::AfterCleanStop => (
            EventKind::NodeStarted,
            format!("node {id} started after a clean stop"),
        ),
        StartKind::AfterCrash => (
            EventKind::NodeRestartedAfterCrash,
            format!("node {id} restarted after an unclean stop (crash, kill or power loss)"),
        ),
    };
    EventNote {
        kind,
        subject_node_id: id,
        message,
    }
}

/// Leaves the marker of a graceful stop (synced, so a power cut right
/// after does not lose it).
///
/// # Errors
/// When the file cannot be written.
pub fn mark_clean_shutdown(data_dir: &Path) -> std::io::Result<()> {
    let path = data_dir.join(CLEAN_SHUTDOWN_MARKER);
    let file = std::fs::File::create(path)?;
    file.sync_all()
}

/// Proposes each note as a `RecordEvent` command, in order, retrying while
/// no leader takes it.
pub async fn run_recorder(node: Arc<Node>, mut notes: mpsc::Receiver<EventNote>) {
    // Request ids unique to this process, so a retry after an unclear
    // forward is applied once.
    let client = format!("events:{}:{}", node.id, crate::auth::now_ms());
    let mut seq: u64 = 0;
    while let Some(note) = notes.recv().await {
        seq += 1;
        record(&node, &client, seq, note).await;
    }
}

/// Proposes one note until it is applied or [`RECORD_BUDGET`] runs out.
pub async fn record(node: &Node, client: &str, seq: u64, note: EventNote) {
    let term = node.raft.metrics().borrow().current_term;
    let proposal = Proposal {
        request: Some(RequestKey {
            client: client.to_owned(),
            id: seq.to_string(),
        }),
        op: Op::RecordEvent {
            node_id: node.id,
            kind: note.kind.as_str().to_owned(),
            subject_node_id: note.subject_node_id,
            term,
            message: note.message,
        },
    };
    let deadline = Instant::now() + RECORD_BUDGET;
    loop {
        match node.write(proposal.clone()).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "recording an event failed; retrying");
                tokio::time::sleep(RECORD_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = note.kind.as_str(), "an event could not be recorded");
                return;
            }
        }
    }
}

/// Watches Raft for what only this node sees: becoming leader, and, while
/// leader, followers that stop (or start again) answering.
pub async fn run_watcher(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut recorded_term = 0;
    let mut unreachable: BTreeSet<u64> = BTreeSet::new();
    loop {
        let (leader, term, others) = {
            let m = metrics.borrow_and_update();
            let others: Vec<u64> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != node.id)
                .collect();
            (m.state == ServerState::Leader, m.current_term, others)
        };
        if leader {
            if term != recorded_term {
                recorded_term = term;
                node.local.events.note(
                    EventKind::LeaderElected,
                    node.id,
                    format!("node {} became leader in term {term}", node.id),
                );
            }
            for &id in &others {
                let health = node.peers.health(id);
                let down = health
                    .failing_since
                    .is_some_and(|since| since.elapsed() >= UNREACHABLE_AFTER);
                if down && unreachable.insert(id) {
                    node.local.events.note(
                        EventKind::NodeUnreachable,
                        id,
                        format!(
                            "the leader (node {}) cannot reach node {id} for {} s",
                            node.id,
                            UNREACHABLE_AFTER.as_secs()
                        ),
                    );
                } else if health.failing_since.is_none() && unreachable.remove(&id) {
                    node.local.events.note(
                        EventKind::NodeReachable,
                        id,
                        format!("node {id} answers the leader (node {}) again", node.id),
                    );
                }
            }
            // Forget nodes that left the membership.
            unreachable.retain(|id| others.contains(id));
        } else {
            // A new leader judges reachability afresh.
            unreachable.clear();
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_tells_first_clean_and_crashed_runs_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(start_kind(dir.path()).expect("reads"), StartKind::First);
        std::fs::write(dir.path().join("raft-log.db"), b"").expect("writes");
        assert_eq!(
            start_kind(dir.path()).expect("reads"),
            StartKind::AfterCrash
        );
        mark_clean_shutdown(dir.path()).expect("marks");
        assert_eq!(
            start_kind(dir.path()).expect("reads"),
            StartKind::AfterCleanStop
        );
        // The marker is consumed: the next start without a clean stop is a
        // crash again.
        assert_eq!(
            start_kind(dir.path()).expect("reads"),
            StartKind::AfterCrash
        );
    }

    #[test]
    fn a_crash_start_is_its_own_kind() {
        let note = start_note(3, StartKind::AfterCrash);
        assert_eq!(note.kind.as_str(), "node_restarted_after_crash");
        assert_eq!(note.subject_node_id, 3);
        assert_eq!(start_note(3, StartKind::First).kind, EventKind::NodeStarted);
    }
}
