//! The Agora peer library: how a peer (or an operator tool, or a test) talks
//! to the cluster, and what it keeps on disk.
//!
//! [`ClusterClient`] keeps one TLS gRPC channel per node, remembers which node
//! it believes leads, and retries writes there with the same request id when
//! a node is unavailable or points elsewhere, so a write survives a leader
//! crash without being applied twice. It may carry a session token, which
//! then goes with every account and admin call.
//!
//! [`account`] registers and logs in with OPAQUE (no call carries a
//! password) and recovers the account's identity key; [`local`] is the
//! peer's own SQLite database, where the session and identity are kept;
//! [`password`] reads a password from the terminal or `AGORA_PASSWORD`.
//!
//! [`ledger`] reads balances and cash flows, withdraws, and (for operators)
//! deposits, sets the commission, opens and settles holds, and audits the
//! ledger on every node.
//!
//! [`catalogue`] hashes files into the Merkle root a listing commits to,
//! publishes and changes listings (remembering locally which file each
//! one is), and searches, reading from followers first; [`presence`]
//! keeps a selling peer's lease alive.

pub mod account;
mod bearer;
pub mod buying;
pub mod catalogue;
mod cluster;
mod error;
pub mod ledger;
pub mod local;
pub mod operator;
mod parallel;
pub mod password;
pub mod peer_tls;
pub mod presence;
pub mod purchase;
mod request_id;
mod retry;
pub mod selling;
pub mod table;
mod tls;
pub mod transfer_slots;

pub use account::{Account, Session, SessionInfo};
pub use bearer::{BearerToken, SessionAuth, AUTHORIZATION};
pub use cluster::{
    read_cluster_file, AccountClient, AdminClient, CatalogueClient, ClusterClient, LedgerClient,
    PurchaseClient, RetryCounts,
};
pub use error::ClientError;
pub use local::{LocalListing, PeerStore, StoreError};
pub use request_id::{new_request_id, request_id};
pub use retry::{describe_status, is_retryable, leader_hint_of, RetryPolicy};
pub use tls::{ClientIdentity, ClientTls};
