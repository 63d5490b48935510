//! Replication through the public API of a three-node cluster: a write on
//! the leader is readable on every follower at its index, a write sent to a
//! follower is forwarded and applied exactly once, a request id cannot be
//! reused for another write, and a linearizable read on a follower sees the
//! write that was acknowledged just before it.
//!
//! Every call names the node it goes to (`client.kv(id)`), so each test
//! knows which node answered.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::Duration;

use agora_peer::{is_retryable, request_id};
use agora_proto::market::{GetReply, GetRequest, PutReply, PutRequest, ReadConsistency, RequestId};
use agora_tests::{wait_for, Probe, TestCluster, TestOptions};
use tonic::{Code, Status};

/// The client name of this file's request ids.
const CLIENT: &str = "t10";
/// Longest one call may take: the server bounds its own waits (10 s for a
/// write, 5 s for a read), so this only catches a hung node.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a read is retried while the node says it cannot answer yet.
const READ_DEADLINE: Duration = Duration::from_secs(30);

fn put_request(key: &str, value: &[u8], id: &RequestId) -> PutRequest {
    PutRequest {
        request_id: Some(id.clone()),
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

/// One `Put` on exactly node `on`: no retry, no redirect.
async fn put_on(
    cluster: &TestCluster,
    on: u64,
    request: PutRequest,
) -> anyhow::Result<Result<PutReply, Status>> {
    let mut kv = cluster.client().kv(on)?;
    let reply = tokio::time::timeout(CALL_TIMEOUT, kv.put(request))
        .await
        .map_err(|_| anyhow::anyhow!("node {on} did not answer a Put within {CALL_TIMEOUT:?}"))?;
    Ok(reply.map(tonic::Response::into_inner))
}

/// A `Get` answered by node `on`, asked again while the node says it is not
/// ready (unavailable: still catching up, no leader to confirm with). Any
/// answer it gives is returned as is, so a stale answer fails the test.
async fn get_on(
    cluster: &TestCluster,
    on: u64,
    key: &str,
    consistency: ReadConsistency,
) -> anyhow::Result<GetReply> {
    let kv = cluster.client().kv(on)?;
    let request = GetRequest {
        key: key.to_owned(),
        consistency: Some(consistency),
    };
    wait_for(
        &format!("node {on} to answer a read of {key:?}"),
        READ_DEADLINE,
        || {
            let mut kv = kv.clone();
            let request = request.clone();
            async move {
                match tokio::time::timeout(CALL_TIMEOUT, kv.get(request)).await {
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

fn at_index(min_index: u64) -> ReadConsistency {
    ReadConsistency {
        min_index,
        linearizable: false,
    }
}

fn linearizable() -> ReadConsistency {
    ReadConsistency {
        min_index: 0,
        linearizable: true,
    }
}

/// A three-node cluster, its leader and its two followers.
async fn three_nodes() -> anyhow::Result<(TestCluster, u64, Vec<u64>)> {
    let cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let followers: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    anyhow::ensure!(
        followers.len() == 2,
        "expected two followers: {followers:?}"
    );
    Ok((cluster, leader, followers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_the_leader_reads_back_on_every_follower() -> anyhow::Result<()> {
    let (cluster, leader, followers) = three_nodes().await?;

    let reply = put_on(
        &cluster,
        leader,
        put_request("colour", b"blue", &request_id(CLIENT)),
    )
    .await??;
    assert!(reply.index > 0, "a write is applied at a real log index");
    assert_eq!(reply.revision, 1, "first write of the key");

    for node in followers.iter().copied().chain([leader]) {
        let read = get_on(&cluster, node, "colour", at_index(reply.index)).await?;
        assert!(
            read.found,
            "node {node} does not have the write at {}",
            reply.index
        );
        assert_eq!(read.value, b"blue", "node {node}");
        assert_eq!(read.revision, 1, "node {node}");
        assert!(
            read.applied_index >= reply.index,
            "node {node} answered at index {} before the write's index {}",
            read.applied_index,
            reply.index
        );
    }

    // A second write of the key, read at its own index, replaces the first
    // everywhere: the followers do not answer from before it.
    let second = put_on(
        &cluster,
        leader,
        put_request("colour", b"green", &request_id(CLIENT)),
    )
    .await??;
    assert!(second.index > reply.index);
    assert_eq!(second.revision, 2);
    for node in followers {
        let read = get_on(&cluster, node, "colour", at_index(second.index)).await?;
        assert_eq!(read.value, b"green", "node {node}");
        assert_eq!(read.revision, 2, "node {node}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_a_follower_is_forwarded_and_applied_once() -> anyhow::Result<()> {
    let (cluster, leader, followers) = three_nodes().await?;
    let follower = followers[0];
    let status = cluster.status(follower).await?;
    assert_eq!(status.role, "follower", "node {follower} should follow");

    let id = request_id(CLIENT);
    let first = put_on(&cluster, follower, put_request("fruit", b"apple", &id)).await??;
    assert!(first.index > 0);
    assert_eq!(first.revision, 1, "the forwarded write is the key's first");

    // The same request again, on the same follower, on the other follower
    // and on the leader: the first answer every time, nothing applied again.
    // The indexes are checked last, so that a wrong one does not hide what
    // the rest of the test would find.
    let mut retry_indexes = Vec::new();
    for node in [follower, followers[1], leader] {
        let again = put_on(&cluster, node, put_request("fruit", b"apple", &id)).await??;
        assert_eq!(
            again.revision, first.revision,
            "a retry on node {node} must return the first answer"
        );
        retry_indexes.push((node, again.index));
    }
    let read = get_on(&cluster, leader, "fruit", linearizable()).await?;
    assert_eq!(
        (read.value.as_slice(), read.revision),
        (&b"apple"[..], 1),
        "retries must not be applied again"
    );

    // A new request id is a new write.
    let second = put_on(
        &cluster,
        follower,
        put_request("fruit", b"pear", &request_id(CLIENT)),
    )
    .await??;
    assert!(second.index > first.index);
    assert_eq!(second.revision, 2);

    // Every node agrees at that index: two writes, the second one last.
    for node in cluster.node_ids() {
        let read = get_on(&cluster, node, "fruit", at_index(second.index)).await?;
        assert_eq!(read.value, b"pear", "node {node}");
        assert_eq!(read.revision, 2, "node {node}");
    }

    for (node, index) in retry_indexes {
        assert_eq!(
            index, first.index,
            "a retry on node {node} must return the first answer's index {}, not the index of the retry's own log entry",
            first.index
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_write_are_applied_once() -> anyhow::Result<()> {
    let (cluster, leader, followers) = three_nodes().await?;

    // The same request sent many times at once, to every node: the leader
    // batches copies into one log entry and sees others in later entries;
    // either way the write happens once.
    let id = request_id(CLIENT);
    let nodes = [leader, followers[0], followers[1]];
    let copies = (0..12).map(|n| {
        let request = put_request("ticket", b"one", &id);
        put_on(&cluster, nodes[n % nodes.len()], request)
    });
    let replies = futures::future::join_all(copies).await;
    let mut highest = 0;
    for reply in replies {
        let reply = reply??;
        assert_eq!(reply.revision, 1, "a copy of the write was applied again");
        highest = highest.max(reply.index);
    }
    for node in nodes {
        let read = get_on(&cluster, node, "ticket", at_index(highest)).await?;
        assert_eq!(
            (read.value.as_slice(), read.revision),
            (&b"one"[..], 1),
            "node {node}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_for_another_write_is_refused() -> anyhow::Result<()> {
    let (cluster, leader, followers) = three_nodes().await?;

    // On the leader: same id, different value.
    let id = request_id(CLIENT);
    let first = put_on(&cluster, leader, put_request("tool", b"hammer", &id)).await??;
    assert_eq!(first.revision, 1);
    let reused = put_on(&cluster, leader, put_request("tool", b"saw", &id)).await?;
    let status = reused.err().map(|s| (s.code(), s.message().to_owned()));
    assert!(
        matches!(&status, Some((Code::AlreadyExists, _))),
        "reusing a request id for another value must be ALREADY_EXISTS, got {status:?}"
    );
    // Same id, different key, through a follower (the refusal crosses the
    // forwarding path).
    let reused = put_on(&cluster, followers[0], put_request("other", b"hammer", &id)).await?;
    let status = reused.err().map(|s| (s.code(), s.message().to_owned()));
    assert!(
        matches!(&status, Some((Code::AlreadyExists, _))),
        "reusing a request id for another key must be ALREADY_EXISTS, got {status:?}"
    );

    // Nothing of the refused writes landed.
    let tool = get_on(&cluster, leader, "tool", linearizable()).await?;
    assert_eq!((tool.value.as_slice(), tool.revision), (&b"hammer"[..], 1));
    let other = get_on(&cluster, leader, "other", linearizable()).await?;
    assert!(!other.found, "a refused write must not create its key");

    // A write first made through a follower, reused on the other follower.
    let id = request_id(CLIENT);
    put_on(&cluster, followers[0], put_request("metal", b"iron", &id)).await??;
    let reused = put_on(&cluster, followers[1], put_request("metal", b"gold", &id)).await?;
    let status = reused.err().map(|s| s.code());
    assert_eq!(status, Some(Code::AlreadyExists));

    // The id belongs to its client: another client may use the same string.
    let theirs = RequestId {
        client: format!("{CLIENT}-other-client"),
        id: id.id.clone(),
    };
    let reply = put_on(&cluster, leader, put_request("metal", b"gold", &theirs)).await??;
    assert_eq!(reply.revision, 2, "another client's id is another write");
    let metal = get_on(&cluster, followers[1], "metal", at_index(reply.index)).await?;
    assert_eq!((metal.value.as_slice(), metal.revision), (&b"gold"[..], 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_on_a_follower_sees_the_last_acknowledged_write() -> anyhow::Result<()>
{
    let (cluster, leader, followers) = three_nodes().await?;

    // Many rounds, alternating followers, each read sent the moment the
    // write is acknowledged: a follower that answered from its own applied
    // index would be caught behind the leader sooner or later.
    for round in 0..30_u64 {
        let value = round.to_string().into_bytes();
        let written = put_on(
            &cluster,
            leader,
            put_request("counter", &value, &request_id(CLIENT)),
        )
        .await??;
        assert_eq!(written.revision, round + 1);
        let follower = followers[usize::from(round % 2 == 1)];
        let read = get_on(&cluster, follower, "counter", linearizable()).await?;
        assert_eq!(
            (read.value.as_slice(), read.revision),
            (value.as_slice(), round + 1),
            "round {round}: follower {follower} answered at applied index {} without the write at {}",
            read.applied_index,
            written.index
        );
        assert!(read.applied_index >= written.index);
    }
    Ok(())
}
