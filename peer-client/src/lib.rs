//! The Agora peer library: how a peer (or an operator tool, or a test) talks
//! to the cluster.
//!
//! [`ClusterClient`] keeps one TLS gRPC channel per node, remembers which node
//! it believes leads, and retries writes there with the same request id when
//! a node is unavailable or points elsewhere, so a write survives a leader
//! crash without being applied twice.

mod cluster;
mod error;
mod request_id;
mod retry;
mod tls;

pub use cluster::{read_cluster_file, ClusterClient};
pub use error::ClientError;
pub use request_id::{new_request_id, request_id};
pub use retry::{describe_status, is_retryable, leader_hint_of, RetryPolicy};
pub use tls::{ClientIdentity, ClientTls};
