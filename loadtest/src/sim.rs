//! The simulated market: accounts (registered in bulk, logged in, given
//! money), sellers (each a real in-process peer file server with presence,
//! selling small files), and the operations a user performs against them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex as StdMutex, PoisonError, RwLock};
use std::time::Duration;

use agora_peer::buying::{BuyError, Buyer, Silent};
use agora_peer::catalogue::{self, CatalogueError, NewListing};
use agora_peer::selling::{SellError, Seller};
use agora_peer::{
    account, ledger, presence, request_id, ClientError, ClusterClient, PeerStore, Session,
};
use agora_proto::market::{CashFlowsRequest, ListingFields, ReadConsistency, SearchRequest};
use anyhow::Context as _;
use futures::stream::{self, StreamExt as _};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, RngCore as _};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::stats::Op;

/// Money every account starts with, in cents: far more than a run spends.
const STARTING_MONEY: u64 = 1_000_000_000;
/// How many registrations (each a few replicated writes and OPAQUE) run at
/// once while the accounts are made.
const SETUP_CONCURRENCY: usize = 64;
/// Listings each seller starts with.
const LISTINGS_PER_SELLER: usize = 3;
/// Prices are drawn from this range, in cents.
const PRICES: std::ops::RangeInclusive<u64> = 100..=900;
/// Words titles and searches are made of.
const WORDS: [&str; 16] = [
    "atlas", "harbor", "violin", "orchid", "granite", "comet", "lantern", "meadow", "quartz",
    "falcon", "ember", "glacier", "saffron", "tundra", "willow", "zephyr",
];
/// Buyers share this many peer databases (one SQLite file each), sharded
/// by account, rather than one file per account.
const BUYER_STORES: usize = 8;
/// Longest a seller's file server may take to stop.
const SHUTDOWN: Duration = Duration::from_secs(15);
/// The password of every simulated account.
const PASSWORD: &[u8] = b"agora load test password";

/// One simulated account (many simulated users may share it).
pub struct Account {
    /// Its id.
    pub id: u64,
    /// A client presenting its session, over the shared channels.
    pub client: ClusterClient,
    session: Session,
    store: usize,
    /// One purchase at a time per account: a second would find the first
    /// unfinished and continue it.
    buying: Mutex<()>,
    /// Purchases this account saw acknowledged: (purchase id, price).
    pub acknowledged: StdMutex<Vec<(u64, u64)>>,
}

/// One simulated seller: an account with a file server.
pub struct SellerSlot {
    client: ClusterClient,
    store: PeerStore,
    id: u64,
    dir: PathBuf,
    listings: StdMutex<Vec<u64>>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), SellError>>,
    presence: JoinHandle<Result<(), ClientError>>,
}

/// Everything the users act on.
pub struct Market {
    /// The accounts.
    pub accounts: Vec<Account>,
    sellers: Vec<SellerSlot>,
    stores: Vec<PeerStore>,
    /// Every listing on sale: (listing id, seller index).
    listings: RwLock<Vec<u64>>,
    dir: PathBuf,
    file_bytes: usize,
    counter: AtomicU64,
}

/// Why an operation failed, as the report counts it.
pub struct OpError {
    /// A short kind: a gRPC code, or what failed.
    pub kind: String,
    /// The message.
    pub message: String,
}

impl From<ClientError> for OpError {
    fn from(e: ClientError) -> Self {
        let kind = match e.code() {
            Some(code) => format!("{code:?}").to_lowercase(),
            None => "client".to_owned(),
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<CatalogueError> for OpError {
    fn from(e: CatalogueError) -> Self {
        match e {
            CatalogueError::Client(c) => c.into(),
            other => Self {
                kind: "catalogue".into(),
                message: other.to_string(),
            },
        }
    }
}

impl From<BuyError> for OpError {
    fn from(e: BuyError) -> Self {
        match e {
            BuyError::Cluster(c) => c.into(),
            other => {
                let kind = match &other {
                    BuyError::Seller { .. } => "seller",
                    BuyError::Misbehaved { .. } => "seller_misbehaved",
                    BuyError::BadChunk { .. } => "bad_chunk",
                    BuyError::Store(_) => "peer_store",
                    BuyError::Io { .. } => "io",
                    _ => "buy",
                };
                Self {
                    kind: kind.into(),
                    message: other.to_string(),
                }
            }
        }
    }
}

impl From<std::io::Error> for OpError {
    fn from(e: std::io::Error) -> Self {
        Self {
            kind: "io".into(),
            message: e.to_string(),
        }
    }
}

fn word() -> &'static str {
    WORDS
        .choose(&mut rand::thread_rng())
        .copied()
        .unwrap_or("atlas")
}

/// Registers, logs in and funds one account named `name`.
async fn make_account(operator: &ClusterClient, name: &str) -> anyhow::Result<Session> {
    let account = account::register(operator, name, PASSWORD, false)
        .await
        .with_context(|| format!("registering {name}"))?;
    let session = account::login_after(operator, name, PASSWORD, account.index)
        .await
        .with_context(|| format!("logging in {name}"))?;
    ledger::deposit(operator, name, STARTING_MONEY, &format!("{name}-start"))
        .await
        .with_context(|| format!("funding {name}"))?;
    Ok(session)
}

impl Market {
    /// Makes `accounts` buyer accounts and `sellers` sellers (each serving
    /// files of `file_kib` KiB), using `clients` in turn for their calls
    /// and `operator` for registrations and deposits. `progress(done)` is
    /// called as accounts are made.
    ///
    /// # Errors
    /// When an account, a listing or a file server cannot be set up.
    pub async fn build(
        operator: &ClusterClient,
        clients: &[ClusterClient],
        dir: &Path,
        accounts: usize,
        sellers: usize,
        file_kib: usize,
        progress: impl Fn(usize) + Send + Sync,
    ) -> anyhow::Result<Self> {
        let run = format!("lt{}", rand::random::<u32>() % 1_000_000);
        let mut stores = Vec::new();
        for i in 0..BUYER_STORES {
            stores.push(PeerStore::open(&dir.join(format!("buyers-{i}"))).await?);
        }
        let done = AtomicU64::new(0);
        let made: Vec<anyhow::Result<Account>> = stream::iter(0..accounts)
            .map(|i| {
                let name = format!("{run}_u{i}");
                let client = clients[i % clients.len()].clone();
                let (done, progress) = (&done, &progress);
                async move {
                    let session = make_account(operator, &name).await?;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(usize::try_from(n).unwrap_or(usize::MAX));
                    Ok(Account {
                        id: session.user_id,
                        client: client.with_token(&session.token)?,
                        session,
                        store: i % BUYER_STORES,
                        buying: Mutex::new(()),
                        acknowledged: StdMutex::new(Vec::new()),
                    })
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
        let accounts = made.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

        let file_bytes = file_kib.max(1) * 1024;
        let mut market = Self {
            accounts,
            sellers: Vec::new(),
            stores,
            listings: RwLock::new(Vec::new()),
            dir: dir.to_path_buf(),
            file_bytes,
            counter: AtomicU64::new(0),
        };
        for s in 0..sellers.max(1) {
            let name = format!("{run}_seller{s}");
            let session = make_account(operator, &name).await?;
            let client = clients[s % clients.len()]
                .clone()
                .with_token(&session.token)?;
            let seller_dir = dir.join(format!("seller-{s}"));
            let store = PeerStore::open(&seller_dir).await?;
            store.save_session(&session).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let endpoint = listener.local_addr()?.to_string();
            let files = Seller::new(client.clone(), store.clone(), session.user_id).await?;
            let (stop, stop_rx) = watch::channel(false);
            let server = {
                let identity = session.identity.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    files
                        .serve(listener, &identity, async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await
                })
            };
            presence::announce(&client, &endpoint).await?;
            let presence = {
                let (client, endpoint, mut stop) = (client.clone(), endpoint.clone(), stop_rx);
                tokio::spawn(async move {
                    presence::keep_presence(&client, &endpoint, None, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
                })
            };
            market.sellers.push(SellerSlot {
                client,
                store,
                id: session.user_id,
                dir: seller_dir,
                listings: StdMutex::new(Vec::new()),
                stop,
                server,
                presence,
            });
            for _ in 0..LISTINGS_PER_SELLER {
                market
                    .publish(s)
                    .await
                    .map_err(|e| anyhow::anyhow!("publishing a first listing: {}", e.message))?;
            }
        }
        Ok(market)
    }

    /// How many sellers there are.
    #[must_use]
    pub fn sellers(&self) -> usize {
        self.sellers.len()
    }

    /// Stops every seller's file server and presence.
    ///
    /// # Errors
    /// When one does not stop in time or ended badly.
    pub async fn close(&self) -> anyhow::Result<()> {
        for seller in &self.sellers {
            let _ = seller.stop.send(true);
        }
        for seller in &self.sellers {
            // The handles cannot be moved out of a shared market: wait for
            // them to finish instead.
            let deadline = tokio::time::Instant::now() + SHUTDOWN;
            while !(seller.server.is_finished() && seller.presence.is_finished()) {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "a seller's file server did not stop within {} s",
                    SHUTDOWN.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Seller `s` publishes a new small file at a random price.
    async fn publish(&self, s: usize) -> Result<(), OpError> {
        let seller = &self.sellers[s];
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = seller.dir.join(format!("goods-{n}.bin"));
        let mut bytes = vec![0u8; self.file_bytes];
        rand::thread_rng().fill_bytes(&mut bytes);
        tokio::fs::write(&path, &bytes).await?;
        let title = format!("{} {} {} no {n}", word(), word(), word());
        let price = rand::thread_rng().gen_range(PRICES);
        let published = catalogue::publish(
            &seller.client,
            &seller.store,
            &NewListing {
                path,
                chunk_size: 16 * 1024,
                fields: ListingFields {
                    title,
                    description: format!("{} {} for the load test", word(), word()),
                    ..ListingFields::default()
                },
                price,
            },
            request_id(format!("user:{}", seller.id)),
            |_, _| {},
        )
        .await?;
        let id = published.listing.id;
        seller
            .listings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
        self.listings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
        Ok(())
    }

    /// A random seller changes the price of one of its listings.
    async fn reprice(&self) -> Result<(), OpError> {
        let s = rand::thread_rng().gen_range(0..self.sellers.len());
        let seller = &self.sellers[s];
        let listing = {
            let listings = seller
                .listings
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            listings.choose(&mut rand::thread_rng()).copied()
        };
        let Some(listing) = listing else {
            return Ok(());
        };
        let price = rand::thread_rng().gen_range(PRICES);
        catalogue::reprice(
            &seller.client,
            &seller.store,
            listing,
            price,
            request_id(format!("user:{}", seller.id)),
        )
        .await?;
        Ok(())
    }

    /// Account `a` buys a random listing, end to end: the file arrives
    /// encrypted from the seller, the key is released on completion, and
    /// the decrypted file is checked against the listing.
    async fn buy(&self, a: usize) -> Result<(), OpError> {
        let account = &self.accounts[a];
        let listing = {
            let listings = self.listings.read().unwrap_or_else(PoisonError::into_inner);
            listings.choose(&mut rand::thread_rng()).copied()
        };
        let Some(listing) = listing else {
            return Ok(());
        };
        let _one_at_a_time = account.buying.lock().await;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let out = self.dir.join(format!("bought-{}-{n}.bin", account.id));
        let buyer = Buyer {
            client: &account.client,
            store: &self.stores[account.store],
            user_id: account.id,
            identity: &account.session.identity,
        };
        let result = buyer.buy(listing, Some(out.clone()), 0, &mut Silent).await;
        let _ = tokio::fs::remove_file(&out).await;
        let download = result?;
        account
            .acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((download.purchase_id, download.price));
        Ok(())
    }

    /// Performs `op` as account `a`.
    ///
    /// # Errors
    /// What the client library returned, after its own retries.
    pub async fn perform(&self, op: Op, a: usize) -> Result<(), OpError> {
        let client = &self.accounts[a].client;
        let any = ReadConsistency {
            min_index: 0,
            linearizable: false,
        };
        match op {
            Op::Search => {
                catalogue::search(
                    client,
                    &SearchRequest {
                        text: word().to_owned(),
                        limit: 20,
                        consistency: Some(any),
                        ..SearchRequest::default()
                    },
                )
                .await?;
            }
            Op::Balance => {
                ledger::balance(client, 0, Some(any)).await?;
            }
            Op::History => {
                ledger::cash_flows(
                    client,
                    &CashFlowsRequest {
                        limit: 20,
                        consistency: Some(any),
                        ..CashFlowsRequest::default()
                    },
                )
                .await?;
            }
            Op::Publish => {
                let s = rand::thread_rng().gen_range(0..self.sellers.len());
                self.publish(s).await?;
            }
            Op::Reprice => self.reprice().await?,
            Op::Buy => self.buy(a).await?,
        }
        Ok(())
    }
}
