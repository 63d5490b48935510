//! A damaged Raft log: a node whose `raft-log.db` lost its tail (a torn
//! last record, a file restored from an older copy) or was deleted, while
//! its `state.db` kept what it had applied. The node must start, say what
//! it found, never serve wrong data, and catch up; the cluster stays
//! correct (equal digests everywhere, the writes all there). And a node
//! whose Raft core stops exits with a message rather than linger, one
//! killed while it installs a snapshot comes back, and one whose log file
//! SQLite cannot read refuses to start and says what to do.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use agora_peer::request_id;
use agora_proto::admin::CrashRequest;
use agora_proto::market::ReadConsistency;
use agora_tests::nemesis::kill_during_snapshot_install;
use agora_tests::{wait_for, Probe, TestCluster, TestOptions};
use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::SeedableRng as _;

/// The client name of this file's request ids.
const CLIENT: &str = "t126";
/// The log database and its WAL companions.
const LOG_FILES: [&str; 3] = ["raft-log.db", "raft-log.db-wal", "raft-log.db-shm"];
/// What a node logs when it finds its log behind its state.
const DAMAGE_WARNING: &str = "the raft log is behind the state machine";
/// Keys of [`BULK_VALUE_BYTES`] that make the snapshot test's state large.
const BULK_KEYS: usize = 120;
/// Size of each bulk value (below the node's 64 KiB value limit).
const BULK_VALUE_BYTES: usize = 60 * 1024;
/// Most kills during snapshot installs one test tries.
const MAX_INSTALL_KILLS: usize = 8;
/// What it logs once a leader has brought it up to date.
const CAUGHT_UP: &str = "caught up with the leader after log damage";

/// Writes `count` keys `{prefix}-{n}` one after another; returns the last
/// acknowledged index.
async fn write(cluster: &TestCluster, prefix: &str, count: u32) -> anyhow::Result<u64> {
    let client = cluster.client();
    let mut last = 0;
    for n in 0..count {
        let reply = client
            .put(
                format!("{prefix}-{n:03}"),
                format!("{prefix} {n}").into_bytes(),
                request_id(CLIENT),
            )
            .await
            .with_context(|| format!("writing {prefix}-{n:03}"))?;
        last = reply.index;
    }
    Ok(last)
}

/// Reads every key `write` wrote under `prefix` on node `on`, at `index`.
async fn check(
    cluster: &TestCluster,
    on: u64,
    prefix: &str,
    count: u32,
    index: u64,
) -> anyhow::Result<()> {
    let client = cluster.client();
    for n in 0..count {
        let key = format!("{prefix}-{n:03}");
        let read = client
            .get(
                key.clone(),
                ReadConsistency {
                    min_index: index,
                    linearizable: false,
                },
                Some(on),
            )
            .await
            .with_context(|| format!("reading {key} on node {on}"))?;
        anyhow::ensure!(
            read.found && read.value == format!("{prefix} {n}").into_bytes(),
            "node {on} answers {key} = {:?} (found: {})",
            String::from_utf8_lossy(&read.value),
            read.found
        );
    }
    Ok(())
}

/// Every running node at one applied index, `at_least` or later, with one
/// digest.
async fn assert_same_state(cluster: &TestCluster, at_least: u64) -> anyhow::Result<()> {
    let ids = cluster.running_node_ids();
    let digests = cluster.wait_same_applied(&ids).await?;
    let index = digests.values().map(|d| d.applied_index).max().unwrap_or(0);
    anyhow::ensure!(
        index >= at_least,
        "the nodes lined up at {index}, below {at_least}"
    );
    let distinct: BTreeSet<&str> = digests.values().map(|d| d.digest.as_str()).collect();
    anyhow::ensure!(
        distinct.len() == 1,
        "the nodes hold different states at index {index}: {digests:?}"
    );
    Ok(())
}

fn copy_log(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for name in LOG_FILES {
        let _ = std::fs::remove_file(to.join(name));
        let source = from.join(name);
        if source.exists() {
            std::fs::copy(&source, to.join(name))
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

fn remove_log(dir: &Path) -> anyhow::Result<()> {
    for name in LOG_FILES {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {name}")),
        }
    }
    Ok(())
}

/// Waits until node `id`'s log contains `text`.
async fn wait_logged(cluster: &TestCluster, id: u64, text: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("node {id} to log {text:?}"),
        cluster.options().deadline,
        || async {
            let log = std::fs::read_to_string(cluster.log_path(id)?).unwrap_or_default();
            Ok(if log.contains(text) {
                Probe::Ready(())
            } else {
                Probe::NotYet("not yet".to_owned())
            })
        },
    )
    .await
}

fn assert_no_panic(cluster: &TestCluster) -> anyhow::Result<()> {
    for id in cluster.node_ids() {
        let log = std::fs::read_to_string(cluster.log_path(id)?).unwrap_or_default();
        anyhow::ensure!(
            !log.contains("panicked"),
            "node {id} panicked:\n{}",
            cluster.log_tail(id, 60)?
        );
    }
    Ok(())
}

fn a_follower(cluster: &TestCluster, leader: u64) -> anyhow::Result<u64> {
    cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("no follower")
}

/// Takes the newest `count` entries out of the log database at `dir` (the
/// node is down), as a torn last transaction would: the state database
/// keeps what it applied from them.
async fn drop_log_tail(dir: &Path, count: i64) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("raft-log.db").display()))
            .await?;
    let dropped = sqlx::query("DELETE FROM log WHERE idx > (SELECT MAX(idx) FROM log) - ?1")
        .bind(count)
        .execute(&mut conn)
        .await?
        .rows_affected();
    anyhow::ensure!(dropped > 0, "the log had no entries to drop");
    conn.close().await?;
    Ok(())
}

/// The leader crashes and loses the tail of its log, then restarts at
/// once, before the others elect anyone. It must not resume its term on
/// the shorter log (its next entries would reuse the log ids of entries
/// the followers hold): it restarts as a follower, abstains until a new
/// leader has brought it up to date, and everything written is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_log_tail_restarts_as_a_follower() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let term = cluster.status(leader).await?.term;
    let first = write(&cluster, "first", 60).await?;
    assert_same_state(&cluster, first).await?;

    cluster.kill(leader)?;
    drop_log_tail(cluster.data_dir(leader)?, 25).await?;
    cluster.restart(leader).await?;
    let new_leader = cluster.wait_for_leader(None).await?;
    let status = cluster.status(new_leader).await?;
    assert!(
        status.term > term,
        "node {new_leader} leads in term {}, the term of the crashed leader ({term})",
        status.term
    );
    let second = write(&cluster, "second", 20).await?;
    cluster.wait_applied(leader, second).await?;
    check(&cluster, leader, "first", 60, second).await?;
    check(&cluster, leader, "second", 20, second).await?;
    assert_same_state(&cluster, second).await?;
    let log = cluster.log_tail(leader, 400)?;
    assert!(
        log.contains(DAMAGE_WARNING),
        "node {leader} did not say its log was damaged:\n{log}"
    );
    assert_no_panic(&cluster)?;
    Ok(())
}

/// A follower's log goes back in time: the copy taken before a leader
/// change and a hundred writes replaces it (the vote with it; the second
/// copy of the vote is not restored), while its state database keeps
/// everything it applied since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_restored_from_an_older_copy_recovers() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let damaged = a_follower(&cluster, leader)?;
    let first = write(&cluster, "first", 20).await?;
    cluster.wait_applied(damaged, first).await?;

    cluster.kill(damaged)?;
    let saved: PathBuf = cluster.dir().join("saved-log");
    copy_log(cluster.data_dir(damaged)?, &saved)?;
    cluster.restart(damaged).await?;
    cluster.wait_applied(damaged, first).await?;

    // A new term, and entries the saved log never saw.
    cluster.kill(leader)?;
    cluster.wait_for_leader(Some(leader)).await?;
    cluster.restart(leader).await?;
    let second = write(&cluster, "second", 100).await?;
    cluster.wait_applied(damaged, second).await?;

    cluster.kill(damaged)?;
    copy_log(&saved, cluster.data_dir(damaged)?)?;
    cluster.restart(damaged).await?;
    let third = write(&cluster, "third", 20).await?;
    cluster.wait_applied(damaged, third).await?;
    check(&cluster, damaged, "second", 100, third).await?;
    check(&cluster, damaged, "third", 20, third).await?;
    assert_same_state(&cluster, third).await?;
    let log = cluster.log_tail(damaged, 400)?;
    assert!(
        log.contains(DAMAGE_WARNING),
        "node {damaged} did not say its log was damaged:\n{log}"
    );
    // It ends its abstention on its own tick once it has caught up.
    wait_logged(&cluster, damaged, CAUGHT_UP).await?;

    // It votes again: with each other node down in turn, it still forms a
    // majority and the cluster moves on.
    for other in cluster.node_ids() {
        if other == damaged {
            continue;
        }
        cluster.kill(other)?;
        cluster.wait_for_leader(Some(other)).await?;
        let more = write(&cluster, &format!("without-{other}"), 5).await?;
        cluster.wait_applied(damaged, more).await?;
        cluster.restart(other).await?;
        cluster.wait_applied(other, more).await?;
    }
    assert_same_state(&cluster, third).await?;
    assert_no_panic(&cluster)?;
    Ok(())
}

/// A follower loses its whole log (the file is gone) but keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_recovers() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let follower = a_follower(&cluster, leader)?;
    let first = write(&cluster, "first", 30).await?;
    cluster.wait_applied(follower, first).await?;

    cluster.kill(follower)?;
    remove_log(cluster.data_dir(follower)?)?;
    let second = write(&cluster, "second", 30).await?;
    cluster.restart(follower).await?;
    cluster.wait_applied(follower, second).await?;
    check(&cluster, follower, "first", 30, second).await?;
    check(&cluster, follower, "second", 30, second).await?;
    assert_same_state(&cluster, second).await?;
    let log = cluster.log_tail(follower, 400)?;
    assert!(
        log.contains(DAMAGE_WARNING),
        "node {follower} did not say its log was damaged:\n{log}"
    );

    // And it restarts cleanly from the log it rebuilt.
    cluster.kill(follower)?;
    cluster.restart(follower).await?;
    let third = write(&cluster, "third", 10).await?;
    cluster.wait_applied(follower, third).await?;
    assert_same_state(&cluster, third).await?;
    assert_no_panic(&cluster)?;
    Ok(())
}

/// A node whose Raft core stops (here on request, as a panic inside it
/// would) exits with a message instead of lingering without consensus, and
/// comes back when restarted on its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_core_stops_exits_with_a_message() -> anyhow::Result<()> {
    let options = TestOptions {
        extra_args: vec!["--enable-fault-injection".to_owned()],
        ..TestOptions::default()
    };
    let mut cluster = TestCluster::start(3, options).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let follower = a_follower(&cluster, leader)?;
    let first = write(&cluster, "first", 10).await?;
    cluster.wait_applied(follower, first).await?;

    cluster
        .client()
        .admin(follower)?
        .crash(CrashRequest {
            raft_core_only: true,
        })
        .await?;
    cluster.wait_exited(follower).await?;
    let log = cluster.log_tail(follower, 100)?;
    assert!(
        log.contains("Raft core of node") && log.contains("stopped by itself"),
        "node {follower} did not say why it exited:\n{log}"
    );

    let second = write(&cluster, "second", 10).await?;
    cluster.restart(follower).await?;
    cluster.wait_applied(follower, second).await?;
    check(&cluster, follower, "second", 10, second).await?;
    assert_same_state(&cluster, second).await?;
    Ok(())
}

/// A follower far enough behind to need the leader's snapshot is killed
/// while it receives or installs it, three times; each time it restarts on
/// what it has and catches up, and every node ends with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_while_installing_a_snapshot_recovers() -> anyhow::Result<()> {
    let options = TestOptions {
        snapshot_logs: Some(50),
        keep_logs: Some(5),
        ..TestOptions::default()
    };
    let mut cluster = TestCluster::start(3, options).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let follower = a_follower(&cluster, leader)?;
    write(&cluster, "first", 20).await?;
    // A state of several megabytes, so a snapshot takes a while to arrive
    // and install, and the kills can land inside that window.
    let bulk = cluster.client();
    for n in 0..BULK_KEYS {
        bulk.put(
            format!("bulk-{n}"),
            vec![b'b'; BULK_VALUE_BYTES],
            request_id(CLIENT),
        )
        .await?;
    }

    // Writes keep flowing, so the leader's log moves past the follower.
    let stop = Arc::new(AtomicBool::new(false));
    let client = cluster.client();
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                let _ = client
                    .put(format!("flow-{n}"), b"x".to_vec(), request_id(CLIENT))
                    .await;
                n += 1;
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(126);
    let mut outcomes = Vec::new();
    // Three kills, and more until one landed while receiving and one while
    // installing.
    for attempt in 0..MAX_INSTALL_KILLS {
        let during = outcomes
            .iter()
            .any(|o: &String| !o.contains("already installed"));
        if attempt >= 3 && during {
            break;
        }
        let what = kill_during_snapshot_install(&mut cluster, leader, follower, &mut rng).await;
        let what = match what {
            Ok(what) => what,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        eprintln!("{what}");
        outcomes.push(what);
        cluster.restart(follower).await?;
        let leader_applied = cluster.status(leader).await?.applied_index;
        cluster.wait_applied(follower, leader_applied).await?;
    }
    stop.store(true, Ordering::Relaxed);
    writing.await?;

    let last = write(&cluster, "last", 10).await?;
    cluster.wait_applied(follower, last).await?;
    check(&cluster, follower, "first", 20, last).await?;
    check(&cluster, follower, "last", 10, last).await?;
    assert_same_state(&cluster, last).await?;
    for what in ["(still receiving)", "(while installing)"] {
        assert!(
            outcomes.iter().any(|o| o.contains(what)),
            "no kill landed {what}: {outcomes:?}"
        );
    }
    assert_no_panic(&cluster)?;
    Ok(())
}

/// A log file SQLite cannot read at all: the node refuses to start and
/// says what to do; done as it says (the file moved aside), the node
/// rebuilds its log from its state and the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_log_is_refused_with_advice_then_rebuilt() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let follower = a_follower(&cluster, leader)?;
    let first = write(&cluster, "first", 20).await?;
    cluster.wait_applied(follower, first).await?;

    cluster.kill(follower)?;
    let dir = cluster.data_dir(follower)?.to_path_buf();
    remove_log(&dir)?;
    std::fs::write(dir.join("raft-log.db"), vec![0x5a; 8192])?;
    let refused = cluster.restart(follower).await;
    assert!(
        refused.is_err(),
        "node {follower} started on a log that is not a database"
    );
    let log = cluster.log_tail(follower, 20)?;
    assert!(
        log.contains("cannot open the raft log") && log.contains("move it"),
        "node {follower} did not say what is wrong and what to do:\n{log}"
    );

    let aside = cluster.dir().join("damaged-log");
    std::fs::create_dir_all(&aside)?;
    std::fs::rename(dir.join("raft-log.db"), aside.join("raft-log.db"))?;
    let second = write(&cluster, "second", 20).await?;
    cluster.restart(follower).await?;
    cluster.wait_applied(follower, second).await?;
    check(&cluster, follower, "first", 20, second).await?;
    check(&cluster, follower, "second", 20, second).await?;
    assert_same_state(&cluster, second).await?;
    assert_no_panic(&cluster)?;
    Ok(())
}

/// The only voter of a cluster loses its log: there is no leader to wait
/// for, so it does not abstain; it elects itself and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_with_a_damaged_log_leads_again() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(1, TestOptions::default()).await?;
    cluster.wait_for_leader(None).await?;
    let first = write(&cluster, "first", 20).await?;
    cluster.wait_applied(1, first).await?;
    cluster.kill(1)?;
    remove_log(cluster.data_dir(1)?)?;
    cluster.restart(1).await?;
    cluster.wait_for_leader(None).await?;
    let second = write(&cluster, "second", 5).await?;
    check(&cluster, 1, "first", 20, second).await?;
    check(&cluster, 1, "second", 5, second).await?;
    let log = cluster.log_tail(1, 200)?;
    assert!(
        log.contains(DAMAGE_WARNING),
        "node 1 did not say its log was damaged:\n{log}"
    );
    assert_no_panic(&cluster)?;
    Ok(())
}
