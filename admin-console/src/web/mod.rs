//! `agora-admin serve`: the web dashboard. One page (plain HTML, CSS and
//! JavaScript embedded in the binary, no build step) over a small JSON API
//! ([`api`]), the node table polled live, charts drawn from the console's
//! own history of the cluster ([`history`]), and the operator's actions.
//!
//! Who may do what: the browser signs in with an admin's name and
//! password; the console runs the OPAQUE login against the cluster and
//! keeps the admin session on its side ([`sessions`]). Every call made for
//! a browser carries that session and nothing else: the console builds its
//! cluster client *without* the cluster file's operator certificate, so a
//! browser can never do more than the admin who signed in.

mod api;
mod history;
mod scrape;
mod sessions;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use agora_peer::{read_cluster_file, ClientTls, ClusterClient};
use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::console::Console;
use history::{History, Target};
use sessions::SessionStore;

/// The page.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// Its script.
const APP_JS: &str = include_str!("assets/app.js");
/// Its style sheet.
const APP_CSS: &str = include_str!("assets/app.css");

/// Serve the web dashboard.
#[derive(Debug, clap::Args)]
pub struct Serve {
    /// Where to listen (`host:port`; port 0 picks a free port, printed on
    /// start). Keep it on loopback, or put a TLS proxy in front: the page
    /// is plain HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The cluster, without the operator certificate and without a
    /// session: sign-ins go through it, and each browser session gets a
    /// clone carrying its own admin token.
    client: ClusterClient,
    /// Signed-in browsers.
    sessions: SessionStore,
    /// The charts' samples and the observed events.
    history: Arc<History>,
    /// The cluster's event log, read incrementally.
    events: api::EventCache,
}

impl Serve {
    /// Binds, prints `listening on http://ADDR`, and serves until Ctrl-C or
    /// SIGTERM.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let (client, targets) = browser_client(&console.cluster_path)?;
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("could not listen on {}; is another console running there? pick another address with --listen", self.listen))?;
        let addr = listener.local_addr()?;
        if targets.is_empty() {
            eprintln!(
                "the cluster file names no metrics_addr for its nodes: the charts stay empty (the table works)"
            );
        }
        println!("listening on http://{addr}");
        let state = Arc::new(AppState {
            client,
            sessions: SessionStore::default(),
            history: Arc::new(History::default()),
            events: api::EventCache::default(),
        });
        serve(listener, state, targets, shutdown_signal()).await?;
        println!("stopped");
        Ok(())
    }
}

/// The cluster client that acts for browsers, and the metrics pages to
/// sample: from the cluster file, deliberately without its client
/// certificate (see the module docs).
fn browser_client(cluster_path: &Path) -> anyhow::Result<(ClusterClient, Vec<Target>)> {
    let file = read_cluster_file(cluster_path)?;
    let base_dir = cluster_path.parent().unwrap_or_else(|| Path::new("."));
    let mut tls = ClientTls::from_cluster_file(&file, base_dir)?;
    tls.identity = None;
    let client = ClusterClient::from_parts(
        &tls,
        file.nodes
            .iter()
            .map(|node| (node.id, node.api_addr.clone())),
    )?;
    let targets = file
        .nodes
        .iter()
        .filter_map(|node| {
            node.metrics_addr.as_ref().map(|addr| Target {
                id: node.id,
                metrics_addr: addr.clone(),
            })
        })
        .collect();
    Ok((client, targets))
}

/// Serves the dashboard on `listener`, sampling `targets`, until
/// `shutdown` resolves.
///
/// # Errors
/// When the HTTP server fails.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    targets: Vec<Target>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = tokio::spawn(history::run_sampler(state.history.clone(), targets));
    let result = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    result
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C still works.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
