//! The bank run: the workload of [`crate::bank`] against a
//! [`ChaosCluster`] under a plan of faults, then healing and the checker.
//! `t120_bank` runs it (the quick run in CI, the soak ignored), and so does
//! the `agora-bank` binary (`cargo run -p agora-tests --bin agora-bank --
//! --minutes 30`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agora_peer::ledger;
use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::SeedableRng as _;

use crate::bank::{self, Bank, SavedRun};
use crate::nemesis::{ChaosCluster, FaultKind};
use crate::{peer_client, wait_clean_audit, TestOptions};

/// Buyers (concurrent clients) in the quick run.
pub const QUICK_BUYERS: usize = 4;
/// Buyers in the soak.
pub const SOAK_BUYERS: usize = 8;
/// Build a snapshot every this many entries in the soak: small, so that
/// restarted and lagging nodes install snapshots, and kills often land
/// while one is being built or installed.
pub const SOAK_SNAPSHOT_LOGS: u64 = 500;
/// How long each fault of the quick run lasts.
const QUICK_HOLD: Duration = Duration::from_secs(4);
/// Calm between two faults of the quick run.
const QUICK_CALM: Duration = Duration::from_secs(3);
/// Load after the last fault, before healing.
const TAIL: Duration = Duration::from_secs(4);
/// Longest the cluster may take to converge after healing (audit clean
/// and equal on every node).
const CONVERGE: Duration = Duration::from_secs(60);

/// Options for a chaos cluster: cheap password hashing (many users), and
/// a generous deadline for restarts on a busy machine.
fn options(snapshot_logs: Option<u64>) -> TestOptions {
    TestOptions {
        deadline: Duration::from_secs(60),
        snapshot_logs,
        keep_logs: snapshot_logs.map(|n| n / 4),
        extra_args: vec!["--load-test-ksf".to_owned()],
        ..TestOptions::default()
    }
}

/// How a run injects its faults.
pub enum Plan {
    /// Each of these once, in order.
    Script(Vec<FaultKind>),
    /// Random faults of these kinds for this long.
    Rampage(Duration, Vec<FaultKind>),
}

/// The fault kinds named in `names` (comma-separated, e.g.
/// `TornLog,KillLeader`, to chase one problem); every kind for `None`.
///
/// # Errors
/// When a name is not a fault kind.
pub fn fault_kinds(names: Option<&str>) -> anyhow::Result<Vec<FaultKind>> {
    let Some(names) = names else {
        return Ok(FaultKind::ALL.to_vec());
    };
    names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            FaultKind::ALL
                .into_iter()
                .find(|kind| format!("{kind:?}") == name)
                .with_context(|| {
                    format!(
                        "{name} is not a fault kind; the kinds are {:?}",
                        FaultKind::ALL
                    )
                })
        })
        .collect()
}

/// A seed from the clock, for runs that were not given one.
#[must_use]
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs())
}

/// Runs the workload under `plan` with `buyers` concurrent clients and
/// the random choices of `seed`, heals, checks; fails with every anomaly
/// (after saving the run) or when the run proved too little.
///
/// # Errors
/// Any anomaly, a cluster that cannot heal, or a run that proved nothing.
pub async fn run_bank(
    plan: Plan,
    buyers: usize,
    snapshot_logs: Option<u64>,
    seed: u64,
) -> anyhow::Result<()> {
    eprintln!(
        "bank: seed {seed} (--seed {seed} or AGORA_BANK_SEED={seed} repeats the random choices)"
    );
    let started = Instant::now();
    let mut chaos = ChaosCluster::start(3, options(snapshot_logs)).await?;
    let admin = chaos.cluster.client();
    let everyone = peer_client(&chaos.cluster)?;
    let mut bank = Bank::open(admin.clone(), &everyone, chaos.cluster.dir(), buyers).await?;
    eprintln!("bank: set up in {:.1}s", started.elapsed().as_secs_f64());

    let mut rng = StdRng::seed_from_u64(seed);
    let load_started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<Instant>);
    let nemesis = async {
        let result = match &plan {
            Plan::Script(kinds) => {
                let mut result = Ok(());
                for kind in kinds {
                    tokio::time::sleep(QUICK_CALM).await;
                    if let Err(err) = chaos.fault(*kind, QUICK_HOLD, &mut rng).await {
                        result = Err(err);
                        break;
                    }
                }
                result
            }
            Plan::Rampage(length, kinds) => {
                chaos
                    .rampage(kinds, Instant::now() + *length, &mut rng)
                    .await
            }
        };
        let _ = stop_tx.send(Some(Instant::now() + TAIL));
        result
    };
    // The workers run until the nemesis is done plus a tail.
    let load = bank.run(stop_rx, seed);
    let (nemesis_result, ()) = tokio::join!(nemesis, load);
    nemesis_result.context("the nemesis failed")?;
    let load_secs = load_started.elapsed().as_secs_f64();

    let leader = match chaos.heal().await {
        Ok(leader) => leader,
        Err(err) => return Err(err.context(panic_report(&chaos))),
    };
    admin.set_leader_hint(leader);
    let history = bank.history();
    let tally = bank::tally(&history);
    eprintln!(
        "bank: {} operations in {load_secs:.0}s ({} ok, {} refused, {} unknown) {:?}; faults {:?}",
        history.len(),
        tally.ok,
        tally.failed,
        tally.unknown,
        tally.by_kind,
        chaos.log.injected
    );

    // Converge: a clean audit agreed by every node, then equal digests.
    wait_clean_audit(
        &admin,
        "a clean ledger audit on every node after healing",
        CONVERGE,
    )
    .await?;
    let ids = chaos.cluster.node_ids();
    let digests: BTreeMap<u64, String> = chaos
        .cluster
        .wait_same_applied(&ids)
        .await?
        .into_iter()
        .map(|(id, reply)| (id, reply.digest))
        .collect();
    let audit = ledger::audit_on(&admin, leader).await?;
    let end = bank.final_state(&audit, digests).await?;
    let anomalies = bank::check(&history, &end);
    let (accepted, refused) = chaos.network.connection_counts();
    let (built, installed) = snapshot_counts(&chaos)?;
    eprintln!(
        "bank: proxies carried {accepted} connections and refused {refused}; snapshots built {built}, installed {installed}; {} anomalies",
        anomalies.len()
    );
    if let Err(err) = bank.close().await {
        // The shop's presence may have given up during a long fault; that
        // is availability, not money, and the checks above stand.
        eprintln!("bank: the seller's shop ended with: {err:#}");
    }
    let run = SavedRun {
        seed,
        history,
        final_state: end,
        faults: chaos.log.clone(),
        anomalies: anomalies.clone(),
    };
    if !anomalies.is_empty() {
        let path = bank::save(&run)?;
        for anomaly in &anomalies {
            eprintln!("ANOMALY: {anomaly}");
        }
        anyhow::bail!(
            "{} anomalies; the run is saved in {} (replay: AGORA_BANK_REPLAY={} cargo test -p agora-tests --test t120_bank replay -- --ignored)",
            anomalies.len(),
            path.display(),
            path.display()
        );
    }
    // A run that proved nothing must not pass.
    anyhow::ensure!(
        accepted > 0,
        "no Raft connection went through the proxies: the faults touched nothing"
    );
    let kinds = &tally.by_kind;
    for kind in ["Deposit", "Withdraw", "Begin", "Complete", "Read"] {
        anyhow::ensure!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "the workload ran no {kind} operation: {kinds:?}"
        );
    }
    anyhow::ensure!(
        tally.ok >= 20,
        "only {} operations succeeded: the cluster was unavailable nearly all the time",
        tally.ok
    );
    if let Plan::Script(kinds) = &plan {
        anyhow::ensure!(
            chaos.log.total() == kinds.len() as u64,
            "only {} of {} faults found a target: {:?}",
            chaos.log.total(),
            kinds.len(),
            chaos.log.events
        );
    }
    eprintln!(
        "bank: done in {:.0}s; {}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&run.faults.injected)?
    );
    Ok(())
}

/// Every panic in the nodes' logs, with the lines after it: what a run
/// that cannot heal most needs to show (the cluster directory is removed
/// unless `AGORA_TEST_KEEP_DIR=1`).
fn panic_report(chaos: &ChaosCluster) -> String {
    let mut report = Vec::new();
    for id in chaos.cluster.node_ids() {
        let Ok(path) = chaos.cluster.log_path(id) else {
            continue;
        };
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.contains("panicked") {
                let end = (n + 12).min(lines.len());
                report.push(format!("node {id}:\n{}", lines[n..end].join("\n")));
            }
        }
    }
    if report.is_empty() {
        "no node panicked".to_owned()
    } else {
        format!("panics in the nodes' logs:\n{}", report.join("\n"))
    }
}

/// Snapshots built and installed on every node, from their logs.
fn snapshot_counts(chaos: &ChaosCluster) -> anyhow::Result<(usize, usize)> {
    let (mut built, mut installed) = (0, 0);
    for id in chaos.cluster.node_ids() {
        let log = std::fs::read_to_string(chaos.cluster.log_path(id)?)?;
        built += log.matches("snapshot built").count();
        installed += log.matches("snapshot installed").count();
    }
    Ok((built, installed))
}
