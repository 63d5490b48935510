//! `agora-admin digest`: the replicated state must be identical on every
//! node at the same applied index; this compares each node's digest.

use std::collections::BTreeMap;

use agora_proto::admin::StateDigestRequest;
use serde::Serialize;

use crate::console::Console;
use crate::fleet::ask_all;
use crate::table::Table;

/// Compare every node's state digest.
#[derive(Debug, clap::Args)]
pub struct Digest {}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// False when two nodes at the same applied index disagree.
    consistent: bool,
    /// Every node, by id.
    nodes: Vec<NodeDigest>,
}

#[derive(Debug, Serialize)]
struct NodeDigest {
    id: u64,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Digest {
    /// Asks every node and compares the answers.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let answers = ask_all(&console.client, |mut admin| async move {
            admin.state_digest(StateDigestRequest {}).await
        })
        .await;
        let nodes: Vec<NodeDigest> = answers
            .into_iter()
            .map(|(id, result)| match result {
                Ok(reply) => NodeDigest {
                    id,
                    reachable: true,
                    applied_index: Some(reply.applied_index),
                    digest: Some(reply.digest),
                    error: None,
                },
                Err(status) => NodeDigest {
                    id,
                    reachable: false,
                    applied_index: None,
                    digest: None,
                    error: Some(agora_peer::describe_status(&status)),
                },
            })
            .collect();
        let conflicts = conflicts(&nodes);
        let report = Report {
            consistent: conflicts.is_empty(),
            nodes,
        };
        if console.json {
            Console::print_json(&report)?;
        } else {
            let mut table = Table::new(&["ID", "APPLIED", "DIGEST"]);
            for node in &report.nodes {
                table.row(vec![
                    node.id.to_string(),
                    node.applied_index
                        .map_or_else(|| "-".to_owned(), |i| i.to_string()),
                    match (&node.digest, &node.error) {
                        (Some(digest), _) => digest.clone(),
                        (None, Some(error)) => format!("unreachable: {error}"),
                        (None, None) => "-".to_owned(),
                    },
                ]);
            }
            print!("{}", table.render());
        }
        if let Some(index) = conflicts.first() {
            anyhow::bail!(
                "the nodes at applied index {index} have different state digests; their states diverged"
            );
        }
        if !console.json {
            println!("no two nodes at the same applied index disagree");
        }
        Ok(())
    }
}

/// The applied indexes at which two nodes report different digests.
fn conflicts(nodes: &[NodeDigest]) -> Vec<u64> {
    let mut by_index: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for node in nodes {
        if let (Some(index), Some(digest)) = (node.applied_index, &node.digest) {
            by_index.entry(index).or_default().push(digest);
        }
    }
    by_index
        .into_iter()
        .filter(|(_, digests)| digests.windows(2).any(|pair| pair[0] != pair[1]))
        .map(|(index, _)| index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, index: u64, digest: &str) -> NodeDigest {
        NodeDigest {
            id,
            reachable: true,
            applied_index: Some(index),
            digest: Some(digest.to_owned()),
            error: None,
        }
    }

    #[test]
    fn only_equal_indexes_are_compared() {
        assert!(conflicts(&[node(1, 5, "a"), node(2, 5, "a"), node(3, 4, "b")]).is_empty());
        assert_eq!(conflicts(&[node(1, 5, "a"), node(2, 5, "b")]), vec![5]);
    }
}
