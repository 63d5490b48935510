//! What the fake-node tests share: a throwaway CA with a certificate for
//! `agora-node`, the client side of it, and an address nobody listens on.

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;

use agora_peer::ClientTls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;

/// A CA and one server certificate for `agora-node`.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn pki() -> anyhow::Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agora test ca");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let server_params = CertificateParams::new(vec!["agora-node".to_owned()])?;
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;
    Ok(Pki {
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// A client of that CA, without a client certificate.
pub fn tls(pki: &Pki) -> ClientTls {
    ClientTls {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        identity: None,
        server_name: "agora-node".to_owned(),
    }
}

/// An address that refuses connections (bound, then closed).
pub async fn dead_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}
