//! Why a [`ClusterClient`](crate::ClusterClient) could not be built, or an
//! account operation failed.
//!
//! Plain RPCs return [`tonic::Status`]: callers need their codes. These are
//! the local problems (files, certificates, addresses, a password that does
//! not open the login), plus [`ClientError::Rpc`] for the multi-step account
//! operations, each worded as a sentence a user can act on.

use std::path::PathBuf;

use agora_proto::amount::AmountError;
use agora_proto::auth::AuthError;
use agora_proto::cluster_file::ClusterFileError;
use tonic::{Code, Status};

use crate::describe_status;

/// A problem that keeps the client from talking to the cluster, or from
/// completing an account operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster file could not be read from disk.
    #[error(
        "could not read the cluster file {}: {reason}; pass --cluster or start a dev cluster with `agora-server dev`",
        path.display()
    )]
    ClusterFileUnreadable {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said. Part of the message rather than
        /// a `source`, so that the advice comes last.
        reason: std::io::Error,
    },
    /// The cluster file was read but is not a valid cluster file.
    #[error("the cluster file {} is not usable", path.display())]
    ClusterFileInvalid {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ClusterFileError,
    },
    /// A certificate or key file could not be read.
    #[error("could not read the {what} file {}", path.display())]
    CertUnreadable {
        /// Which file this is ("CA certificate", "client key", ...).
        what: &'static str,
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Only one half of the client identity was given.
    #[error(
        "the cluster file names a client certificate without its key, or a key without its certificate; set both client_cert and client_key"
    )]
    IncompleteIdentity,
    /// No node to talk to.
    #[error("the cluster has no nodes; list at least one node")]
    NoNodes,
    /// Two nodes share an id.
    #[error("node {0} is listed twice; give every node its own id")]
    DuplicateNode(u64),
    /// A node's address cannot be turned into a gRPC endpoint.
    #[error("the address {addr:?} of node {id} is not a valid host:port")]
    InvalidAddress {
        /// The node.
        id: u64,
        /// Its address as given.
        addr: String,
        /// Why tonic rejected it.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS settings could not be applied to a channel.
    #[error(
        "the TLS settings for node {id} were rejected; check the CA and client certificate files"
    )]
    Tls {
        /// The node whose channel was being built.
        id: u64,
        /// Why tonic rejected them.
        #[source]
        source: tonic::transport::Error,
    },
    /// A node id that the client does not know.
    #[error("node {0} is not part of this cluster; check the node id")]
    UnknownNode(u64),
    /// A session token that cannot be sent as gRPC metadata.
    #[error("the stored session token is damaged; log in again")]
    InvalidToken,
    /// The cluster refused a call or could not be reached; the status keeps
    /// its code for callers that branch on it.
    #[error("{}", describe_status(.0))]
    Rpc(Status),
    /// The password did not open the cluster's login answer. OPAQUE lets the
    /// client find this out itself; an unknown name looks the same.
    #[error("not authenticated: wrong username or password")]
    WrongPassword,
    /// A username rule, the password-hashing parameters or the sealed
    /// identity key (see [`AuthError`]).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The cluster asked for password hashing so costly that the client
    /// refuses (a misconfigured or hostile node could otherwise exhaust
    /// this machine's memory).
    #[error(
        "the cluster asks for password hashing with {memory_kib} KiB and {iterations} iterations, more than this client allows; check the cluster's Argon2 setting"
    )]
    KsfTooCostly {
        /// Memory asked for, KiB.
        memory_kib: u32,
        /// Iterations asked for.
        iterations: u32,
    },
    /// An answer of the cluster that the client cannot use.
    #[error("the cluster's answer could not be used ({0}); is the node a different version?")]
    Protocol(String),
    /// The identity key the cluster keeps for the account does not belong
    /// to the account's public key.
    #[error(
        "the identity key stored with this account does not match its public key; the account's data is damaged, ask an operator"
    )]
    IdentityMismatch,
    /// The password computation stopped before it finished (the runtime is
    /// shutting down).
    #[error("the password computation was interrupted")]
    Interrupted,
    /// An amount that no ledger call accepts (zero where money moves, or
    /// above the maximum), refused before any call.
    #[error(transparent)]
    Amount(#[from] AmountError),
    /// A commission outside 0..=10000 basis points, refused before any call.
    #[error("the commission must be 0 to 10000 basis points (100 = 1%); {0} is out of range")]
    CommissionOutOfRange(u32),
}

impl ClientError {
    /// The gRPC code this error amounts to, when it has one: the server's
    /// own for [`ClientError::Rpc`], `UNAUTHENTICATED` for a wrong password
    /// and `INVALID_ARGUMENT` for a name, an amount or a commission that
    /// breaks the rules.
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc(status) => Some(status.code()),
            Self::WrongPassword => Some(Code::Unauthenticated),
            Self::Auth(AuthError::Username(_)) => Some(Code::InvalidArgument),
            Self::Amount(_) | Self::CommissionOutOfRange(_) => Some(Code::InvalidArgument),
            _ => None,
        }
    }

    /// The server's status, for [`ClientError::Rpc`].
    #[must_use]
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Rpc(status) => Some(status),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}
