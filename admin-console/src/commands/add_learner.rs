//! `agora-admin add-learner`: the first half of a hot join. The new node
//! receives the log (or a snapshot) without voting; promote it once it has
//! caught up.

use agora_peer::operator;
use anyhow::Context as _;

use crate::console::Console;
use crate::views::print_membership;

/// Add a running node to the cluster as a non-voting learner.
#[derive(Debug, clap::Args)]
pub struct AddLearner {
    /// The new node's id (unused in the cluster so far).
    #[arg(long)]
    id: u64,
    /// Its public gRPC address (host:port).
    #[arg(long)]
    api_addr: String,
    /// Its internal Raft address (host:port).
    #[arg(long)]
    raft_addr: String,
}

impl AddLearner {
    /// Sends the change to the leader.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let client = super::membership_client(console).await;
        let reply = operator::add_learner(&client, self.id, &self.api_addr, &self.raft_addr)
            .await
            .with_context(|| format!("could not add node {} as a learner", self.id))?;
        print_membership(
            console.json,
            &format!("node {} joined as a learner", self.id),
            &reply,
        )
    }
}
