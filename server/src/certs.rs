//! Development certificates (rcgen): a cluster CA, one certificate per node
//! (usable as server and as client, for mutual TLS between nodes) and an
//! operator client certificate. `agora-server certs` and `agora-server dev`
//! make them; running again adds what is missing and keeps what exists.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use agora_proto::cluster_file::DEFAULT_SERVER_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths of the files `ensure_dev_certs` makes.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The directory.
    pub dir: PathBuf,
}

impl DevCerts {
    /// The CA certificate.
    #[must_use]
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// Node `id`'s certificate.
    #[must_use]
    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }
    /// Node `id`'s key.
    #[must_use]
    pub fn node_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }
    /// The operator client certificate.
    #[must_use]
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    /// The operator client key.
    #[must_use]
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

/// Makes the CA (if missing) and the certificates of nodes `1..=nodes` and
/// of the operator client (those missing) in `dir`.
///
/// # Errors
/// When a file cannot be written or rcgen fails.
pub fn ensure_dev_certs(dir: &Path, nodes: u64) -> Result<DevCerts, CertError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let certs = DevCerts {
        dir: dir.to_owned(),
    };
    let ca_key_path = dir.join("ca.key");
    let (ca_cert, ca_key) = if certs.ca_cert().is_file() && ca_key_path.is_file() {
        let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let cert_pem =
            std::fs::read_to_string(certs.ca_cert()).map_err(io_err(&certs.ca_cert()))?;
        let key = KeyPair::from_pem(&key_pem)?;
        // Same subject and key as the stored CA, so what it signs verifies
        // against the stored CA certificate.
        let cert = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
        (cert, key)
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Agora development cluster CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        std::fs::write(certs.ca_cert(), cert.pem()).map_err(io_err(&certs.ca_cert()))?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        (cert, key)
    };

    let issue =
        |name: &str, cert_path: &Path, key_path: &Path, server: bool| -> Result<(), CertError> {
            if cert_path.is_file() && key_path.is_file() {
                return Ok(());
            }
            let mut names = vec![name.to_owned()];
            if server {
                names.push(DEFAULT_SERVER_NAME.to_owned());
                names.push("localhost".to_owned());
            }
            let mut params = CertificateParams::new(names)?;
            if server {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            }
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
            std::fs::write(cert_path, cert.pem()).map_err(io_err(cert_path))?;
            write_private(key_path, &key.serialize_pem())
        };
    for id in 1..=nodes {
        issue(
            &format!("agora-node-{id}"),
            &certs.node_cert(id),
            &certs.node_key(id),
            true,
        )?;
    }
    issue(
        "agora-operator",
        &certs.client_cert(),
        &certs.client_key(),
        false,
    )?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_and_keeps_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = ensure_dev_certs(dir.path(), 2).expect("certs");
        let first = std::fs::read(certs.node_cert(1)).expect("node 1");
        assert!(certs.client_key().is_file());
        // A second run keeps existing files and adds node 3 under the same CA.
        let certs = ensure_dev_certs(dir.path(), 3).expect("certs again");
        assert_eq!(std::fs::read(certs.node_cert(1)).expect("node 1"), first);
        assert!(certs.node_cert(3).is_file());
    }
}
