//! `cluster.toml`: how clients and operators find a cluster.
//!
//! `agora-server dev` writes it; every client (`agora`, `agora-admin`,
//! `agora-loadtest`) reads it. Paths in it are relative to the file's own
//! directory unless absolute.

use serde::{Deserialize, Serialize};

/// The contents of `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// PEM file of the cluster CA that signed every node's certificate.
    pub ca_cert: String,
    /// Client certificate signed by the cluster CA: it lets operator tools
    /// call admin RPCs before accounts exist. Optional for peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Name the node certificates are issued for (TLS server name).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Every node of the cluster.
    pub nodes: Vec<ClusterNode>,
}

/// One node as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Raft node id.
    pub id: u64,
    /// Public gRPC address (`host:port`).
    pub api_addr: String,
    /// Internal Raft address (`host:port`), for operators adding the node.
    pub raft_addr: String,
    /// Prometheus metrics address (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

/// The TLS server name every dev node certificate carries.
pub const DEFAULT_SERVER_NAME: &str = "agora-node";

fn default_server_name() -> String {
    DEFAULT_SERVER_NAME.to_owned()
}

/// Why a cluster file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// Not valid TOML for a cluster file.
    #[error("the cluster file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// Parsed, but unusable.
    #[error("the cluster file lists no nodes; add at least one [[nodes]] entry")]
    NoNodes,
}

impl ClusterFile {
    /// Parses and checks a cluster file's text.
    ///
    /// # Errors
    /// When the text is not a valid cluster file.
    pub fn parse(text: &str) -> Result<Self, ClusterFileError> {
        let file: Self = toml::from_str(text)?;
        if file.nodes.is_empty() {
            return Err(ClusterFileError::NoNodes);
        }
        Ok(file)
    }

    /// Renders the file as TOML.
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_empty() {
        let file = ClusterFile {
            ca_cert: "certs/ca.pem".into(),
            client_cert: Some("certs/client.pem".into()),
            client_key: Some("certs/client.key".into()),
            server_name: DEFAULT_SERVER_NAME.into(),
            nodes: vec![ClusterNode {
                id: 1,
                api_addr: "127.0.0.1:7101".into(),
                raft_addr: "127.0.0.1:7201".into(),
                metrics_addr: None,
            }],
        };
        assert_eq!(ClusterFile::parse(&file.to_toml()).ok(), Some(file));
        assert!(matches!(
            ClusterFile::parse("ca_cert = \"x\"\nnodes = []\n"),
            Err(ClusterFileError::NoNodes)
        ));
    }
}
