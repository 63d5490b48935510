//! Membership changes through the admin API: a node joins a cluster whose
//! log was purged behind a snapshot (it must install the snapshot, catch up
//! and end with the same state), is promoted to voter, an original node is
//! removed and the cluster keeps working; removals that would leave the
//! cluster unable to survive a crash are refused unless forced, and the
//! last voter can never be removed.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::time::Duration;

use agora_peer::request_id;
use agora_proto::admin::admin_service_client::AdminServiceClient;
use agora_proto::admin::{
    AddLearnerRequest, Member, MembershipReply, PromoteVoterRequest, RemoveNodeRequest,
    TriggerSnapshotRequest,
};
use agora_proto::market::{
    ListingFields, PublishRequest, ReadConsistency, SearchRequest, UnpublishRequest,
};
use agora_tests::{wait_for, Probe, TestCluster, TestOptions};
use tonic::{Code, Status};

/// The client name of this file's request ids.
const CLIENT: &str = "t40";
/// Longest a membership call may take: `AddLearner` waits for the learner
/// to catch up, within 60 s on the server side.
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(75);
/// Single-entry writes before the new node joins. openraft purges the log
/// in batches of the server's purge batch size (256 entries), whatever
/// `--keep-logs` says, so there must be more than that.
const WRITES_BEFORE_JOIN: u32 = 300;
/// Longest a `TriggerSnapshot` may take: building a small snapshot takes
/// well under a second even on a busy machine (the server waits up to 60 s
/// itself).
const TRIGGER_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one admin call on node `on`, bounded by [`MEMBERSHIP_CALL_TIMEOUT`].
async fn admin_call<T, F, Fut>(
    cluster: &TestCluster,
    on: u64,
    call: F,
) -> anyhow::Result<Result<T, Status>>
where
    F: FnOnce(AdminServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let admin = AdminServiceClient::new(cluster.client().channel(on)?);
    let reply = tokio::time::timeout(MEMBERSHIP_CALL_TIMEOUT, call(admin))
        .await
        .map_err(|_| {
            anyhow::anyhow!("node {on} did not answer within {MEMBERSHIP_CALL_TIMEOUT:?}")
        })?;
    Ok(reply.map(tonic::Response::into_inner))
}

async fn remove(
    cluster: &TestCluster,
    on: u64,
    id: u64,
    force: bool,
) -> anyhow::Result<Result<MembershipReply, Status>> {
    admin_call(cluster, on, |mut admin| async move {
        admin.remove_node(RemoveNodeRequest { id, force }).await
    })
    .await
}

fn ids(members: &[Member]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let voters = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let learners = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
    (voters, learners)
}

/// Waits until every node of `nodes` reports exactly `voters` as voters and
/// no learner.
async fn wait_membership(
    cluster: &TestCluster,
    nodes: &[u64],
    voters: &BTreeSet<u64>,
) -> anyhow::Result<()> {
    wait_for(
        &format!("nodes {nodes:?} to see voters {voters:?}"),
        cluster.options().deadline,
        || async {
            for node in nodes {
                let status = cluster.status(*node).await?;
                let (seen, learners) = ids(&status.members);
                if &seen != voters || !learners.is_empty() {
                    return Ok(Probe::NotYet(format!(
                        "node {node} sees voters {seen:?}, learners {learners:?}"
                    )));
                }
            }
            Ok(Probe::Ready(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_from_a_snapshot_and_an_old_one_leaves() -> anyhow::Result<()> {
    let options = TestOptions {
        snapshot_logs: Some(50),
        keep_logs: Some(5),
        ..TestOptions::default()
    };
    let mut cluster = TestCluster::start(3, options).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let client = cluster.client();

    // Ledger rows that reference each other (accounts, journal, a posted
    // hold) must travel in the snapshot too.
    for name in ["buyer", "seller"] {
        agora_peer::account::register(&client, name, b"snapshot ledger pw", false).await?;
    }
    agora_peer::ledger::deposit(&client, "buyer", 10_000, "t40-deposit").await?;
    let hold = agora_peer::ledger::open_hold(
        &client,
        &agora_peer::ledger::NewHold {
            holder: "buyer".into(),
            payee: "seller".into(),
            amount: 2_500,
            ttl: None,
        },
        "t40-hold",
    )
    .await?;
    agora_peer::ledger::post_hold(&client, hold.hold_id, "t40-post").await?;

    // Listings too: the full-text index is not copied with the snapshot but
    // rebuilt from the listings it carries, so the newcomer must find the
    // listing still on sale and not the unpublished one.
    let seller = agora_peer::account::login(&client, "seller", b"snapshot ledger pw").await?;
    let mut catalogue = cluster
        .client()
        .with_token(&seller.token)?
        .catalogue(leader)?;
    let mut listing_ids = Vec::new();
    for (n, title) in ["Snapshotted atlas", "Snapshotted almanac"]
        .into_iter()
        .enumerate()
    {
        let reply = catalogue
            .publish(PublishRequest {
                request_id: Some(request_id(format!("{CLIENT}-publish-{n}"))),
                fields: Some(ListingFields {
                    title: title.into(),
                    ..ListingFields::default()
                }),
                size: 10,
                chunk_size: 4096,
                merkle_root: vec![u8::try_from(n)?; 32],
                price: 100,
            })
            .await?
            .into_inner();
        listing_ids.push(reply.listing.map(|l| l.id).unwrap_or_default());
    }
    catalogue
        .unpublish(UnpublishRequest {
            request_id: Some(request_id(format!("{CLIENT}-unpublish"))),
            listing_id: listing_ids[1],
        })
        .await?;

    // One log entry per write (no concurrency, so no batching).
    for n in 0..WRITES_BEFORE_JOIN {
        client
            .put(
                format!("key-{n:04}"),
                format!("value {n}").into_bytes(),
                request_id(CLIENT),
            )
            .await?;
    }
    let snapshot = admin_call(&cluster, leader, |mut admin| async move {
        admin.trigger_snapshot(TriggerSnapshotRequest {}).await
    })
    .await??;
    let leader_status = cluster.status(leader).await?;
    assert!(
        snapshot.snapshot_index > 0 && snapshot.snapshot_index <= leader_status.applied_index,
        "TriggerSnapshot answered {snapshot:?} with the leader at {leader_status:?}"
    );
    wait_for(
        "the leader to purge its log",
        cluster.options().deadline,
        || async {
            let status = cluster.status(leader).await?;
            Ok(if status.purged_index > 0 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!(
                    "snapshot at {}, nothing purged",
                    status.snapshot_index
                ))
            })
        },
    )
    .await?;

    // A fourth node joins as a learner: its log starts after the purge, so
    // only a snapshot can bring it up to date.
    let joined = cluster.add_node().await?;
    let newcomer = joined.id;
    let client = cluster.client(); // now with the newcomer
    let member = cluster.member(newcomer, false)?;
    let reply = admin_call(&cluster, leader, |mut admin| async move {
        admin
            .add_learner(AddLearnerRequest {
                member: Some(member),
            })
            .await
    })
    .await??;
    let (voters, learners) = ids(&reply.members);
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    assert_eq!(learners, BTreeSet::from([newcomer]));
    let status = cluster.status(newcomer).await?;
    assert_eq!(status.role, "learner", "{status:?}");

    let reply = admin_call(&cluster, leader, |mut admin| async move {
        admin
            .promote_voter(PromoteVoterRequest { id: newcomer })
            .await
    })
    .await??;
    let (voters, learners) = ids(&reply.members);
    assert_eq!(voters, BTreeSet::from([1, 2, 3, newcomer]));
    assert!(learners.is_empty(), "{learners:?}");

    let leader_applied = cluster.status(leader).await?.applied_index;
    let status = cluster.wait_applied(newcomer, leader_applied).await?;
    assert!(
        status.snapshot_index > 0,
        "node {newcomer} caught up without a snapshot: {status:?}"
    );
    assert!(
        cluster
            .log_tail(newcomer, 400)?
            .contains("snapshot installed"),
        "node {newcomer} does not log a snapshot install"
    );
    for n in [0, WRITES_BEFORE_JOIN - 1] {
        let read = client
            .get(
                format!("key-{n:04}"),
                ReadConsistency {
                    min_index: leader_applied,
                    linearizable: false,
                },
                Some(newcomer),
            )
            .await?;
        assert_eq!(
            read.value,
            format!("value {n}").into_bytes(),
            "key-{n:04} on node {newcomer}"
        );
        assert_eq!(read.revision, 1);
    }
    let found = cluster
        .client()
        .catalogue(newcomer)?
        .search(SearchRequest {
            text: "snapshotted".into(),
            consistency: Some(ReadConsistency {
                min_index: leader_applied,
                linearizable: false,
            }),
            ..SearchRequest::default()
        })
        .await?
        .into_inner();
    let found: Vec<u64> = found
        .results
        .iter()
        .filter_map(|r| r.listing.as_ref().map(|l| l.id))
        .collect();
    assert_eq!(
        found,
        vec![listing_ids[0]],
        "search on node {newcomer} after the snapshot install"
    );
    let audit = agora_peer::ledger::audit_on(&client, newcomer).await?;
    assert!(
        audit.clean,
        "the newcomer's ledger audit: {:?}",
        audit.problems
    );
    assert_eq!(
        audit.journal_entries, 3,
        "deposit, sale, commission: {audit:?}"
    );
    let all = cluster.node_ids();
    let digests = cluster.wait_same_applied(&all).await?;
    let distinct: BTreeSet<&str> = digests.values().map(|d| d.digest.as_str()).collect();
    assert_eq!(
        distinct.len(),
        1,
        "different states at one index: {digests:?}"
    );

    // An original follower leaves; four voters become three.
    let leaving = all
        .iter()
        .copied()
        .find(|id| *id != leader && *id != newcomer)
        .ok_or_else(|| anyhow::anyhow!("no original follower"))?;
    let reply = remove(&cluster, leader, leaving, false).await??;
    let (voters, learners) = ids(&reply.members);
    let remaining: BTreeSet<u64> = all.iter().copied().filter(|id| *id != leaving).collect();
    assert_eq!(voters, remaining);
    assert!(learners.is_empty());
    let remaining_ids: Vec<u64> = remaining.iter().copied().collect();
    wait_membership(&cluster, &remaining_ids, &remaining).await?;

    // The cluster keeps working without it (it is still running).
    let after = client
        .put("after-removal", b"still here".to_vec(), request_id(CLIENT))
        .await?;
    assert_eq!(after.revision, 1);
    for node in &remaining_ids {
        cluster.wait_applied(*node, after.index).await?;
    }
    let leader = cluster.wait_for_leader(Some(leaving)).await?;

    // Three voters: removing one more without force is refused, and
    // changes nothing.
    let next = remaining_ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower left"))?;
    let refused = remove(&cluster, leader, next, false).await?;
    let code = refused.as_ref().err().map(Status::code);
    assert_eq!(
        code,
        Some(Code::FailedPrecondition),
        "going below three voters without force: {refused:?}"
    );
    wait_membership(&cluster, &remaining_ids, &remaining).await?;

    // A node that is not a member cannot be removed.
    let unknown = remove(&cluster, leader, leaving, false).await?;
    assert_eq!(
        unknown.as_ref().err().map(Status::code),
        Some(Code::NotFound),
        "{unknown:?}"
    );

    // With force it goes, and two voters still make progress.
    let reply = remove(&cluster, leader, next, true).await??;
    let (voters, _) = ids(&reply.members);
    assert_eq!(voters.len(), 2, "{reply:?}");
    let last = client
        .put("two-voters", b"ok".to_vec(), request_id(CLIENT))
        .await?;
    assert_eq!(last.revision, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_snapshot_during_an_automatic_snapshot_still_builds_one() -> anyhow::Result<()> {
    const SNAPSHOT_LOGS: u64 = 50;
    let options = TestOptions {
        snapshot_logs: Some(SNAPSHOT_LOGS),
        ..TestOptions::default()
    };
    let cluster = TestCluster::start(1, options).await?;
    let client = cluster.client();
    // Several rounds: in each, the write that reaches the snapshot policy's
    // threshold starts an automatic snapshot on the node; one more write
    // moves the applied index past what it will cover, and TriggerSnapshot
    // follows at once, while that build is most likely still running. It
    // must still produce a snapshot covering everything applied before the
    // call (a build takes well under a second; the call is given far more).
    for round in 0..4 {
        let mut index = 0;
        let mut n = 0;
        while index == 0 || index % SNAPSHOT_LOGS != SNAPSHOT_LOGS - 1 {
            n += 1;
            index = client
                .put(
                    format!("round-{round}-{n}"),
                    b"v".to_vec(),
                    request_id(CLIENT),
                )
                .await?
                .index;
        }
        let past = client
            .put(
                format!("round-{round}-past"),
                b"v".to_vec(),
                request_id(CLIENT),
            )
            .await?
            .index;
        let reply = tokio::time::timeout(
            TRIGGER_SNAPSHOT_TIMEOUT,
            AdminServiceClient::new(client.channel(1)?).trigger_snapshot(TriggerSnapshotRequest {}),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "round {round}: TriggerSnapshot did not return within {TRIGGER_SNAPSHOT_TIMEOUT:?} (applied {past}, automatic snapshot at {index})"
            )
        })?
        .map_err(|status| anyhow::anyhow!("round {round}: TriggerSnapshot failed: {status:?}"))?
        .into_inner();
        assert!(
            reply.snapshot_index >= past,
            "round {round}: the snapshot covers {} but {past} was applied before the call",
            reply.snapshot_index
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_cannot_be_removed() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, TestOptions::default()).await?;
    for force in [false, true] {
        let refused = remove(&cluster, 1, 1, force).await?;
        assert_eq!(
            refused.as_ref().err().map(Status::code),
            Some(Code::FailedPrecondition),
            "removing the only voter (force: {force}): {refused:?}"
        );
    }
    let status = cluster.status(1).await?;
    assert_eq!(ids(&status.members).0, BTreeSet::from([1]));
    let reply = cluster
        .client()
        .put("still-alive", b"yes".to_vec(), request_id(CLIENT))
        .await?;
    assert_eq!(reply.revision, 1);
    Ok(())
}
