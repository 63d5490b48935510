//! What every command works with: the cluster client and the output mode.

use std::path::Path;

use agora_peer::ClusterClient;
use anyhow::Context as _;

/// The loaded cluster and how to print.
#[derive(Debug)]
pub struct Console {
    /// One channel per node, presenting the cluster's client certificate.
    pub client: ClusterClient,
    /// Print one JSON document instead of text.
    pub json: bool,
}

impl Console {
    /// Loads the cluster file and checks it carries the client certificate
    /// that admin calls need.
    pub fn load(path: &Path, json: bool) -> anyhow::Result<Self> {
        let file = agora_peer::read_cluster_file(path)?;
        if file.client_cert.is_none() || file.client_key.is_none() {
            anyhow::bail!(
                "the cluster file {} names no client certificate; admin calls need client_cert and client_key (made by `agora-server certs`)",
                path.display()
            );
        }
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        let client = ClusterClient::from_cluster_file(&file, base_dir)?;
        Ok(Self { client, json })
    }

    /// Prints `value` as one JSON document on stdout.
    pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!(
            "{}",
            serde_json::to_string_pretty(value).context("could not render JSON")?
        );
        Ok(())
    }
}
