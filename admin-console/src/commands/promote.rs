//! `agora-admin promote`: the second half of a hot join, making a learner
//! that has caught up a voter.

use agora_peer::operator;
use anyhow::Context as _;

use crate::console::Console;
use crate::views::print_membership;

/// Make a learner a voter.
#[derive(Debug, clap::Args)]
pub struct Promote {
    /// Node id of an existing learner.
    id: u64,
}

impl Promote {
    /// Sends the change to the leader.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let client = super::membership_client(console).await;
        let reply = operator::promote(&client, self.id)
            .await
            .with_context(|| format!("could not promote node {}", self.id))?;
        print_membership(
            console.json,
            &format!("node {} is now a voter", self.id),
            &reply,
        )
    }
}
