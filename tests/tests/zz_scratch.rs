//! Scratch verification of the harness (not to be committed).

use std::process::Command;

use agora_peer::request_id;
use agora_proto::admin::{AddLearnerRequest, PromoteVoterRequest};
use agora_proto::market::ReadConsistency;
use agora_tests::{binary, TestCluster, TestOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_three_nodes() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    eprintln!("started in {:?}", t0.elapsed());
    let leader = cluster.wait_for_leader(None).await?;
    eprintln!("leader {leader}");
    let client = cluster.client();
    let mut last = 0;
    for i in 0..20 {
        last = client.put(format!("k{i}"), b"v".to_vec(), request_id("scratch")).await?.index;
    }
    for id in cluster.node_ids() {
        cluster.wait_applied(id, last).await?;
    }
    let digests: Vec<_> = futures_digests(&cluster).await?;
    eprintln!("digests {digests:?}");

    // Crash the leader, write through the failover.
    let t1 = std::time::Instant::now();
    cluster.kill(leader)?;
    let put = client.put("after-crash", b"x".to_vec(), request_id("scratch")).await?;
    eprintln!("put after crash took {:?} -> {put:?}", t1.elapsed());
    let new_leader = cluster.wait_for_leader(Some(leader)).await?;
    eprintln!("new leader {new_leader} after {:?}", t1.elapsed());
    cluster.restart(leader).await?;
    cluster.wait_applied(leader, put.index).await?;
    let got = client
        .get("after-crash", ReadConsistency { min_index: put.index, linearizable: false }, Some(leader))
        .await?;
    assert_eq!(got.value, b"x");

    // Graceful stop and restart.
    let stopped = cluster.stop(new_leader).await?;
    eprintln!("stopped {new_leader}: {stopped}");
    let third = cluster.wait_for_leader(Some(new_leader)).await?;
    eprintln!("leader after stop {third}");
    cluster.restart(new_leader).await?;
    cluster.wait_for_leader(None).await?;

    // Hot join.
    let info = cluster.add_node().await?;
    eprintln!("added {info:?}");
    let client = cluster.client();
    let member = cluster.member(info.id, false)?;
    let leader = cluster.wait_for_leader(None).await?;
    let mut admin = client.admin(leader)?;
    let reply = admin.add_learner(AddLearnerRequest { member: Some(member) }).await?.into_inner();
    eprintln!("add learner {reply:?}");
    let reply = admin.promote_voter(PromoteVoterRequest { id: info.id }).await?.into_inner();
    eprintln!("promote {reply:?}");
    cluster.wait_applied(info.id, reply.index).await?;
    let leader = cluster.wait_for_leader(None).await?;
    eprintln!("leader with 4 nodes {leader}");

    // The console against it.
    let file = cluster.write_cluster_file()?;
    for args in [vec!["status"], vec!["status", "--json"], vec!["digest"], vec!["snapshot", "--json"], vec!["status"]] {
        let out = Command::new(binary("agora-admin")?).arg("--cluster").arg(&file).args(&args).output()?;
        eprintln!("$ agora-admin {args:?} -> {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success());
    }
    let out = Command::new(binary("agora")?).arg("--cluster").arg(&file).args(["put", "cli", "hello", "--json"]).output()?;
    eprintln!("$ agora put -> {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new(binary("agora")?).arg("--cluster").arg(&file).args(["get", "cli", "--linearizable"]).output()?;
    eprintln!("$ agora get -> {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    cluster.kill(2)?;
    let out = Command::new(binary("agora-admin")?).arg("--cluster").arg(&file).args(["status"]).output()?;
    eprintln!("$ agora-admin status (2 dead) -> {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new(binary("agora-admin")?).arg("--cluster").arg(&file).args(["remove", "4", "--json"]).output()?;
    eprintln!("$ agora-admin remove 4 -> {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new(binary("agora-admin")?).arg("--cluster").arg("/nonexistent/cluster.toml").args(["status"]).output()?;
    eprintln!("$ agora-admin missing file -> {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("total {:?}", t0.elapsed());
    Ok(())
}

async fn futures_digests(cluster: &TestCluster) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for id in cluster.node_ids() {
        let d = cluster.digest(id).await?;
        out.push((d.applied_index, d.digest));
    }
    Ok(out)
}
