//! `agora`: the peer's command line.
//!
//! Accounts (`register`, `login`, `logout`, `whoami`; see [`cli::account`]),
//! money (`balance`, `history`, `withdraw`; see [`cli::ledger`]), the
//! catalogue (`publish`, `listings`, `show`, `edit`, `reprice`,
//! `unpublish`, `search`, `topics`; see [`cli::catalogue`]), selling and
//! buying (`serve`, `buy`, `downloads`, `resume`, `cancel`, `sales`; see
//! [`cli::trade`]) and the
//! replicated key/value register (`put` / `get`) that exercises the cluster
//! client. The peer's local
//! state lives in its data directory (`--data-dir`, `AGORA_HOME`, default
//! `~/.agora`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use agora_peer::{describe_status, request_id, ClusterClient};
use agora_proto::amount::{parse_positive_amount, AmountError};
use agora_proto::market::ReadConsistency;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::cli::account::Peer;
use crate::cli::ledger::HistoryQuery;

/// The Agora peer.
#[derive(Debug, Parser)]
#[command(name = "agora", version, about)]
struct Cli {
    /// The cluster file.
    #[arg(
        long,
        global = true,
        env = "AGORA_CLUSTER",
        default_value = "./agora-dev/cluster.toml"
    )]
    cluster: PathBuf,
    /// The peer's local state (session, identity); default ~/.agora.
    #[arg(long, global = true, env = "AGORA_HOME")]
    data_dir: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account (password from the terminal or AGORA_PASSWORD).
    Register {
        /// 3 to 32 letters, digits, '_', '-' or '.'.
        name: String,
    },
    /// Log in and keep the session in the data directory.
    Login {
        /// The account name.
        name: String,
    },
    /// End the session on the cluster and forget it here.
    Logout,
    /// Show who this peer is logged in as (asks the cluster).
    Whoami,
    /// Show your balance, the money held for purchases, and what is
    /// available.
    Balance,
    /// Show your cash flows (deposits, withdrawals, purchases, sales),
    /// newest first, one page at a time.
    History {
        /// Only this kind (deposit, withdrawal, sale, commission, ...);
        /// repeat for several.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// Entries per page (1 to 500; default 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
        /// Continue where a previous page ended (it prints the cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Move available money out of your account.
    Withdraw {
        /// How much, like 12.50.
        #[arg(value_parser = amount_arg, allow_hyphen_values = true)]
        amount: u64,
    },
    /// Put a file up for sale: hash it and publish its listing.
    Publish(cli::catalogue::Publish),
    /// Show your listings (newest first), with the file each one sells.
    Listings(cli::catalogue::Listings),
    /// Show one listing in full.
    Show(cli::catalogue::Show),
    /// Change a listing's title, description, topic, tags or attributes.
    Edit(cli::catalogue::Edit),
    /// Change a listing's price.
    Reprice(cli::catalogue::Reprice),
    /// Take a listing off sale.
    Unpublish(cli::catalogue::Unpublish),
    /// Find listings on sale, one page at a time.
    Search(cli::catalogue::Search),
    /// Show the topics a listing may be filed under.
    Topics(cli::catalogue::Topics),
    /// Sell: serve your listings' files to buyers and stay online.
    Serve(cli::trade::Serve),
    /// Buy a listing: pay into escrow, fetch the file from its seller,
    /// settle, verify and write it.
    Buy(cli::trade::Buy),
    /// Show your purchases' downloads (in progress and done).
    Downloads(cli::trade::Downloads),
    /// Continue a broken download from the next missing chunk.
    Resume(cli::trade::Resume),
    /// Give up an unfinished purchase; the money is available again.
    Cancel(cli::trade::Cancel),
    /// Show what you sold: buyer, price, what you got, when.
    Sales(cli::trade::Sales),
    /// Show the purchases you disputed and got refunded.
    Disputes(cli::trade::Disputes),
    /// Write a value to the replicated key/value register.
    Put {
        /// Key (1 to 256 bytes).
        key: String,
        /// Value (stored as its UTF-8 bytes).
        value: String,
        /// Who writes (part of the request id that makes retries safe).
        #[arg(long, default_value = "agora-cli")]
        client: String,
    },
    /// Read a value from the replicated key/value register.
    Get {
        /// Key.
        key: String,
        /// Wait until the answering node has applied at least this index
        /// (the index a `put` printed), to read your own write anywhere.
        #[arg(long, default_value_t = 0)]
        min_index: u64,
        /// See every write acknowledged before the read started.
        #[arg(long)]
        linearizable: bool,
        /// Ask this node only (default: any node that answers).
        #[arg(long)]
        node: Option<u64>,
    },
}

/// An amount of money that moves (more than 0.00), checked while the
/// command line is parsed, before anything is sent.
fn amount_arg(text: &str) -> Result<u64, AmountError> {
    parse_positive_amount(text)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Log lines go to stderr: warnings by default, and what a file server
    // does (`agora serve`); AGORA_LOG overrides (e.g. `debug`).
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = ClusterClient::load(&cli.cluster)?;
    let peer = || {
        Peer::new(
            client.clone(),
            cli.data_dir.clone(),
            agora_peer::local::PEER_DIR_NAME,
            cli.json,
        )
    };
    match cli.command {
        Command::Register { name } => peer()?.register(&name).await?,
        Command::Login { name } => peer()?.login(&name).await?,
        Command::Logout => peer()?.logout().await?,
        Command::Whoami => peer()?.whoami().await?,
        Command::Balance => cli::ledger::balance(&peer()?).await?,
        Command::History {
            kinds,
            limit,
            cursor,
        } => {
            let query = HistoryQuery {
                kinds,
                limit,
                cursor,
            };
            cli::ledger::history(&peer()?, query).await?;
        }
        Command::Withdraw { amount } => cli::ledger::withdraw(&peer()?, amount).await?,
        Command::Publish(command) => command.run(&peer()?).await?,
        Command::Listings(command) => command.run(&peer()?).await?,
        Command::Show(command) => command.run(&peer()?).await?,
        Command::Edit(command) => command.run(&peer()?).await?,
        Command::Reprice(command) => command.run(&peer()?).await?,
        Command::Unpublish(command) => command.run(&peer()?).await?,
        Command::Search(command) => command.run(&peer()?).await?,
        Command::Topics(command) => command.run(&peer()?).await?,
        Command::Serve(command) => command.run(&peer()?).await?,
        Command::Buy(command) => command.run(&peer()?).await?,
        Command::Downloads(command) => command.run(&peer()?).await?,
        Command::Resume(command) => command.run(&peer()?).await?,
        Command::Cancel(command) => command.run(&peer()?).await?,
        Command::Sales(command) => command.run(&peer()?).await?,
        Command::Disputes(command) => command.run(&peer()?).await?,
        Command::Put {
            key,
            value,
            client: who,
        } => {
            let reply = client
                .put(key.clone(), value.into_bytes(), request_id(who))
                .await
                .map_err(|status| anyhow::anyhow!(describe_status(&status)))
                .with_context(|| format!("could not write {key:?}"))?;
            if cli.json {
                println!(
                    "{}",
                    json!({"key": key, "index": reply.index, "revision": reply.revision})
                );
            } else {
                println!(
                    "wrote {key:?} (revision {}) at index {}",
                    reply.revision, reply.index
                );
            }
        }
        Command::Get {
            key,
            min_index,
            linearizable,
            node,
        } => {
            let consistency = ReadConsistency {
                min_index,
                linearizable,
            };
            let reply = client
                .get(key.clone(), consistency, node)
                .await
                .map_err(|status| anyhow::anyhow!(describe_status(&status)))
                .with_context(|| format!("could not read {key:?}"))?;
            let value = String::from_utf8_lossy(&reply.value);
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "key": key,
                        "found": reply.found,
                        "value": if reply.found { Some(value.as_ref()) } else { None },
                        "revision": reply.revision,
                        "applied_index": reply.applied_index,
                    })
                );
            } else if reply.found {
                println!("{value}");
            } else {
                anyhow::bail!(
                    "the key {key:?} has no value (the node had applied up to index {})",
                    reply.applied_index
                );
            }
        }
    }
    Ok(())
}
