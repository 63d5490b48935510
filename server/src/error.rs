//! The errors a client can see, and their one mapping to gRPC statuses.
//!
//! Every message reads as a plain sentence that says what to do.

use agora_proto::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use tonic::{Code, Status};

use crate::raft::command::Rejection;

/// Why a write did not produce an outcome.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    /// The operation was refused (before proposing or while applying).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// This node is not the leader and did not forward the write.
    #[error("node {id} is not the leader; the leader is node {leader_id} at {leader_addr}")]
    NotLeader {
        /// This node.
        id: u64,
        /// The leader's id.
        leader_id: u64,
        /// The leader's public address.
        leader_addr: String,
    },
    /// No leader is known right now.
    #[error(
        "the cluster has no leader at the moment (an election is under way); retry in a moment"
    )]
    NoLeader,
    /// The write may or may not have been applied.
    #[error("the write's outcome is unknown ({0}); retry with the same request id, it will not be applied twice")]
    Unknown(String),
    /// The node is stopping or broken.
    #[error("this node cannot take writes: {0}")]
    Unavailable(String),
}

/// Why a read could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The node did not reach `min_index` in time.
    #[error("this node has applied up to index {applied}, short of the requested index {wanted}; retry, or ask another node")]
    Behind {
        /// Applied here.
        applied: u64,
        /// Asked for.
        wanted: u64,
    },
    /// A linearizable read could not learn the leader's commit index.
    #[error("cannot confirm the latest state with the leader ({0}); retry in a moment")]
    NoQuorum(String),
    /// A storage error.
    #[error("reading this node's state failed: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> Self {
        ReadError::Storage(e.to_string())
    }
}

fn rejection_status(r: &Rejection) -> Status {
    match r {
        Rejection::RequestIdReused(_) => Status::already_exists(r.to_string()),
        Rejection::Invalid(_) => Status::invalid_argument(r.to_string()),
        Rejection::AlreadyExists(_) => Status::already_exists(r.to_string()),
        Rejection::NotReady(_) => Status::unavailable(r.to_string()),
        Rejection::FailedPrecondition(_) => Status::failed_precondition(r.to_string()),
        Rejection::NotFound(_) => Status::not_found(r.to_string()),
        Rejection::PermissionDenied(_) => Status::permission_denied(r.to_string()),
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        match &e {
            WriteError::Rejected(r) => rejection_status(r),
            WriteError::NotLeader {
                leader_id,
                leader_addr,
                ..
            } => {
                let mut status = Status::new(Code::Unavailable, e.to_string());
                if let Ok(v) = leader_id.to_string().parse() {
                    status.metadata_mut().insert(LEADER_ID_HEADER, v);
                }
                if let Ok(v) = leader_addr.parse() {
                    status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                }
                status
            }
            WriteError::NoLeader | WriteError::Unknown(_) | WriteError::Unavailable(_) => {
                Status::unavailable(e.to_string())
            }
        }
    }
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Behind { .. } | ReadError::NoQuorum(_) => Status::unavailable(e.to_string()),
            ReadError::Storage(_) => Status::internal(e.to_string()),
        }
    }
}
