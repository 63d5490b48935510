//! `agora-server`: one node of an Agora cluster.
//!
//! - [`raft`]: openraft type config, durable log store, SQLite state
//!   machine, node-to-node network.
//! - [`domain`]: the product's rules as plain Rust.
//! - [`store`]: sqlx queries against the state database.
//! - [`grpc`]: one file per service, thin handlers.
//! - [`node`]: the write and read paths every service uses.
//! - [`presence`]: the leader's in-memory lease table of selling peers.
//! - [`server`]: starting and stopping a node on given listeners.
//! - [`events`]: the replicated event log, as a node records it.
//! - [`activity`]: a node's own request rate and last logins.

pub mod activity;
pub mod auth;
pub mod certs;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod log_tail;
pub mod node;
pub mod observability;
pub mod presence;
pub mod raft;
pub mod server;
pub mod store;
pub mod tls;
