//! `agora-admin`: the operator's console for an Agora cluster.
//!
//! Thin on purpose: parse the command line, load the cluster (and the
//! operator's session from the data directory), hand over to one module per
//! command (see [`commands`]).

mod commands;
mod console;
mod fleet;
mod table;
mod views;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;
use crate::console::Console;

/// Operate an Agora cluster: status, membership, digests, snapshots, the
/// ledger (deposits, commission, holds, audit), catalogue topics.
#[derive(Debug, Parser)]
#[command(name = "agora-admin", version, about)]
struct Cli {
    /// The cluster file (its client certificate, if any, authorizes admin
    /// calls without a session).
    #[arg(
        long,
        global = true,
        env = "AGORA_CLUSTER",
        default_value = "./agora-dev/cluster.toml"
    )]
    cluster: PathBuf,
    /// The operator's local state (the admin session); default
    /// ~/.agora-admin, or AGORA_HOME when AGORA_ADMIN_HOME is not set.
    #[arg(long, global = true, env = "AGORA_ADMIN_HOME")]
    data_dir: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let explicit = cli
        .data_dir
        .or_else(|| std::env::var_os("AGORA_HOME").map(PathBuf::from));
    let data_dir = agora_peer::local::data_dir(explicit, agora_peer::local::ADMIN_DIR_NAME)?;
    let authorize = cli.command.makes_admin_calls();
    let console = Console::load(&cli.cluster, data_dir, cli.json, authorize).await?;
    cli.command.run(&console).await
}
