//! The TLS material a client trusts and presents.
//!
//! Every node serves its public API over TLS with a certificate from the
//! cluster CA, issued for one shared server name (not for each address), so
//! the client pins the CA and names that server explicitly. Operator tools
//! also present the cluster's client certificate, which admin RPCs require.

use std::fmt;
use std::path::{Path, PathBuf};

use agora_proto::cluster_file::ClusterFile;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// A client certificate and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    // The key must never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What a client needs to open TLS connections to the nodes.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The cluster CA, PEM: the only root the client trusts.
    pub ca_pem: Vec<u8>,
    /// The client certificate to present, if any (admin RPCs need one).
    pub identity: Option<ClientIdentity>,
    /// The name every node certificate is issued for.
    pub server_name: String,
}

impl ClientTls {
    /// Reads the certificate files a cluster file names. Relative paths are
    /// taken relative to `base_dir`, the directory the cluster file lives in.
    ///
    /// # Errors
    /// When a file cannot be read, or only one of `client_cert` /
    /// `client_key` is given.
    pub fn from_cluster_file(file: &ClusterFile, base_dir: &Path) -> Result<Self, ClientError> {
        let ca_pem = read_pem("CA certificate", &resolve(base_dir, &file.ca_cert))?;
        let identity = match (&file.client_cert, &file.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert_pem: read_pem("client certificate", &resolve(base_dir, cert))?,
                key_pem: read_pem("client key", &resolve(base_dir, key))?,
            }),
            (None, None) => None,
            _ => return Err(ClientError::IncompleteIdentity),
        };
        Ok(Self {
            ca_pem,
            identity,
            server_name: file.server_name.clone(),
        })
    }

    /// The tonic configuration for these settings.
    pub(crate) fn to_tonic(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone());
        match &self.identity {
            Some(identity) => {
                config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
            }
            None => config,
        }
    }
}

/// `path` as written in a cluster file, made usable from any working
/// directory.
#[must_use]
pub(crate) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::CertUnreadable {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_cluster_file() {
        let base = Path::new("/etc/agora");
        assert_eq!(
            resolve(base, "certs/ca.pem"),
            PathBuf::from("/etc/agora/certs/ca.pem")
        );
        assert_eq!(resolve(base, "/tmp/ca.pem"), PathBuf::from("/tmp/ca.pem"));
    }

    #[test]
    fn half_an_identity_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), b"ca").expect("write ca");
        std::fs::write(dir.path().join("client.pem"), b"cert").expect("write cert");
        let file = ClusterFile {
            ca_cert: "ca.pem".into(),
            client_cert: Some("client.pem".into()),
            client_key: None,
            server_name: "agora-node".into(),
            nodes: Vec::new(),
        };
        let result = ClientTls::from_cluster_file(&file, dir.path());
        assert!(matches!(result, Err(ClientError::IncompleteIdentity)));
    }

    #[test]
    fn missing_ca_names_the_file() {
        let file = ClusterFile {
            ca_cert: "does-not-exist.pem".into(),
            client_cert: None,
            client_key: None,
            server_name: "agora-node".into(),
            nodes: Vec::new(),
        };
        let err = ClientTls::from_cluster_file(&file, Path::new("/nonexistent"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/does-not-exist.pem"), "{err}");
        assert!(err.contains("CA certificate"), "{err}");
    }
}
