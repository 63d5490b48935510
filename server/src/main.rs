//! The `agora-server` binary: run one node, a whole local cluster, or make
//! development certificates.

mod dev;

use std::path::PathBuf;
use std::process::ExitCode;

use agora_server::config::NodeArgs;
use agora_server::{certs, observability, server};
use clap::{Parser, Subcommand};

/// One node of an Agora cluster, or a whole local cluster for development.
#[derive(Parser)]
#[command(name = "agora-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one cluster node.
    Node(Box<NodeArgs>),
    /// Start a local cluster of node processes (certificates included) and
    /// stop it with Ctrl-C. Running it again resumes the same cluster.
    Dev(dev::DevArgs),
    /// Make a development CA and node / operator certificates.
    Certs {
        /// Directory to write them to.
        #[arg(long, default_value = "agora-dev/certs")]
        out: PathBuf,
        /// Number of node certificates (node-1 .. node-N).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => run_node(&args),
        Command::Dev(args) => dev::run(&args),
        Command::Certs { out, nodes } => certs::ensure_dev_certs(&out, nodes)
            .map(|c| println!("certificates are in {}", c.dir.display()))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: &NodeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    config.validate()?;
    observability::init_tracing(config.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        };
        let listeners = server::Listeners {
            api: bind(config.api_listen).await?,
            raft: bind(config.raft_listen).await?,
            metrics: bind(config.metrics_listen).await?,
        };
        let metrics = observability::install_recorder()?;
        server::run(config, listeners, metrics, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
