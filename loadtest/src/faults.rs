//! Faults on a schedule while the users run: the leader killed at a given
//! time, a random node killed every so often, each brought back after a
//! pause. A spawned node is SIGKILLed by pid; a node of an external cluster
//! is asked to abort through the admin `Crash` RPC (which it allows only
//! when started with `--enable-fault-injection`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use agora_peer::ClusterClient;
use agora_proto::admin::CrashRequest;
use rand::seq::SliceRandom as _;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::run::Settings;
use crate::spawn::SpawnedCluster;
use crate::stats::Recorder;

/// How often a waiting fault task looks whether the run has ended.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a randomly killed node stays down unless --restart-after says.
const DEFAULT_DOWN: Duration = Duration::from_secs(5);
/// How often the leader is asked for after a crash.
const ELECTION_POLL: Duration = Duration::from_millis(20);
/// Longest a leader may take to be known before a kill is skipped.
const LEADER_WAIT: Duration = Duration::from_secs(20);

/// One crash of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    /// The node.
    pub node: u64,
    /// Whether it was the leader when it was killed.
    pub was_leader: bool,
    /// Ms since the start of the load.
    pub at_ms: u64,
    /// `sigkill` or `crash_rpc`.
    pub how: &'static str,
    /// How long after the crash another node was first seen leading, ms.
    pub new_leader_after_ms: Option<u64>,
    /// When it was started again, ms since the start (spawned clusters).
    pub restarted_at_ms: Option<u64>,
    /// The longest time without a finished write from the crash on (30 s
    /// at most), ms.
    pub gap_ms: Option<u64>,
    /// Why the crash did not happen, when it did not.
    pub error: Option<String>,
}

/// The running fault schedule.
pub struct Faults {
    task: JoinHandle<Vec<Crash>>,
}

impl Faults {
    /// Starts the schedule of `settings` (nothing when it names no fault).
    pub fn start(
        settings: &Settings,
        operator: ClusterClient,
        spawned: Option<Arc<StdMutex<SpawnedCluster>>>,
        recorder: Arc<Recorder>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let ms = Duration::from_millis;
        let leader_at = settings.kill_leader_at_ms.map(ms);
        let every = settings.kill_random_every_ms.map(ms);
        let restart_after = settings.restart_after_ms.map(ms);
        let task = tokio::spawn(async move {
            let mut crashes = Vec::new();
            let start = recorder.started();
            let mut next = leader_at.map(|at| (at, true)).or(every.map(|e| (e, false)));
            while let Some((at, leader)) = next {
                if !sleep_unless_stopped(start + at, &stop).await {
                    break;
                }
                let mut crash = crash_one(&operator, spawned.as_ref(), leader, &recorder).await;
                let down = if leader {
                    restart_after
                } else {
                    Some(restart_after.unwrap_or(DEFAULT_DOWN))
                };
                if let (Some(down), Some(cluster), None) = (down, &spawned, &crash.error) {
                    // A pending restart happens even when the run has just
                    // ended: the audit wants every node.
                    let back = start + Duration::from_millis(crash.at_ms) + down;
                    let _ = sleep_unless_stopped(back, &stop).await;
                    let restarted = {
                        let mut c = cluster.lock().unwrap_or_else(PoisonError::into_inner);
                        c.restart(crash.node)
                    };
                    match restarted {
                        Ok(()) => crash.restarted_at_ms = Some(recorder.now_ms()),
                        Err(e) => crash.error = Some(format!("restart failed: {e:#}")),
                    }
                }
                if spawned.is_none() && crash.error.is_none() {
                    eprintln!(
                        "node {} aborted; start it again (the closing audit waits up to {} s for every node)",
                        crash.node,
                        crate::audit::CONVERGE.as_secs()
                    );
                }
                eprintln!(
                    "fault: node {} {} at {:.1} s{}",
                    crash.node,
                    if crash.was_leader {
                        "(leader) killed"
                    } else {
                        "killed"
                    },
                    crash.at_ms as f64 / 1000.0,
                    crash
                        .error
                        .as_deref()
                        .map(|e| format!(" -- {e}"))
                        .unwrap_or_default()
                );
                crashes.push(crash);
                next = every.map(|e| (start.elapsed() + e, false));
            }
            crashes
        });
        Self { task }
    }

    /// Waits for the schedule to end (the run's stop flag must be set) and
    /// returns the crashes.
    pub async fn finish(self) -> Vec<Crash> {
        self.task.await.unwrap_or_default()
    }
}

/// Sleeps until `at`; false when the run stopped first.
async fn sleep_unless_stopped(at: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < at {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = at.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(STOP_POLL)).await;
    }
    !stop.load(Ordering::Relaxed)
}

/// The leader, asked of every node until one names it.
async fn find_leader(operator: &ClusterClient) -> Option<u64> {
    let deadline = Instant::now() + LEADER_WAIT;
    while Instant::now() < deadline {
        if let Ok(id) = crate::cluster::leader_id(operator).await {
            return Some(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Kills the leader (or a random node), by SIGKILL when spawned, else by
/// the admin `Crash` RPC.
async fn crash_one(
    operator: &ClusterClient,
    spawned: Option<&Arc<StdMutex<SpawnedCluster>>>,
    leader: bool,
    recorder: &Recorder,
) -> Crash {
    let leader_now = find_leader(operator).await;
    let candidates = match spawned {
        Some(c) => c.lock().unwrap_or_else(PoisonError::into_inner).running(),
        None => operator.node_ids(),
    };
    let node = if leader {
        leader_now
    } else {
        candidates.choose(&mut rand::thread_rng()).copied()
    };
    let mut crash = Crash {
        node: node.unwrap_or(0),
        was_leader: node.is_some() && node == leader_now,
        at_ms: recorder.now_ms(),
        how: if spawned.is_some() {
            "sigkill"
        } else {
            "crash_rpc"
        },
        new_leader_after_ms: None,
        restarted_at_ms: None,
        gap_ms: None,
        error: None,
    };
    let Some(node) = node else {
        crash.error = Some("no leader was found to kill".into());
        return crash;
    };
    crash.at_ms = recorder.now_ms();
    let result = match spawned {
        Some(cluster) => {
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || {
                cluster
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .kill(node)
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
        }
        None => match operator.admin(node) {
            Ok(mut admin) => admin
                .crash(CrashRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| anyhow::anyhow!("node {node} refused to crash: {}", s.message())),
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        crash.error = Some(format!("{e:#}"));
        return crash;
    }
    // How long the cluster itself took to elect someone else.
    let deadline = Instant::now() + LEADER_WAIT;
    while Instant::now() < deadline {
        if let Ok(leader) = crate::cluster::leader_id(operator).await {
            if leader != node {
                crash.new_leader_after_ms = Some(recorder.now_ms().saturating_sub(crash.at_ms));
                break;
            }
        }
        tokio::time::sleep(ELECTION_POLL).await;
    }
    crash
}
