//! The nemesis does what it says, checked on the replicated key/value core
//! of a three-node chaos cluster (`agora_tests::nemesis`):
//!
//! 1. **A partition cuts every internal path.** A follower cut off from
//!    the others (`RaftNetwork::partition`) can neither forward a write to
//!    the leader nor learn its commit index for a linearizable read (both
//!    go over the internal channel, through the proxies), while it still
//!    serves local reads and the majority keeps writing. Once healed, a
//!    write through it lands and it catches up.
//! 2. **A paused leader comes back stale.** SIGSTOP the leader; the others
//!    elect a leader in a newer term; SIGCONT; the cluster agrees on a
//!    leader in that newer term, and a write through the old leader lands.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::Duration;

use agora_proto::market::{GetRequest, PutRequest, ReadConsistency};
use agora_tests::nemesis::ChaosCluster;
use agora_tests::{wait_for, Probe, TestOptions};
use anyhow::Context as _;

/// How long a call through a cut-off node may try before the test decides
/// it did not get through (forwarding and read-index give up sooner).
const CUT_OFF_CALL: Duration = Duration::from_secs(8);

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        request_id: Some(agora_peer::request_id("t122")),
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn get(key: &str, linearizable: bool, min_index: u64) -> GetRequest {
    GetRequest {
        key: key.into(),
        consistency: Some(ReadConsistency {
            min_index,
            linearizable,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_forwarding_and_read_index_and_a_paused_leader_comes_back_stale(
) -> anyhow::Result<()> {
    let mut chaos = ChaosCluster::start(3, TestOptions::default()).await?;
    let client = chaos.cluster.client();
    let leader = chaos.cluster.wait_for_leader(None).await?;
    let follower = *chaos
        .cluster
        .node_ids()
        .iter()
        .find(|id| **id != leader)
        .context("no follower")?;
    let mut kv = client.kv(follower)?;
    let first = kv.put(put("k", "before")).await?.into_inner().index;
    // It answered once the leader applied it; the follower's own copy may
    // be a heartbeat behind.
    chaos.cluster.wait_applied(follower, first).await?;

    // 1. Cut the follower off.
    let others: Vec<u64> = chaos
        .cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != follower)
        .collect();
    chaos.network.partition(&[vec![follower], others]);
    let forwarded = tokio::time::timeout(CUT_OFF_CALL, kv.put(put("k", "cut off"))).await;
    anyhow::ensure!(
        !matches!(forwarded, Ok(Ok(_))),
        "a write through node {follower} reached the leader across the partition"
    );
    let read_index = tokio::time::timeout(CUT_OFF_CALL, kv.get(get("k", true, 0))).await;
    anyhow::ensure!(
        !matches!(read_index, Ok(Ok(_))),
        "a linearizable read on node {follower} got the leader's commit index across the partition"
    );
    let local = kv.get(get("k", false, first)).await?.into_inner();
    anyhow::ensure!(
        local.value == b"before",
        "node {follower} no longer serves what it had applied"
    );
    let majority = client
        .kv(leader)?
        .put(put("k", "majority"))
        .await?
        .into_inner();
    let (accepted, refused) = chaos.network.connection_counts();
    anyhow::ensure!(
        refused > 0,
        "the proxies refused nothing ({accepted} accepted)"
    );

    // Healed: writes through the follower land, and it catches up.
    chaos.network.heal();
    let healed = wait_for(
        "a write through the healed follower",
        Duration::from_secs(30),
        || {
            let mut kv = kv.clone();
            async move {
                Ok(match kv.put(put("k", "healed")).await {
                    Ok(reply) => Probe::Ready(reply.into_inner().index),
                    Err(status) => Probe::NotYet(status.message().to_owned()),
                })
            }
        },
    )
    .await?;
    anyhow::ensure!(
        healed > majority.index,
        "the healed write did not come after the majority's"
    );
    let caught_up = kv.get(get("k", false, healed)).await?.into_inner();
    anyhow::ensure!(
        caught_up.value == b"healed",
        "node {follower} did not catch up"
    );

    // 2. Pause the leader (which may have changed: the cut-off follower
    // may have called elections while alone).
    let leader = chaos.cluster.wait_for_leader(None).await?;
    let old = chaos.cluster.status(leader).await?;
    chaos.pause(leader)?;
    let others: Vec<u64> = chaos
        .cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let newer = wait_for(
        "the others to elect a leader in a newer term",
        Duration::from_secs(30),
        || {
            let cluster = &chaos.cluster;
            let others = others.clone();
            async move {
                for id in others {
                    if let Ok(status) = cluster.status(id).await {
                        if status.role == "leader" && status.term > old.term {
                            return Ok(Probe::Ready(status.term));
                        }
                    }
                }
                Ok(Probe::NotYet("no new leader yet".to_owned()))
            }
        },
    )
    .await?;
    chaos.resume(leader)?;
    let agreed = chaos.cluster.wait_for_leader(None).await?;
    let status = chaos.cluster.status(leader).await?;
    anyhow::ensure!(
        status.term >= newer,
        "the resumed leader still believes in term {} after term {newer} began",
        status.term
    );
    let mut old_kv = client.kv(leader)?;
    let last = wait_for(
        "a write through the resumed node",
        Duration::from_secs(30),
        || {
            let mut kv = old_kv.clone();
            async move {
                Ok(match kv.put(put("k", "after pause")).await {
                    Ok(reply) => Probe::Ready(reply.into_inner().index),
                    Err(status) => Probe::NotYet(status.message().to_owned()),
                })
            }
        },
    )
    .await?;
    let seen = old_kv.get(get("k", true, last)).await?.into_inner();
    anyhow::ensure!(seen.value == b"after pause", "node {leader} lost the write");
    eprintln!(
        "t122: partition and pause checked; node {agreed} leads in term {}",
        status.term
    );
    Ok(())
}
