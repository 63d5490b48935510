//! Agora's wire format and the pure protocol helpers that both the cluster
//! and the peers need. No I/O lives here.
//!
//! The generated gRPC code is grouped by audience: [`raft`] (node to node,
//! never exposed to peers), [`market`] (what peers call) and [`admin`] (what
//! operators call).

pub mod amount;
pub mod auth;
pub mod cluster_file;
pub mod dispute;
pub mod escrow;
pub mod listing;
pub mod merkle;
pub mod ticket;

/// Node-to-node Raft transport (`agora.raft.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod raft {
    tonic::include_proto!("agora.raft.v1");
}

/// What peers call (`agora.market.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod market {
    tonic::include_proto!("agora.market.v1");
}

/// What operators call (`agora.admin.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod admin {
    tonic::include_proto!("agora.admin.v1");
}

/// Peer to peer: what a selling peer serves (`agora.peer.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod peer {
    tonic::include_proto!("agora.peer.v1");
}

/// The encoded `FileDescriptorSet` of every Agora service, for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agora_descriptor.bin"));

/// Metadata key of the leader's id on a "not the leader" status.
pub const LEADER_ID_HEADER: &str = "x-agora-leader-id";
/// Metadata key of the leader's public address on a "not the leader" status.
pub const LEADER_ADDR_HEADER: &str = "x-agora-leader-addr";
