//! `agora-bank`: the bank soak from the command line. A three-node cluster
//! of real node processes behind fault-injecting Raft proxies, buyers
//! moving money on random nodes, the nemesis injecting faults of every kind
//! (or the ones named) for the given minutes; then healing and the checker.
//! Exits non-zero on any anomaly, saving the run for `t120_bank replay`.
//!
//! ```sh
//! cargo build --workspace --bins
//! cargo run -p agora-tests --bin agora-bank -- --minutes 30
//! ```

use std::time::Duration;

use agora_tests::soak::{clock_seed, fault_kinds, run_bank, Plan, SOAK_BUYERS, SOAK_SNAPSHOT_LOGS};
use clap::Parser;

/// Runs the bank workload under faults, then checks that no money was
/// created, lost or moved twice.
#[derive(Parser)]
#[command(name = "agora-bank", version)]
struct Args {
    /// How long the faults go on.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Only these fault kinds, comma-separated (e.g. `TornLog,KillLeader`);
    /// every kind when absent.
    #[arg(long)]
    faults: Option<String>,
    /// Repeat the random choices of an earlier run.
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent buyers.
    #[arg(long, default_value_t = SOAK_BUYERS)]
    buyers: usize,
    /// Build a snapshot every this many log entries.
    #[arg(long, default_value_t = SOAK_SNAPSHOT_LOGS)]
    snapshot_logs: u64,
    /// Keep the cluster's directory (node logs, databases) afterwards.
    #[arg(long)]
    keep_dir: bool,
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agora-bank: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.keep_dir {
        // Read by the test harness when it removes the cluster directory;
        // set before any thread starts.
        std::env::set_var("AGORA_TEST_KEEP_DIR", "1");
    }
    let kinds = fault_kinds(args.faults.as_deref())?;
    let seed = args.seed.unwrap_or_else(clock_seed);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_bank(
            Plan::Rampage(Duration::from_secs(args.minutes * 60), kinds),
            args.buyers,
            Some(args.snapshot_logs),
            seed,
        ))
}
