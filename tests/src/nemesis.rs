//! The nemesis: faults injected into a real cluster of node processes on
//! loopback while a workload runs, then healed.
//!
//! [`ChaosCluster`] is a [`TestCluster`] whose nodes reach each other only
//! through the fault-injecting proxies of [`crate::proxy`], so that on top
//! of crashes (SIGKILL, then a restart on the same data) and pauses
//! (SIGSTOP / SIGCONT: a paused leader comes back believing it still
//! leads) a test can partition the nodes and slow their links.
//!
//! A [`Fault`] is injected, held for a while, and undone; every step is
//! written to the [`FaultLog`] with its time, so a failing run says what
//! the cluster went through. [`ChaosCluster::heal`] undoes everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agora_proto::admin::{Member, TriggerSnapshotRequest};
use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::Rng as _;

use crate::proxy::RaftNetwork;
use crate::{TestCluster, TestOptions};

/// Longest a status call of the nemesis waits: a paused node never answers,
/// and the nemesis must not stall behind it.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// How many times a fault looks for its target (a leader, a follower).
const TARGET_TRIES: u32 = 20;
/// Pause between two looks.
const TARGET_PAUSE: Duration = Duration::from_millis(250);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum FaultKind {
    /// SIGKILL a random node, restart it after the hold.
    KillNode,
    /// SIGKILL the leader, restart it after the hold.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT after the hold.
    PauseNode,
    /// SIGSTOP the leader (it comes back stale), SIGCONT after the hold.
    PauseLeader,
    /// Cut the leader off from every other node, both ways.
    IsolateLeader,
    /// Split the nodes into two random sides (a majority and a minority).
    Partition,
    /// Cut one random directed link only (asymmetric: replies still flow
    /// the other way on connections opened by the other side).
    OneWayCut,
    /// Add latency (50-400 ms each way) to every link of a random node.
    SlowNode,
    /// SIGKILL a random node (the leader too), tear the last record of its
    /// Raft log (truncate `raft-log.db-wal` mid-frame, as a crash during a
    /// write would leave it), restart it after the hold: it must recover
    /// (SQLite drops the torn frame, the log store repairs against the
    /// state machine) and catch up, or refuse to start with a clear message.
    TornLog,
    /// Tell a random node to build a snapshot and SIGKILL it 2-60 ms
    /// later (while `VACUUM INTO` writes the copy); restart it after the
    /// hold.
    KillDuringSnapshot,
    /// SIGKILL a follower, have the leader snapshot and purge its log past
    /// it, restart it, and SIGKILL it again 0-3 ms after it starts
    /// receiving the leader's snapshot (`snapshots/incoming.db` appears);
    /// restart it after the hold.
    KillDuringInstall,
}

impl FaultKind {
    /// Every kind, for the soak.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::KillNode,
        FaultKind::KillLeader,
        FaultKind::PauseNode,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::Partition,
        FaultKind::OneWayCut,
        FaultKind::SlowNode,
        FaultKind::TornLog,
        FaultKind::KillDuringSnapshot,
        FaultKind::KillDuringInstall,
    ];
}

/// A fault in force, and how to undo it.
#[derive(Debug, Clone)]
enum Active {
    Killed(u64),
    Paused(u64),
    Network,
}

/// What happened when, for the report and a failure's explanation.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FaultLog {
    /// `(milliseconds since the start, what happened)`.
    pub events: Vec<(u64, String)>,
    /// Faults injected by kind.
    pub injected: BTreeMap<String, u64>,
}

impl FaultLog {
    /// Faults injected in all.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.injected.values().sum()
    }
}

/// A [`TestCluster`] whose Raft links go through fault-injecting proxies.
pub struct ChaosCluster {
    /// The cluster (kill, restart, status, clients).
    pub cluster: TestCluster,
    /// The links between the nodes.
    pub network: RaftNetwork,
    /// Nodes stopped by SIGSTOP now.
    paused: BTreeSet<u64>,
    /// What was done so far.
    pub log: FaultLog,
    started: Instant,
}

impl ChaosCluster {
    /// Starts `n` nodes (each opening Raft connections from its own
    /// loopback address), a proxy in front of each, and initializes them
    /// as one cluster whose membership names the proxies; waits for a
    /// leader.
    ///
    /// # Errors
    /// As [`TestCluster::start`].
    pub async fn start(n: u64, mut options: TestOptions) -> anyhow::Result<Self> {
        options.raft_source_ips = true;
        let cluster = TestCluster::launch(n, options).await?;
        let mut upstreams = BTreeMap::new();
        for id in cluster.node_ids() {
            upstreams.insert(id, cluster.node(id)?.raft_addr.clone());
        }
        let network = RaftNetwork::start(&upstreams).await?;
        let mut members = Vec::new();
        for id in cluster.node_ids() {
            let proxy = network
                .proxy_addr(id)
                .with_context(|| format!("no proxy for node {id}"))?;
            members.push(Member {
                id,
                api_addr: cluster.node(id)?.api_addr.clone(),
                raft_addr: proxy.to_string(),
                voter: true,
            });
        }
        cluster.initialize(1, members).await?;
        cluster.wait_for_leader(None).await?;
        Ok(Self {
            cluster,
            network,
            paused: BTreeSet::new(),
            log: FaultLog::default(),
            started: Instant::now(),
        })
    }

    fn note(&mut self, what: String) {
        let at = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        eprintln!("nemesis +{:.1}s: {what}", at as f64 / 1000.0);
        self.log.events.push((at, what));
    }

    /// The node that says it leads with the newest term, asking only
    /// running nodes that are not paused, each briefly.
    pub async fn leader(&self) -> Option<u64> {
        let ids: Vec<u64> = self
            .cluster
            .running_node_ids()
            .into_iter()
            .filter(|id| !self.paused.contains(id))
            .collect();
        let calls = ids
            .iter()
            .map(|id| tokio::time::timeout(STATUS_TIMEOUT, self.cluster.status(*id)));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|reply| reply.ok().and_then(Result::ok))
            .filter(|status| status.role == "leader")
            .max_by_key(|status| status.term)
            .map(|status| status.id)
    }

    /// Nodes that are running and not paused: fault targets.
    fn healthy(&self) -> Vec<u64> {
        self.cluster
            .running_node_ids()
            .into_iter()
            .filter(|id| !self.paused.contains(id))
            .collect()
    }

    /// SIGSTOP node `id`.
    ///
    /// # Errors
    /// When the node is not running or the signal fails.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        signal(&self.cluster, id, Signal::SIGSTOP)?;
        self.paused.insert(id);
        self.note(format!("paused node {id} (SIGSTOP)"));
        Ok(())
    }

    /// SIGCONT node `id`.
    ///
    /// # Errors
    /// When the signal fails.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        if self.paused.remove(&id) && self.cluster.is_running(id) {
            signal(&self.cluster, id, Signal::SIGCONT)?;
            self.note(format!("resumed node {id} (SIGCONT)"));
        }
        Ok(())
    }

    /// Injects one fault of `kind` (choosing its target with `rng`);
    /// returns what must be undone, or `None` when no target fits now
    /// (e.g. no leader to kill).
    async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
    ) -> anyhow::Result<Option<Active>> {
        let healthy = self.healthy();
        let nodes = self.cluster.node_ids();
        // Never take down a majority by crashes and pauses at once.
        let down = nodes.len() - healthy.len();
        let may_stop = down < (nodes.len() - 1) / 2;
        let random = healthy.choose(rng).copied();
        let active = match kind {
            FaultKind::KillNode
            | FaultKind::KillLeader
            | FaultKind::PauseNode
            | FaultKind::PauseLeader
            | FaultKind::TornLog
            | FaultKind::KillDuringSnapshot
            | FaultKind::KillDuringInstall
                if !may_stop =>
            {
                None
            }
            FaultKind::KillNode | FaultKind::KillLeader => {
                let target = if kind == FaultKind::KillLeader {
                    self.leader().await
                } else {
                    random
                };
                match target {
                    Some(id) => {
                        self.cluster.kill(id)?;
                        self.note(format!("{kind:?}: killed node {id} (SIGKILL)"));
                        Some(Active::Killed(id))
                    }
                    None => None,
                }
            }
            FaultKind::PauseNode | FaultKind::PauseLeader => {
                let target = if kind == FaultKind::PauseLeader {
                    self.leader().await
                } else {
                    random
                };
                match target {
                    Some(id) => {
                        self.pause(id)?;
                        Some(Active::Paused(id))
                    }
                    None => None,
                }
            }
            FaultKind::TornLog => match random {
                Some(id) => {
                    self.cluster.kill(id)?;
                    let torn = tear_log(&self.cluster, id, rng)?;
                    self.note(format!("{kind:?}: killed node {id} (SIGKILL), {torn}"));
                    Some(Active::Killed(id))
                }
                None => None,
            },
            FaultKind::KillDuringSnapshot => match random {
                Some(id) => {
                    let mut admin = self.cluster.client().admin(id)?;
                    let building = tokio::spawn(async move {
                        admin.trigger_snapshot(TriggerSnapshotRequest {}).await
                    });
                    let after = rng.gen_range(2..=60);
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    self.cluster.kill(id)?;
                    let answered = if building.is_finished() {
                        match building.await {
                            Ok(Ok(reply)) => format!(
                                " (it had already answered: a snapshot up to {})",
                                reply.into_inner().snapshot_index
                            ),
                            Ok(Err(status)) => format!(" (it had already answered: {status})"),
                            Err(err) => format!(" ({err})"),
                        }
                    } else {
                        building.abort();
                        " (while it was building)".to_owned()
                    };
                    self.note(format!(
                        "{kind:?}: killed node {id} (SIGKILL) {after} ms after asking it for a snapshot{answered}"
                    ));
                    Some(Active::Killed(id))
                }
                None => None,
            },
            FaultKind::KillDuringInstall => {
                let leader = self.leader().await;
                let follower = healthy
                    .iter()
                    .copied()
                    .filter(|id| Some(*id) != leader)
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .copied();
                match (leader, follower) {
                    (Some(leader), Some(id)) => {
                        let what = kill_during_snapshot_install(&mut self.cluster, leader, id, rng)
                            .await?;
                        self.note(format!("{kind:?}: {what}"));
                        Some(Active::Killed(id))
                    }
                    _ => None,
                }
            }
            FaultKind::IsolateLeader => match self.leader().await {
                Some(leader) => {
                    let rest: Vec<u64> = nodes.iter().copied().filter(|id| *id != leader).collect();
                    self.network.partition(&[vec![leader], rest]);
                    self.note(format!("{kind:?}: cut node {leader} off from the others"));
                    Some(Active::Network)
                }
                None => None,
            },
            FaultKind::Partition => {
                let mut shuffled = nodes.clone();
                shuffled.shuffle(rng);
                let minority = rng.gen_range(1..=(nodes.len() - 1) / 2);
                let (small, big) = shuffled.split_at(minority);
                self.network.partition(&[small.to_vec(), big.to_vec()]);
                self.note(format!("{kind:?}: partitioned {small:?} | {big:?}"));
                Some(Active::Network)
            }
            FaultKind::OneWayCut => {
                let mut pair = nodes.clone();
                pair.shuffle(rng);
                let link = (pair[0], pair[1]);
                self.network.cut(&[link]);
                self.note(format!(
                    "{kind:?}: cut connections from node {} to node {}",
                    link.0, link.1
                ));
                Some(Active::Network)
            }
            FaultKind::SlowNode => {
                let target = *nodes.choose(rng).context("no nodes")?;
                let delay = Duration::from_millis(rng.gen_range(50..=400));
                for other in nodes.iter().filter(|id| **id != target) {
                    self.network.slow((target, *other), delay);
                    self.network.slow((*other, target), delay);
                }
                self.note(format!(
                    "{kind:?}: {} ms added each way on every link of node {target}",
                    delay.as_millis()
                ));
                Some(Active::Network)
            }
        };
        if active.is_some() {
            *self.log.injected.entry(format!("{kind:?}")).or_default() += 1;
        }
        Ok(active)
    }

    /// Undoes one fault.
    async fn undo(&mut self, active: Active) -> anyhow::Result<()> {
        match active {
            Active::Killed(id) => {
                self.cluster.restart(id).await?;
                self.note(format!("restarted node {id}"));
            }
            Active::Paused(id) => self.resume(id)?,
            Active::Network => {
                self.network.heal();
                self.note("healed the network".to_owned());
            }
        }
        Ok(())
    }

    /// Injects `kind`, holds it for `hold`, undoes it. Returns whether a
    /// fault was injected (there may be no target, e.g. no leader).
    ///
    /// # Errors
    /// When a signal, a kill or a restart fails.
    pub async fn fault(
        &mut self,
        kind: FaultKind,
        hold: Duration,
        rng: &mut StdRng,
    ) -> anyhow::Result<bool> {
        // Right after a fault the cluster may have no leader for a moment:
        // look for a target a few times before giving up.
        let mut active = None;
        for _ in 0..TARGET_TRIES {
            active = self.inject(kind, rng).await?;
            if active.is_some() {
                break;
            }
            tokio::time::sleep(TARGET_PAUSE).await;
        }
        let Some(active) = active else {
            self.note(format!("{kind:?}: no target, skipped"));
            return Ok(false);
        };
        tokio::time::sleep(hold).await;
        self.undo(active).await?;
        Ok(true)
    }

    /// Random faults of `kinds` until `until`: each held 1-6 s, with 1-4 s
    /// of calm between them.
    ///
    /// # Errors
    /// When a fault cannot be injected or undone.
    pub async fn rampage(
        &mut self,
        kinds: &[FaultKind],
        until: Instant,
        rng: &mut StdRng,
    ) -> anyhow::Result<()> {
        while Instant::now() < until {
            let kind = *kinds.choose(rng).context("no fault kinds")?;
            let hold = Duration::from_millis(rng.gen_range(1000..=6000));
            self.fault(kind, hold, rng).await?;
            let calm = Duration::from_millis(rng.gen_range(1000..=4000));
            tokio::time::sleep(calm.min(until.saturating_duration_since(Instant::now()))).await;
        }
        Ok(())
    }

    /// Undoes every fault: resumes paused nodes, heals the network,
    /// restarts dead nodes, and waits for a leader every node agrees on.
    ///
    /// # Errors
    /// When a node does not come back or no leader emerges in time.
    pub async fn heal(&mut self) -> anyhow::Result<u64> {
        for id in self.paused.clone() {
            self.resume(id)?;
        }
        self.network.heal();
        for id in self.cluster.node_ids() {
            if !self.cluster.is_running(id) {
                self.cluster.restart(id).await?;
                self.note(format!("restarted node {id} while healing"));
            }
        }
        let leader = self.cluster.wait_for_leader(None).await?;
        self.note(format!("healed; node {leader} leads"));
        Ok(leader)
    }
}

/// Largest tear of the log's last record, in bytes (a WAL frame is a
/// 24-byte header and a 4 KiB page).
const MAX_TEAR: u64 = 4096;

/// Truncates node `id`'s `raft-log.db-wal` by 1..=[`MAX_TEAR`] bytes (never
/// below its 32-byte header); says what it did.
fn tear_log(cluster: &TestCluster, id: u64, rng: &mut StdRng) -> anyhow::Result<String> {
    let wal = cluster.data_dir(id)?.join("raft-log.db-wal");
    let len = match std::fs::metadata(&wal) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok("its log has no WAL to tear".to_owned())
        }
        Err(err) => return Err(err).with_context(|| format!("could not stat {}", wal.display())),
    };
    if len <= 32 {
        return Ok(format!("its log's WAL is empty ({len} bytes)"));
    }
    let tear = rng.gen_range(1..=MAX_TEAR.min(len - 32));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .with_context(|| format!("could not open {}", wal.display()))?;
    file.set_len(len - tear)
        .with_context(|| format!("could not truncate {}", wal.display()))?;
    Ok(format!(
        "tore {tear} bytes off its Raft log's WAL ({len} bytes)"
    ))
}

/// Sends `signal` to node `id`'s process.
fn signal(cluster: &TestCluster, id: u64, signal: Signal) -> anyhow::Result<()> {
    anyhow::ensure!(cluster.is_running(id), "node {id} is not running");
    let pid = cluster.node(id)?.pid;
    let raw = i32::try_from(pid).context("process id out of range")?;
    kill(Pid::from_raw(raw), signal)
        .with_context(|| format!("could not send {signal:?} to node {id}"))?;
    Ok(())
}

/// Longest [`kill_during_snapshot_install`] asks the leader for snapshots
/// until its log starts past the follower's.
const PURGE_WAIT: Duration = Duration::from_secs(20);
/// The kill lands 0..=this many milliseconds after the snapshot starts
/// arriving (a small state installs in a few milliseconds).
const KILL_WITHIN_MS: u64 = 3;
/// Entries a follower may take between its status answer and its kill.
const IN_FLIGHT_MARGIN: u64 = 64;
/// Longest it waits for the restarted follower to start receiving.
const RECEIVE_WAIT: Duration = Duration::from_secs(20);

/// SIGKILLs follower `id`, has `leader` snapshot and purge its log past
/// what the follower holds (the cluster must be taking writes), restarts
/// the follower and SIGKILLs it 0-3 ms after it starts receiving the
/// leader's snapshot, or (half the time) 0-3 ms after it finished receiving
/// it and began installing it. Leaves it down; says what happened.
///
/// # Errors
/// When a node cannot be killed or restarted.
pub async fn kill_during_snapshot_install(
    cluster: &mut TestCluster,
    leader: u64,
    id: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let behind = tokio::time::timeout(STATUS_TIMEOUT, cluster.status(id))
        .await
        .ok()
        .and_then(Result::ok)
        .map_or(u64::MAX, |s| {
            // What it may still append between this answer and the kill.
            s.applied_index.max(s.last_log_index).max(s.snapshot_index) + IN_FLIGHT_MARGIN
        });
    cluster.kill(id)?;
    let incoming = cluster.data_dir(id)?.join("snapshots").join("incoming.db");
    let _ = std::fs::remove_file(&incoming);
    let deadline = Instant::now() + PURGE_WAIT;
    loop {
        let purged = tokio::time::timeout(STATUS_TIMEOUT, cluster.status(leader))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or(0, |s| s.purged_index);
        if behind != u64::MAX && purged > behind {
            break;
        }
        if Instant::now() > deadline {
            cluster.restart(id).await?;
            cluster.kill(id)?;
            return Ok(format!(
                "killed node {id} (SIGKILL); node {leader} did not purge its log past it \
                 (applied {behind}, purged {purged}) within {PURGE_WAIT:?}, so it was \
                 restarted and killed again without a snapshot to install"
            ));
        }
        if let Ok(mut admin) = cluster.client().admin(leader) {
            let _ = tokio::time::timeout(
                STATUS_TIMEOUT,
                admin.trigger_snapshot(TriggerSnapshotRequest {}),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let installs_before = installs_logged(cluster, id);
    cluster.restart(id).await?;
    let deadline = Instant::now() + RECEIVE_WAIT;
    loop {
        if incoming.exists() {
            break;
        }
        if installs_logged(cluster, id) > installs_before {
            cluster.kill(id)?;
            return Ok(format!(
                "killed node {id} (SIGKILL), then had node {leader} purge its log past it (past \
                 index {behind}), restarted it and killed it again; it had already installed \
                 the snapshot"
            ));
        }
        if Instant::now() > deadline {
            cluster.kill(id)?;
            return Ok(format!(
                "killed node {id} (SIGKILL), then had node {leader} purge its log past it (past \
                 index {behind}), restarted it and killed it again; it had not started receiving \
                 a snapshot within {RECEIVE_WAIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Half the time, wait for the received file to be taken in (renamed,
    // then its rows copied into the state): the kill lands in the install.
    let in_install = rng.gen_bool(0.5);
    if in_install {
        while incoming.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let after = rng.gen_range(0..=KILL_WITHIN_MS);
    if after > 0 {
        tokio::time::sleep(Duration::from_millis(after)).await;
    }
    let installed = installs_logged(cluster, id) > installs_before;
    cluster.kill(id)?;
    Ok(format!(
        "killed node {id} (SIGKILL), then had node {leader} purge its log past it (past \
         index {behind}), restarted it and killed it again {after} ms after it {} the \
         snapshot ({})",
        if in_install {
            "finished receiving"
        } else {
            "started receiving"
        },
        if installed {
            "it had already installed it"
        } else if incoming.exists() {
            "still receiving"
        } else {
            "while installing"
        }
    ))
}

/// How many snapshot installs node `id` has logged, over all its runs.
fn installs_logged(cluster: &TestCluster, id: u64) -> usize {
    cluster
        .log_path(id)
        .ok()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .map_or(0, |log| log.matches("snapshot installed").count())
}
