//! What the cluster must refuse, and how: oversized and malformed client
//! requests get a clear gRPC error and change nothing; admin calls need the
//! cluster's client certificate; the Raft listener talks only to holders of
//! a cluster-CA certificate (a node with another CA's certificate never
//! receives the log, while the cluster keeps working), and refuses a
//! malformed Raft message from a properly certified client.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::{Duration, Instant};

use agora_peer::{request_id, ClientIdentity, ClientTls, ClusterClient};
use agora_proto::admin::admin_service_client::AdminServiceClient;
use agora_proto::admin::{AddLearnerRequest, RemoveNodeRequest, StatusRequest};
use agora_proto::cluster_file::DEFAULT_SERVER_NAME;
use agora_proto::market::{PutReply, PutRequest, ReadConsistency, RequestId};
use agora_proto::raft::raft_service_client::RaftServiceClient;
use agora_proto::raft::{ForwardWriteRequest, RaftPayload};
use agora_tests::{wait_for, CertDir, Probe, TestCluster, TestOptions, POLL_INTERVAL};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// The client name of this file's request ids.
const CLIENT: &str = "t50";
/// Longest one call may take before the test calls the node hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest value a Put may carry (`MAX_VALUE_BYTES` on the server).
const VALUE_LIMIT: usize = 64 * 1024;
/// How long the test keeps watching a node that must not receive the log,
/// while the cluster writes: replication to a healthy learner takes
/// milliseconds, so nothing arriving in this window means nothing arrives.
const NOTHING_ARRIVES_WINDOW: Duration = Duration::from_secs(3);
/// How long the test lets `AddLearner` for an unreachable node run before
/// it stops waiting (the server gives up after 60 s by itself).
const ADD_LEARNER_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn put_request(key: &str, value: Vec<u8>, id: Option<RequestId>) -> PutRequest {
    PutRequest {
        request_id: id,
        key: key.to_owned(),
        value,
    }
}

/// One `Put` on exactly node `on`.
async fn put_on(
    client: &ClusterClient,
    on: u64,
    request: PutRequest,
) -> anyhow::Result<Result<PutReply, Status>> {
    let mut kv = client.kv(on)?;
    let reply = tokio::time::timeout(CALL_TIMEOUT, kv.put(request))
        .await
        .map_err(|_| anyhow::anyhow!("node {on} did not answer a Put within {CALL_TIMEOUT:?}"))?;
    Ok(reply.map(tonic::Response::into_inner))
}

/// The code and message of a refusal; fails the test on success.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, Status>) -> (Code, String) {
    match result {
        Ok(value) => panic!("{what} was accepted: {value:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Whether `key` exists, by a linearizable read on node `on`.
async fn exists(client: &ClusterClient, on: u64, key: &str) -> anyhow::Result<bool> {
    let read = client
        .get(
            key,
            ReadConsistency {
                min_index: 0,
                linearizable: true,
            },
            Some(on),
        )
        .await?;
    Ok(read.found)
}

fn read_pem(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("could not read {}: {e}", path.display()))
}

/// A Raft-service client for `raft_addr` that trusts `trust`'s CA and
/// presents node certificate `cert_id` of `identity` (or nothing).
fn raft_client(
    raft_addr: &str,
    trust: &CertDir,
    identity: Option<(&CertDir, u64)>,
) -> anyhow::Result<RaftServiceClient<Channel>> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem(&trust.ca())?))
        .domain_name(DEFAULT_SERVER_NAME);
    if let Some((certs, id)) = identity {
        tls = tls.identity(Identity::from_pem(
            read_pem(&certs.node_cert(id))?,
            read_pem(&certs.node_key(id))?,
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{raft_addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(RaftServiceClient::new(channel))
}

/// Whether a failed call failed in the transport (no server handler ever
/// answered), as opposed to a status the server chose.
fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        || matches!(status.code(), Code::Unavailable | Code::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_puts_get_clear_errors_and_change_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let client = cluster.client();

    for node in [leader, follower] {
        // Beyond the public listener's message limit (4 MiB): refused by
        // gRPC before any handler runs.
        let huge = put_request("huge", vec![7; 5 * 1024 * 1024], Some(request_id(CLIENT)));
        let (code, message) = refusal("a 5 MiB put", put_on(&client, node, huge).await?);
        assert!(
            matches!(code, Code::ResourceExhausted | Code::OutOfRange),
            "a 5 MiB put on node {node}: {code:?} {message}"
        );

        // Within the message limit, beyond the value limit: the domain rule.
        let big = put_request("big", vec![7; 100 * 1024], Some(request_id(CLIENT)));
        let (code, message) = refusal("a 100 KiB value", put_on(&client, node, big).await?);
        assert_eq!(code, Code::InvalidArgument, "node {node}: {message}");
        assert!(
            message.contains("limit") && message.contains(&VALUE_LIMIT.to_string()),
            "the refusal should state the limit of {VALUE_LIMIT} bytes: {message}"
        );

        let empty_key = put_request("", b"v".to_vec(), Some(request_id(CLIENT)));
        let (code, message) = refusal("an empty key", put_on(&client, node, empty_key).await?);
        assert_eq!(code, Code::InvalidArgument, "node {node}: {message}");
        assert!(message.contains("key"), "{message}");

        let no_id = put_request("no-id", b"v".to_vec(), None);
        let (code, message) = refusal(
            "a put without request id",
            put_on(&client, node, no_id).await?,
        );
        assert_eq!(code, Code::InvalidArgument, "node {node}: {message}");
        assert!(message.contains("request_id"), "{message}");

        let empty_id = RequestId {
            client: CLIENT.to_owned(),
            id: String::new(),
        };
        let empty_id = put_request("empty-id", b"v".to_vec(), Some(empty_id));
        let (code, message) = refusal(
            "an empty request id",
            put_on(&client, node, empty_id).await?,
        );
        assert_eq!(code, Code::InvalidArgument, "node {node}: {message}");
    }

    // None of it landed, and the cluster still takes a good write.
    for key in ["huge", "big", "no-id", "empty-id"] {
        assert!(
            !exists(&client, leader, key).await?,
            "the refused write of {key:?} landed"
        );
    }
    // A value exactly at the limit is fine.
    let ok = put_on(
        &client,
        follower,
        put_request("at-limit", vec![1; VALUE_LIMIT], Some(request_id(CLIENT))),
    )
    .await??;
    assert_eq!(ok.revision, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_client_certificate() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, TestOptions::default()).await?;
    let addr = cluster.node(1)?.api_addr.clone();

    // The cluster's CA, no client certificate: a peer.
    let anonymous = ClientTls {
        identity: None,
        ..cluster.client_tls().clone()
    };
    let peer = ClusterClient::from_parts(&anonymous, [(1, addr.clone())])?;
    // The public service answers it (so TLS itself works)...
    let read = peer
        .get(
            "anything",
            ReadConsistency {
                min_index: 0,
                linearizable: false,
            },
            Some(1),
        )
        .await?;
    assert!(!read.found);
    // ...the admin service does not.
    let mut admin = AdminServiceClient::new(peer.channel(1)?);
    let (code, message) = refusal(
        "Status without a certificate",
        admin.status(StatusRequest {}).await,
    );
    assert_eq!(code, Code::Unauthenticated, "{message}");
    let member = cluster.member(1, true)?;
    let (code, _) = refusal(
        "AddLearner without a certificate",
        admin
            .add_learner(AddLearnerRequest {
                member: Some(member),
            })
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    let (code, _) = refusal(
        "RemoveNode without a certificate",
        admin
            .remove_node(RemoveNodeRequest { id: 1, force: true })
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);

    // A client certificate from another CA does not get in either.
    let other = cluster.make_other_ca("other-ca", 1).await?;
    let foreign = ClientTls {
        identity: Some(ClientIdentity {
            cert_pem: read_pem(&other.client_cert())?,
            key_pem: read_pem(&other.client_key())?,
        }),
        ..cluster.client_tls().clone()
    };
    let intruder = ClusterClient::from_parts(&foreign, [(1, addr)])?;
    let mut admin = AdminServiceClient::new(intruder.channel(1)?);
    let result = tokio::time::timeout(CALL_TIMEOUT, admin.status(StatusRequest {})).await?;
    assert!(
        result.is_err(),
        "another CA's client certificate was accepted: {result:?}"
    );

    // With the cluster's certificate, it works.
    let status = cluster.status(1).await?;
    assert_eq!(status.id, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_listener_needs_a_cluster_certificate_and_well_formed_messages(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let target = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let raft_addr = cluster.node(target)?.raft_addr.clone();
    let own = cluster.certs().clone();
    let other = cluster.make_other_ca("other-ca", 1).await?;
    let garbage = RaftPayload {
        data: vec![0xff; 64],
    };

    // Another CA's certificate (the server's own certificate is trusted, so
    // only the server's check of the client can fail): refused at TLS,
    // before any handler.
    for identity in [Some((&other, 1)), None] {
        let mut raft = raft_client(&raft_addr, &own, identity)?;
        let result =
            tokio::time::timeout(CALL_TIMEOUT, raft.append_entries(garbage.clone())).await?;
        let who = if identity.is_some() {
            "another CA's certificate"
        } else {
            "no certificate"
        };
        match result {
            Ok(reply) => panic!("AppendEntries with {who} was answered: {reply:?}"),
            Err(status) => assert!(
                is_transport_failure(&status),
                "AppendEntries with {who} should fail at TLS, not get an answer: {status:?}"
            ),
        }
    }

    // A cluster certificate gets through, and a malformed message is
    // refused as such.
    let spare = own.nodes();
    let mut raft = raft_client(&raft_addr, &own, Some((&own, spare)))?;
    for (rpc, result) in [
        (
            "AppendEntries",
            raft.append_entries(garbage.clone()).await.map(|_| ()),
        ),
        ("Vote", raft.vote(garbage.clone()).await.map(|_| ())),
        (
            "InstallSnapshot",
            raft.install_snapshot(garbage.clone()).await.map(|_| ()),
        ),
        (
            "AppendEntries (empty)",
            raft.append_entries(RaftPayload::default())
                .await
                .map(|_| ()),
        ),
        (
            "ForwardWrite",
            raft.forward_write(ForwardWriteRequest {
                proposal: vec![0xff; 64],
            })
            .await
            .map(|_| ()),
        ),
    ] {
        let (code, message) = refusal(&format!("a malformed {rpc}"), result);
        assert_eq!(code, Code::InvalidArgument, "a malformed {rpc}: {message}");
    }

    // The node is none the worse.
    let client = cluster.client();
    let reply = put_on(
        &client,
        target,
        put_request("after-garbage", b"fine".to_vec(), Some(request_id(CLIENT))),
    )
    .await??;
    assert_eq!(reply.revision, 1);
    cluster.wait_applied(target, reply.index).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_ca_never_receives_the_log() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let voters = cluster.node_ids();
    let other = cluster.make_other_ca("other-ca", 1).await?;
    let info = cluster.add_node_with_certs(&other, 1).await?;
    let outsider = info.id;

    // Only a client of the other CA can talk to the outsider: it runs, and
    // has nothing.
    let outsider_client =
        ClusterClient::from_parts(&other.client_tls()?, [(outsider, info.api_addr.clone())])?;
    let outsider_status = || {
        let mut admin = AdminServiceClient::new(outsider_client.channel(outsider)?);
        anyhow::Ok(async move {
            let reply = tokio::time::timeout(CALL_TIMEOUT, admin.status(StatusRequest {}))
                .await
                .map_err(|_| anyhow::anyhow!("the outsider did not answer Status in time"))??;
            anyhow::Ok(reply.into_inner())
        })
    };
    let status = outsider_status()?.await?;
    assert_eq!(
        (status.applied_index, status.last_log_index),
        (0, 0),
        "{status:?}"
    );

    // AddLearner waits for the learner to catch up, which never happens:
    // the call must not succeed, and must not hang the caller.
    let member = cluster.member(outsider, false)?;
    let mut admin = AdminServiceClient::new(cluster.client().channel(leader)?);
    let started = Instant::now();
    let add = tokio::spawn(async move {
        tokio::time::timeout(
            ADD_LEARNER_CLIENT_TIMEOUT,
            admin.add_learner(AddLearnerRequest {
                member: Some(member),
            }),
        )
        .await
    });
    wait_for(
        "the leader to list the outsider as a learner",
        cluster.options().deadline,
        || async {
            let status = cluster.status(leader).await?;
            let listed = status.members.iter().any(|m| m.id == outsider && !m.voter);
            Ok(if listed {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("members: {:?}", status.members))
            })
        },
    )
    .await?;

    // The cluster keeps working, and the outsider gets none of it.
    let client = cluster.client();
    let window_ends = Instant::now() + NOTHING_ARRIVES_WINDOW;
    let mut written = 0;
    let mut last_index = 0;
    while Instant::now() < window_ends {
        let reply = client
            .put(
                format!("while-outside-{written}"),
                b"x".to_vec(),
                request_id(CLIENT),
            )
            .await?;
        written += 1;
        last_index = reply.index;
        let status = outsider_status()?.await?;
        assert_eq!(
            (status.applied_index, status.last_log_index),
            (0, 0),
            "the outsider received the log: {status:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(written > 0);
    for voter in &voters {
        cluster.wait_applied(*voter, last_index).await?;
    }
    let leader_status = cluster.status(leader).await?;
    let lag = leader_status.replication.iter().find(|r| r.id == outsider);
    assert_eq!(
        lag.map(|r| r.matched_index),
        Some(0),
        "the leader should track the outsider with nothing matched: {leader_status:?}"
    );
    let status = outsider_status()?.await?;
    assert_eq!(
        (status.applied_index, status.last_log_index),
        (0, 0),
        "{status:?}"
    );
    // And the reason is the certificate, not an unreachable address.
    let log = cluster.log_tail(leader, 2000)?;
    assert!(
        log.lines()
            .any(|line| line.contains(&format!("to node {outsider}"))
                && line.contains("certificate")),
        "the leader does not log a certificate failure towards node {outsider}"
    );

    let added = add.await?;

    // An operator can take it out again.
    let mut admin = AdminServiceClient::new(cluster.client().channel(leader)?);
    let reply = tokio::time::timeout(
        CALL_TIMEOUT,
        admin.remove_node(RemoveNodeRequest {
            id: outsider,
            force: false,
        }),
    )
    .await??
    .into_inner();
    assert!(reply.members.iter().all(|m| m.id != outsider), "{reply:?}");
    let reply = client
        .put("after-outsider", b"y".to_vec(), request_id(CLIENT))
        .await?;
    for voter in &voters {
        cluster.wait_applied(*voter, reply.index).await?;
    }

    // Checked last, so that it does not hide the checks above: AddLearner
    // promises a learner that has caught up (or DEADLINE_EXCEEDED after its
    // 60 s), so for a node that never got a single entry it must not report
    // success.
    match added {
        Err(_elapsed) => {
            assert!(started.elapsed() >= ADD_LEARNER_CLIENT_TIMEOUT);
        }
        Ok(Ok(reply)) => panic!(
            "AddLearner reported success for node {outsider}, which never received an entry: {:?}",
            reply.into_inner()
        ),
        Ok(Err(status)) => assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "AddLearner of an unreachable node: {status:?}"
        ),
    }
    Ok(())
}
