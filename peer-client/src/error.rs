//! Why a [`ClusterClient`](crate::ClusterClient) could not be built.
//!
//! RPC failures stay [`tonic::Status`]: callers need their codes. These are
//! the local problems (files, certificates, addresses), each worded as a
//! sentence a user can act on.

use std::path::PathBuf;

use agora_proto::cluster_file::ClusterFileError;

/// A local problem that keeps the client from talking to the cluster.
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
}
