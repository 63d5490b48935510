//! `agora-admin remove`: take a node out of the cluster. The server refuses
//! to leave fewer than three voters unless `--force` says that is intended.

use agora_peer::operator;
use anyhow::Context as _;

use crate::console::Console;
use crate::views::print_membership;

/// Remove a node (voter or learner) from the cluster.
#[derive(Debug, clap::Args)]
pub struct Remove {
    /// Node id.
    id: u64,
    /// Allow leaving fewer than three voters.
    #[arg(long)]
    force: bool,
}

impl Remove {
    /// Sends the change to the leader.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let client = super::membership_client(console).await;
        let reply = operator::remove(&client, self.id, self.force)
            .await
            .with_context(|| format!("could not remove node {}", self.id))?;
        print_membership(
            console.json,
            &format!("node {} was removed", self.id),
            &reply,
        )
    }
}
