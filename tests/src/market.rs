//! Market users for library-driven tests: a registered, logged-in account
//! with its own peer database, and a client of every node as a peer sees
//! the cluster (no operator certificate).

use std::path::Path;

use agora_peer::buying::Buyer;
use agora_peer::local::Download;
use agora_peer::{
    account, ledger, purchase, request_id, ClientError, ClusterClient, PeerStore, Session,
};
use agora_proto::market::{BalanceReply, PurchaseReply, RequestId};
use anyhow::Context as _;

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
