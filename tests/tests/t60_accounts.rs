//! Accounts end to end on a three-node cluster: OPAQUE registration through
//! the leader and login through a follower, tokens checked on every node,
//! the refusals (wrong password and unknown user alike, taken and malformed
//! names, user tokens on admin calls, revoked and expired tokens), the same
//! identity key from a second machine, and logins after the leader was
//! SIGKILLed.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::{Duration, Instant};

use agora_peer::account;
use agora_peer::ClusterClient;
use agora_proto::admin::StatusRequest;
use agora_proto::market::{RegisterStartRequest, WhoAmIReply, WhoAmIRequest};
use agora_tests::{TestCluster, TestOptions};
use tonic::Code;

/// Sessions of this cluster last this long, so expiry can be watched.
const SESSION_TTL_SECS: u64 = 25;
/// Longest a replicated change (a revocation) may take to reach a node.
const CONVERGE: Duration = Duration::from_secs(20);
const PASSWORD: &[u8] = b"correct horse battery staple";

/// A client of exactly the nodes `ids`; with the operator certificate or not.
fn client_for(cluster: &TestCluster, ids: &[u64], operator: bool) -> anyhow::Result<ClusterClient> {
    let mut tls = cluster.client_tls().clone();
    if !operator {
        tls.identity = None;
    }
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push((*id, cluster.node(*id)?.api_addr.clone()));
    }
    Ok(ClusterClient::from_parts(&tls, nodes)?)
}

/// WhoAmI on exactly node `id` with `token`.
async fn whoami_on(
    cluster: &TestCluster,
    id: u64,
    token: &str,
) -> anyhow::Result<Result<WhoAmIReply, tonic::Status>> {
    let client = client_for(cluster, &[id], false)?.with_token(token)?;
    let mut accounts = client.account(id)?;
    let reply = tokio::time::timeout(Duration::from_secs(15), accounts.who_am_i(WhoAmIRequest {}))
        .await
        .map_err(|_| anyhow::anyhow!("node {id} did not answer WhoAmI"))?;
    Ok(reply.map(tonic::Response::into_inner))
}

/// Polls WhoAmI on node `id` until it is refused as UNAUTHENTICATED with a
/// message containing `words`.
async fn wait_refused(
    cluster: &TestCluster,
    id: u64,
    token: &str,
    words: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match whoami_on(cluster, id, token).await? {
            Err(s) if s.code() == Code::Unauthenticated && s.message().contains(words) => {
                return Ok(())
            }
            Err(s) if s.code() == Code::Unauthenticated => {
                anyhow::bail!(
                    "node {id} refused the token for another reason: {}",
                    s.message()
                )
            }
            other if Instant::now() > deadline => {
                anyhow::bail!("node {id} still answers {other:?} for a token that should be refused ({words})")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_end_to_end() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(
        3,
        TestOptions {
            extra_args: vec!["--session-ttl-secs".into(), SESSION_TTL_SECS.to_string()],
            ..TestOptions::default()
        },
    )
    .await?;
    let all = cluster.node_ids();
    let leader = cluster.wait_for_leader(None).await?;
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let everyone = client_for(&cluster, &all, false)?;

    // A session made now is checked for expiry at the end.
    account::register(&everyone, "early_bird", PASSWORD, false).await?;
    let early = account::login(&everyone, "early_bird", PASSWORD).await?;
    let early_at = Instant::now();

    // Register through the leader, log in through a follower.
    let on_leader = client_for(&cluster, &[leader], false)?;
    let alice = account::register(&on_leader, "Alice", PASSWORD, false).await?;
    assert_eq!(alice.username, "alice", "names are canonical (lower case)");
    let on_follower = client_for(&cluster, &followers[..1], false)?;
    let session = account::login_after(&on_follower, "ALICE", PASSWORD, alice.index).await?;
    assert_eq!(session.user_id, alice.user_id);
    assert_eq!(session.role, agora_proto::auth::Role::User);

    // The token works on every node, checked locally.
    for id in &all {
        let who = whoami_on(&cluster, *id, &session.token).await??;
        assert_eq!(
            (who.user_id, who.username.as_str()),
            (alice.user_id, "alice"),
            "node {id}"
        );
        assert_eq!(
            who.identity_public_key,
            alice.identity_public_key.as_bytes().to_vec(),
            "node {id}"
        );
    }

    // Wrong password and unknown user: the same answer.
    let wrong = account::login(&everyone, "alice", b"not the password")
        .await
        .unwrap_err();
    let unknown = account::login(&everyone, "nobody_here", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some(Code::Unauthenticated), "{wrong}");
    assert_eq!(unknown.code(), Some(Code::Unauthenticated), "{unknown}");
    assert_eq!(wrong.to_string(), unknown.to_string());

    // A taken name, whatever its case.
    let taken = account::register(&everyone, "ALICE", PASSWORD, false)
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Some(Code::AlreadyExists), "{taken}");

    // Names the server refuses (sent raw, past the client's own check).
    let mut raw = everyone.account(leader)?;
    for bad in ["ab", &"x".repeat(33), "bad name", "_leading", "émile"] {
        let status = raw
            .register_start(RegisterStartRequest {
                username: bad.to_owned(),
                registration_request: vec![0; 32],
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{bad:?}: {}",
            status.message()
        );
    }

    // A user's token on an admin call: permission denied, with or without
    // the operator certificate alongside.
    for operator in [false, true] {
        let client = client_for(&cluster, &[leader], operator)?.with_token(&session.token)?;
        let status = client
            .admin(leader)?
            .status(StatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "operator cert {operator}: {}",
            status.message()
        );
    }
    // Without any credential: unauthenticated.
    let status = client_for(&cluster, &[leader], false)?
        .admin(leader)?
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());

    // A second machine logs in and recovers the same identity key.
    let second = account::login(&everyone, "alice", PASSWORD).await?;
    assert_eq!(
        second.identity.verifying_key(),
        session.identity.verifying_key()
    );
    assert_eq!(second.identity.to_bytes(), session.identity.to_bytes());

    // Logout revokes the first session on every node; the second lives on.
    account::logout(&everyone, &session.token).await?;
    for id in &all {
        wait_refused(&cluster, *id, &session.token, "ended", CONVERGE).await?;
        whoami_on(&cluster, *id, &second.token).await??;
    }

    // SIGKILL the leader: logins still work, old tokens still work.
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader(Some(leader)).await?;
    let survivors = client_for(&cluster, &followers, false)?;
    let after = account::login(&survivors, "alice", PASSWORD).await?;
    assert_eq!(after.identity.to_bytes(), session.identity.to_bytes());
    for id in &followers {
        whoami_on(&cluster, *id, &second.token).await??;
        whoami_on(&cluster, *id, &after.token).await??;
    }
    // Registration goes on through the new leader.
    account::register(&survivors, "bob", PASSWORD, false).await?;
    assert!(followers.contains(&new_leader));

    // The early session expires on its own.
    let remaining = Duration::from_secs(SESSION_TTL_SECS).saturating_sub(early_at.elapsed());
    for id in &followers {
        wait_refused(&cluster, *id, &early.token, "expired", remaining + CONVERGE).await?;
    }
    Ok(())
}
