//! Consensus: the openraft type configuration, the durable log store, the
//! SQLite state machine and the node-to-node network.
//!
//! Everything else in the crate imports the concrete aliases from here
//! (`typ`), so a change of openraft type parameters happens in one place.

#[cfg(any(test, feature = "apply-check"))]
pub mod apply_check;
pub mod command;
pub mod log_store;
pub mod network;
pub mod recovery;
pub mod state_machine;

use serde::{Deserialize, Serialize};

pub use command::{Answer, Command, Outcome, Proposal};

/// How a cluster member is reached. Stored in the replicated membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Public gRPC address (peers, operators).
    pub api_addr: String,
    /// Internal Raft address (other nodes, mutual TLS).
    pub raft_addr: String,
}

openraft::declare_raft_types!(
    /// Agora's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Vec<Answer>,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Concrete aliases of openraft's generic types.
pub mod typ {
    use super::{NodeAddr, TypeConfig};

    /// A Raft node id.
    pub type NodeId = u64;
    /// The Raft handle.
    pub type Raft = openraft::Raft<TypeConfig>;
    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A log id (term, leader, index).
    pub type LogId = openraft::LogId<NodeId>;
    /// A vote.
    pub type Vote = openraft::Vote<NodeId>;
    /// Storage errors.
    pub type StorageError = openraft::StorageError<NodeId>;
    /// Membership as stored with its log id.
    pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Raft errors.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    /// Errors of a network call.
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, NodeAddr, RaftError<E>>;
    /// Errors of a client write.
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeAddr>;
    /// Errors of a leadership check.
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, NodeAddr>;
    /// Raft metrics.
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeAddr>;
}

/// Turns any displayable error into an openraft storage error about `what`.
pub(crate) fn storage_io(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    err: &(impl std::error::Error + 'static),
) -> typ::StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(err)).into()
}
