//! `agora-admin`: the operator's console for an Agora cluster.
//!
//! Thin on purpose: parse the command line, load the cluster, hand over to
//! one module per command (see [`commands`]).

mod commands;
mod console;
mod fleet;
mod table;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;
use crate::console::Console;

/// Operate an Agora cluster: status, membership, digests, snapshots.
#[derive(Debug, Parser)]
#[command(name = "agora-admin", version, about)]
struct Cli {
    /// The cluster file (its client certificate authorizes admin calls).
    #[arg(
        long,
        global = true,
        env = "AGORA_CLUSTER",
        default_value = "./agora-dev/cluster.toml"
    )]
    cluster: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match Console::load(&cli.cluster, cli.json) {
        Ok(console) => cli.command.run(&console).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
