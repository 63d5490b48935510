//! Restart and catch-up: a node that was killed misses writes, comes back
//! on the same data directory, and catches up, from the log or from a
//! snapshot when the log it missed was purged. Afterwards every node holds
//! the same state: `StateDigest` is equal on all nodes at the same applied
//! index.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::time::Duration;

use agora_peer::{is_retryable, request_id, ClusterClient};
use agora_proto::market::{GetRequest, ReadConsistency};
use agora_tests::{wait_for, Probe, TestCluster, TestOptions};
use futures::StreamExt as _;

/// The client name of this file's request ids.
const CLIENT: &str = "t30";
/// Writes in flight at once, so that the leader batches them.
const CONCURRENT_WRITES: usize = 16;
/// Single-entry writes while a follower is down, in the snapshot test.
const LATE_WRITES: u32 = 320;

/// The value of `key` at revision `revision`, as this file writes it.
fn value_of(key: &str, revision: u64) -> Vec<u8> {
    format!("{key} revision {revision}").into_bytes()
}

/// Writes `count` keys `{prefix}-{n}` that already have revision
/// `revision - 1`, `CONCURRENT_WRITES` at a time (so the leader batches
/// them), through the retrying client; returns the highest index
/// acknowledged.
async fn write_keys(
    client: &ClusterClient,
    prefix: &str,
    count: usize,
    revision: u64,
) -> anyhow::Result<u64> {
    let results: Vec<_> = futures::stream::iter(0..count)
        .map(|n| {
            let client = client.clone();
            let key = format!("{prefix}-{n:04}");
            async move {
                let value = value_of(&key, revision);
                client
                    .put(key.clone(), value, request_id(CLIENT))
                    .await
                    .map_err(|status| anyhow::anyhow!("writing {key} failed: {status:?}"))
            }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .collect()
        .await;
    let mut highest = 0;
    for result in results {
        let reply = result?;
        anyhow::ensure!(
            reply.revision == revision,
            "a write got revision {}, expected {revision}",
            reply.revision
        );
        highest = highest.max(reply.index);
    }
    Ok(highest)
}

/// Checks, on node `on` and at index `index`, the keys `write_keys` wrote.
async fn check_keys(
    cluster: &TestCluster,
    on: u64,
    prefix: &str,
    count: usize,
    revision: u64,
    index: u64,
) -> anyhow::Result<()> {
    let kv = cluster.client().kv(on)?;
    for n in 0..count {
        let key = format!("{prefix}-{n:04}");
        let request = GetRequest {
            key: key.clone(),
            consistency: Some(ReadConsistency {
                min_index: index,
                linearizable: false,
            }),
        };
        let reply = wait_for(
            &format!("node {on} to read {key}"),
            Duration::from_secs(30),
            || {
                let mut kv = kv.clone();
                let request = request.clone();
                async move {
                    match kv.get(request).await {
                        Ok(reply) => Ok(Probe::Ready(reply.into_inner())),
                        Err(status) if is_retryable(&status) => {
                            Ok(Probe::NotYet(format!("{status:?}")))
                        }
                        Err(status) => {
                            Err(anyhow::anyhow!("node {on} refused the read: {status:?}"))
                        }
                    }
                }
            },
        )
        .await?;
        let expected = value_of(&key, revision);
        anyhow::ensure!(
            reply.found && reply.value == expected && reply.revision == revision,
            "node {on} has {key} = {:?} at revision {} (found: {}), expected {:?} at revision {revision}",
            String::from_utf8_lossy(&reply.value),
            reply.revision,
            reply.found,
            String::from_utf8_lossy(&expected)
        );
    }
    Ok(())
}

/// Waits until every running node lines up at one applied index, no lower
/// than `at_least`, and asserts that their digests are equal there; returns
/// the index and the digest.
async fn assert_same_state(cluster: &TestCluster, at_least: u64) -> anyhow::Result<(u64, String)> {
    let ids = cluster.running_node_ids();
    let digests = cluster.wait_same_applied(&ids).await?;
    let index = digests.values().map(|d| d.applied_index).max().unwrap_or(0);
    assert!(
        index >= at_least,
        "the nodes lined up at index {index}, below the last write at {at_least}"
    );
    let distinct: BTreeSet<&str> = digests.values().map(|d| d.digest.as_str()).collect();
    assert_eq!(
        distinct.len(),
        1,
        "the nodes hold different states at index {index}: {digests:?}"
    );
    let digest = distinct.into_iter().next().unwrap_or_default().to_owned();
    Ok((index, digest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_the_log() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let client = cluster.client();
    let leader = cluster.wait_for_leader(None).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;

    let before = write_keys(&client, "before", 50, 1).await?;
    cluster.wait_applied(follower, before).await?;
    cluster.kill(follower)?;

    // Overwrite what it has and add what it has not.
    let while_down = write_keys(&client, "before", 50, 2).await?;
    write_keys(&client, "down", 200, 1).await?;
    let while_down = while_down.max(write_keys(&client, "down", 200, 2).await?);
    let leader_applied = cluster
        .wait_applied(leader, while_down)
        .await?
        .applied_index;

    cluster.restart(follower).await?;
    let status = cluster.wait_applied(follower, leader_applied).await?;
    assert!(status.applied_index >= while_down);
    check_keys(&cluster, follower, "down", 200, 2, while_down).await?;
    check_keys(&cluster, follower, "before", 50, 2, while_down).await?;
    assert_same_state(&cluster, while_down).await?;

    // It is a full member again: the cluster survives losing another node
    // only if it votes and replicates.
    let other = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .ok_or_else(|| anyhow::anyhow!("no other follower"))?;
    cluster.kill(other)?;
    let after = write_keys(&client, "after", 10, 1).await?;
    cluster.wait_applied(follower, after).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_rejoins_as_follower_and_catches_up() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let client = cluster.client();
    let old_leader = cluster.wait_for_leader(None).await?;

    write_keys(&client, "first", 40, 1).await?;
    cluster.kill(old_leader)?;
    let new_leader = cluster.wait_for_leader(Some(old_leader)).await?;
    write_keys(&client, "second", 120, 1).await?;
    let last = write_keys(&client, "second", 120, 2).await?;

    cluster.restart(old_leader).await?;
    let leader_applied = cluster.wait_applied(new_leader, last).await?.applied_index;
    let status = cluster.wait_applied(old_leader, leader_applied).await?;
    assert_ne!(
        status.role, "leader",
        "the restarted node must not lead: {status:?}"
    );
    check_keys(&cluster, old_leader, "second", 120, 2, last).await?;
    check_keys(&cluster, old_leader, "first", 40, 1, last).await?;
    assert_same_state(&cluster, last).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_purged_entries_installs_a_snapshot() -> anyhow::Result<()> {
    let options = TestOptions {
        snapshot_logs: Some(50),
        keep_logs: Some(5),
        ..TestOptions::default()
    };
    let mut cluster = TestCluster::start(3, options).await?;
    let client = cluster.client();
    let leader = cluster.wait_for_leader(None).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;

    // One write per log entry (no concurrency, so no batching).
    let mut before = 0;
    for n in 0..20 {
        let reply = client
            .put(
                format!("early-{n:04}"),
                b"early".to_vec(),
                request_id(CLIENT),
            )
            .await?;
        before = reply.index;
    }
    let behind = cluster.wait_applied(follower, before).await?.applied_index;
    cluster.kill(follower)?;

    // Enough single-entry writes that the leader snapshots and purges the
    // log past what the follower has. openraft purges in batches of the
    // server's purge batch size (256 entries), whatever `--keep-logs` says.
    let mut last = 0;
    for n in 0..LATE_WRITES {
        let reply = client
            .put(
                format!("late-{n:04}"),
                format!("late {n}").into_bytes(),
                request_id(CLIENT),
            )
            .await?;
        last = reply.index;
    }
    let deadline = cluster.options().deadline;
    wait_for(
        "the leader to purge its log past the stopped follower",
        deadline,
        || async {
            let status = cluster.status(leader).await?;
            Ok(if status.purged_index > behind {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!(
                    "snapshot at {}, purged up to {}, follower stopped at {behind}",
                    status.snapshot_index, status.purged_index
                ))
            })
        },
    )
    .await?;

    cluster.restart(follower).await?;
    let leader_applied = cluster.wait_applied(leader, last).await?.applied_index;
    cluster.wait_applied(follower, leader_applied).await?;
    let log = cluster.log_tail(follower, 400)?;
    assert!(
        log.contains("snapshot installed"),
        "node {follower} caught up past the leader's purged log without installing a snapshot?"
    );
    for n in [0, 1, LATE_WRITES / 2, LATE_WRITES - 1] {
        let key = format!("late-{n:04}");
        let read = client
            .get(
                key.clone(),
                ReadConsistency {
                    min_index: last,
                    linearizable: false,
                },
                Some(follower),
            )
            .await?;
        assert_eq!(
            read.value,
            format!("late {n}").into_bytes(),
            "{key} on node {follower}"
        );
        assert_eq!(read.revision, 1, "{key} on node {follower}");
    }
    let early = client
        .get(
            "early-0000",
            ReadConsistency {
                min_index: last,
                linearizable: false,
            },
            Some(follower),
        )
        .await?;
    assert!(
        early.found,
        "what the follower had before the snapshot is still there"
    );
    let (_, digest) = assert_same_state(&cluster, last).await?;

    // After the snapshot, ordinary replication goes on; and the digest
    // follows the data (equal digests above are not a constant).
    let next = client
        .put("after-snapshot", b"x".to_vec(), request_id(CLIENT))
        .await?;
    cluster.wait_applied(follower, next.index).await?;
    let (_, digest_after) = assert_same_state(&cluster, next.index).await?;
    assert_ne!(digest, digest_after, "a write must change the state digest");

    // Nodes restart from their own snapshot and what is left of their log:
    // the follower (whose log now starts at the installed snapshot), then
    // the leader (which purged its log).
    let purged = cluster.status(follower).await?.purged_index;
    assert!(
        purged > 0,
        "node {follower} kept the log the snapshot covers"
    );
    cluster.kill(follower)?;
    cluster.restart(follower).await?;
    let status = cluster.wait_applied(follower, next.index).await?;
    assert!(status.purged_index >= purged, "{status:?}");
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader(Some(leader)).await?;
    let while_restarting = client
        .put("while-restarting", b"y".to_vec(), request_id(CLIENT))
        .await?;
    cluster.restart(leader).await?;
    cluster.wait_applied(leader, while_restarting.index).await?;
    for (node, key) in [
        (leader, "late-0000"),
        (leader, "early-0000"),
        (follower, "while-restarting"),
    ] {
        let read = client
            .get(
                key,
                ReadConsistency {
                    min_index: while_restarting.index,
                    linearizable: false,
                },
                Some(node),
            )
            .await?;
        assert!(
            read.found,
            "{key} is missing on node {node} after its restart"
        );
        assert_eq!(read.revision, 1, "{key} on node {node}");
    }
    assert_eq!(cluster.wait_for_leader(None).await?, new_leader);
    assert_same_state(&cluster, while_restarting.index).await?;
    Ok(())
}
