//! What every load generator needs to know about the cluster it drives.

use agora_peer::ClusterClient;
use agora_proto::admin::StatusRequest;

/// The leader's id, asked of the nodes in turn (needs the operator
/// certificate or an admin session).
///
/// # Errors
/// When no node reports a leader.
pub async fn leader_id(client: &ClusterClient) -> anyhow::Result<u64> {
    for id in client.node_ids() {
        if let Ok(status) = client.admin(id)?.status(StatusRequest {}).await {
            let leader = status.into_inner().leader_id;
            if leader != 0 {
                return Ok(leader);
            }
        }
    }
    anyhow::bail!("no node reports a leader; is the cluster up?")
}
