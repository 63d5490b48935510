//! The Raft network: openraft's RPCs to other nodes over tonic with mutual
//! TLS. One channel per peer node, made once and reused (tonic channels
//! multiplex and reconnect by themselves).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_proto::raft::raft_service_client::RaftServiceClient;
use agora_proto::raft::RaftPayload;
use hyper_util::client::legacy::connect::HttpConnector;
use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::typ::{NodeId, RaftError, RpcError};
use super::{NodeAddr, TypeConfig};

/// How long to wait for a TCP + TLS connection to a peer node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest message between nodes (snapshot chunks, append batches); kept
/// with the other limits.
pub use crate::grpc::limits::MAX_RAFT_MESSAGE_BYTES;

/// Channels to the other nodes' Raft listeners, shared by openraft's
/// replication streams and by the write-forwarding / read-index calls.
#[derive(Clone)]
pub struct PeerChannels {
    tls: ClientTlsConfig,
    /// The local address connections come from (`--raft-source-ip`), so a
    /// fault-injecting proxy can tell the calling node apart.
    source_ip: Option<IpAddr>,
    /// Keyed by address, so a node that moved gets a fresh channel.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How this node's last Raft RPCs to each peer went: the leader's view
    /// of which followers are reachable (status, event log).
    health: Arc<Mutex<HashMap<NodeId, PeerHealth>>>,
}

/// How the Raft RPCs to one peer have gone lately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerHealth {
    /// When the peer last answered (any answer, even a refusal).
    pub last_ok: Option<Instant>,
    /// Since when every RPC to it failed; `None` while it answers.
    pub failing_since: Option<Instant>,
}

fn record_health(health: &Mutex<HashMap<NodeId, PeerHealth>>, target: NodeId, ok: bool) {
    let mut map = health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let entry = map.entry(target).or_default();
    if ok {
        entry.last_ok = Some(Instant::now());
        entry.failing_since = None;
    } else if entry.failing_since.is_none() {
        entry.failing_since = Some(Instant::now());
    }
}

impl PeerChannels {
    /// Channels that present this node's certificate and trust the cluster
    /// CA; connections come from `source_ip` when given.
    #[must_use]
    pub fn new(tls: ClientTlsConfig, source_ip: Option<IpAddr>) -> Self {
        Self {
            tls,
            source_ip,
            channels: Arc::default(),
            health: Arc::default(),
        }
    }

    /// How the RPCs to `target` have gone (all `None` when this node never
    /// called it, as on a follower).
    #[must_use]
    pub fn health(&self, target: NodeId) -> PeerHealth {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target)
            .copied()
            .unwrap_or_default()
    }

    /// The channel to `raft_addr`, made on first use.
    ///
    /// # Errors
    /// When the address is not a valid `host:port`.
    pub fn channel(&self, raft_addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(raft_addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("https://{raft_addr}"))?
            .tls_config(self.tls.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let channel = match self.source_ip {
            None => endpoint.connect_lazy(),
            // tonic 0.12's `Endpoint` cannot bind a local address itself;
            // its own connector is this one without `set_local_address`
            // (the TLS layer and the connect timeout still come from
            // `endpoint`).
            Some(ip) => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_local_address(Some(ip));
                endpoint.connect_with_connector_lazy(http)
            }
        };
        channels.insert(raft_addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// A Raft-service client for `raft_addr`.
    ///
    /// # Errors
    /// When the address is not a valid `host:port`.
    pub fn client(
        &self,
        raft_addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(RaftServiceClient::new(self.channel(raft_addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerChannels {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        PeerConnection {
            target,
            client: self.client(&node.raft_addr).map_err(|e| e.to_string()),
            health: self.health.clone(),
        }
    }
}

/// openraft's handle on one peer.
pub struct PeerConnection {
    target: NodeId,
    /// An error when the peer's address is unusable; reported as unreachable
    /// on every call.
    client: Result<RaftServiceClient<Channel>, String>,
    /// Shared with [`PeerChannels`]: every call's fate is noted there.
    health: Arc<Mutex<HashMap<NodeId, PeerHealth>>>,
}

/// Encodes a value for the wire.
///
/// # Errors
/// When serde refuses the value (never for Agora's types).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

/// Decodes a value from the wire (Raft RPCs, forwarded writes and their
/// answers). The bytes come from another node; bincode checks every length
/// against the bytes left before it allocates, so a forged length cannot
/// make it reserve more than the message's own size.
///
/// # Errors
/// When the bytes are not an encoding of `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RpcError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.clone()),
                )))
            }
        };
        let data = encode(req).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        let payload = RaftPayload { data };
        let ttl = option.hard_ttl();
        let call = async {
            match rpc {
                "append" => client.append_entries(payload).await,
                "vote" => client.vote(payload).await,
                _ => client.install_snapshot(payload).await,
            }
        };
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(ttl, call).await;
        record_health(&self.health, self.target, matches!(reply, Ok(Ok(_))));
        metrics::histogram!("agora_raft_rpc_seconds", "rpc" => rpc)
            .record(started.elapsed().as_secs_f64());
        let reply = match reply {
            Err(_) => {
                return Err(RpcError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{rpc} to node {} timed out after {ttl:?}", self.target),
                ))))
            }
            Ok(Err(status)) => {
                let err = std::io::Error::other(format!("{rpc} to node {}: {status}", self.target));
                return Err(if status.code() == tonic::Code::Unavailable {
                    RpcError::Unreachable(Unreachable::new(&err))
                } else {
                    RpcError::Network(NetworkError::new(&err))
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<E>> =
            decode(&reply.data).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call("vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::command::{Command, Op, Proposal};

    /// A length prefix of 2^60 (a forged or torn message) is an error, not
    /// an attempt to reserve 2^60 bytes: bincode checks lengths against
    /// the bytes left, and serde caps what it reserves ahead.
    #[test]
    fn a_forged_length_is_refused_without_reserving_it() {
        let proposal = Proposal {
            request: None,
            op: Op::Put {
                key: "k".into(),
                value: vec![1],
            },
        };
        let bytes = encode(&proposal).expect("encodes");
        assert_eq!(decode::<Proposal>(&bytes).expect("decodes"), proposal);
        // Option tag (1), variant (4), key length (8), key (1), then the
        // value's length: each length in turn made huge.
        for at in [5, 14] {
            let mut forged = bytes.clone();
            forged[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
            assert!(decode::<Proposal>(&forged).is_err(), "length at {at}");
        }
        // A batch claiming 2^60 proposals.
        let command = Command {
            time_ms: 1,
            proposals: vec![proposal],
        };
        let mut forged = encode(&command).expect("encodes");
        forged[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Command>(&forged).is_err());
    }
}
