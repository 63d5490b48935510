//! `agora-loadtest`: drives load against a real Agora cluster and reports
//! what it measured.

mod audit;
mod buying;
mod catalogue;
mod cluster;
mod compare;
mod faults;
mod latency;
mod ledger;
mod logins;
mod report;
mod run;
mod sim;
mod spawn;
mod stats;
mod writes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for an Agora cluster.
#[derive(Parser)]
#[command(name = "agora-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulated users against a real cluster (or one it spawns), faults
    /// on a schedule, a report and a closing audit.
    Run(Box<run::RunArgs>),
    /// The same replicated writes against Agora and a local 3-node etcd,
    /// one after the other, and the ratio.
    CompareEtcd(compare::CompareArgs),
    /// Replicated write throughput and latency (the core's raw write path).
    Writes(writes::WritesArgs),
    /// OPAQUE logins per second served by the cluster.
    Logins(logins::LoginsArgs),
    /// Ledger writes per second (deposits, holds, posts).
    Ledger(ledger::LedgerArgs),
    /// Publish a synthetic catalogue, then search it on the followers.
    Catalogue(catalogue::CatalogueArgs),
    /// Purchases settled per second, end to end (real seller, real peer TLS).
    Buying(buying::BuyingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::CompareEtcd(args) => compare::run(args).await,
            Command::Writes(args) => writes::run(args).await,
            Command::Logins(args) => logins::run(args).await,
            Command::Ledger(args) => ledger::run(args).await,
            Command::Catalogue(args) => catalogue::run(args).await,
            Command::Buying(args) => buying::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
