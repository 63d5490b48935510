//! Asking every node at once, and deciding who leads from the answers.
//!
//! An operator runs the console exactly when something is wrong, so a dead
//! node must cost one short timeout, not block the report.

use std::future::Future;
use std::time::Duration;

use agora_peer::{AdminClient, ClusterClient};
use agora_proto::admin::{NodeStatus, StatusRequest};
use tonic::Status;

/// How long one node may take to answer a query.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `call` against every node concurrently, each bounded by
/// [`NODE_TIMEOUT`]; answers come back in node id order. Each call carries
/// the console's admin session, if it has one.
pub async fn ask_all<T, F, Fut>(client: &ClusterClient, call: F) -> Vec<(u64, Result<T, Status>)>
where
    F: Fn(AdminClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let calls = client.node_ids().into_iter().map(|id| {
        let admin = client.admin(id);
        let call = &call;
        async move {
            let result = match admin {
                Ok(admin) => match tokio::time::timeout(NODE_TIMEOUT, call(admin)).await {
                    Ok(result) => result.map(tonic::Response::into_inner),
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no answer within {}s",
                        NODE_TIMEOUT.as_secs()
                    ))),
                },
                Err(err) => Err(Status::not_found(err.to_string())),
            };
            (id, result)
        }
    });
    futures::future::join_all(calls).await
}

/// Every node's status (or why it did not answer), in node id order.
pub async fn statuses(client: &ClusterClient) -> Vec<(u64, Result<NodeStatus, Status>)> {
    ask_all(client, |mut admin| async move {
        admin.status(StatusRequest {}).await
    })
    .await
}

/// The leader according to `statuses`: a node that says it leads (the one
/// with the newest term if two do, as the older one is about to learn it
/// was deposed), else the leader named by the node with the newest term.
pub fn leader_of<'a>(statuses: impl IntoIterator<Item = &'a NodeStatus> + Clone) -> Option<u64> {
    statuses
        .clone()
        .into_iter()
        .filter(|status| status.role == "leader")
        .max_by_key(|status| status.term)
        .map(|status| status.id)
        .or_else(|| {
            statuses
                .into_iter()
                .filter(|status| status.leader_id != 0)
                .max_by_key(|status| status.term)
                .map(|status| status.leader_id)
        })
}

/// Finds the leader by asking every node; `None` when nobody knows one.
/// Remembers it in `client`, so leader calls go there first.
pub async fn find_leader(client: &ClusterClient) -> Option<u64> {
    let answers = statuses(client).await;
    let leader = leader_of(
        answers
            .iter()
            .filter_map(|(_, result)| result.as_ref().ok()),
    );
    if let Some(id) = leader {
        client.set_leader_hint(id);
    }
    leader
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: &str, term: u64, leader_id: u64) -> NodeStatus {
        NodeStatus {
            id,
            role: role.to_owned(),
            term,
            leader_id,
            ..NodeStatus::default()
        }
    }

    #[test]
    fn picks_the_newest_leader() {
        let nodes = [
            status(1, "leader", 2, 1),
            status(2, "leader", 3, 2),
            status(3, "follower", 3, 2),
        ];
        assert_eq!(leader_of(&nodes), Some(2));
    }

    #[test]
    fn trusts_followers_when_the_leader_is_silent() {
        let nodes = [status(2, "follower", 4, 3), status(3, "follower", 3, 1)];
        assert_eq!(leader_of(&nodes), Some(3));
        let nobody = [status(1, "candidate", 5, 0)];
        assert_eq!(leader_of(&nobody), None);
    }
}
