//! `agora-admin status`: every node's view of itself and of the cluster.

use agora_proto::admin::NodeStatus;
use serde::Serialize;

use crate::console::Console;
use crate::fleet::{leader_of, statuses};
use crate::table::{uptime, Table};
use crate::views::{LagView, MemberView};

/// Show every node's role, term, log indexes, lag, database size, requests/s, uptime and version (unreachable nodes flagged).
#[derive(Debug, clap::Args)]
pub struct Status {}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    /// The leader, or null when no node knows one.
    leader_id: Option<u64>,
    /// Every node of the cluster file, by id.
    nodes: Vec<NodeReport>,
}

/// One node's line of the report.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum NodeReport {
    Reachable(Box<Reachable>),
    Unreachable {
        id: u64,
        addr: String,
        reachable: bool,
        error: String,
    },
}

#[derive(Debug, Serialize)]
struct Reachable {
    id: u64,
    addr: String,
    raft_addr: String,
    pid: u32,
    role: String,
    reachable: bool,
    term: u64,
    /// The leader this node knows of, if any.
    leader_id: Option<u64>,
    last_log_index: u64,
    committed_index: u64,
    applied_index: u64,
    snapshot_index: u64,
    purged_index: u64,
    uptime_secs: u64,
    version: String,
    members: Vec<MemberView>,
    replication: Vec<LagView>,
    state_db_bytes: u64,
    log_db_bytes: u64,
    requests_per_sec: f64,
    requests_total: u64,
    last_event_id: u64,
    /// Entries behind the leader's last log, from the leader's view (null
    /// when no leader answered).
    lag: Option<u64>,
    /// Whether the leader reaches it (null when no leader answered).
    leader_reaches: Option<bool>,
}

impl Reachable {
    fn new(addr: String, status: &NodeStatus) -> Self {
        Self {
            id: status.id,
            addr,
            raft_addr: status.raft_addr.clone(),
            pid: status.pid,
            role: status.role.clone(),
            reachable: true,
            term: status.term,
            leader_id: (status.leader_id != 0).then_some(status.leader_id),
            last_log_index: status.last_log_index,
            committed_index: status.committed_index,
            applied_index: status.applied_index,
            snapshot_index: status.snapshot_index,
            purged_index: status.purged_index,
            uptime_secs: status.uptime_secs,
            version: status.version.clone(),
            members: status.members.iter().map(MemberView::from).collect(),
            replication: status.replication.iter().map(LagView::from).collect(),
            state_db_bytes: status.state_db_bytes,
            log_db_bytes: status.log_db_bytes,
            requests_per_sec: status.requests_per_sec,
            requests_total: status.requests_total,
            last_event_id: status.last_event_id,
            lag: None,
            leader_reaches: None,
        }
    }

    /// Fills in what the leader says about this node.
    fn seen_by(mut self, leader: Option<&NodeStatus>) -> Self {
        if let Some(lag) = leader.and_then(|l| l.replication.iter().find(|r| r.id == self.id)) {
            self.lag = Some(lag.lag);
            self.leader_reaches = Some(lag.reachable);
        }
        self
    }
}

impl Status {
    /// Asks every node concurrently and prints the report.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let answers = statuses(&console.client).await;
        let leader_id = leader_of(
            answers
                .iter()
                .filter_map(|(_, result)| result.as_ref().ok()),
        );
        let leader = answers
            .iter()
            .filter_map(|(_, result)| result.as_ref().ok())
            .find(|s| Some(s.id) == leader_id && s.role == "leader")
            .cloned();
        let nodes = answers
            .into_iter()
            .map(|(id, result)| {
                let addr = console.client.node_addr(id).unwrap_or_default();
                match result {
                    Ok(status) => NodeReport::Reachable(Box::new(
                        Reachable::new(addr, &status).seen_by(leader.as_ref()),
                    )),
                    Err(status) => NodeReport::Unreachable {
                        id,
                        addr,
                        reachable: false,
                        error: agora_peer::describe_status(&status),
                    },
                }
            })
            .collect();
        let report = Report { leader_id, nodes };
        if console.json {
            Console::print_json(&report)
        } else {
            print!("{}", render(&report));
            Ok(())
        }
    }
}

/// The report as text: a summary line, a table with the leader's row
/// marked `*`, and why each unreachable node did not answer.
fn render(report: &Report) -> String {
    let mut out = match report.leader_id {
        Some(id) => format!("leader: node {id}\n"),
        None => "leader: none known\n".to_owned(),
    };
    let mut table = Table::new(&[
        "",
        "ID",
        "ADDR",
        "PID",
        "ROLE",
        "TERM",
        "LEADER",
        "LAST LOG",
        "COMMITTED",
        "APPLIED",
        "SNAPSHOT",
        "LAG",
        "DB",
        "REQ/S",
        "UPTIME",
        "VERSION",
    ]);
    let mut errors = String::new();
    for node in &report.nodes {
        match node {
            NodeReport::Reachable(node) => table.row(vec![
                if Some(node.id) == report.leader_id {
                    "*"
                } else {
                    ""
                }
                .to_owned(),
                node.id.to_string(),
                node.addr.clone(),
                node.pid.to_string(),
                node.role.clone(),
                node.term.to_string(),
                node.leader_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                node.last_log_index.to_string(),
                node.committed_index.to_string(),
                node.applied_index.to_string(),
                node.snapshot_index.to_string(),
                match (node.lag, node.leader_reaches) {
                    (_, Some(false)) => "leader cannot reach".to_owned(),
                    (Some(lag), _) => lag.to_string(),
                    (None, _) => "-".to_owned(),
                },
                megabytes(node.state_db_bytes + node.log_db_bytes),
                format!("{:.1}", node.requests_per_sec),
                uptime(node.uptime_secs),
                node.version.clone(),
            ]),
            NodeReport::Unreachable {
                id, addr, error, ..
            } => {
                table.row(vec![
                    String::new(),
                    id.to_string(),
                    addr.clone(),
                    "-".to_owned(),
                    "unreachable".to_owned(),
                ]);
                errors.push_str(&format!("node {id} is unreachable: {error}\n"));
            }
        }
    }
    out.push_str(&table.render());
    out.push_str(&errors);
    out
}

/// Bytes as MiB with one decimal.
fn megabytes(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1}M")
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::admin::{Member, ReplicationLag};

    fn report() -> Report {
        let status = NodeStatus {
            id: 1,
            api_addr: "127.0.0.1:7101".into(),
            pid: 4242,
            role: "leader".into(),
            term: 3,
            leader_id: 1,
            last_log_index: 120,
            committed_index: 120,
            applied_index: 119,
            snapshot_index: 0,
            purged_index: 0,
            members: vec![Member {
                id: 1,
                api_addr: "127.0.0.1:7101".into(),
                raft_addr: "127.0.0.1:7201".into(),
                voter: true,
            }],
            uptime_secs: 65,
            version: "0.1.0".into(),
            replication: vec![ReplicationLag {
                id: 1,
                matched_index: 120,
                lag: 0,
                reachable: true,
                last_contact_ms_ago: 0,
            }],
            raft_addr: "127.0.0.1:7201".into(),
            state_db_bytes: 3 * 1024 * 1024,
            log_db_bytes: 1024 * 1024,
            requests_per_sec: 12.5,
            requests_total: 400,
            last_event_id: 9,
        };
        Report {
            leader_id: Some(1),
            nodes: vec![
                NodeReport::Reachable(Box::new(
                    Reachable::new("127.0.0.1:7101".into(), &status).seen_by(Some(&status)),
                )),
                NodeReport::Unreachable {
                    id: 2,
                    addr: "127.0.0.1:7102".into(),
                    reachable: false,
                    error: "the cluster is unavailable: connection refused".into(),
                },
            ],
        }
    }

    #[test]
    fn json_has_the_documented_shape() -> anyhow::Result<()> {
        let value = serde_json::to_value(report())?;
        assert_eq!(value["leader_id"], 1);
        assert_eq!(value["nodes"][0]["id"], 1);
        assert_eq!(value["nodes"][0]["addr"], "127.0.0.1:7101");
        assert_eq!(value["nodes"][0]["reachable"], true);
        assert_eq!(value["nodes"][0]["pid"], 4242);
        assert_eq!(value["nodes"][0]["applied_index"], 119);
        assert_eq!(
            value["nodes"][0]["members"][0]["raft_addr"],
            "127.0.0.1:7201"
        );
        assert_eq!(value["nodes"][0]["replication"][0]["lag"], 0);
        assert_eq!(value["nodes"][0]["lag"], 0);
        assert_eq!(value["nodes"][0]["leader_reaches"], true);
        assert_eq!(value["nodes"][0]["requests_per_sec"], 12.5);
        assert_eq!(
            value["nodes"][1],
            serde_json::json!({
                "id": 2,
                "addr": "127.0.0.1:7102",
                "reachable": false,
                "error": "the cluster is unavailable: connection refused",
            })
        );
        let nobody = Report {
            leader_id: None,
            nodes: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(nobody)?["leader_id"],
            serde_json::Value::Null
        );
        Ok(())
    }

    #[test]
    fn text_marks_the_leader_and_explains_the_unreachable() {
        let text = render(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader: node 1");
        assert!(lines[1].contains("LAST LOG"), "{text}");
        assert!(lines[2].starts_with("*  1"), "{text}");
        assert!(lines[2].contains("1m05s"), "{text}");
        assert!(lines[2].contains("4.0M"), "{text}");
        assert!(lines[2].contains("12.5"), "{text}");
        assert!(lines[3].contains("unreachable"), "{text}");
        assert_eq!(
            lines[4],
            "node 2 is unreachable: the cluster is unavailable: connection refused"
        );
    }
}
