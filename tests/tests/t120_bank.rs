//! The bank test: money is never created, lost or moved twice, whatever
//! fails. Buyers deposit, withdraw, buy (holds posted, voided, expired)
//! and read their balances on random nodes of a three-node cluster while
//! the nemesis kills the leader, pauses one, cuts one off and slows the
//! links (`agora_tests::nemesis`, through the Raft proxies of
//! `agora_tests::proxy`); after healing, `agora_tests::bank::check` judges
//! the whole history against the cluster's end state (exactly once, no
//! refused write applied, read-your-writes, money conserved, equal
//! digests, clean audit).
//!
//! - `bank_quick`: the CI run (about a minute of load and one fault of each
//!   main kind, then a kill during a snapshot build; well under two
//!   minutes on a busy two-core machine).
//! - `bank_soak` (ignored): every fault kind at random for
//!   `AGORA_BANK_MINUTES` (default 30) minutes. The same run, with flags:
//!
//!   ```sh
//!   cargo build --workspace --bins
//!   cargo run -p agora-tests --bin agora-bank -- --minutes 30 --keep-dir
//!   ```
//!
//! A run that breaks a rule saves its history and end state as JSON (the
//! path is printed); `AGORA_BANK_REPLAY=PATH cargo test -p agora-tests
//! --test t120_bank replay -- --ignored` runs the checker on it again.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::Duration;

use agora_tests::bank;
use agora_tests::nemesis::FaultKind;
use agora_tests::soak::{
    clock_seed, fault_kinds, run_bank, Plan, QUICK_BUYERS, SOAK_BUYERS, SOAK_SNAPSHOT_LOGS,
};
use anyhow::Context as _;

/// The seed of a run: `AGORA_BANK_SEED`, or the clock.
fn seed() -> u64 {
    std::env::var("AGORA_BANK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_quick() -> anyhow::Result<()> {
    run_bank(
        Plan::Script(vec![
            FaultKind::KillLeader,
            FaultKind::PauseLeader,
            FaultKind::IsolateLeader,
            FaultKind::SlowNode,
            FaultKind::KillDuringSnapshot,
        ]),
        QUICK_BUYERS,
        None,
        seed(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long soak: AGORA_BANK_MINUTES=30 cargo test -p agora-tests --test t120_bank -- --ignored"]
async fn bank_soak() -> anyhow::Result<()> {
    let minutes: u64 = std::env::var("AGORA_BANK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let kinds = fault_kinds(std::env::var("AGORA_BANK_FAULTS").ok().as_deref())?;
    run_bank(
        Plan::Rampage(Duration::from_secs(minutes * 60), kinds),
        SOAK_BUYERS,
        Some(SOAK_SNAPSHOT_LOGS),
        seed(),
    )
    .await
}

#[test]
#[ignore = "runs the checker on a saved run: AGORA_BANK_REPLAY=PATH"]
fn replay() -> anyhow::Result<()> {
    let path = std::env::var("AGORA_BANK_REPLAY")
        .context("set AGORA_BANK_REPLAY to the saved run's path")?;
    let anomalies = bank::replay(std::path::Path::new(&path))?;
    for anomaly in &anomalies {
        eprintln!("ANOMALY: {anomaly}");
    }
    anyhow::ensure!(anomalies.is_empty(), "{} anomalies", anomalies.len());
    Ok(())
}
