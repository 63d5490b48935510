//! Leader failover: the leader of a three-node cluster is SIGKILLed in the
//! middle of a stream of writes. A new leader must take over within a
//! bounded time, every write that was acknowledged must survive, and a
//! client that retries its writes (acknowledged or not) with the same
//! request ids must not get any of them applied twice.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agora_peer::{is_retryable, request_id, ClusterClient};
use agora_proto::market::{GetReply, GetRequest, PutRequest, ReadConsistency, RequestId};
use agora_tests::{wait_for, Probe, TestCluster, TestOptions};

/// The client name of this file's request ids.
const CLIENT: &str = "t20";
/// Longest the cluster may go without a leader after the crash.
const MAX_ELECTION_GAP: Duration = Duration::from_secs(15);
/// Longest one write of the stream may take before it counts as
/// unacknowledged (the server gives up after 10 s itself).
const STREAM_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause of the stream after a failed write, so that an election does not
/// turn into a busy loop of refusals.
const STREAM_PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(50);
/// Acknowledged writes before the crash, and after it.
const ACKS_BEFORE_CRASH: usize = 40;
const ACKS_AFTER_CRASH: usize = 20;
/// Longest a read is retried while the node says it cannot answer yet.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// One write of the stream and what came of it.
#[derive(Debug, Clone)]
struct StreamWrite {
    key: String,
    value: Vec<u8>,
    id: RequestId,
    /// `(index, revision)` when acknowledged.
    ack: Option<(u64, u64)>,
    /// When the answer (or the failure) came.
    at: Instant,
}

/// Writes distinct keys one after another to node `via` (which forwards to
/// whoever leads) until `stop`, recording every outcome. No retries: a
/// failed write is recorded unacknowledged and the stream moves on.
async fn write_stream(
    client: ClusterClient,
    via: u64,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<StreamWrite>>>,
) -> anyhow::Result<()> {
    let kv = client.kv(via)?;
    let mut n = 0_u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("stream-{n:05}");
        let value = format!("value {n}").into_bytes();
        let id = request_id(CLIENT);
        let request = PutRequest {
            request_id: Some(id.clone()),
            key: key.clone(),
            value: value.clone(),
        };
        let mut kv = kv.clone();
        let ack = match tokio::time::timeout(STREAM_CALL_TIMEOUT, kv.put(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                Some((reply.index, reply.revision))
            }
            Ok(Err(_)) | Err(_) => None,
        };
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(StreamWrite {
                key,
                value,
                id,
                ack,
                at: Instant::now(),
            });
        if ack.is_none() {
            tokio::time::sleep(STREAM_PAUSE_AFTER_FAILURE).await;
        }
    }
    Ok(())
}

fn acks_after(log: &Mutex<Vec<StreamWrite>>, since: Option<Instant>) -> usize {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|w| w.ack.is_some() && since.is_none_or(|t| w.at > t))
        .count()
}

/// A linearizable read of `key` answered by node `on`, asked again while
/// the node is not ready.
async fn read_linearizable(cluster: &TestCluster, on: u64, key: &str) -> anyhow::Result<GetReply> {
    let kv = cluster.client().kv(on)?;
    let request = GetRequest {
        key: key.to_owned(),
        consistency: Some(ReadConsistency {
            min_index: 0,
            linearizable: true,
        }),
    };
    wait_for(
        &format!("node {on} to answer a read of {key:?}"),
        READ_DEADLINE,
        || {
            let mut kv = kv.clone();
            let request = request.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(15), kv.get(request)).await {
                    Ok(Ok(reply)) => Ok(Probe::Ready(reply.into_inner())),
                    Ok(Err(status)) if is_retryable(&status) => {
                        Ok(Probe::NotYet(format!("{status:?}")))
                    }
                    Ok(Err(status)) => {
                        Err(anyhow::anyhow!("node {on} refused the read: {status:?}"))
                    }
                    Err(_) => Ok(Probe::NotYet("the read timed out".to_owned())),
                }
            }
        },
    )
    .await
}

/// Waits until the stream has `n` acknowledged writes since `since` (all
/// of them for `None`).
async fn wait_for_acks(
    deadline: Duration,
    log: &Mutex<Vec<StreamWrite>>,
    n: usize,
    since: Option<Instant>,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{n} acknowledged writes of the stream"),
        deadline,
        || {
            let acks = acks_after(log, since);
            async move {
                Ok(if acks >= n {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!("{acks} acknowledged"))
                })
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let deadline = cluster.options().deadline;
    let old_leader = cluster.wait_for_leader(None).await?;
    // The stream goes through a follower that survives, so it keeps going
    // through the crash and the election (forwarded to whoever leads).
    let via = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != old_leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stream = tokio::spawn(write_stream(
        cluster.client(),
        via,
        stop.clone(),
        log.clone(),
    ));

    wait_for_acks(deadline, &log, ACKS_BEFORE_CRASH, None).await?;
    cluster.kill(old_leader)?;
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader(Some(old_leader)).await?;
    let election_gap = killed_at.elapsed();
    wait_for_acks(deadline, &log, ACKS_AFTER_CRASH, Some(killed_at)).await?;
    stop.store(true, Ordering::SeqCst);
    stream.await??;

    assert_ne!(new_leader, old_leader);
    assert!(
        election_gap < MAX_ELECTION_GAP,
        "no leader for {election_gap:?} after the crash (limit {MAX_ELECTION_GAP:?})"
    );

    let writes = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let acked: Vec<&StreamWrite> = writes.iter().filter(|w| w.ack.is_some()).collect();
    let unacked: Vec<&StreamWrite> = writes.iter().filter(|w| w.ack.is_none()).collect();
    let last_ack_before = acked
        .iter()
        .filter(|w| w.at <= killed_at)
        .map(|w| w.at)
        .max();
    let first_ack_after = acked
        .iter()
        .filter(|w| w.at > killed_at)
        .map(|w| w.at)
        .min();
    let write_gap = match (last_ack_before, first_ack_after) {
        (Some(before), Some(after)) => after.duration_since(before),
        _ => Duration::ZERO,
    };
    eprintln!(
        "t20: node {old_leader} killed, node {new_leader} leads after {election_gap:?}; writes: {} acknowledged, {} not; no acknowledgement for {write_gap:?}",
        acked.len(),
        unacked.len()
    );
    // The election takes at least one election timeout, during which the
    // stream's writes fail: without any, the retry check below would check
    // nothing.
    assert!(
        !unacked.is_empty(),
        "no write failed during the election; the crash was not mid-stream"
    );

    // Every acknowledged write survived, applied once.
    for write in &acked {
        assert_eq!(
            write.ack.map(|(_, revision)| revision),
            Some(1),
            "{} is a fresh key",
            write.key
        );
        let read = read_linearizable(&cluster, new_leader, &write.key).await?;
        assert!(
            read.found,
            "the acknowledged write of {} (at {:?}) is lost",
            write.key, write.ack
        );
        assert_eq!(read.value, write.value, "{}", write.key);
        assert_eq!(read.revision, 1, "{} was applied more than once", write.key);
    }

    // The client retries everything with the same request ids, through its
    // ordinary retrying path: nothing is applied a second time, and what
    // had not landed lands once.
    let client = cluster.client();
    let mut wrong_indexes = Vec::new();
    for write in &writes {
        let reply = client
            .put(write.key.clone(), write.value.clone(), write.id.clone())
            .await
            .map_err(|status| anyhow::anyhow!("retrying {}: {status:?}", write.key))?;
        assert_eq!(
            reply.revision, 1,
            "the retry of {} was applied again (acknowledged: {:?})",
            write.key, write.ack
        );
        if let Some((index, _)) = write.ack {
            if reply.index != index {
                wrong_indexes.push((write.key.clone(), index, reply.index));
            }
        }
    }
    for write in &writes {
        let read = read_linearizable(&cluster, new_leader, &write.key).await?;
        assert!(read.found, "{} is missing after its retry", write.key);
        assert_eq!(read.value, write.value, "{}", write.key);
        assert_eq!(
            read.revision, 1,
            "{} was applied {} times",
            write.key, read.revision
        );
    }
    // Checked last so that it does not hide the checks above: a retry of an
    // acknowledged write must return the first answer, index included.
    assert!(
        wrong_indexes.is_empty(),
        "{} retries of acknowledged writes returned another index than the first answer, as (key, first index, retry's index): {:?}",
        wrong_indexes.len(),
        &wrong_indexes[..wrong_indexes.len().min(5)]
    );
    Ok(())
}
