//! Waiting for a clean ledger audit on every node of a cluster.

use std::time::Duration;

use agora_peer::ledger::{self, ClusterAudit};
use agora_peer::ClusterClient;

use crate::{wait_for, Probe};

/// Audits every node of `client` until all are clean at one applied index
/// with one ledger digest, for at most `timeout`; returns that index and
/// digest. A node whose own checks fail ends the wait at once: that is no
/// matter of time.
///
/// # Errors
/// A node audits its ledger as not clean, or the nodes do not agree in
/// time.
pub async fn wait_clean_audit(
    client: &ClusterClient,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<(u64, String)> {
    wait_for(what, timeout, || async {
        let audit: ClusterAudit =
            ledger::audit_cluster(client, ledger::AUDIT_ROUNDS, ledger::AUDIT_PAUSE).await;
        Ok(match (audit.is_clean(), audit.agreed()) {
            (true, Some(agreed)) => Probe::Ready(agreed),
            _ => {
                for node in &audit.nodes {
                    if let Ok(reply) = &node.result {
                        anyhow::ensure!(
                            reply.clean && reply.problems.is_empty(),
                            "node {} audits its ledger as not clean: {:?}",
                            node.id,
                            reply.problems
                        );
                    }
                }
                Probe::NotYet(audit.problems().join("; "))
            }
        })
    })
    .await
}
