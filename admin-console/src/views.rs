//! JSON shapes of what the console prints, kept apart from the generated
//! protobuf types so the output format is ours to keep stable.

use agora_proto::admin::{Member, MembershipReply, ReplicationLag};
use serde::Serialize;

use crate::table::Table;

/// A cluster member.
#[derive(Debug, Serialize)]
pub struct MemberView {
    /// Raft node id.
    pub id: u64,
    /// Public gRPC address.
    pub api_addr: String,
    /// Internal Raft address.
    pub raft_addr: String,
    /// Whether it votes (false: learner).
    pub voter: bool,
}

impl From<&Member> for MemberView {
    fn from(member: &Member) -> Self {
        Self {
            id: member.id,
            api_addr: member.api_addr.clone(),
            raft_addr: member.raft_addr.clone(),
            voter: member.voter,
        }
    }
}

/// How far one node lags behind the leader.
#[derive(Debug, Serialize)]
pub struct LagView {
    /// Node id.
    pub id: u64,
    /// Highest index known replicated to it.
    pub matched_index: u64,
    /// Entries it is behind.
    pub lag: u64,
    /// Whether the leader's last Raft RPC to it succeeded.
    pub reachable: bool,
    /// Milliseconds since the leader last heard from it (0: never, or the
    /// leader itself).
    pub last_contact_ms_ago: u64,
}

impl From<&ReplicationLag> for LagView {
    fn from(lag: &ReplicationLag) -> Self {
        Self {
            id: lag.id,
            matched_index: lag.matched_index,
            lag: lag.lag,
            reachable: lag.reachable,
            last_contact_ms_ago: lag.last_contact_ms_ago,
        }
    }
}

/// The membership after a change.
#[derive(Debug, Serialize)]
pub struct MembershipView {
    /// Log index of the membership entry.
    pub index: u64,
    /// Members after the change.
    pub members: Vec<MemberView>,
}

impl From<&MembershipReply> for MembershipView {
    fn from(reply: &MembershipReply) -> Self {
        Self {
            index: reply.index,
            members: reply.members.iter().map(MemberView::from).collect(),
        }
    }
}

/// Members as a table, by id.
pub fn members_table(members: &[Member]) -> String {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|member| member.id);
    let mut table = Table::new(&["ID", "KIND", "API ADDR", "RAFT ADDR"]);
    for member in sorted {
        table.row(vec![
            member.id.to_string(),
            if member.voter { "voter" } else { "learner" }.to_owned(),
            member.api_addr.clone(),
            member.raft_addr.clone(),
        ]);
    }
    table.render()
}

/// Prints a membership change's outcome as JSON or text.
pub fn print_membership(json: bool, summary: &str, reply: &MembershipReply) -> anyhow::Result<()> {
    if json {
        crate::console::Console::print_json(&MembershipView::from(reply))
    } else {
        println!("{summary} (membership entry at index {})", reply.index);
        print!("{}", members_table(&reply.members));
        Ok(())
    }
}
