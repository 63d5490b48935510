//! A node's configuration: a TOML file, overridden by command-line flags and
//! environment variables, with defaults that just work for a local cluster.
//! [`NodeConfig::validate`] refuses a bad configuration before anything
//! starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

/// Fewest entries between snapshots: every node records a `snapshot_built`
/// event (one log entry) per snapshot, which must not be enough to trigger
/// the next one.
pub const MIN_SNAPSHOT_LOGS: u64 = 16;

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Raft node id (1 or more), unique in the cluster.
    pub id: u64,
    /// Where the node keeps its Raft log, state database and snapshots.
    pub data_dir: PathBuf,
    /// Public gRPC listener (peers, operators). Port 0 picks a free port.
    pub api_listen: SocketAddr,
    /// Internal Raft listener (other nodes only, mutual TLS).
    pub raft_listen: SocketAddr,
    /// Prometheus `/metrics` HTTP listener.
    pub metrics_listen: SocketAddr,
    /// Public address to announce, when it differs from the bound one.
    pub advertise_api: Option<String>,
    /// Raft address to announce, when it differs from the bound one.
    pub advertise_raft: Option<String>,
    /// PEM of the cluster CA.
    pub ca_cert: PathBuf,
    /// PEM of this node's certificate (signed by the cluster CA).
    pub cert: PathBuf,
    /// PEM of this node's private key.
    pub key: PathBuf,
    /// Leader heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Shortest election timeout, milliseconds.
    pub election_min_ms: u64,
    /// Longest election timeout, milliseconds.
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot (for followers slightly behind).
    pub keep_logs: u64,
    /// Most entries per AppendEntries message.
    pub max_payload_entries: u64,
    /// Log as JSON lines instead of text.
    pub log_json: bool,
    /// If this node bootstraps the cluster, use cheap Argon2id parameters
    /// (load-test clusters only: it makes stolen password files cheap to
    /// attack).
    pub load_test_ksf: bool,
    /// Let an admin abort this node through the `Crash` RPC (fault drills
    /// and load tests only).
    pub enable_fault_injection: bool,
    /// How long a login session lasts, in seconds.
    pub session_ttl_secs: u64,
    /// How long a seller's presence lease lasts without renewal, in
    /// milliseconds (sellers renew at half of it).
    pub presence_lease_ms: u64,
    /// How long a purchase holds the buyer's money when the buyer names no
    /// time, in milliseconds: the download must complete within it.
    pub purchase_hold_ms: u64,
    /// The file this node's output goes to (its launcher redirects stderr
    /// there), so an operator can read its tail with `agora-admin log`.
    pub log_file: Option<PathBuf>,
    /// Local address this node's outgoing Raft connections come from
    /// (`None`: whatever the system picks). Fault-injection tests give each
    /// node its own loopback address (127.0.0.2, 127.0.0.3, ...) so that a
    /// proxy in front of a node can tell which node is calling.
    pub raft_source_ip: Option<std::net::IpAddr>,
    /// Most calls per second one user (all their sessions together) may make
    /// on the public listener (a burst of two seconds' worth); 0: no limit.
    pub session_rate_limit: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self::for_id(1)
    }
}

impl NodeConfig {
    /// Defaults for node `id`: ports 7100+id, 7200+id and 7300+id on
    /// loopback, data and certificates under `./agora-dev`.
    #[must_use]
    pub fn for_id(id: u64) -> Self {
        let port = |base: u16| base.saturating_add(u16::try_from(id).unwrap_or(0));
        Self {
            id,
            data_dir: PathBuf::from(format!("agora-dev/node-{id}")),
            api_listen: SocketAddr::from(([127, 0, 0, 1], port(7100))),
            raft_listen: SocketAddr::from(([127, 0, 0, 1], port(7200))),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], port(7300))),
            advertise_api: None,
            advertise_raft: None,
            ca_cert: PathBuf::from("agora-dev/certs/ca.pem"),
            cert: PathBuf::from(format!("agora-dev/certs/node-{id}.pem")),
            key: PathBuf::from(format!("agora-dev/certs/node-{id}.key")),
            heartbeat_ms: 200,
            election_min_ms: 1500,
            election_max_ms: 3000,
            snapshot_logs: 20_000,
            keep_logs: 1_000,
            max_payload_entries: 2_000,
            log_json: false,
            load_test_ksf: false,
            enable_fault_injection: false,
            session_ttl_secs: 12 * 3600,
            presence_lease_ms: 120_000,
            purchase_hold_ms: 30 * 60 * 1000,
            log_file: None,
            raft_source_ip: None,
            session_rate_limit: 0,
        }
    }

    /// Checks the configuration as a whole.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::Invalid("the node id must be 1 or more".into()));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 3 > self.election_min_ms {
            return Err(ConfigError::Invalid(format!(
                "the heartbeat ({} ms) must be at most a third of the shortest election timeout ({} ms)",
                self.heartbeat_ms, self.election_min_ms
            )));
        }
        if self.election_min_ms >= self.election_max_ms {
            return Err(ConfigError::Invalid(format!(
                "the shortest election timeout ({} ms) must be below the longest ({} ms)",
                self.election_min_ms, self.election_max_ms
            )));
        }
        if self.session_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "session-ttl-secs must be 1 or more".into(),
            ));
        }
        if self.presence_lease_ms < 1000 {
            return Err(ConfigError::Invalid(
                "presence-lease-ms must be 1000 or more".into(),
            ));
        }
        if self.purchase_hold_ms < 1000
            || self.purchase_hold_ms > crate::raft::command::MAX_PURCHASE_TTL_MS
        {
            return Err(ConfigError::Invalid(
                "purchase-hold-ms must be from 1000 to 86400000 (24 hours)".into(),
            ));
        }
        if self.max_payload_entries == 0
            || self.max_payload_entries > crate::grpc::limits::MAX_PAYLOAD_ENTRIES
        {
            return Err(ConfigError::Invalid(format!(
                "max-payload-entries must be from 1 to {} (a batch of the largest entries must fit one Raft message)",
                crate::grpc::limits::MAX_PAYLOAD_ENTRIES
            )));
        }
        if self.snapshot_logs < MIN_SNAPSHOT_LOGS {
            return Err(ConfigError::Invalid(format!(
                "snapshot-logs must be {MIN_SNAPSHOT_LOGS} or more (each snapshot records an event in the log, so a smaller value would keep snapshotting its own events)"
            )));
        }
        for (what, path) in [
            ("CA certificate", &self.ca_cert),
            ("node certificate", &self.cert),
            ("node key", &self.key),
        ] {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "the {what} {} does not exist; make certificates with `agora-server certs`",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// The openraft configuration this node runs with.
    ///
    /// # Errors
    /// When openraft refuses the values.
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: "agora".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // A snapshot chunk or a vote can take a while on a loaded machine.
            install_snapshot_timeout: self.election_min_ms.max(1000),
            max_payload_entries: self.max_payload_entries,
            snapshot_max_chunk_size: crate::grpc::limits::RAFT_SNAPSHOT_CHUNK_BYTES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.keep_logs,
            // Purge as soon as the kept tail allows, in modest batches.
            purge_batch_size: self.keep_logs.clamp(1, 256),
            replication_lag_threshold: self.snapshot_logs.saturating_mul(2),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("raft settings: {e}")))
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node.
    #[error("the config file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

/// Command-line flags of `agora-server node`; each overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "AGORA_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Raft node id (1 or more).
    #[arg(long, env = "AGORA_NODE_ID")]
    pub id: Option<u64>,
    /// Data directory [default: agora-dev/node-ID].
    #[arg(long, env = "AGORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Public gRPC listen address [default: 127.0.0.1:7100+ID].
    #[arg(long, env = "AGORA_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Internal Raft listen address [default: 127.0.0.1:7200+ID].
    #[arg(long, env = "AGORA_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// Prometheus metrics listen address [default: 127.0.0.1:7300+ID].
    #[arg(long, env = "AGORA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Public address to announce to the cluster [default: the bound address].
    #[arg(long, env = "AGORA_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// Raft address to announce to the cluster [default: the bound address].
    #[arg(long, env = "AGORA_ADVERTISE_RAFT")]
    pub advertise_raft: Option<String>,
    /// Cluster CA certificate (PEM) [default: agora-dev/certs/ca.pem].
    #[arg(long, env = "AGORA_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// This node's certificate (PEM) [default: agora-dev/certs/node-ID.pem].
    #[arg(long, env = "AGORA_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM) [default: agora-dev/certs/node-ID.key].
    #[arg(long, env = "AGORA_KEY")]
    pub key: Option<PathBuf>,
    /// Leader heartbeat interval in ms [default: 200].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Shortest election timeout in ms [default: 1500].
    #[arg(long)]
    pub election_min_ms: Option<u64>,
    /// Longest election timeout in ms [default: 3000].
    #[arg(long)]
    pub election_max_ms: Option<u64>,
    /// Snapshot after this many entries since the last snapshot, at least 16 [default: 20000].
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot [default: 1000].
    #[arg(long)]
    pub keep_logs: Option<u64>,
    /// Most entries per replication message [default: 2000].
    #[arg(long)]
    pub max_payload_entries: Option<u64>,
    /// Log as JSON lines.
    #[arg(long, env = "AGORA_LOG_JSON")]
    pub log_json: bool,
    /// Bootstrap with cheap Argon2id parameters: for load-test clusters only.
    #[arg(long)]
    pub load_test_ksf: bool,
    /// Let an admin abort this node with the `Crash` RPC: for fault drills
    /// and load tests only.
    #[arg(long)]
    pub enable_fault_injection: bool,
    /// How long a login session lasts, in seconds [default: 43200 = 12 h].
    #[arg(long, env = "AGORA_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<u64>,
    /// How long a seller's presence lease lasts without renewal, in
    /// milliseconds [default: 120000].
    #[arg(long, env = "AGORA_PRESENCE_LEASE_MS")]
    pub presence_lease_ms: Option<u64>,
    /// How long a purchase holds the buyer's money unless the buyer names a
    /// time, in milliseconds [default: 1800000].
    #[arg(long, env = "AGORA_PURCHASE_HOLD_MS")]
    pub purchase_hold_ms: Option<u64>,
    /// The file this node's output is redirected to, for `agora-admin log`.
    #[arg(long, env = "AGORA_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Local IP address to open Raft connections to other nodes from
    /// [default: chosen by the system]; for fault-injection tests.
    #[arg(long)]
    pub raft_source_ip: Option<std::net::IpAddr>,
    /// Most calls per second per user (all their sessions together) on the
    /// public listener (RESOURCE_EXHAUSTED beyond) [default: 0 = no limit].
    #[arg(
        long = "user-rate-limit",
        alias = "session-rate-limit",
        env = "AGORA_USER_RATE_LIMIT"
    )]
    pub session_rate_limit: Option<u32>,
}

impl NodeArgs {
    /// Resolves file, flags and defaults into one configuration.
    ///
    /// # Errors
    /// When the config file cannot be read or parsed.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => NodeConfig::for_id(self.id.unwrap_or(1)),
        };
        if let Some(id) = self.id {
            if self.config.is_none() {
                config = NodeConfig::for_id(id);
            }
            config.id = id;
        }
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = &self.$field { config.$field = v.clone(); } )*};
        }
        set!(
            data_dir,
            api_listen,
            raft_listen,
            metrics_listen,
            ca_cert,
            cert,
            key,
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
            snapshot_logs,
            keep_logs,
            max_payload_entries,
            session_ttl_secs,
            presence_lease_ms,
            purchase_hold_ms,
            session_rate_limit
        );
        if self.advertise_api.is_some() {
            config.advertise_api.clone_from(&self.advertise_api);
        }
        if self.log_file.is_some() {
            config.log_file.clone_from(&self.log_file);
        }
        if self.advertise_raft.is_some() {
            config.advertise_raft.clone_from(&self.advertise_raft);
        }
        if self.raft_source_ip.is_some() {
            config.raft_source_ip = self.raft_source_ip;
        }
        config.log_json |= self.log_json;
        config.load_test_ksf |= self.load_test_ksf;
        config.enable_fault_injection |= self.enable_fault_injection;
        Ok(config)
    }
}

fn load_file(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_id_and_flags_override() {
        let args = NodeArgs {
            id: Some(3),
            heartbeat_ms: Some(100),
            ..NodeArgs::default()
        };
        let config = args.resolve().expect("resolves");
        assert_eq!(config.id, 3);
        assert_eq!(config.api_listen.port(), 7103);
        assert_eq!(config.heartbeat_ms, 100);
        assert_eq!(config.cert, PathBuf::from("agora-dev/certs/node-3.pem"));
    }

    #[test]
    fn validate_refuses_bad_timing() {
        let mut config = NodeConfig::for_id(1);
        config.heartbeat_ms = 1000;
        assert!(
            matches!(config.validate(), Err(ConfigError::Invalid(m)) if m.contains("heartbeat"))
        );
        let mut config = NodeConfig::for_id(0);
        config.id = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn toml_round_trip() {
        let config = NodeConfig::for_id(2);
        let text = toml::to_string(&config).expect("serializes");
        assert_eq!(toml::from_str::<NodeConfig>(&text).expect("parses"), config);
    }
}
