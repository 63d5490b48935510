//! The admin console end to end, on one real three-node cluster driven
//! through the `agora-admin` binary: status of every node with one
//! leader; a follower killed with SIGKILL shows as unreachable and the
//! event log records it (the leader notices it cannot reach it, and the
//! node records its restart after an unclean stop); restarted, it catches
//! up; a fourth node joins and leaves through the CLI; users, settings and
//! log tails work; and every admin RPC refuses a plain user's session
//! (PERMISSION_DENIED) and a caller without one (UNAUTHENTICATED).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_peer::{account, AdminClient};
use agora_proto::admin::{
    AddLearnerRequest, AddTopicRequest, AuditRequest, CloseHoldRequest, DeleteUserRequest,
    DepositRequest, EventsRequest, FindUsersRequest, GetSettingsRequest, InitializeRequest,
    LogTailRequest, OpenHoldRequest, PromoteVoterRequest, RemoveNodeRequest, RemoveTopicRequest,
    SetCommissionRequest, SetDisputeWindowRequest, SetSettingRequest, SetSuspendedRequest,
    ShowUserRequest, StandingRequest, StateDigestRequest, StatusRequest, TriggerSnapshotRequest,
};
use agora_tests::{binary, peer_client, wait_for, MarketUser, Probe, TestCluster, TestOptions};
use anyhow::Context as _;
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
use tonic::Code;

/// Password of every account the test makes.
const PASSWORD: &str = "correct horse battery staple";
/// Longest one `agora-admin` run may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the cluster may take to notice a change (crash, restart,
/// catch-up) on a busy machine.
const NOTICE: Duration = Duration::from_secs(40);

/// Runs `agora-admin` against the test cluster.
struct Admin {
    cluster_file: PathBuf,
    home: PathBuf,
}

/// What a command printed, and whether it succeeded.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Admin {
    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = tokio::process::Command::new(binary("agora-admin")?);
        command
            .arg("--cluster")
            .arg(&self.cluster_file)
            .arg("--data-dir")
            .arg(&self.home)
            .args(args)
            .stdin(std::process::Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AGORA_") {
                command.env_remove(key);
            }
        }
        let what = format!("agora-admin {}", args.join(" "));
        let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
            .await
            .map_err(|_| anyhow::anyhow!("`{what}` did not finish within {CLI_TIMEOUT:?}"))?
            .with_context(|| format!("could not run `{what}`"))?;
        Ok(Output {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `agora-admin --json ARGS`, which must succeed.
    async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all).await?;
        anyhow::ensure!(
            out.ok,
            "`agora-admin {}` failed: {}{}",
            all.join(" "),
            out.stdout,
            out.stderr
        );
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("`agora-admin {}` printed {}", all.join(" "), out.stdout))
    }

    /// Runs `agora-admin ARGS`, which must fail; returns its stderr.
    async fn refused(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        anyhow::ensure!(
            !out.ok,
            "`agora-admin {}` succeeded but should not: {}",
            args.join(" "),
            out.stdout
        );
        Ok(out.stderr)
    }

    /// Events of the given kind about `subject`.
    async fn events_about(&self, kind: &str, subject: u64) -> anyhow::Result<Vec<Value>> {
        let log = self.json(&["events", "--last", "0"]).await?;
        Ok(log["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["kind"] == kind && e["subject_node_id"] == subject)
            .collect())
    }

    /// Waits until the event log holds a `kind` event about `subject`.
    async fn wait_event(&self, kind: &str, subject: u64) -> anyhow::Result<Value> {
        wait_for(
            &format!("a {kind} event about node {subject}"),
            NOTICE,
            || async move {
                let found = self.events_about(kind, subject).await?;
                Ok(match found.into_iter().next() {
                    Some(event) => Probe::Ready(event),
                    None => Probe::NotYet("not in the event log yet".into()),
                })
            },
        )
        .await
    }

    /// Waits until `agora-admin status` satisfies `check` for node `id`.
    async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&Value, &Value) -> bool,
    ) -> anyhow::Result<Value> {
        let check = &check;
        wait_for(what, NOTICE, || async move {
            let status = self.json(&["status"]).await?;
            Ok(if check(&status, &status["nodes"]) {
                Probe::Ready(status)
            } else {
                Probe::NotYet(status.to_string())
            })
        })
        .await
    }
}

fn node(nodes: &Value, id: u64) -> &Value {
    nodes
        .as_array()
        .and_then(|all| all.iter().find(|n| n["id"] == id))
        .unwrap_or(&Value::Null)
}

/// Calls every admin RPC once with `admin` and returns the codes.
async fn every_admin_call(mut admin: AdminClient) -> Vec<(&'static str, Code)> {
    let mut codes = Vec::new();
    macro_rules! call {
        ($name:literal, $call:expr) => {
            codes.push(($name, $call.await.err().map_or(Code::Ok, |s| s.code())));
        };
    }
    call!("Status", admin.status(StatusRequest {}));
    call!("Initialize", admin.initialize(InitializeRequest::default()));
    call!(
        "AddLearner",
        admin.add_learner(AddLearnerRequest::default())
    );
    call!(
        "PromoteVoter",
        admin.promote_voter(PromoteVoterRequest { id: 9 })
    );
    call!(
        "RemoveNode",
        admin.remove_node(RemoveNodeRequest { id: 1, force: true })
    );
    call!("StateDigest", admin.state_digest(StateDigestRequest {}));
    call!(
        "TriggerSnapshot",
        admin.trigger_snapshot(TriggerSnapshotRequest {})
    );
    call!("Deposit", admin.deposit(DepositRequest::default()));
    call!(
        "SetCommission",
        admin.set_commission(SetCommissionRequest::default())
    );
    call!("OpenHold", admin.open_hold(OpenHoldRequest::default()));
    call!("PostHold", admin.post_hold(CloseHoldRequest::default()));
    call!("VoidHold", admin.void_hold(CloseHoldRequest::default()));
    call!("Audit", admin.audit(AuditRequest {}));
    call!("AddTopic", admin.add_topic(AddTopicRequest::default()));
    call!(
        "RemoveTopic",
        admin.remove_topic(RemoveTopicRequest::default())
    );
    call!(
        "SetDisputeWindow",
        admin.set_dispute_window(SetDisputeWindowRequest::default())
    );
    call!(
        "SetSuspended",
        admin.set_suspended(SetSuspendedRequest::default())
    );
    call!("Standing", admin.standing(StandingRequest::default()));
    call!("Events", admin.events(EventsRequest::default()));
    call!("FindUsers", admin.find_users(FindUsersRequest::default()));
    call!("ShowUser", admin.show_user(ShowUserRequest::default()));
    call!(
        "DeleteUser",
        admin.delete_user(DeleteUserRequest::default())
    );
    call!("GetSettings", admin.get_settings(GetSettingsRequest {}));
    call!(
        "SetSetting",
        admin.set_setting(SetSettingRequest::default())
    );
    call!("LogTail", admin.log_tail(LogTailRequest::default()));
    codes
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_sees_and_steers_the_cluster() -> anyhow::Result<()> {
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let mut cluster = TestCluster::start(
        3,
        TestOptions {
            spare_nodes: 1,
            // Registrations and logins stay cheap on a busy machine.
            extra_args: vec!["--load-test-ksf".into()],
            ..TestOptions::default()
        },
    )
    .await?;
    let leader = cluster.wait_for_leader(None).await?;
    let admin = Admin {
        cluster_file: cluster.write_cluster_file()?,
        home: cluster.dir().join("admin-home"),
    };

    // --- Status: three nodes, one leader, all reachable.
    let status = admin
        .wait_status("three reachable nodes and a leader", |s, nodes| {
            s["leader_id"].as_u64().is_some()
                && nodes
                    .as_array()
                    .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["reachable"] == true))
        })
        .await?;
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let leaders: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{status}");
    assert_eq!(status["leader_id"], leaders[0]["id"], "{status}");
    assert!(
        nodes
            .iter()
            .all(|n| n["state_db_bytes"].as_u64().unwrap_or(0) > 0),
        "{status}"
    );
    let text = admin.run(&["status"]).await?;
    assert!(text.ok && text.stdout.contains("REQ/S"), "{}", text.stdout);
    step("status lists three nodes and one leader");

    // --- SIGKILL a follower: unreachable in status, recorded by the leader.
    let leader = status["leader_id"].as_u64().unwrap_or(leader);
    let victim = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    // Follow the event log from here on, as an operator would.
    let last_id = admin.json(&["events", "--last", "1"]).await?["last_id"]
        .as_u64()
        .unwrap_or(0);
    let mut follow = tokio::process::Command::new(binary("agora-admin")?)
        .arg("--cluster")
        .arg(&admin.cluster_file)
        .arg("--data-dir")
        .arg(&admin.home)
        .args([
            "--json",
            "events",
            "--follow",
            "--since",
            &last_id.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("could not start agora-admin events --follow")?;
    let mut followed = tokio::io::BufReader::new(follow.stdout.take().context("stdout")?).lines();
    cluster.kill(victim)?;
    admin
        .wait_status("the killed follower shown unreachable", |s, nodes| {
            // Whoever leads now (an election under load may move it).
            let leader = s["leader_id"].as_u64().unwrap_or(leader);
            node(nodes, victim)["reachable"] == false
                && node(nodes, leader)["replication"]
                    .as_array()
                    .is_some_and(|r| {
                        r.iter()
                            .any(|l| l["id"] == victim && l["reachable"] == false)
                    })
        })
        .await?;
    let text = admin.run(&["status"]).await?;
    assert!(
        text.stdout
            .contains(&format!("node {victim} is unreachable")),
        "{}",
        text.stdout
    );
    let event = admin.wait_event("node_unreachable", victim).await?;
    assert_ne!(event["node_id"], victim, "recorded by the leader: {event}");
    // `--follow` printed it too, as one JSON object per line.
    let seen = tokio::time::timeout(NOTICE, async {
        while let Some(line) = followed.next_line().await? {
            let event: Value =
                serde_json::from_str(&line).with_context(|| format!("--follow printed {line}"))?;
            if event["kind"] == "node_unreachable" && event["subject_node_id"] == victim {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await
    .context("events --follow did not print the event in time")??;
    assert!(seen, "events --follow ended without the event");
    follow.kill().await?;
    step("the killed follower is unreachable and the leader recorded it");

    // --- Restart it: the crash is recorded, and it catches up.
    cluster.restart(victim).await?;
    let event = admin
        .wait_event("node_restarted_after_crash", victim)
        .await?;
    assert_eq!(event["node_id"], victim, "{event}");
    admin
        .wait_status("the restarted follower caught up", |s, nodes| {
            let me = node(nodes, victim);
            let boss = node(nodes, s["leader_id"].as_u64().unwrap_or(leader));
            me["reachable"] == true
                && me["leader_reaches"] == true
                && me["applied_index"].as_u64().is_some()
                && me["applied_index"] == boss["applied_index"]
        })
        .await?;
    let text = admin.run(&["events"]).await?;
    assert!(
        text.ok && text.stdout.contains("node_restarted_after_crash"),
        "{}",
        text.stdout
    );
    step("the restart after the crash is recorded and the node caught up");

    // --- A fourth node joins and leaves through the CLI.
    let fourth = cluster.add_node().await?;
    let id = fourth.id.to_string();
    let out = admin
        .run(&[
            "add-learner",
            "--id",
            &id,
            "--api-addr",
            &fourth.api_addr,
            "--raft-addr",
            &fourth.raft_addr,
        ])
        .await?;
    assert!(out.ok, "add-learner: {}{}", out.stdout, out.stderr);
    let out = admin.run(&["promote", &id]).await?;
    assert!(out.ok, "promote: {}{}", out.stdout, out.stderr);
    let out = admin.run(&["remove", &id]).await?;
    assert!(out.ok, "remove: {}{}", out.stdout, out.stderr);
    for kind in ["learner_added", "voter_promoted", "node_removed"] {
        admin.wait_event(kind, fourth.id).await?;
    }
    cluster.stop(fourth.id).await?;
    // Three voters left: removing one more needs --force.
    let refusal = admin.refused(&["remove", &victim.to_string()]).await?;
    assert!(refusal.contains("force"), "{refusal}");
    step("a fourth node joined and left");

    // --- Users.
    let everyone = peer_client(&cluster)?;
    let alice = MarketUser::register(&everyone, cluster.dir(), "alice", PASSWORD).await?;
    let bob = MarketUser::register(&everyone, cluster.dir(), "bob", PASSWORD).await?;
    let found = admin.json(&["users", "find", "ALI"]).await?;
    let names: Vec<&str> = found["users"]
        .as_array()
        .map(|u| u.iter().filter_map(|u| u["username"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["alice"], "{found}");
    let shown = admin.json(&["users", "show", "alice"]).await?;
    assert_eq!(shown["balance"], 0, "{shown}");
    assert_eq!(shown["deletable"], true, "{shown}");
    let out = admin.run(&["deposit", "alice", "1.00"]).await?;
    assert!(out.ok, "deposit: {}{}", out.stdout, out.stderr);
    let refusal = admin.refused(&["users", "delete", "alice"]).await?;
    assert!(refusal.contains("balance is 1.00"), "{refusal}");
    let suspended = admin.json(&["users", "suspend", "alice"]).await?;
    assert_eq!(suspended["suspended"], true, "{suspended}");
    let back = admin.json(&["users", "unsuspend", "alice"]).await?;
    assert_eq!(back["suspended"], false, "{back}");
    let deleted = admin.json(&["users", "delete", "bob"]).await?;
    assert_eq!(deleted["username"], "bob", "{deleted}");
    let found = admin.json(&["users", "find", "bob"]).await?;
    assert_eq!(found["users"], serde_json::json!([]), "{found}");
    // The deleted account's session no longer works.
    let after = agora_peer::ledger::balance(&bob.client, 0, None).await;
    assert_eq!(
        after.as_ref().err().and_then(agora_peer::ClientError::code),
        Some(Code::Unauthenticated),
        "{after:?}"
    );
    step("users find, show, suspend, unsuspend and delete work");

    // --- Settings.
    let settings = admin.json(&["settings"]).await?;
    assert_eq!(settings["argon2_iterations"], 1, "{settings}");
    let changed = admin
        .json(&["settings", "set", "commission_bps", "250"])
        .await?;
    assert_eq!(changed["commission_bps"], 250, "{changed}");
    let changed = admin
        .json(&["settings", "set", "hold_ttl_ms", "60000"])
        .await?;
    assert_eq!(changed["hold_ttl_ms"], 60_000, "{changed}");
    let refusal = admin
        .refused(&["settings", "set", "commission_bps", "10001"])
        .await?;
    assert!(refusal.contains("at most 10000"), "{refusal}");
    let refusal = admin.refused(&["settings", "set", "colour", "1"]).await?;
    assert!(refusal.contains("there is no setting"), "{refusal}");
    let changed = admin
        .json(&["settings", "set", "argon2_iterations", "2"])
        .await?;
    assert_eq!(changed["argon2_iterations"], 2, "{changed}");
    // Alice registered with the old parameters and still logs in; a new
    // account registers and logs in with the new ones.
    account::login(&everyone, "alice", PASSWORD.as_bytes()).await?;
    MarketUser::register(&everyone, cluster.dir(), "carol", PASSWORD).await?;
    step("settings show and change, with clear refusals");

    // --- Log tail of one node.
    let tail = admin
        .json(&["log", &victim.to_string(), "--lines", "5"])
        .await?;
    assert_eq!(tail["node_id"], victim, "{tail}");
    assert_eq!(tail["lines"].as_array().map(Vec::len), Some(5), "{tail}");
    let log_path = path_str(cluster.log_path(victim)?).to_owned();
    assert_eq!(tail["path"].as_str(), Some(log_path.as_str()), "{tail}");
    step("the log tail works");

    // --- Every admin RPC refuses a user's session and no session.
    let as_user = every_admin_call(alice.client.admin(leader)?).await;
    for (rpc, code) in &as_user {
        assert_eq!(*code, Code::PermissionDenied, "{rpc} with a user session");
    }
    let anonymous = every_admin_call(everyone.admin(leader)?).await;
    for (rpc, code) in &anonymous {
        assert_eq!(*code, Code::Unauthenticated, "{rpc} without a session");
    }
    assert_eq!(as_user.len(), 25);
    step("every admin RPC refuses users and anonymous callers");
    Ok(())
}
