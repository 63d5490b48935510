//! [`TestCluster`]: a real cluster of `agora-server` processes in a
//! temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use agora_peer::{is_retryable, ClientIdentity, ClientTls, ClusterClient};
use agora_proto::admin::{
    InitializeRequest, Member, NodeStatus, StateDigestReply, StateDigestRequest, StatusRequest,
};
use agora_proto::cluster_file::{ClusterFile, ClusterNode, DEFAULT_SERVER_NAME};
use anyhow::Context as _;
use tonic::Code;

use crate::binaries::{binary, SERVER_BINARY};
use crate::node::{NodeFiles, NodeInfo, NodeProcess, NodeSettings};
use crate::wait::{wait_for, Probe};

/// Longest one admin call of the harness may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep the cluster directory after the test when set (to anything but 0).
const KEEP_DIR_ENV: &str = "AGORA_TEST_KEEP_DIR";
/// How many lines of each node's log to print on drop.
const LOG_LINES_ENV: &str = "AGORA_TEST_LOG_LINES";
/// Default for [`LOG_LINES_ENV`].
const DEFAULT_LOG_LINES: usize = 80;

/// How a [`TestCluster`] runs its nodes. The defaults are the dev timeouts
/// and generous deadlines for a busy two-core CI machine.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Raft heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout.
    pub election_min_ms: u64,
    /// Upper bound of the election timeout.
    pub election_max_ms: u64,
    /// Build a snapshot every this many log entries (server default when
    /// `None`).
    pub snapshot_logs: Option<u64>,
    /// Keep this many log entries behind a snapshot (server default when
    /// `None`).
    pub keep_logs: Option<u64>,
    /// Certificates to make beyond the first nodes, one per
    /// [`TestCluster::add_node`] the test will call.
    pub spare_nodes: u64,
    /// How long any one wait of the harness may take (node start, leader
    /// election, catch-up, graceful stop) before the test fails.
    pub deadline: Duration,
    /// More arguments for every `agora-server node` command line.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the nodes; `None` passes the test's own environment
    /// through.
    pub log_filter: Option<String>,
    /// Start node `i` with `--raft-source-ip 127.0.0.(i+1)`, so that a
    /// proxy in front of a node can tell which node calls it (see
    /// [`crate::proxy`]).
    pub raft_source_ips: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_logs: None,
            keep_logs: None,
            spare_nodes: 2,
            deadline: Duration::from_secs(30),
            extra_args: Vec::new(),
            log_filter: None,
            raft_source_ips: false,
        }
    }
}

impl TestOptions {
    /// The settings every node process starts with.
    fn node_settings(&self) -> NodeSettings {
        let mut args = vec![
            "--heartbeat-ms".to_owned(),
            self.heartbeat_ms.to_string(),
            "--election-min-ms".to_owned(),
            self.election_min_ms.to_string(),
            "--election-max-ms".to_owned(),
            self.election_max_ms.to_string(),
        ];
        if let Some(n) = self.snapshot_logs {
            args.extend(["--snapshot-logs".to_owned(), n.to_string()]);
        }
        if let Some(n) = self.keep_logs {
            args.extend(["--keep-logs".to_owned(), n.to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        NodeSettings {
            args,
            log_filter: self.log_filter.clone(),
            raft_source_ips: self.raft_source_ips,
        }
    }
}

/// A directory of certificates as `agora-server certs` writes them: a CA,
/// node certificates `node-1 ..= node-N` (server and client use) and an
/// operator client certificate. The cluster's own, or another CA's for tests
/// of what the cluster must refuse.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
    /// Node certificates made (node ids `1..=nodes`).
    nodes: u64,
}

impl CertDir {
    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many node certificates it holds (`node-1 ..= node-N`).
    #[must_use]
    pub fn nodes(&self) -> u64 {
        self.nodes
    }

    /// The CA certificate.
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The operator client certificate.
    #[must_use]
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The operator client key.
    #[must_use]
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// Node `id`'s certificate.
    #[must_use]
    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }

    /// Node `id`'s key.
    #[must_use]
    pub fn node_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }

    /// Client TLS that trusts this CA and presents its operator certificate.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn client_tls(&self) -> anyhow::Result<ClientTls> {
        Ok(ClientTls {
            ca_pem: read_file(&self.ca())?,
            identity: Some(ClientIdentity {
                cert_pem: read_file(&self.client_cert())?,
                key_pem: read_file(&self.client_key())?,
            }),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("could not read {}", path.display()))
}

/// Only one cluster runs at a time in a test process: cargo runs the tests
/// of one file in parallel, and several clusters on a busy two-core machine
/// make every deadline a gamble. Each [`TestCluster`] holds this until it is
/// dropped.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster of real `agora-server` processes on loopback, in a temporary
/// directory. Dropping it kills every node (SIGKILL) and prints the tail of
/// each node's log.
///
/// Every method that waits polls with the deadline of
/// [`TestOptions::deadline`]; none sleeps for a fixed time.
#[derive(Debug)]
pub struct TestCluster {
    /// Admin and key/value client over every node, with the cluster's
    /// client certificate. Rebuilt when a node is added.
    client: ClusterClient,
    tls: ClientTls,
    /// Every node ever started, by id. Declared before `dir` so that the
    /// processes die before their directory is removed.
    nodes: BTreeMap<u64, NodeProcess>,
    server: PathBuf,
    certs: CertDir,
    options: TestOptions,
    settings: NodeSettings,
    dir: tempfile::TempDir,
    /// This cluster's turn ([`ONE_CLUSTER_AT_A_TIME`]); last, so that it is
    /// released only once the nodes are dead.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl TestCluster {
    /// Starts `n` nodes, initializes them as one cluster of `n` voters and
    /// waits until they agree on a leader.
    ///
    /// # Errors
    /// When the binaries are missing, a node does not start, or no leader
    /// emerges before the deadline.
    pub async fn start(n: u64, options: TestOptions) -> anyhow::Result<Self> {
        let cluster = Self::launch(n, options).await?;
        let members: Vec<Member> = cluster
            .nodes
            .values()
            .filter_map(|node| node.info.as_ref())
            .map(|info| Member {
                id: info.id,
                api_addr: info.api_addr.clone(),
                raft_addr: info.raft_addr.clone(),
                voter: true,
            })
            .collect();
        cluster.initialize(1, members).await?;
        cluster.wait_for_leader(None).await?;
        Ok(cluster)
    }

    /// Starts `n` nodes without initializing them: for tests of bootstrap
    /// itself. Call [`initialize`](Self::initialize) next.
    ///
    /// # Errors
    /// When the binaries are missing or a node does not start.
    pub async fn launch(n: u64, options: TestOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "a test cluster needs at least one node");
        let turn = ONE_CLUSTER_AT_A_TIME.lock().await;
        let server = binary(SERVER_BINARY)?;
        let dir = tempfile::Builder::new()
            .prefix("agora-test-")
            .tempdir()
            .context("could not create the cluster's temporary directory")?;
        let certs = CertDir {
            dir: dir.path().join("certs"),
            nodes: n + options.spare_nodes,
        };
        make_certs(&server, &certs).await?;
        let tls = certs.client_tls()?;
        let settings = options.node_settings();

        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut node = NodeProcess::new(id, node_files(dir.path(), &certs, id));
            node.spawn(&server, &settings)?;
            nodes.insert(id, node);
        }
        // Spawned above (so all start together), owned by `nodes` from here
        // on, which kills them if anything below fails.
        for node in nodes.values_mut() {
            node.wait_ready(options.deadline).await?;
        }
        let client = client_for(&tls, &nodes)?;
        Ok(Self {
            client,
            tls,
            nodes,
            server,
            certs,
            options,
            settings,
            dir,
            _turn: turn,
        })
    }

    /// Calls `Initialize` on node `on` with `members`, retrying while the
    /// node is not serving yet. A cluster that is already initialized is
    /// fine.
    ///
    /// # Errors
    /// When the node refuses, or does not answer before the deadline.
    pub async fn initialize(&self, on: u64, members: Vec<Member>) -> anyhow::Result<()> {
        let request = InitializeRequest { members };
        let admin = self.client.admin(on)?;
        wait_for(
            &format!("node {on} to accept Initialize"),
            self.options.deadline,
            || {
                let request = request.clone();
                let mut admin = admin.clone();
                async move {
                    match tokio::time::timeout(CALL_TIMEOUT, admin.initialize(request)).await {
                        Ok(Ok(_)) => Ok(Probe::Ready(())),
                        Ok(Err(status)) if status.code() == Code::AlreadyExists => {
                            Ok(Probe::Ready(()))
                        }
                        Ok(Err(status)) if is_retryable(&status) => {
                            Ok(Probe::NotYet(agora_peer::describe_status(&status)))
                        }
                        Ok(Err(status)) => Err(anyhow::anyhow!(
                            "node {on} refused Initialize: {}",
                            agora_peer::describe_status(&status)
                        )),
                        Err(_) => Ok(Probe::NotYet("Initialize timed out".to_owned())),
                    }
                }
            },
        )
        .await?;
        Ok(())
    }

    /// A client of the cluster (over every node started so far), with the
    /// cluster's client certificate. It shares its channels with the
    /// harness; nodes added later are not in it, so take it again after
    /// [`add_node`](Self::add_node).
    #[must_use]
    pub fn client(&self) -> ClusterClient {
        self.client.clone()
    }

    /// The TLS material clients of this cluster use (CA, client
    /// certificate, server name), to build other clients.
    #[must_use]
    pub fn client_tls(&self) -> &ClientTls {
        &self.tls
    }

    /// The cluster's temporary directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node ever started, running or not.
    #[must_use]
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The nodes whose process is alive.
    #[must_use]
    pub fn running_node_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.is_running())
            .map(|node| node.id)
            .collect()
    }

    /// Whether node `id` is alive.
    #[must_use]
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(NodeProcess::is_running)
    }

    /// Node `id`'s identity and addresses (of its latest run).
    ///
    /// # Errors
    /// When there is no such node.
    pub fn node(&self, id: u64) -> anyhow::Result<&NodeInfo> {
        self.node_process(id)?
            .info
            .as_ref()
            .with_context(|| format!("node {id} never became ready"))
    }

    /// Node `id`'s data directory (state database, Raft log).
    ///
    /// # Errors
    /// When there is no such node.
    pub fn data_dir(&self, id: u64) -> anyhow::Result<&Path> {
        Ok(&self.node_process(id)?.files.data_dir)
    }

    /// Node `id`'s log file (every run, appended).
    ///
    /// # Errors
    /// When there is no such node.
    pub fn log_path(&self, id: u64) -> anyhow::Result<&Path> {
        Ok(&self.node_process(id)?.files.log)
    }

    /// The last `lines` lines of node `id`'s log.
    ///
    /// # Errors
    /// When there is no such node.
    pub fn log_tail(&self, id: u64, lines: usize) -> anyhow::Result<String> {
        Ok(self.node_process(id)?.log_tail(lines))
    }

    /// Node `id`'s `Status`.
    ///
    /// # Errors
    /// When there is no such node or it does not answer in time.
    pub async fn status(&self, id: u64) -> anyhow::Result<NodeStatus> {
        let mut admin = self.client.admin(id)?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, admin.status(StatusRequest {}))
            .await
            .map_err(|_| anyhow::anyhow!("node {id} did not answer Status in time"))?
            .with_context(|| format!("node {id} did not answer Status"))?;
        Ok(reply.into_inner())
    }

    /// Node `id`'s state digest.
    ///
    /// # Errors
    /// When there is no such node or it does not answer in time.
    pub async fn digest(&self, id: u64) -> anyhow::Result<StateDigestReply> {
        let mut admin = self.client.admin(id)?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, admin.state_digest(StateDigestRequest {}))
            .await
            .map_err(|_| anyhow::anyhow!("node {id} did not answer StateDigest in time"))?
            .with_context(|| format!("node {id} did not answer StateDigest"))?;
        Ok(reply.into_inner())
    }

    /// The leader right now, by one round of `Status` on the running
    /// nodes: a node that says it leads (the newest term if two do).
    /// `None` while there is none.
    ///
    /// # Errors
    /// Never for unreachable nodes (they are skipped); kept fallible for
    /// symmetry with the waits.
    pub async fn leader_id(&self) -> anyhow::Result<Option<u64>> {
        let statuses = self.running_statuses().await;
        Ok(statuses
            .iter()
            .filter_map(|(_, status)| status.as_ref().ok())
            .filter(|status| status.role == "leader")
            .max_by_key(|status| status.term)
            .map(|status| status.id))
    }

    /// Waits until a running node other than `except` leads and every
    /// running member of its configuration reports it as leader; returns
    /// its id. Running nodes that are not members (added, not yet joined)
    /// are not asked to agree.
    ///
    /// # Errors
    /// When that does not happen before the deadline.
    pub async fn wait_for_leader(&self, except: Option<u64>) -> anyhow::Result<u64> {
        let what = match except {
            Some(old) => format!("a leader other than node {old}"),
            None => "a leader".to_owned(),
        };
        wait_for(&what, self.options.deadline, || async {
            let statuses = self.running_statuses().await;
            Ok(agreed_leader(&statuses, except))
        })
        .await
    }

    /// Waits until node `id` has applied at least `index`; returns its
    /// status at that point.
    ///
    /// # Errors
    /// When that does not happen before the deadline.
    pub async fn wait_applied(&self, id: u64, index: u64) -> anyhow::Result<NodeStatus> {
        wait_for(
            &format!("node {id} to apply index {index}"),
            self.options.deadline,
            || async {
                Ok(match self.status(id).await {
                    Ok(status) if status.applied_index >= index => Probe::Ready(status),
                    Ok(status) => Probe::NotYet(format!("applied {}", status.applied_index)),
                    Err(err) => Probe::NotYet(format!("{err:#}")),
                })
            },
        )
        .await
    }

    /// Waits until every node of `ids` reports a `StateDigest` taken at the
    /// same applied index (so: no write in flight between them), and
    /// returns those digests by node. It does not compare the digests: at
    /// one index they must be equal, and that is for the test to assert.
    ///
    /// # Errors
    /// When the nodes do not line up before the deadline.
    pub async fn wait_same_applied(
        &self,
        ids: &[u64],
    ) -> anyhow::Result<BTreeMap<u64, StateDigestReply>> {
        anyhow::ensure!(!ids.is_empty(), "no nodes to compare");
        wait_for(
            &format!("nodes {ids:?} to report digests at one applied index"),
            self.options.deadline,
            || async {
                let calls = ids.iter().map(|id| self.digest(*id));
                let replies = futures::future::join_all(calls).await;
                let mut digests = BTreeMap::new();
                let mut seen = Vec::new();
                for (id, reply) in ids.iter().zip(replies) {
                    match reply {
                        Ok(reply) => {
                            seen.push(format!("node {id} at {}", reply.applied_index));
                            digests.insert(*id, reply);
                        }
                        Err(err) => seen.push(format!("node {id}: {err:#}")),
                    }
                }
                let indexes: BTreeSet<u64> = digests.values().map(|d| d.applied_index).collect();
                Ok(if digests.len() == ids.len() && indexes.len() == 1 {
                    Probe::Ready(digests)
                } else {
                    Probe::NotYet(seen.join("; "))
                })
            },
        )
        .await
    }

    /// Waits until node `id` has exited by itself (within the deadline).
    ///
    /// # Errors
    /// When it is still running at the deadline.
    pub async fn wait_exited(&self, id: u64) -> anyhow::Result<()> {
        wait_for(&format!("node {id} to exit"), self.options.deadline, || {
            let running = self.is_running(id);
            async move {
                Ok(if running {
                    Probe::NotYet("still running".to_owned())
                } else {
                    Probe::Ready(())
                })
            }
        })
        .await
    }

    /// SIGKILL node `id` (a crash: nothing is flushed that was not already).
    ///
    /// # Errors
    /// When there is no such node.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.node_process_mut(id)?.kill()
    }

    /// SIGTERM node `id` and wait for it to exit (SIGKILL after the
    /// deadline). Returns how it exited; a graceful stop is a success.
    ///
    /// # Errors
    /// When there is no such node, it is not running, or it does not exit
    /// before the deadline.
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<ExitStatus> {
        let deadline = self.options.deadline;
        self.node_process_mut(id)?.stop(deadline).await
    }

    /// Starts node `id` again after a kill or stop: same data directory,
    /// same addresses. Returns once it listens (it may still be catching
    /// up; wait for that separately).
    ///
    /// # Errors
    /// When there is no such node, it is running, or it does not start.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<NodeInfo> {
        let deadline = self.options.deadline;
        let node = self
            .nodes
            .get_mut(&id)
            .with_context(|| format!("there is no node {id}"))?;
        anyhow::ensure!(
            !node.is_running(),
            "node {id} is running; kill or stop it before restarting it"
        );
        node.kill()?; // reaps a process that died by itself
        node.spawn(&self.server, &self.settings)?;
        node.wait_ready(deadline).await
    }

    /// Starts a fresh node with the next free id (no `Initialize`; join it
    /// with `AddLearner` + `PromoteVoter`). Returns its identity and
    /// addresses. The cluster's [`client`](Self::client) now includes it.
    ///
    /// # Errors
    /// When no spare certificate is left ([`TestOptions::spare_nodes`]) or
    /// the node does not start.
    pub async fn add_node(&mut self) -> anyhow::Result<NodeInfo> {
        let id = self.next_node_id();
        anyhow::ensure!(
            id <= self.certs.nodes,
            "no certificate for node {id}: the cluster was made with {} spare node(s); raise TestOptions::spare_nodes",
            self.options.spare_nodes
        );
        let certs = self.certs.clone();
        self.add_node_with_certs(&certs, id).await
    }

    /// Starts a fresh node with the next free id, like
    /// [`add_node`](Self::add_node), but with the CA and node certificate
    /// `cert_id` of `certs`: e.g. another CA's, for a node the cluster must
    /// not talk to. The cluster's [`client`](Self::client) lists it, but
    /// only a client trusting `certs`' CA can talk to it.
    ///
    /// # Errors
    /// When `certs` has no certificate `cert_id` or the node does not start.
    pub async fn add_node_with_certs(
        &mut self,
        certs: &CertDir,
        cert_id: u64,
    ) -> anyhow::Result<NodeInfo> {
        anyhow::ensure!(
            (1..=certs.nodes).contains(&cert_id),
            "{} has no certificate for node {cert_id}",
            certs.dir.display()
        );
        let id = self.next_node_id();
        let mut node = NodeProcess::new(id, node_files_with(self.dir.path(), certs, id, cert_id));
        node.spawn(&self.server, &self.settings)?;
        let info = node.wait_ready(self.options.deadline).await;
        // Keep it even if it failed to start, so its log is printed.
        self.nodes.insert(id, node);
        let info = info?;
        self.client = client_for(&self.tls, &self.nodes)?;
        Ok(info)
    }

    /// Makes certificates under a brand-new CA (not the cluster's) in the
    /// cluster directory, with `agora-server certs`: `nodes` node
    /// certificates and an operator certificate.
    ///
    /// # Errors
    /// When `agora-server certs` fails or `name` is taken.
    pub async fn make_other_ca(&self, name: &str, nodes: u64) -> anyhow::Result<CertDir> {
        let certs = CertDir {
            dir: self.dir.path().join(name),
            nodes,
        };
        anyhow::ensure!(
            !certs.dir.exists() && name != "certs",
            "{} already exists; pick another name for the other CA",
            certs.dir.display()
        );
        make_certs(&self.server, &certs).await?;
        Ok(certs)
    }

    /// The cluster's own certificates.
    #[must_use]
    pub fn certs(&self) -> &CertDir {
        &self.certs
    }

    /// The options the cluster was started with.
    #[must_use]
    pub fn options(&self) -> &TestOptions {
        &self.options
    }

    fn next_node_id(&self) -> u64 {
        self.nodes.keys().next_back().map_or(1, |last| last + 1)
    }

    /// The node as a `Member` (voter or not), for membership calls.
    ///
    /// # Errors
    /// When there is no such node.
    pub fn member(&self, id: u64, voter: bool) -> anyhow::Result<Member> {
        let info = self.node(id)?;
        Ok(Member {
            id,
            api_addr: info.api_addr.clone(),
            raft_addr: info.raft_addr.clone(),
            voter,
        })
    }

    /// Writes `cluster.toml` in the cluster directory (certificate paths
    /// relative to it), usable by `agora` and `agora-admin`; returns its
    /// path.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_cluster_file(&self) -> anyhow::Result<PathBuf> {
        let file = ClusterFile {
            ca_cert: "certs/ca.pem".to_owned(),
            client_cert: Some("certs/client.pem".to_owned()),
            client_key: Some("certs/client.key".to_owned()),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            nodes: self
                .nodes
                .values()
                .filter_map(|node| node.info.as_ref())
                .map(|info| ClusterNode {
                    id: info.id,
                    api_addr: info.api_addr.clone(),
                    raft_addr: info.raft_addr.clone(),
                    metrics_addr: info.metrics_addr.clone(),
                })
                .collect(),
        };
        let path = self.dir.path().join("cluster.toml");
        std::fs::write(&path, file.to_toml())
            .with_context(|| format!("could not write {}", path.display()))?;
        Ok(path)
    }

    /// Every running node's status (or why it did not answer).
    async fn running_statuses(&self) -> Vec<(u64, anyhow::Result<NodeStatus>)> {
        let ids = self.running_node_ids();
        let calls = ids.iter().map(|id| self.status(*id));
        let results = futures::future::join_all(calls).await;
        ids.into_iter().zip(results).collect()
    }

    fn node_process(&self, id: u64) -> anyhow::Result<&NodeProcess> {
        self.nodes
            .get(&id)
            .with_context(|| format!("there is no node {id}"))
    }

    fn node_process_mut(&mut self, id: u64) -> anyhow::Result<&mut NodeProcess> {
        self.nodes
            .get_mut(&id)
            .with_context(|| format!("there is no node {id}"))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Test output is shown only for failing tests, so printing here
        // costs nothing when all is well and explains a failure otherwise.
        let lines = std::env::var(LOG_LINES_ENV)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(DEFAULT_LOG_LINES);
        if lines > 0 {
            for node in self.nodes.values() {
                let state = match node.exit_status() {
                    // A node stops cleanly only on SIGTERM / SIGINT, which
                    // the harness never sends unless asked to stop it: then
                    // something outside the test did (a broad pkill?).
                    Some(status) if status.success() => format!(
                        "exited by itself: {status}; a clean exit means it got SIGTERM or SIGINT from outside the test"
                    ),
                    Some(status) => format!("exited by itself: {status}"),
                    None if node.is_running() => "running".to_owned(),
                    None => "not running".to_owned(),
                };
                eprintln!(
                    "----- node {} ({state}), last {lines} lines of {}",
                    node.id,
                    node.files.log.display()
                );
                eprintln!("{}", node.log_tail(lines));
            }
        }
        for node in self.nodes.values_mut() {
            let _ = node.kill();
        }
        let keep = std::thread::panicking()
            || std::env::var(KEEP_DIR_ENV).is_ok_and(|value| !value.is_empty() && value != "0");
        if keep {
            self.dir.disable_cleanup(true);
            eprintln!(
                "----- kept the cluster directory {}",
                self.dir.path().display()
            );
        }
    }
}

/// The files of node `id` under the cluster directory.
fn node_files(dir: &Path, certs: &CertDir, id: u64) -> NodeFiles {
    node_files_with(dir, certs, id, id)
}

/// The files of node `id`, started with node certificate `cert_id` of
/// `certs` (which need not be the cluster's).
fn node_files_with(dir: &Path, certs: &CertDir, id: u64, cert_id: u64) -> NodeFiles {
    NodeFiles {
        data_dir: dir.join(format!("node-{id}")),
        log: dir.join(format!("node-{id}.log")),
        ca_cert: certs.ca(),
        cert: certs.node_cert(cert_id),
        key: certs.node_key(cert_id),
    }
}

/// Runs `agora-server certs` for `certs.nodes` nodes.
async fn make_certs(server: &Path, certs: &CertDir) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(server)
        .arg("certs")
        .arg("--out")
        .arg(&certs.dir)
        .arg("--nodes")
        .arg(certs.nodes.to_string())
        .output()
        .await
        .with_context(|| format!("could not run {} certs", server.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "`agora-server certs` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// A client over every node that has become ready.
fn client_for(
    tls: &ClientTls,
    nodes: &BTreeMap<u64, NodeProcess>,
) -> anyhow::Result<ClusterClient> {
    let addrs = nodes
        .values()
        .filter_map(|node| node.info.as_ref())
        .map(|info| (info.id, info.api_addr.clone()));
    Ok(ClusterClient::from_parts(tls, addrs)?)
}

/// The leader that every running member agrees on, from one round of
/// statuses; why not otherwise.
fn agreed_leader(
    statuses: &[(u64, anyhow::Result<NodeStatus>)],
    except: Option<u64>,
) -> Probe<u64> {
    let leader = statuses
        .iter()
        .filter_map(|(_, status)| status.as_ref().ok())
        .filter(|status| status.role == "leader" && Some(status.id) != except)
        .max_by_key(|status| status.term);
    let Some(leader) = leader else {
        return Probe::NotYet(format!("no node leads: {}", summary(statuses)));
    };
    // A leader that does not list members (or lists none) cannot tell who
    // should agree; then every running node must.
    let members: BTreeSet<u64> = leader.members.iter().map(|member| member.id).collect();
    for (id, status) in statuses {
        if !members.is_empty() && !members.contains(id) {
            continue;
        }
        match status {
            Ok(status) if status.leader_id == leader.id => {}
            _ => {
                return Probe::NotYet(format!(
                    "node {} leads in term {}, not everyone agrees: {}",
                    leader.id,
                    leader.term,
                    summary(statuses)
                ))
            }
        }
    }
    Probe::Ready(leader.id)
}

/// One line on what every node said, for timeout messages.
fn summary(statuses: &[(u64, anyhow::Result<NodeStatus>)]) -> String {
    let parts: Vec<String> = statuses
        .iter()
        .map(|(id, status)| match status {
            Ok(s) => format!(
                "node {id}: {} term {} leader {} applied {}",
                s.role, s.term, s.leader_id, s.applied_index
            ),
            Err(err) => format!("node {id}: {err:#}"),
        })
        .collect();
    if parts.is_empty() {
        "no node is running".to_owned()
    } else {
        parts.join("; ")
    }
}
