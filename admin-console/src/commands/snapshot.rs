//! `agora-admin snapshot`: build a snapshot now (and purge the log behind
//! it), on the leader unless a node is named.

use agora_proto::admin::TriggerSnapshotRequest;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;
use crate::fleet::{find_leader, NODE_TIMEOUT};

/// Build a snapshot now and purge the log behind it.
#[derive(Debug, clap::Args)]
pub struct Snapshot {
    /// Snapshot this node instead of the leader.
    #[arg(long)]
    node: Option<u64>,
}

impl Snapshot {
    /// Finds the leader (unless told the node) and asks it for a snapshot.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let node = match self.node {
            Some(id) => id,
            None => find_leader(&console.client).await.context(
                "no node knows a leader; wait for an election or name a node with --node",
            )?,
        };
        let mut admin = console.client.admin(node)?;
        // Building a snapshot copies the whole state database, which takes
        // far longer than a status query.
        let timeout = NODE_TIMEOUT * 20;
        let reply =
            tokio::time::timeout(timeout, admin.trigger_snapshot(TriggerSnapshotRequest {}))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "node {node} did not finish the snapshot within {}s",
                        timeout.as_secs()
                    )
                })?
                .map_err(|status| anyhow::anyhow!(agora_peer::describe_status(&status)))
                .with_context(|| format!("node {node} could not build a snapshot"))?
                .into_inner();
        if console.json {
            Console::print_json(&json!({
                "node_id": node,
                "snapshot_index": reply.snapshot_index,
            }))
        } else {
            println!(
                "node {node} built a snapshot up to index {}",
                reply.snapshot_index
            );
            Ok(())
        }
    }
}
