//! Logs, metrics and the Prometheus endpoint.
//!
//! `tracing` goes to stderr, filtered by `RUST_LOG` (default: info, with
//! openraft's chatter at warn). Metrics use the `metrics` facade with a
//! Prometheus recorder, served at `/metrics` on the node's metrics listener.
//! Raft gauges are refreshed from openraft's metrics channel whenever it
//! changes.

use std::future::Future;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::raft::typ;

/// Latency buckets (seconds) for RPC and commit histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Size buckets for batch histograms.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Installs the tracing subscriber (text or JSON lines on stderr).
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sqlx=warn,h2=warn,tower=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the process-wide Prometheus recorder.
///
/// # Errors
/// When a recorder is already installed.
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_entries".into()), BATCH_BUCKETS)?
        .install_recorder()
}

/// Serves `/metrics` until `shutdown` resolves.
///
/// # Errors
/// When the HTTP server fails.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Mirrors openraft's metrics into Prometheus gauges until Raft stops.
pub async fn export_raft_metrics(raft: typ::Raft, committed: impl Fn() -> u64 + Send + 'static) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update().clone();
            #[allow(clippy::cast_precision_loss)]
            let g = |v: u64| v as f64;
            let last_log = m.last_log_index.unwrap_or(0);
            metrics::gauge!("agora_raft_term").set(g(m.current_term));
            metrics::gauge!("agora_raft_is_leader").set(if m.state.is_leader() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("agora_raft_leader_id").set(g(m.current_leader.unwrap_or(0)));
            metrics::gauge!("agora_raft_last_log_index").set(g(last_log));
            metrics::gauge!("agora_raft_committed_index").set(g(committed()));
            metrics::gauge!("agora_raft_applied_index")
                .set(g(m.last_applied.map_or(0, |l| l.index)));
            metrics::gauge!("agora_raft_snapshot_index").set(g(m.snapshot.map_or(0, |l| l.index)));
            if let Some(replication) = &m.replication {
                for (id, matched) in replication.iter() {
                    let lag = last_log.saturating_sub(matched.map_or(0, |l| l.index));
                    metrics::gauge!("agora_raft_replication_lag", "target" => id.to_string())
                        .set(g(lag));
                }
            }
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}
