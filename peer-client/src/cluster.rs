//! [`ClusterClient`]: one TLS channel per node, leader tracking, bounded
//! retries with the same request id, and the session token (if any) that
//! goes with every account and admin call.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use agora_proto::admin::admin_service_client::AdminServiceClient;
use agora_proto::cluster_file::ClusterFile;
use agora_proto::market::account_service_client::AccountServiceClient;
use agora_proto::market::catalogue_service_client::CatalogueServiceClient;
use agora_proto::market::kv_service_client::KvServiceClient;
use agora_proto::market::ledger_service_client::LedgerServiceClient;
use agora_proto::market::purchase_service_client::PurchaseServiceClient;
use agora_proto::market::{GetReply, GetRequest, PutReply, PutRequest, ReadConsistency, RequestId};
use rand::seq::SliceRandom as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::bearer::{BearerToken, SessionAuth};
use crate::retry::{backoff, gave_up, is_retryable, leader_hint_of, BACKOFF_MAX};
use crate::{ClientError, ClientTls, RetryPolicy};

/// An admin client whose calls carry the [`ClusterClient`]'s session token,
/// if it has one.
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, SessionAuth>>;

/// An account client whose calls carry the [`ClusterClient`]'s session
/// token, if it has one (a token put on a request explicitly wins).
pub type AccountClient = AccountServiceClient<InterceptedService<Channel, SessionAuth>>;

/// A ledger client whose calls carry the [`ClusterClient`]'s session
/// token, if it has one.
pub type LedgerClient = LedgerServiceClient<InterceptedService<Channel, SessionAuth>>;

/// A catalogue client whose calls carry the [`ClusterClient`]'s session
/// token, if it has one (publishing and the seller's own listings need
/// one; search does not).
pub type CatalogueClient = CatalogueServiceClient<InterceptedService<Channel, SessionAuth>>;

/// A purchase client whose calls carry the [`ClusterClient`]'s session
/// token.
pub type PurchaseClient = PurchaseServiceClient<InterceptedService<Channel, SessionAuth>>;

/// How long opening a TCP + TLS connection to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// "No leader known" in [`Shared::leader_hint`] (Raft node ids start at 1).
const NO_LEADER: u64 = 0;

/// A client of one Agora cluster.
///
/// Cloning is cheap and clones share their channels and their idea of the
/// leader. Channels are created once, lazily connected, and reconnect by
/// themselves after a node restarts; building a client must happen inside a
/// Tokio runtime, because each channel runs a background task.
///
/// A client may carry a session token ([`with_token`](Self::with_token));
/// admin and account calls made through it then present that session. The
/// token belongs to the clone it was set on, so one set of channels can
/// serve several accounts (a load test's users, say).
#[derive(Debug, Clone)]
pub struct ClusterClient {
    shared: Arc<Shared>,
    /// The session presented on admin and account calls, if any.
    auth: SessionAuth,
}

#[derive(Debug)]
struct Shared {
    /// Kept to open a channel to a leader the cluster file does not list
    /// (a node added after the file was written).
    tls: ClientTlsConfig,
    /// Every node known, by id. Behind a lock only because a redirect may
    /// name a node we have not seen; reads vastly outnumber writes.
    nodes: RwLock<BTreeMap<u64, Node>>,
    /// The node believed to lead, or [`NO_LEADER`]. Only a hint: any write
    /// may find it stale and follow a redirect.
    leader_hint: AtomicU64,
    /// How hard calls try; fixed for the client's life.
    policy: RetryPolicy,
    /// Failed attempts that were retried, by kind; shared with every
    /// client derived from this one (a load test reports them).
    retried: Arc<RetryCounts>,
    /// Longest pause between two attempts of a leader call.
    backoff_cap: Duration,
}

/// How many failed attempts a client retried (so the caller never saw
/// them), by kind: `redirect` (not the leader), `unavailable`,
/// `deadline_exceeded`, `connection` (no answer at all), or the code.
#[derive(Debug, Default)]
pub struct RetryCounts {
    counts: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl RetryCounts {
    /// Counts one retried attempt that failed with `status`.
    fn record(&self, status: &Status) {
        let kind = retry_kind(status);
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }

    /// The counts so far, by kind.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(kind, n)| ((*kind).to_owned(), *n))
            .collect()
    }
}

/// The kind a retried failure is counted under.
fn retry_kind(status: &Status) -> &'static str {
    if leader_hint_of(status).is_some() {
        return "redirect";
    }
    match status.code() {
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        _ if std::error::Error::source(status).is_some() => "connection",
        _ => "other",
    }
}

#[derive(Debug, Clone)]
struct Node {
    addr: String,
    channel: Channel,
}

impl ClusterClient {
    /// Reads a cluster file and builds a client for it. Relative paths in
    /// the file are relative to the file's own directory.
    ///
    /// # Errors
    /// When the file or a certificate it names cannot be read, or the file
    /// is not a valid cluster file.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let file = read_cluster_file(path)?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_cluster_file(&file, base_dir)
    }

    /// Builds a client from a parsed cluster file whose relative paths are
    /// relative to `base_dir`.
    ///
    /// # Errors
    /// When a certificate cannot be read or a node address is invalid.
    pub fn from_cluster_file(file: &ClusterFile, base_dir: &Path) -> Result<Self, ClientError> {
        let tls = ClientTls::from_cluster_file(file, base_dir)?;
        Self::from_parts(
            &tls,
            file.nodes
                .iter()
                .map(|node| (node.id, node.api_addr.clone())),
        )
    }

    /// Builds a client from TLS settings and `(node id, api address)` pairs.
    ///
    /// # Errors
    /// When no node is given, an id repeats, or an address is invalid.
    pub fn from_parts(
        tls: &ClientTls,
        nodes: impl IntoIterator<Item = (u64, String)>,
    ) -> Result<Self, ClientError> {
        // tonic builds its rustls config with the process-wide crypto
        // provider, which rustls cannot choose by itself once more than one
        // is compiled in. Installing fails only when one is already set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = tls.to_tonic();
        let mut map = BTreeMap::new();
        for (id, addr) in nodes {
            let channel = open_channel(id, &addr, &tls)?;
            if map.insert(id, Node { addr, channel }).is_some() {
                return Err(ClientError::DuplicateNode(id));
            }
        }
        if map.is_empty() {
            return Err(ClientError::NoNodes);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                tls,
                nodes: RwLock::new(map),
                leader_hint: AtomicU64::new(NO_LEADER),
                policy: RetryPolicy::default(),
                retried: Arc::default(),
                backoff_cap: BACKOFF_MAX,
            }),
            auth: SessionAuth::default(),
        })
    }

    /// This client (sharing its channels) presenting session `token` on
    /// every admin and account call.
    ///
    /// # Errors
    /// [`ClientError::InvalidToken`] when the token cannot be sent as gRPC
    /// metadata.
    pub fn with_token(self, token: &str) -> Result<Self, ClientError> {
        Ok(self.with_bearer(Some(BearerToken::new(token)?)))
    }

    /// This client (sharing its channels) presenting `token` on every admin
    /// and account call, or no session at all for `None`.
    #[must_use]
    pub fn with_bearer(self, token: Option<BearerToken>) -> Self {
        Self {
            shared: self.shared,
            auth: SessionAuth::new(token),
        }
    }

    /// The session token this client presents, if any.
    #[must_use]
    pub fn bearer(&self) -> Option<&BearerToken> {
        self.auth.token()
    }

    /// `message` as a request carrying this client's session token (if it
    /// has one), for calls made over a raw [`Channel`].
    #[must_use]
    pub fn authorize<T>(&self, message: T) -> Request<T> {
        match self.auth.token() {
            Some(token) => token.request(message),
            None => Request::new(message),
        }
    }

    /// This client with another retry policy (e.g. a shorter budget for a
    /// test that expects failure, or a longer one for a load test).
    #[must_use]
    pub fn with_retry_policy(self, policy: RetryPolicy) -> Self {
        self.reshared(policy, self.shared.backoff_cap)
    }

    /// This client pausing at most `cap` between attempts of a leader call
    /// (default 1 s): a load test measuring failover wants its writes to
    /// find a new leader soon after it is elected, not up to a second later.
    #[must_use]
    pub fn with_backoff_cap(self, cap: Duration) -> Self {
        self.reshared(self.shared.policy, cap)
    }

    /// A copy with its own shared state (the same nodes and retry counts).
    fn reshared(&self, policy: RetryPolicy, backoff_cap: Duration) -> Self {
        let shared = &self.shared;
        Self {
            shared: Arc::new(Shared {
                tls: shared.tls.clone(),
                nodes: RwLock::new(self.read_nodes().clone()),
                leader_hint: AtomicU64::new(shared.leader_hint.load(Ordering::Relaxed)),
                policy,
                retried: shared.retried.clone(),
                backoff_cap,
            }),
            auth: self.auth.clone(),
        }
    }

    /// The failed attempts this client (and every client sharing its
    /// channels) retried, by kind.
    #[must_use]
    pub fn retried(&self) -> BTreeMap<String, u64> {
        self.shared.retried.snapshot()
    }

    /// The retry policy in force.
    #[must_use]
    pub fn retry_policy(&self) -> RetryPolicy {
        self.shared.policy
    }

    /// The ids of every known node, ascending.
    #[must_use]
    pub fn node_ids(&self) -> Vec<u64> {
        self.read_nodes().keys().copied().collect()
    }

    /// The public address of node `id`, if known.
    #[must_use]
    pub fn node_addr(&self, id: u64) -> Option<String> {
        self.read_nodes().get(&id).map(|node| node.addr.clone())
    }

    /// The node this client last saw acting as leader, if any.
    #[must_use]
    pub fn leader_hint(&self) -> Option<u64> {
        match self.shared.leader_hint.load(Ordering::Relaxed) {
            NO_LEADER => None,
            id => Some(id),
        }
    }

    /// Records that node `id` leads, e.g. after asking every node's status.
    /// Unknown ids are ignored.
    pub fn set_leader_hint(&self, id: u64) {
        if self.read_nodes().contains_key(&id) {
            self.shared.leader_hint.store(id, Ordering::Relaxed);
        }
    }

    /// The cached channel to node `id`.
    ///
    /// # Errors
    /// [`ClientError::UnknownNode`] when the client does not know `id`.
    pub fn channel(&self, id: u64) -> Result<Channel, ClientError> {
        self.read_nodes()
            .get(&id)
            .map(|node| node.channel.clone())
            .ok_or(ClientError::UnknownNode(id))
    }

    /// A key/value client for node `id`, over the cached channel.
    ///
    /// # Errors
    /// [`ClientError::UnknownNode`] when the client does not know `id`.
    pub fn kv(&self, id: u64) -> Result<KvServiceClient<Channel>, ClientError> {
        self.channel(id).map(KvServiceClient::new)
    }

    /// An admin client for node `id`, over the cached channel. Admin calls
    /// succeed only if the client presents the cluster's client certificate
    /// or carries an admin session ([`with_token`](Self::with_token)).
    ///
    /// # Errors
    /// [`ClientError::UnknownNode`] when the client does not know `id`.
    pub fn admin(&self, id: u64) -> Result<AdminClient, ClientError> {
        self.channel(id).map(|channel| self.admin_on(channel))
    }

    /// An admin client over `channel` (as [`call_leader`](Self::call_leader)
    /// hands out), carrying this client's session token.
    #[must_use]
    pub fn admin_on(&self, channel: Channel) -> AdminClient {
        AdminServiceClient::with_interceptor(channel, self.auth.clone())
    }

    /// An account client for node `id`, over the cached channel, carrying
    /// this client's session token.
    ///
    /// # Errors
    /// [`ClientError::UnknownNode`] when the client does not know `id`.
    pub fn account(&self, id: u64) -> Result<AccountClient, ClientError> {
        self.channel(id).map(|channel| self.account_on(channel))
    }

    /// An account client over `channel`, carrying this client's session
    /// token.
    #[must_use]
    pub fn account_on(&self, channel: Channel) -> AccountClient {
        AccountServiceClient::with_interceptor(channel, self.auth.clone())
    }

    /// A ledger client for node `id`, over the cached channel, carrying
    /// this client's session token.
    ///
    /// # Errors
    /// [`ClientError::UnknownNode`] when the client does not know `id`.
    pub fn ledger(&self, id: u64) -> Result<LedgerClient, ClientError> {
        self.channel(id).map(|channel| self.ledger_on(channel))
    }

    /// A ledger client over `channel`, carrying this client's session
    /// token.
    #[must_use]
    pub fn ledger_on(&self, channel: Channel) -> LedgerClient {
        LedgerServiceClient::with_interceptor(channel, self.auth.clone())
    }

    /// A catalogue client for node `id`, over the cached channel, carrying
    /// this client's session token.
    ///
    /// # Errors
    /// [`ClientError::UnknownNode`] when the client does not know `id`.
    pub fn catalogue(&self, id: u64) -> Result<CatalogueClient, ClientError> {
        self.channel(id).map(|channel| self.catalogue_on(channel))
    }

    /// A catalogue client over `channel`, carrying this client's session
    /// token.
    #[must_use]
    pub fn catalogue_on(&self, channel: Channel) -> CatalogueClient {
        CatalogueServiceClient::with_interceptor(channel, self.auth.clone())
    }

    /// A purchase client over `channel`, carrying this client's session
    /// token.
    #[must_use]
    pub fn purchase_on(&self, channel: Channel) -> PurchaseClient {
        PurchaseServiceClient::with_interceptor(channel, self.auth.clone())
    }

    /// Writes `value` under `key` on the leader, retrying (bounded) through
    /// elections and crashes with the same `request_id`, so the write is
    /// applied at most once however many attempts it takes.
    ///
    /// # Errors
    /// The server's answer when it refuses the write, or the last error once
    /// the retries are used up.
    pub async fn put(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        request_id: RequestId,
    ) -> Result<PutReply, Status> {
        let request = PutRequest {
            request_id: Some(request_id),
            key: key.into(),
            value: value.into(),
        };
        self.call_leader(|channel| {
            let request = request.clone();
            async move {
                KvServiceClient::new(channel)
                    .put(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await
    }

    /// Reads `key`. With `node`, asks exactly that node (once); without,
    /// asks the believed leader first and falls back to each other node
    /// while they are unavailable.
    ///
    /// # Errors
    /// The server's answer when it refuses the read, `NOT_FOUND` for an
    /// unknown `node`, or the last error when no node answered.
    pub async fn get(
        &self,
        key: impl Into<String>,
        consistency: ReadConsistency,
        node: Option<u64>,
    ) -> Result<GetReply, Status> {
        let request = GetRequest {
            key: key.into(),
            consistency: Some(consistency),
        };
        let order = match node {
            Some(id) => {
                if !self.read_nodes().contains_key(&id) {
                    return Err(Status::not_found(ClientError::UnknownNode(id).to_string()));
                }
                vec![id]
            }
            None => self.preferred_order(),
        };
        self.call_nodes(order, |channel| {
            let request = request.clone();
            async move {
                KvServiceClient::new(channel)
                    .get(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await
    }

    /// Runs a read `op` on any node: the believed leader first, then each
    /// other node while they are unavailable, each attempt bounded by the
    /// policy's read timeout. `op` gets the node's channel.
    ///
    /// # Errors
    /// The first error that is not worth retrying, or the last error when
    /// no node answered.
    pub async fn call_any<T, F, Fut>(&self, op: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_nodes(self.preferred_order(), op).await
    }

    /// Runs a read `op` on a follower if one answers: every node in random
    /// order with the believed leader last, falling back to the next while
    /// they are unavailable, each attempt bounded by the policy's read
    /// timeout. For the reads that followers are meant to serve (search and
    /// listings), so that they spread over the followers and keep load off
    /// the leader; pass `min_index` in the request to read your own writes.
    ///
    /// # Errors
    /// The first error that is not worth retrying, or the last error when
    /// no node answered.
    pub async fn call_followers_first<T, F, Fut>(&self, op: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_nodes(self.followers_first_order(), op).await
    }

    /// Every node in random order, the believed leader (if any) last.
    #[must_use]
    pub fn followers_first_order(&self) -> Vec<u64> {
        let mut ids = self.node_ids();
        ids.shuffle(&mut rand::thread_rng());
        if let Some(leader) = self.leader_hint() {
            if let Some(pos) = ids.iter().position(|id| *id == leader) {
                ids[pos..].rotate_left(1);
            }
        }
        ids
    }

    /// Runs `op` on each node of `order` in turn until one answers or fails
    /// for a reason another node would not change.
    async fn call_nodes<T, F, Fut>(&self, order: Vec<u64>, mut op: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let read_timeout = self.shared.policy.read_timeout;
        let mut last: Option<Status> = None;
        for id in order {
            if let Some(status) = &last {
                // Another node is asked: the previous failure is retried away.
                self.shared.retried.record(status);
            }
            let channel = self
                .channel(id)
                .map_err(|err| Status::not_found(err.to_string()))?;
            let status = match tokio::time::timeout(read_timeout, op(channel)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "node {id} did not answer within {:.1}s",
                    read_timeout.as_secs_f64()
                )),
            };
            if !is_retryable(&status) {
                return Err(status);
            }
            last = Some(status);
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no node to ask")))
    }

    /// Runs `op` against the leader: first the believed leader (any node if
    /// none), then wherever a "not the leader" status points, else the next
    /// node, pausing between attempts. Gives up after the bounds of the
    /// [`RetryPolicy`]. `op` gets the target's channel and must be safe to
    /// repeat (carry a request id, or be idempotent).
    ///
    /// # Errors
    /// The first error that is not worth retrying, or the last error once
    /// the retries are used up.
    pub async fn call_leader<T, F, Fut>(&self, mut op: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let policy = self.shared.policy;
        let attempt_timeout = policy.attempt_timeout;
        let started = Instant::now();
        let mut target = self
            .leader_hint()
            .or_else(|| self.node_ids().first().copied())
            .ok_or_else(|| Status::unavailable(ClientError::NoNodes.to_string()))?;
        // A redirect to another node is followed at once, but only once in
        // a row: two nodes naming each other must not spin without pause.
        let mut just_redirected = false;
        // What a node itself said last (not a failed connection): the most
        // useful thing to report if every attempt fails.
        let mut last_answer: Option<(u64, Status)> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let channel = self
                .channel(target)
                .map_err(|err| Status::not_found(err.to_string()))?;
            let status = match tokio::time::timeout(attempt_timeout, op(channel)).await {
                Ok(Ok(value)) => {
                    self.shared.leader_hint.store(target, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "node {target} did not answer within {:.1}s",
                    attempt_timeout.as_secs_f64()
                )),
            };
            if !is_retryable(&status) {
                return Err(status);
            }
            let redirect = leader_hint_of(&status).and_then(|(id, addr)| self.learn(id, addr));
            let (next, follow_now) = match redirect {
                Some(leader) if leader != target && !just_redirected => (leader, true),
                Some(leader) => (leader, false),
                None => (self.next_after(target), false),
            };
            let pause = if follow_now {
                Duration::ZERO
            } else {
                backoff(attempt).min(self.shared.backoff_cap)
            };
            if attempt >= policy.max_attempts || started.elapsed() + pause > policy.budget {
                let (node, status) = match last_answer {
                    Some((node, answer)) if std::error::Error::source(&status).is_some() => {
                        (node, answer)
                    }
                    _ => (target, status),
                };
                return Err(gave_up(node, &status, attempt, started.elapsed()));
            }
            self.shared.retried.record(&status);
            tracing::debug!(
                node = target,
                next,
                attempt,
                code = ?status.code(),
                message = status.message(),
                "retrying on another node"
            );
            match redirect {
                Some(leader) => self.shared.leader_hint.store(leader, Ordering::Relaxed),
                None => {
                    // The hint (if it was `target`) proved wrong.
                    let _ = self.shared.leader_hint.compare_exchange(
                        target,
                        NO_LEADER,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            just_redirected = follow_now;
            if std::error::Error::source(&status).is_none() {
                last_answer = Some((target, status));
            }
            target = next;
        }
    }

    /// The node a redirect names, as a usable id: known already, or learned
    /// from the address the redirect carries.
    pub(crate) fn learn(&self, id: u64, addr: Option<String>) -> Option<u64> {
        if self.read_nodes().contains_key(&id) {
            return Some(id);
        }
        let addr = addr?;
        let channel = match open_channel(id, &addr, &self.shared.tls) {
            Ok(channel) => channel,
            Err(err) => {
                tracing::warn!(node = id, %addr, error = %err, "ignoring a redirect to an unusable address");
                return None;
            }
        };
        self.shared
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(Node { addr, channel });
        Some(id)
    }

    /// The node after `id` in id order, wrapping around.
    pub(crate) fn next_after(&self, id: u64) -> u64 {
        let nodes = self.read_nodes();
        nodes
            .range(id.saturating_add(1)..)
            .next()
            .or_else(|| nodes.iter().next())
            .map_or(id, |(next, _)| *next)
    }

    /// Every node, the believed leader first.
    fn preferred_order(&self) -> Vec<u64> {
        let mut ids = self.node_ids();
        if let Some(leader) = self.leader_hint() {
            if let Some(pos) = ids.iter().position(|id| *id == leader) {
                ids[..=pos].rotate_right(1);
            }
        }
        ids
    }

    fn read_nodes(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Node>> {
        // The map is never left half-updated, so a poisoned lock is usable.
        self.shared
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads and parses a cluster file (without reading the files it names).
///
/// # Errors
/// When the file cannot be read or is not a valid cluster file.
pub fn read_cluster_file(path: &Path) -> Result<ClusterFile, ClientError> {
    let text =
        std::fs::read_to_string(path).map_err(|reason| ClientError::ClusterFileUnreadable {
            path: path.to_path_buf(),
            reason,
        })?;
    ClusterFile::parse(&text).map_err(|source| ClientError::ClusterFileInvalid {
        path: path.to_path_buf(),
        source,
    })
}

/// One lazily connected TLS channel to `addr`.
fn open_channel(id: u64, addr: &str, tls: &ClientTlsConfig) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).map_err(|source| {
        ClientError::InvalidAddress {
            id,
            addr: addr.to_owned(),
            source,
        }
    })?;
    let endpoint = endpoint
        .tls_config(tls.clone())
        .map_err(|source| ClientError::Tls { id, source })?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy())
}
