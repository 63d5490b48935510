//! Market users for library-driven tests: a registered, logged-in account
//! with its own peer database and, for a seller, an in-process file server;
//! and a client of every node as a peer sees the cluster (no operator
//! certificate).

use std::path::Path;
use std::time::Duration;

use agora_peer::buying::Buyer;
use agora_peer::catalogue::{self, NewListing};
use agora_peer::local::Download;
use agora_peer::selling::{SellError, Seller};
use agora_peer::transfer_slots::TransferLimits;
use agora_peer::{
    account, ledger, presence, purchase, request_id, ClientError, ClusterClient, PeerStore, Session,
};
use agora_proto::market::{BalanceReply, ListingFields, PurchaseReply, RequestId};
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::TestCluster;

/// A client of every node of `cluster`, without the operator certificate
/// (a peer's).
///
/// # Errors
/// When a node's address is unknown or the client cannot be built.
pub fn peer_client(cluster: &TestCluster) -> anyhow::Result<ClusterClient> {
    let mut tls = cluster.client_tls().clone();
    tls.identity = None;
    let mut nodes = Vec::new();
    for id in cluster.node_ids() {
        nodes.push((id, cluster.node(id)?.api_addr.clone()));
    }
    Ok(ClusterClient::from_parts(&tls, nodes)?)
}

/// A registered, logged-in user: its session (with its identity key), a
/// client presenting the session, and a peer database of its own.
pub struct MarketUser {
    /// Account id.
    pub id: u64,
    /// Canonical name.
    pub name: String,
    /// The session, with the identity key.
    pub session: Session,
    /// A client presenting the session.
    pub client: ClusterClient,
    /// The user's own peer database (under `DIR/peer-NAME`).
    pub store: PeerStore,
}

impl MarketUser {
    /// Registers `name` with `password` through `everyone`, logs in, and
    /// opens a peer database for it under `dir`.
    ///
    /// # Errors
    /// When registering, logging in or opening the database fails.
    pub async fn register(
        everyone: &ClusterClient,
        dir: &Path,
        name: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let account = account::register(everyone, name, password.as_bytes(), false).await?;
        let session =
            account::login_after(everyone, name, password.as_bytes(), account.index).await?;
        let store = PeerStore::open(&dir.join(format!("peer-{name}"))).await?;
        store.save_session(&session).await?;
        Ok(Self {
            id: session.user_id,
            name: account.username,
            client: everyone.clone().with_token(&session.token)?,
            session,
            store,
        })
    }

    /// Publishes the file at `path` as this user's listing `title` at
    /// `price`, in chunks of `chunk_size`; returns the listing's id.
    ///
    /// # Errors
    /// When publishing fails.
    pub async fn publish_file(
        &self,
        path: &Path,
        title: &str,
        price: u64,
        chunk_size: u32,
    ) -> anyhow::Result<u64> {
        let published = catalogue::publish(
            &self.client,
            &self.store,
            &NewListing {
                path: path.to_path_buf(),
                chunk_size,
                fields: ListingFields {
                    title: title.into(),
                    ..ListingFields::default()
                },
                price,
            },
            self.request(),
            |_, _| {},
        )
        .await
        .with_context(|| format!("publishing {title}"))?;
        Ok(published.listing.id)
    }

    /// The request id of one logical write by this user.
    #[must_use]
    pub fn request(&self) -> RequestId {
        request_id(format!("user:{}", self.id))
    }

    /// This user as a buyer.
    #[must_use]
    pub fn buyer(&self) -> Buyer<'_> {
        Buyer {
            client: &self.client,
            store: &self.store,
            user_id: self.id,
            identity: &self.session.identity,
        }
    }

    /// The user's balance, linearizable.
    ///
    /// # Errors
    /// When no node answers.
    pub async fn balance(&self) -> anyhow::Result<BalanceReply> {
        ledger::balance(&self.client, 0, None)
            .await
            .with_context(|| format!("reading {}'s balance", self.name))
    }

    /// Files a dispute of `purchase_id` with `evidence`, by hand.
    ///
    /// # Errors
    /// The cluster's refusal.
    pub async fn dispute(
        &self,
        purchase_id: u64,
        evidence: Vec<u8>,
    ) -> Result<PurchaseReply, ClientError> {
        purchase::dispute(&self.client, purchase_id, evidence, self.request()).await
    }

    /// This peer's record of its download of `purchase_id`.
    ///
    /// # Errors
    /// When there is none, or the database fails.
    pub async fn download(&self, purchase_id: u64) -> anyhow::Result<Download> {
        self.store
            .download(purchase_id)
            .await?
            .with_context(|| format!("{} has no download of purchase {purchase_id}", self.name))
    }
}

/// Longest an in-process file server may take to stop.
const SHUTDOWN: Duration = Duration::from_secs(15);

/// A seller's in-process file server (real peer TLS on loopback) and its
/// presence, until closed.
pub struct Shop {
    /// Where it serves.
    pub endpoint: String,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), SellError>>,
    presence: JoinHandle<Result<(), ClientError>>,
}

impl MarketUser {
    /// Starts this user's file server on an ephemeral port, announces it and
    /// keeps its presence alive (should a test outlast the lease on a slow
    /// machine); with `corrupt`, the server corrupts that chunk of every file
    /// it sends (a dishonest seller).
    ///
    /// # Errors
    /// When the port, the ticket key or the announcement fails.
    pub async fn open_shop(&self, corrupt: Option<u64>) -> anyhow::Result<Shop> {
        self.open_shop_with(corrupt, TransferLimits::default())
            .await
    }

    /// [`MarketUser::open_shop`] under other transfer limits.
    ///
    /// # Errors
    /// When the port, the ticket key or the announcement fails.
    pub async fn open_shop_with(
        &self,
        corrupt: Option<u64>,
        limits: TransferLimits,
    ) -> anyhow::Result<Shop> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = listener.local_addr()?.to_string();
        let mut files = Seller::new(self.client.clone(), self.store.clone(), self.id)
            .await?
            .with_limits(limits);
        if let Some(index) = corrupt {
            files = files.corrupting_chunk(index);
        }
        let (stop, stop_rx) = watch::channel(false);
        let server = {
            let identity = self.session.identity.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                files
                    .serve(listener, &identity, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            })
        };
        presence::announce(&self.client, &endpoint).await?;
        let presence = {
            let (client, endpoint, mut stop) = (self.client.clone(), endpoint.clone(), stop_rx);
            tokio::spawn(async move {
                presence::keep_presence(&client, &endpoint, None, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            })
        };
        Ok(Shop {
            endpoint,
            stop,
            server,
            presence,
        })
    }
}

impl Shop {
    /// Stops the server and the presence; fails if either ended badly or
    /// does not stop in time.
    ///
    /// # Errors
    /// Either task's error, or a timeout.
    pub async fn close(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(SHUTDOWN, self.server)
            .await
            .context("the file server did not stop")???;
        tokio::time::timeout(SHUTDOWN, self.presence)
            .await
            .context("the presence task did not stop")???;
        Ok(())
    }
}

/// Writes `size` pseudo-random bytes from `seed` to `path` (a splitmix64
/// stream: reproducible, different in every chunk).
///
/// # Errors
/// When the file cannot be written.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let size = usize::try_from(size)?;
    let mut bytes = Vec::with_capacity(size + 8);
    let mut state = seed;
    while bytes.len() < size {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        bytes.extend_from_slice(&z.to_le_bytes());
    }
    bytes.truncate(size);
    std::fs::write(path, &bytes).with_context(|| format!("could not write {}", path.display()))
}
