//! The harness itself: one node elects itself, and a write reads back.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use agora_peer::request_id;
use agora_proto::market::ReadConsistency;
use agora_tests::{TestCluster, TestOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_leads_and_a_put_reads_back() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, TestOptions::default()).await?;
    assert_eq!(cluster.leader_id().await?, Some(1));
    assert_eq!(cluster.wait_for_leader(None).await?, 1);

    let client = cluster.client();
    let reply = client
        .put("greeting", b"hello".to_vec(), request_id("t00"))
        .await?;
    assert!(reply.index > 0, "a write is applied at a real log index");
    assert_eq!(reply.revision, 1);

    let read = client
        .get(
            "greeting",
            ReadConsistency {
                min_index: reply.index,
                linearizable: false,
            },
            Some(1),
        )
        .await?;
    assert!(read.found);
    assert_eq!(read.value, b"hello");
    assert_eq!(read.revision, 1);
    assert!(read.applied_index >= reply.index);

    let status = cluster.wait_applied(1, reply.index).await?;
    assert_eq!(status.role, "leader");
    assert_eq!(status.id, 1);
    Ok(())
}
