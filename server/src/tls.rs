//! TLS material of a node: its certificate, and the cluster CA that every
//! node and operator certificate chains to.
//!
//! - The Raft listener **requires** a client certificate from the cluster CA
//!   (mutual TLS): a node with a certificate from another CA cannot connect.
//! - The public listener accepts clients without a certificate (peers), and
//!   recognises a cluster-CA client certificate (operator tools).

use std::path::Path;

use agora_proto::cluster_file::DEFAULT_SERVER_NAME;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::NodeConfig;

/// A node's certificates, loaded once at start.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Certificate,
    identity: Identity,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} {path}: {source}")]
pub struct TlsError {
    what: &'static str,
    path: String,
    source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl TlsMaterial {
    /// Loads the CA, certificate and key the configuration names.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn load(config: &NodeConfig) -> Result<Self, TlsError> {
        let ca = Certificate::from_pem(read("the CA certificate", &config.ca_cert)?);
        let cert = read("the node certificate", &config.cert)?;
        let key = read("the node key", &config.key)?;
        Ok(Self {
            ca,
            identity: Identity::from_pem(cert, key),
        })
    }

    /// The Raft listener: mutual TLS, cluster CA only.
    #[must_use]
    pub fn raft_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The public listener: a client certificate is optional, and when one
    /// is presented it must chain to the cluster CA.
    #[must_use]
    pub fn api_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
    }

    /// Calls to other nodes: present this node's certificate, trust only the
    /// cluster CA.
    #[must_use]
    pub fn peer_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(DEFAULT_SERVER_NAME)
    }
}
