//! Starting and stopping a node: storage, Raft, and the three listeners
//! (public gRPC, internal Raft gRPC with mutual TLS, Prometheus metrics).
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests
//! and `agora-server dev` start real nodes on port 0 and stop them cleanly.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use agora_proto::admin::admin_service_server::AdminServiceServer;
use agora_proto::market::account_service_server::AccountServiceServer;
use agora_proto::market::catalogue_service_server::CatalogueServiceServer;
use agora_proto::market::kv_service_server::KvServiceServer;
use agora_proto::market::ledger_service_server::LedgerServiceServer;
use agora_proto::market::purchase_service_server::PurchaseServiceServer;
use agora_proto::raft::raft_service_server::RaftServiceServer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::activity::RequestRate;
use crate::config::{ConfigError, NodeConfig};
use crate::events::{EventKind, EventSink};
use crate::grpc::account::AccountApi;
use crate::grpc::admin::AdminApi;
use crate::grpc::catalogue::CatalogueApi;
use crate::grpc::kv::KvApi;
use crate::grpc::ledger::LedgerApi;
use crate::grpc::limits;
use crate::grpc::purchase::PurchaseApi;
use crate::grpc::raft::RaftApi;
use crate::grpc::rpc_metrics::RpcMetricsLayer;
use crate::node::{Node, NodeLocal};
use crate::observability;
use crate::presence::{self, Leases};
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerChannels;
use crate::raft::recovery::{run_abstention, Abstention};
use crate::raft::state_machine::StateMachine;
use crate::raft::typ::{self, StorageError};
use crate::raft::NodeAddr;
use crate::tls::{TlsError, TlsMaterial};

/// Longest a graceful stop waits to record its `node_stopped` event.
const STOP_EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The listeners a node serves on, bound by the caller.
pub struct Listeners {
    /// Public gRPC (peers, operators).
    pub api: TcpListener,
    /// Internal Raft gRPC.
    pub raft: TcpListener,
    /// Prometheus metrics.
    pub metrics: TcpListener,
}

/// What a running node writes to `DATA_DIR/node.json` once it listens, so
/// scripts and tests learn its addresses (also when bound to port 0).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Raft node id.
    pub id: u64,
    /// Process id.
    pub pid: u32,
    /// Public gRPC address.
    pub api_addr: String,
    /// Internal Raft address.
    pub raft_addr: String,
    /// Metrics address.
    pub metrics_addr: String,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Unreadable certificates.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The log or state database failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// A file or socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A gRPC server failed.
    #[error("a gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Raft could not start.
    #[error("raft failed: {0}")]
    Raft(String),
    /// A database file of the node cannot be read.
    #[error("{0}")]
    Damaged(String),
    /// Reflection could not be built.
    #[error("gRPC reflection failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

fn write_node_info(dir: &Path, info: &NodeInfo) -> std::io::Result<()> {
    let tmp = dir.join("node.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join("node.json"))
}

/// The connections a listener accepts, with Nagle's algorithm off.
///
/// tonic applies its own `tcp_nodelay` only to listeners it binds itself.
/// Without this, a reply that spans several TCP segments (a page of search
/// results, a batch of log entries) waits for the peer's delayed ACK: 40 ms
/// on Linux.
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// The innermost error of a chain: storage errors repeat their sources in
/// their own text, so the innermost one is the readable one.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// Resolves when the Raft core has stopped (a panic in it, or a storage
/// error it cannot go on after), with why.
async fn raft_core_stopped(raft: &typ::Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return match &metrics.borrow().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "it ended without an error".to_owned(),
            };
        }
    }
}

/// Runs a node until `shutdown` resolves, then stops it gracefully.
///
/// # Errors
/// When the node cannot start, or a server fails.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    let tls = TlsMaterial::load(&config)?;
    std::fs::create_dir_all(&config.data_dir)?;
    // Before the databases are opened: whether the last run stopped cleanly.
    let start_kind = crate::events::start_kind(&config.data_dir)?;
    let (events, notes) = EventSink::channel();

    let state_path = config.data_dir.join("state.db");
    let state = StateMachine::open(&config.data_dir).await.map_err(|e| {
        NodeError::Damaged(format!(
            "cannot open the state database {}: {}. If the file is damaged, this node's data \
             cannot be trusted: stop it, remove it from the cluster, and add it back with an \
             empty data directory (it will receive a snapshot)",
            state_path.display(),
            root_cause(&e)
        ))
    })?;
    let log_path = config.data_dir.join("raft-log.db");
    // What the state machine applied, and the membership it applied.
    let (applied, membership) =
        openraft::storage::RaftStateMachine::applied_state(&mut state.clone()).await?;
    let (log, damage) = LogStore::open(&log_path, config.id, applied)
        .await
        .map_err(|e| {
            NodeError::Damaged(format!(
                "cannot open the raft log {}: {}. If the file is damaged, move it (and its -wal \
                 and -shm files) aside and start the node again: it rebuilds the log from its \
                 state database and the leader",
                log_path.display(),
                root_cause(&e)
            ))
        })?;
    if let Some(damage) = &damage {
        tracing::warn!(%damage, "the raft log was damaged and has been repaired");
    }
    state.forget_snapshot_behind(log.last_purged()).await?;
    let peers = PeerChannels::new(tls.peer_client(), config.raft_source_ip);
    let raft = typ::Raft::new(
        config.id,
        Arc::new(config.raft_config()?),
        peers.clone(),
        log.clone(),
        state.clone(),
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    // A node that lost entries abstains until a leader has caught it up;
    // the only voter has no one to wait for (what it lost is lost). The
    // membership is the applied one: openraft's metrics are not filled in
    // yet at this point.
    let alone = membership
        .membership()
        .voter_ids()
        .all(|voter| voter == config.id);
    let abstention = if damage.as_ref().is_some_and(|d| d.entries_lost) && !alone {
        Abstention::until_caught_up()
    } else {
        Abstention::voting()
    };

    let api_local = listeners.api.local_addr()?;
    let raft_local = listeners.raft.local_addr()?;
    let metrics_local = listeners.metrics.local_addr()?;
    let addr = NodeAddr {
        api_addr: config
            .advertise_api
            .clone()
            .unwrap_or_else(|| api_local.to_string()),
        raft_addr: config
            .advertise_raft
            .clone()
            .unwrap_or_else(|| raft_local.to_string()),
    };
    state.set_event_sink(events.clone());
    let requests = RequestRate::default();
    let node = Node::new(
        config.id,
        raft.clone(),
        state,
        log.clone(),
        peers,
        addr.clone(),
        NodeLocal {
            events: events.clone(),
            data_dir: config.data_dir.clone(),
            log_file: config.log_file.clone(),
            requests: requests.clone(),
            abstention: abstention.clone(),
        },
    );
    let started = crate::events::start_note(config.id, start_kind);
    events.note(started.kind, started.subject_node_id, started.message);
    if let Some(damage) = &damage {
        events.note(
            EventKind::LogRepaired,
            config.id,
            format!(
                "node {} repaired its raft log at start: {damage}",
                config.id
            ),
        );
    }
    tokio::spawn(run_abstention(
        raft.clone(),
        abstention,
        node.state.applied(),
        events.clone(),
        config.id,
    ));
    tokio::spawn(crate::events::run_recorder(node.clone(), notes));
    tokio::spawn(crate::events::run_watcher(node.clone()));
    tokio::spawn(requests.clone().run_sampler());
    tokio::spawn(crate::node::run_leader_duties(
        node.clone(),
        config.load_test_ksf,
    ));
    let leases = Leases::new(std::time::Duration::from_millis(config.presence_lease_ms));
    tokio::spawn(presence::run_lease_keeper(node.clone(), leases.clone()));
    tokio::spawn(observability::export_raft_metrics(
        raft.clone(),
        move || log.committed_index(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let (mut health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KvServiceServer<KvApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health
        .set_serving::<AccountServiceServer<AccountApi>>()
        .await;
    health
        .set_serving::<CatalogueServiceServer<CatalogueApi>>()
        .await;
    health
        .set_serving::<PurchaseServiceServer<PurchaseApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(agora_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Every size below is a named, documented limit (`grpc::limits`).
    let api_server = Server::builder()
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .tls_config(tls.api_server())?
        .layer(RpcMetricsLayer::new(requests.clone()))
        .layer(crate::grpc::rate_limit::RateLimitLayer::new(
            config.session_rate_limit,
            node.auth.token_key(),
        ))
        .layer(crate::grpc::request_errors::RequestErrorsLayer)
        .layer(limits::LargeRequestsLayer::default())
        .add_service(health_service.max_decoding_message_size(limits::MAX_PROBE_REQUEST_BYTES))
        .add_service(reflection.max_decoding_message_size(limits::MAX_PROBE_REQUEST_BYTES))
        .add_service(
            KvServiceServer::new(KvApi::new(node.clone()))
                .max_decoding_message_size(limits::MAX_KV_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_KV_REPLY_BYTES),
        )
        .add_service(
            AdminServiceServer::new(
                AdminApi::new(node.clone()).with_fault_injection(config.enable_fault_injection),
            )
            .max_decoding_message_size(limits::MAX_ADMIN_REQUEST_BYTES)
            .max_encoding_message_size(limits::MAX_ADMIN_REPLY_BYTES),
        )
        .add_service(
            AccountServiceServer::new(AccountApi::new(
                node.clone(),
                std::time::Duration::from_secs(config.session_ttl_secs),
            ))
            .max_decoding_message_size(limits::MAX_ACCOUNT_REQUEST_BYTES)
            .max_encoding_message_size(limits::MAX_ACCOUNT_REPLY_BYTES),
        )
        .add_service(
            LedgerServiceServer::new(LedgerApi::new(node.clone()))
                .max_decoding_message_size(limits::MAX_LEDGER_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_LEDGER_REPLY_BYTES),
        )
        .add_service(
            CatalogueServiceServer::new(CatalogueApi::new(node.clone(), leases))
                .max_decoding_message_size(limits::MAX_CATALOGUE_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_CATALOGUE_REPLY_BYTES),
        )
        .add_service(
            PurchaseServiceServer::new(PurchaseApi::new(node.clone(), config.purchase_hold_ms))
                .max_decoding_message_size(limits::MAX_PURCHASE_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_PURCHASE_REPLY_BYTES),
        )
        .serve_with_incoming_shutdown(no_delay(listeners.api), stopped());
    let raft_server = Server::builder()
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .tls_config(tls.raft_server())?
        .layer(RpcMetricsLayer::new(requests.clone()))
        .add_service(
            RaftServiceServer::new(RaftApi::new(node.clone()))
                .max_decoding_message_size(limits::MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(limits::MAX_RAFT_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(no_delay(listeners.raft), stopped());
    let metrics_server = observability::serve_metrics(listeners.metrics, metrics, stopped());

    write_node_info(
        &config.data_dir,
        &NodeInfo {
            id: config.id,
            pid: std::process::id(),
            api_addr: addr.api_addr.clone(),
            raft_addr: addr.raft_addr.clone(),
            metrics_addr: metrics_local.to_string(),
        },
    )?;
    tracing::info!(id = config.id, api = %addr.api_addr, raft = %addr.raft_addr, metrics = %metrics_local, "node listening");

    let api_task = tokio::spawn(api_server);
    let raft_task = tokio::spawn(raft_server);
    let metrics_task = tokio::spawn(metrics_server);
    tokio::select! {
        () = shutdown => {}
        stopped = raft_core_stopped(&raft) => {
            // A node without its Raft core answers nothing useful and never
            // heals; exit so that the supervisor restarts it on its data.
            let message = format!(
                "the Raft core of node {} stopped by itself ({stopped}); the node exits \
                 so that it can be restarted (its data directory is intact)",
                config.id
            );
            tracing::error!("{message}");
            let _ = stop_tx.send(true);
            return Err(NodeError::Raft(message));
        }
    }
    tracing::info!("shutting down");
    // Say so in the event log while the node can still reach the leader
    // (bounded: a node cut off from the cluster must still stop).
    let stopping = crate::events::EventNote {
        kind: crate::events::EventKind::NodeStopped,
        subject_node_id: config.id,
        message: format!("node {} is stopping gracefully", config.id),
    };
    let _ = tokio::time::timeout(
        STOP_EVENT_WAIT,
        crate::events::record(
            &node,
            &format!("stop:{}", config.id),
            crate::auth::now_ms(),
            stopping,
        ),
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = raft.shutdown().await;
    for task in [api_task, raft_task] {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "gRPC server stopped with an error");
        }
    }
    let _ = metrics_task.await;
    let _ = std::fs::remove_file(config.data_dir.join("node.json"));
    if let Err(e) = crate::events::mark_clean_shutdown(&config.data_dir) {
        tracing::warn!(error = %e, "could not mark the clean stop; the next start will be recorded as after a crash");
    }
    tracing::info!("stopped");
    Ok(())
}
