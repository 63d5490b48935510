//! The bank workload (after Jepsen's "bank" and TigerBeetle's fault
//! testing): buyers deposit, withdraw, buy and read their balance on random
//! nodes while the nemesis breaks the cluster; every operation is recorded
//! with its outcome; after healing, [`check`] judges the history against
//! what the cluster ended with.
//!
//! **Outcomes.** A call that got an answer is `Ok`; a refusal of the
//! cluster's own (a status other than "unavailable", a deadline or a broken
//! connection) is `Failed`: the state machine refused it, and a refusal is
//! remembered under the request id, so it can never apply later. Anything
//! else is retried on another random node with the *same* request id (the
//! cluster applies an id once) until the retry budget runs out: then it is
//! `Unknown`, and may or may not have been applied.
//!
//! **Amounts identify operations.** Every deposit and withdrawal moves an
//! amount no other operation of its kind uses (a base plus the operation's
//! sequence number), so the journal entry an operation made can be found
//! in the user's cash flows without trusting anything else the cluster
//! says. Each buyer's balance changes only through its own operations
//! (deposits are made for it by the operator), so the set of balances its
//! history allows is known at every point: a read that falls outside it
//! is an anomaly, and so is a read at `min_index` answered from an older
//! index.
//!
//! The history and the final state are plain data ([`History`],
//! [`FinalState`]): a run that breaks a rule saves both as JSON and the
//! checker can be run on the file again ([`replay`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agora_peer::catalogue::{self, NewListing};
use agora_peer::{ledger, purchase, ClusterClient};
use agora_proto::admin::{AdminRequestId, DepositRequest};
use agora_proto::market::{
    BalanceRequest, BeginPurchaseRequest, CancelPurchaseRequest, CompletePurchaseRequest,
    DepositKeyRequest, ListingFields, PurchaseRole, PurchaseState, ReadConsistency, RequestId,
    WithdrawRequest,
};
use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::MarketUser;

/// Longest one attempt of an operation may take on one node.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest an operation keeps retrying (same request id) before its
/// outcome is unknown.
const OPERATION_BUDGET: Duration = Duration::from_secs(12);
/// One operation in this many is impatient: one attempt, given up after
/// [`IMPATIENCE`], so that outcomes are unknown while the write may still
/// land (what a client that times out sees).
const IMPATIENT_ONE_IN: u32 = 10;
/// Longest an impatient operation waits (a random time up to this, in
/// ms; a write takes about 5-50 ms on a busy loopback cluster, so many
/// are given up while they are on their way).
const IMPATIENCE_MS: u64 = 40;
/// Pause between two attempts of an operation.
const RETRY_PAUSE: Duration = Duration::from_millis(150);
/// Deposits are this many cents plus the operation's sequence number.
const DEPOSIT_BASE: u64 = 50_00;
/// Withdrawals are this many cents plus the operation's sequence number.
const WITHDRAW_BASE: u64 = 1;
/// Listing prices (cents): three listings of the seller.
const PRICES: [u64; 3] = [1_50, 2_75, 3_90];
/// A purchase the buyer means to complete or cancel holds the money this
/// long (seconds).
const LONG_HOLD_SECS: u32 = 30;
/// A purchase left to expire holds the money this long (seconds).
const SHORT_HOLD_SECS: u32 = 1;
/// Most balances the checker tracks for one buyer; beyond that (many
/// unknown outcomes) its reads are no longer checked.
const MAX_POSSIBLE_BALANCES: usize = 4096;
/// Password of every bank user.
const PASSWORD: &str = "bank workload password";

/// What one operation was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// The operator puts `amount` cents on the buyer's account.
    Deposit {
        /// Cents.
        amount: u64,
    },
    /// The buyer withdraws `amount` cents.
    Withdraw {
        /// Cents.
        amount: u64,
    },
    /// The buyer opens a purchase of `listing` at `price`, held `hold_secs`.
    Begin {
        /// Listing id.
        listing: u64,
        /// Its price, cents.
        price: u64,
        /// Hold time.
        hold_secs: u32,
    },
    /// The seller deposits a key for `purchase`.
    DepositKey {
        /// Purchase id.
        purchase: u64,
    },
    /// The buyer completes `purchase` (the hold is posted).
    Complete {
        /// Purchase id.
        purchase: u64,
    },
    /// The buyer cancels `purchase` (the hold is voided).
    Cancel {
        /// Purchase id.
        purchase: u64,
    },
    /// The buyer reads its balance on one node, at `min_index` or
    /// linearizable.
    Read {
        /// The index the read must have seen (the buyer's last write).
        min_index: u64,
        /// Read-index read.
        linearizable: bool,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Refused by the cluster (code and message).
    Failed(String),
    /// No answer within the budget: it may or may not have been applied.
    Unknown(String),
}

/// One recorded operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Global sequence number (start order).
    pub seq: u64,
    /// The buyer it belongs to (user id).
    pub buyer: u64,
    /// What it was.
    pub kind: OpKind,
    /// Its request id (writes); retries reuse it.
    pub request_id: String,
    /// Nodes tried, in order.
    pub nodes: Vec<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// Log index of a write; applied index a read was answered at.
    pub index: u64,
    /// A read's balance; a begun purchase's id.
    pub value: Option<u64>,
    /// Milliseconds since the workload started, at the start and the end.
    pub started_ms: u64,
    /// See `started_ms`.
    pub ended_ms: u64,
}

/// Every operation of a run, in the order they ended.
pub type History = Vec<Op>;

/// A cash flow as the checker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Entry kind ("deposit", "withdrawal", "sale", ...).
    pub kind: String,
    /// Cents, signed from the account's side.
    pub amount: i64,
    /// Hold it settled (0: none).
    pub hold_id: u64,
    /// Log index.
    pub log_index: u64,
}

/// A purchase as the checker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurchaseRecord {
    /// Purchase id.
    pub id: u64,
    /// Price, cents.
    pub price: u64,
    /// The operator's commission (once completed).
    pub commission: u64,
    /// The seller's net (once completed).
    pub net: u64,
    /// Final state (`PurchaseState` as a number).
    pub state: i32,
}

/// One account at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Balance (cents), linearizable.
    pub balance: u64,
    /// Every cash flow.
    pub journal: Vec<Entry>,
    /// Purchases as buyer (buyers) or sales (the seller).
    pub purchases: Vec<PurchaseRecord>,
}

/// What the cluster ended with, after healing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalState {
    /// Buyers by user id.
    pub buyers: BTreeMap<u64, AccountRecord>,
    /// The seller.
    pub seller: AccountRecord,
    /// Sum of every account balance (the audit's; must be 0).
    pub balance_sum: i64,
    /// Money on user accounts (the audit's).
    pub user_money: u64,
    /// The operator's revenue (the audit's).
    pub operator_balance: i64,
    /// Each node's state digest at one applied index.
    pub digests: BTreeMap<u64, String>,
}

/// A saved run: enough to run the checker again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRun {
    /// The seed of the run's random choices.
    pub seed: u64,
    /// The operations.
    pub history: History,
    /// The end state.
    pub final_state: FinalState,
    /// What the nemesis did.
    pub faults: crate::nemesis::FaultLog,
    /// What the checker found.
    pub anomalies: Vec<String>,
}

/// Counts of a run, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Operations by outcome.
    pub ok: u64,
    /// Refused.
    pub failed: u64,
    /// Unknown.
    pub unknown: u64,
    /// Operations by kind.
    pub by_kind: BTreeMap<String, u64>,
}

/// Counts `history`.
#[must_use]
pub fn tally(history: &History) -> Tally {
    let mut tally = Tally::default();
    for op in history {
        match op.outcome {
            Outcome::Ok => tally.ok += 1,
            Outcome::Failed(_) => tally.failed += 1,
            Outcome::Unknown(_) => tally.unknown += 1,
        }
        let kind = format!("{:?}", op.kind);
        let name = kind.split([' ', '{']).next().unwrap_or("?").to_owned();
        *tally.by_kind.entry(name).or_default() += 1;
    }
    tally
}

/// The people and listings of a bank run.
pub struct Bank {
    /// The operator's client (operator certificate).
    admin: ClusterClient,
    /// The buyers.
    buyers: Vec<Arc<MarketUser>>,
    /// The seller, with its shop open (it must be online to sell).
    seller: Arc<MarketUser>,
    shop: Option<crate::Shop>,
    /// Listing id -> price.
    listings: Vec<(u64, u64)>,
    /// The recorded operations.
    history: Arc<Mutex<History>>,
    /// Next operation's sequence number.
    seq: Arc<AtomicU64>,
    started: Instant,
}

impl Bank {
    /// Registers `buyers` buyers and a seller through `everyone` (a peer
    /// client), opens the seller's shop and publishes its listings.
    ///
    /// # Errors
    /// When registering, publishing or the shop fails.
    pub async fn open(
        admin: ClusterClient,
        everyone: &ClusterClient,
        dir: &Path,
        buyers: usize,
    ) -> anyhow::Result<Self> {
        let seller = MarketUser::register(everyone, dir, "seller", PASSWORD).await?;
        let shop = seller.open_shop(None).await?;
        let file = dir.join("bank-listing.bin");
        std::fs::write(&file, vec![7_u8; 4096])?;
        let mut listings = Vec::new();
        for (n, price) in PRICES.iter().enumerate() {
            let published = catalogue::publish(
                &seller.client,
                &seller.store,
                &NewListing {
                    path: file.clone(),
                    chunk_size: 4096,
                    fields: ListingFields {
                        title: format!("bank listing {n}"),
                        ..ListingFields::default()
                    },
                    price: *price,
                },
                seller.request(),
                |_, _| {},
            )
            .await
            .context("publishing a bank listing")?;
            listings.push((published.listing.id, *price));
        }
        let mut users = Vec::new();
        for n in 0..buyers {
            let user = MarketUser::register(everyone, dir, &format!("buyer{n}"), PASSWORD).await?;
            users.push(Arc::new(user));
        }
        Ok(Self {
            admin,
            buyers: users,
            seller: Arc::new(seller),
            shop: Some(shop),
            listings,
            history: Arc::default(),
            seq: Arc::new(AtomicU64::new(1)),
            started: Instant::now(),
        })
    }

    /// Runs every buyer's client until the time `stop` names has passed,
    /// with random choices from `seed` (one stream per buyer).
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<Option<Instant>>, seed: u64) {
        let tasks = self.buyers.iter().enumerate().map(|(n, buyer)| {
            let worker = Worker {
                admin: self.admin.clone(),
                buyer: Arc::clone(buyer),
                seller: Arc::clone(&self.seller),
                listings: self.listings.clone(),
                history: Arc::clone(&self.history),
                seq: Arc::clone(&self.seq),
                started: self.started,
                rng: StdRng::seed_from_u64(seed.wrapping_add(n as u64)),
                last_write: 0,
            };
            tokio::spawn(worker.run(stop.clone()))
        });
        for task in futures::future::join_all(tasks).await {
            // A worker records its own failures; a panic is a bug here.
            if let Err(err) = task {
                eprintln!("a bank worker panicked: {err}");
            }
        }
    }

    /// The history so far.
    #[must_use]
    pub fn history(&self) -> History {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads what the cluster ended with (after healing): every account's
    /// balance, journal and purchases, the audit totals and the digests.
    ///
    /// # Errors
    /// When a read fails.
    pub async fn final_state(
        &self,
        audit: &agora_proto::admin::AuditReply,
        digests: BTreeMap<u64, String>,
    ) -> anyhow::Result<FinalState> {
        let mut buyers = BTreeMap::new();
        for buyer in &self.buyers {
            buyers.insert(buyer.id, account_record(buyer, PurchaseRole::Buyer).await?);
        }
        let seller = account_record(&self.seller, PurchaseRole::Seller).await?;
        Ok(FinalState {
            buyers,
            seller,
            balance_sum: audit.balance_sum,
            user_money: audit.user_money,
            operator_balance: audit.operator_balance,
            digests,
        })
    }

    /// Closes the seller's shop.
    ///
    /// # Errors
    /// When the shop does not stop cleanly.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        if let Some(shop) = self.shop.take() {
            shop.close().await?;
        }
        Ok(())
    }
}

/// One account's end state, read linearizably by its user.
async fn account_record(user: &MarketUser, role: PurchaseRole) -> anyhow::Result<AccountRecord> {
    let consistency = Some(ReadConsistency {
        min_index: 0,
        linearizable: true,
    });
    let balance = ledger::balance(&user.client, 0, consistency).await?.balance;
    let journal = ledger::all_cash_flows(&user.client, 0, &[], consistency)
        .await?
        .into_iter()
        .map(|flow| Entry {
            kind: flow.kind,
            amount: flow.amount,
            hold_id: flow.hold_id,
            log_index: flow.log_index,
        })
        .collect();
    let purchases = purchase::list(
        &user.client,
        role,
        0,
        ReadConsistency {
            min_index: 0,
            linearizable: true,
        },
    )
    .await?
    .into_iter()
    .map(|p| PurchaseRecord {
        id: p.id,
        price: p.price,
        commission: p.commission,
        net: p.net,
        state: p.state,
    })
    .collect();
    Ok(AccountRecord {
        balance,
        journal,
        purchases,
    })
}

/// One buyer's client: operations one after another.
struct Worker {
    admin: ClusterClient,
    buyer: Arc<MarketUser>,
    seller: Arc<MarketUser>,
    listings: Vec<(u64, u64)>,
    history: Arc<Mutex<History>>,
    seq: Arc<AtomicU64>,
    started: Instant,
    rng: StdRng,
    /// Index of this buyer's last acknowledged write: its reads at
    /// `min_index` must see it.
    last_write: u64,
}

/// What one attempt on one node gave.
enum Attempt<T> {
    Done(T),
    Refused(Status),
    Retry(String),
}

/// Whether a status is the cluster's considered refusal (never applied,
/// never to be applied) rather than a failure to get an answer.
fn is_refusal(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
    ) && !agora_peer::is_retryable(status)
}

impl Worker {
    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn node(&mut self) -> u64 {
        let ids = self.admin.node_ids();
        ids[self.rng.gen_range(0..ids.len())]
    }

    fn record(&self, op: Op) {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(op);
    }

    /// Runs `call` on random nodes until it is answered, refused, or the
    /// budget is spent; records the operation and returns its answer.
    async fn perform<T, F, Fut>(
        &mut self,
        kind: OpKind,
        request_id: String,
        mut call: F,
        index_of: impl Fn(&T) -> (u64, Option<u64>),
    ) -> Option<T>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let started_ms = self.ms();
        let deadline = Instant::now() + OPERATION_BUDGET;
        let impatient = self.rng.gen_ratio(1, IMPATIENT_ONE_IN);
        let patience = Duration::from_millis(self.rng.gen_range(1..=IMPATIENCE_MS));
        let mut nodes = Vec::new();
        let (outcome, answer) = loop {
            let node = self.node();
            nodes.push(node);
            let attempt = if impatient {
                match tokio::time::timeout(patience, call(node)).await {
                    Ok(attempt) => attempt,
                    Err(_) => {
                        break (
                            Outcome::Unknown(format!("gave up after {patience:?}")),
                            None,
                        )
                    }
                }
            } else {
                call(node).await
            };
            match attempt {
                Attempt::Done(answer) => break (Outcome::Ok, Some(answer)),
                Attempt::Refused(status) => {
                    break (
                        Outcome::Failed(format!("{:?}: {}", status.code(), status.message())),
                        None,
                    )
                }
                Attempt::Retry(why) => {
                    if impatient || Instant::now() >= deadline {
                        break (Outcome::Unknown(why), None);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        let (index, value) = answer.as_ref().map_or((0, None), &index_of);
        self.record(Op {
            seq,
            buyer: self.buyer.id,
            kind,
            request_id,
            nodes,
            outcome,
            index,
            value,
            started_ms,
            ended_ms: self.ms(),
        });
        answer
    }

    async fn run(mut self, stop: tokio::sync::watch::Receiver<Option<Instant>>) {
        while !stop.borrow().is_some_and(|end| Instant::now() >= end) {
            let roll = self.rng.gen_range(0..100);
            match roll {
                0..=19 => self.deposit().await,
                20..=34 => self.withdraw().await,
                35..=64 => self.buy().await,
                _ => self.read().await,
            }
        }
    }

    fn request_id(&self) -> RequestId {
        agora_peer::request_id(format!("user:{}", self.buyer.id))
    }

    async fn deposit(&mut self) {
        let amount = DEPOSIT_BASE + self.seq.load(Ordering::Relaxed);
        let id = agora_peer::new_request_id();
        let request = DepositRequest {
            request_id: Some(AdminRequestId { id: id.clone() }),
            username: self.buyer.name.clone(),
            amount,
        };
        let admin = self.admin.clone();
        let answer = self
            .perform(
                OpKind::Deposit { amount },
                id,
                |node| {
                    let request = request.clone();
                    let admin = admin.clone();
                    async move {
                        attempt(async move {
                            admin
                                .admin(node)?
                                .deposit(request)
                                .await
                                .map_err(Into::into)
                        })
                        .await
                    }
                },
                |reply| (reply.index, None),
            )
            .await;
        if let Some(reply) = answer {
            self.last_write = self.last_write.max(reply.index);
        }
    }

    async fn withdraw(&mut self) {
        let amount = WITHDRAW_BASE + self.seq.load(Ordering::Relaxed);
        let request_id = self.request_id();
        let request = WithdrawRequest {
            request_id: Some(request_id.clone()),
            amount,
        };
        let client = self.buyer.client.clone();
        let answer = self
            .perform(
                OpKind::Withdraw { amount },
                request_id.id,
                |node| {
                    let request = request.clone();
                    let client = client.clone();
                    async move {
                        attempt(async move {
                            client
                                .ledger(node)?
                                .withdraw(request)
                                .await
                                .map_err(Into::into)
                        })
                        .await
                    }
                },
                |reply| (reply.index, None),
            )
            .await;
        if let Some(reply) = answer {
            self.last_write = self.last_write.max(reply.index);
        }
    }

    async fn read(&mut self) {
        let linearizable = self.rng.gen_bool(0.3);
        let min_index = self.last_write;
        let request = BalanceRequest {
            user_id: 0,
            consistency: Some(ReadConsistency {
                min_index,
                linearizable,
            }),
        };
        let client = self.buyer.client.clone();
        self.perform(
            OpKind::Read {
                min_index,
                linearizable,
            },
            String::new(),
            |node| {
                let client = client.clone();
                async move {
                    attempt(async move {
                        client
                            .ledger(node)?
                            .balance(request)
                            .await
                            .map_err(Into::into)
                    })
                    .await
                }
            },
            |reply| (reply.applied_index, Some(reply.balance)),
        )
        .await;
    }

    /// Opens a purchase, then completes it (after the seller's key),
    /// cancels it, or leaves it to expire.
    async fn buy(&mut self) {
        let (listing, price) = self.listings[self.rng.gen_range(0..self.listings.len())];
        let path = self.rng.gen_range(0..10);
        let hold_secs = if path < 2 {
            SHORT_HOLD_SECS
        } else {
            LONG_HOLD_SECS
        };
        let request_id = self.request_id();
        let request = BeginPurchaseRequest {
            request_id: Some(request_id.clone()),
            listing_id: listing,
            hold_seconds: hold_secs,
        };
        let client = self.buyer.client.clone();
        let begun = self
            .perform(
                OpKind::Begin {
                    listing,
                    price,
                    hold_secs,
                },
                request_id.id,
                |node| {
                    let request = request.clone();
                    let client = client.clone();
                    async move {
                        attempt(async move {
                            let channel = client.channel(node)?;
                            client
                                .purchase_on(channel)
                                .begin_purchase(request)
                                .await
                                .map_err(Into::into)
                        })
                        .await
                    }
                },
                |reply| (reply.index, reply.purchase.as_ref().map(|p| p.id)),
            )
            .await;
        let Some(purchase_id) = begun.and_then(|reply| reply.purchase).map(|p| p.id) else {
            return;
        };
        match path {
            0..=1 => {} // left to expire
            2..=3 => self.cancel(purchase_id).await,
            _ => {
                if self.deposit_key(purchase_id).await {
                    self.complete(purchase_id).await;
                }
            }
        }
    }

    async fn deposit_key(&mut self, purchase_id: u64) -> bool {
        let root = [9_u8; 32];
        let key: [u8; 32] = self.rng.gen();
        let request_id = agora_peer::request_id(format!("user:{}", self.seller.id));
        let request = DepositKeyRequest {
            request_id: Some(request_id.clone()),
            purchase_id,
            key: key.to_vec(),
            ciphertext_root: root.to_vec(),
        };
        let client = self.seller.client.clone();
        self.perform(
            OpKind::DepositKey {
                purchase: purchase_id,
            },
            request_id.id,
            |node| {
                let request = request.clone();
                let client = client.clone();
                async move {
                    attempt(async move {
                        let channel = client.channel(node)?;
                        client
                            .purchase_on(channel)
                            .deposit_key(request)
                            .await
                            .map_err(Into::into)
                    })
                    .await
                }
            },
            |reply| (reply.index, None),
        )
        .await
        .is_some()
    }

    async fn complete(&mut self, purchase_id: u64) {
        let request_id = self.request_id();
        let request = CompletePurchaseRequest {
            request_id: Some(request_id.clone()),
            purchase_id,
            ciphertext_root: vec![9_u8; 32],
        };
        let client = self.buyer.client.clone();
        let answer = self
            .perform(
                OpKind::Complete {
                    purchase: purchase_id,
                },
                request_id.id,
                |node| {
                    let request = request.clone();
                    let client = client.clone();
                    async move {
                        attempt(async move {
                            let channel = client.channel(node)?;
                            client
                                .purchase_on(channel)
                                .complete_purchase(request)
                                .await
                                .map_err(Into::into)
                        })
                        .await
                    }
                },
                |reply| (reply.index, None),
            )
            .await;
        if let Some(reply) = answer {
            self.last_write = self.last_write.max(reply.index);
        }
    }

    async fn cancel(&mut self, purchase_id: u64) {
        let request_id = self.request_id();
        let request = CancelPurchaseRequest {
            request_id: Some(request_id.clone()),
            purchase_id,
        };
        let client = self.buyer.client.clone();
        self.perform(
            OpKind::Cancel {
                purchase: purchase_id,
            },
            request_id.id,
            |node| {
                let request = request.clone();
                let client = client.clone();
                async move {
                    attempt(async move {
                        let channel = client.channel(node)?;
                        client
                            .purchase_on(channel)
                            .cancel_purchase(request)
                            .await
                            .map_err(Into::into)
                    })
                    .await
                }
            },
            |reply| (reply.index, None),
        )
        .await;
    }
}

/// A call failed before or after reaching a node.
enum CallError {
    Status(Status),
    Client(agora_peer::ClientError),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<agora_peer::ClientError> for CallError {
    fn from(err: agora_peer::ClientError) -> Self {
        Self::Client(err)
    }
}

/// Runs one attempt with [`ATTEMPT_TIMEOUT`] and sorts its result.
async fn attempt<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, CallError>>,
) -> Attempt<T> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
        Err(_) => Attempt::Retry("the attempt timed out".to_owned()),
        Ok(Ok(reply)) => Attempt::Done(reply.into_inner()),
        Ok(Err(CallError::Status(status))) if is_refusal(&status) => Attempt::Refused(status),
        Ok(Err(CallError::Status(status))) => {
            Attempt::Retry(format!("{:?}: {}", status.code(), status.message()))
        }
        Ok(Err(CallError::Client(err))) => Attempt::Retry(err.to_string()),
    }
}

/// Saves a run as JSON under the system's temporary directory; returns
/// the path.
///
/// # Errors
/// When the file cannot be written.
pub fn save(run: &SavedRun) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "agora-bank-{}-{}.json",
        run.seed,
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(run)?)
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(path)
}

/// Runs the checker again on a saved run; returns its anomalies.
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn replay(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let run: SavedRun = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a saved bank run", path.display()))?;
    Ok(check(&run.history, &run.final_state))
}

/// What an operation's outcome allows: applied exactly once, never, or
/// at most once.
fn allowed(outcome: &Outcome) -> std::ops::RangeInclusive<usize> {
    match outcome {
        Outcome::Ok => 1..=1,
        Outcome::Failed(_) => 0..=0,
        Outcome::Unknown(_) => 0..=1,
    }
}

/// Checks a history against the end state; returns every broken rule as
/// a sentence (empty: the run is correct).
///
/// - Money: every account's balance equals its journal; the balances sum
///   to zero; the money on user accounts and the operator's equal the
///   deposits less the withdrawals that the journals show; the operator
///   has exactly the commissions of the completed purchases, the seller
///   their nets.
/// - Exactly once: each deposit or withdrawal that was acknowledged is in
///   its buyer's journal once, each refused one not at all, each unknown
///   one at most once; no journal entry comes from nowhere; every
///   completed purchase is paid exactly once (one posting per hold), and
///   an acknowledged completion or cancellation shows in the purchase's
///   state, a refused one does not.
/// - Reads: a read at `min_index` was answered at that index or later, and
///   saw a balance the buyer's history allows.
/// - Every node's state digest is equal.
#[must_use]
#[allow(clippy::too_many_lines)] // one rule after another, read top to bottom
pub fn check(history: &History, end: &FinalState) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut by_buyer: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_buyer.entry(op.buyer).or_default().push(op);
    }
    let mut applied_deposits: i128 = 0;
    let mut applied_withdrawals: i128 = 0;
    let mut completed_commission: u64 = 0;
    let mut completed_net: u64 = 0;
    let mut completed_ids = BTreeSet::new();

    for (buyer, record) in &end.buyers {
        let ops = by_buyer.remove(buyer).unwrap_or_default();
        let who = format!("buyer {buyer}");
        // The journal against the balance.
        let sum: i64 = record.journal.iter().map(|e| e.amount).sum();
        if i128::from(sum) != i128::from(record.balance) {
            anomalies.push(format!(
                "{who}: balance {} but the journal sums to {sum}",
                record.balance
            ));
        }
        // Deposits and withdrawals, found by their unique amounts.
        for (kind, sign) in [("deposit", 1_i64), ("withdrawal", -1)] {
            let mut found: BTreeMap<u64, usize> = BTreeMap::new();
            for entry in record.journal.iter().filter(|e| e.kind == kind) {
                if entry.amount.signum() != sign {
                    anomalies.push(format!("{who}: a {kind} entry of {}", entry.amount));
                }
                *found.entry(entry.amount.unsigned_abs()).or_default() += 1;
            }
            for op in &ops {
                let amount = match (&op.kind, kind) {
                    (OpKind::Deposit { amount }, "deposit")
                    | (OpKind::Withdraw { amount }, "withdrawal") => *amount,
                    _ => continue,
                };
                let times = found.remove(&amount).unwrap_or(0);
                if !allowed(&op.outcome).contains(&times) {
                    anomalies.push(format!(
                        "{who}: {kind} op {} ({:?}, request {}) is in the journal {times} time(s)",
                        op.seq, op.outcome, op.request_id
                    ));
                }
                let money = i128::from(amount) * i128::try_from(times).unwrap_or(0);
                if kind == "deposit" {
                    applied_deposits += money;
                } else {
                    applied_withdrawals += money;
                }
            }
            for (amount, times) in found {
                anomalies.push(format!(
                    "{who}: {times} {kind} entr(ies) of {amount} that no operation made"
                ));
            }
        }
        // Purchases.
        let states: BTreeMap<u64, &PurchaseRecord> =
            record.purchases.iter().map(|p| (p.id, p)).collect();
        let begun_ok: BTreeSet<u64> = ops
            .iter()
            .filter(|op| matches!(op.kind, OpKind::Begin { .. }) && op.outcome == Outcome::Ok)
            .filter_map(|op| op.value)
            .collect();
        let begun_unknown = ops
            .iter()
            .filter(|op| {
                matches!(op.kind, OpKind::Begin { .. }) && matches!(op.outcome, Outcome::Unknown(_))
            })
            .count();
        for id in &begun_ok {
            if !states.contains_key(id) {
                anomalies.push(format!("{who}: acknowledged purchase {id} does not exist"));
            }
        }
        let extra = states.keys().filter(|id| !begun_ok.contains(id)).count();
        if extra > begun_unknown {
            anomalies.push(format!(
                "{who}: {extra} purchase(s) beyond the acknowledged ones, but only {begun_unknown} begin(s) had an unknown outcome"
            ));
        }
        for op in &ops {
            let (purchase, wanted) = match op.kind {
                OpKind::Complete { purchase } => (purchase, PurchaseState::Completed),
                OpKind::Cancel { purchase } => (purchase, PurchaseState::Cancelled),
                _ => continue,
            };
            let state = states.get(&purchase).map(|p| p.state);
            let reached = state == Some(wanted as i32);
            let fine = match op.outcome {
                Outcome::Ok => reached,
                Outcome::Failed(_) => !reached,
                Outcome::Unknown(_) => true,
            };
            if !fine {
                anomalies.push(format!(
                    "{who}: {:?} of purchase {purchase} was {:?} but the purchase is in state {state:?}",
                    op.kind, op.outcome
                ));
            }
        }
        // Payments: one posting per completed purchase, nothing else.
        let completed: Vec<&PurchaseRecord> = record
            .purchases
            .iter()
            .filter(|p| p.state == PurchaseState::Completed as i32)
            .collect();
        let payments: Vec<&Entry> = record
            .journal
            .iter()
            .filter(|e| e.kind != "deposit" && e.kind != "withdrawal")
            .collect();
        // A posting is a sale entry and a commission entry (when not
        // zero) under one hold: each (hold, kind) at most once.
        let postings: BTreeSet<(u64, &str)> = payments
            .iter()
            .map(|e| (e.hold_id, e.kind.as_str()))
            .collect();
        if postings.len() != payments.len() {
            anomalies.push(format!(
                "{who}: a hold was posted more than once: {payments:?}"
            ));
        }
        let holds: BTreeSet<u64> = payments.iter().map(|e| e.hold_id).collect();
        let paid: i64 = payments.iter().map(|e| e.amount).sum();
        let owed: u64 = completed.iter().map(|p| p.price).sum();
        if holds.len() != completed.len() || i128::from(paid) != -i128::from(owed) {
            anomalies.push(format!(
                "{who}: {} completed purchase(s) worth {owed}, but {} hold(s) posted for {paid} in the journal",
                completed.len(),
                holds.len()
            ));
        }
        for p in completed {
            completed_commission += p.commission;
            completed_net += p.net;
            completed_ids.insert(p.id);
        }
        // Reads: the balances this buyer's history allows, op by op.
        anomalies.extend(check_reads(*buyer, &ops));
        // And a prefix of the journal: the state at the index the node said
        // it answered at, or a later one, but none that includes the buyer's
        // next acknowledged write, which began after the read ended. (Nodes
        // now read the index and the balance in one transaction, so the
        // index is exact; a later state is still accepted so that histories
        // saved before that fix replay as they were judged.)
        anomalies.extend(check_read_prefixes(&who, &ops, &record.journal));
        // The final balance too.
        let possible = possible_balances(&ops);
        if let Some(possible) = possible {
            if !possible.contains(&i128::from(record.balance)) {
                anomalies.push(format!(
                    "{who}: final balance {} is not one its history allows ({} possible)",
                    record.balance,
                    possible.len()
                ));
            }
        }
    }
    for (buyer, ops) in by_buyer {
        anomalies.push(format!(
            "buyer {buyer} has {} operation(s) but no final state",
            ops.len()
        ));
    }
    // The seller and the operator.
    let sales: BTreeSet<u64> = end
        .seller
        .purchases
        .iter()
        .filter(|p| p.state == PurchaseState::Completed as i32)
        .map(|p| p.id)
        .collect();
    if sales != completed_ids {
        anomalies.push(format!(
            "the seller's completed sales {sales:?} differ from the buyers' completed purchases {completed_ids:?}"
        ));
    }
    let seller_sum: i64 = end.seller.journal.iter().map(|e| e.amount).sum();
    if i128::from(seller_sum) != i128::from(completed_net)
        || i128::from(end.seller.balance) != i128::from(completed_net)
    {
        anomalies.push(format!(
            "the seller has balance {} and journal sum {seller_sum}, but the completed sales net {completed_net}",
            end.seller.balance
        ));
    }
    if i128::from(end.operator_balance) != i128::from(completed_commission) {
        anomalies.push(format!(
            "the operator has {} but the completed purchases' commissions sum to {completed_commission}",
            end.operator_balance
        ));
    }
    // Total money.
    if end.balance_sum != 0 {
        anomalies.push(format!("the balances sum to {}, not 0", end.balance_sum));
    }
    let inside = i128::from(end.user_money) + i128::from(end.operator_balance);
    if inside != applied_deposits - applied_withdrawals {
        anomalies.push(format!(
            "users and operator hold {inside}, but the applied deposits ({applied_deposits}) less withdrawals ({applied_withdrawals}) come to {}",
            applied_deposits - applied_withdrawals
        ));
    }
    let digests: BTreeSet<&String> = end.digests.values().collect();
    if digests.len() > 1 {
        anomalies.push(format!(
            "the nodes' state digests differ: {:?}",
            end.digests
        ));
    }
    anomalies
}

/// How an operation can change its buyer's balance: by `delta` surely
/// (acknowledged) or perhaps (unknown).
fn balance_effect(op: &Op) -> Option<(i128, bool)> {
    let delta = match op.kind {
        OpKind::Deposit { amount } => i128::from(amount),
        OpKind::Withdraw { amount } => -i128::from(amount),
        // The price is only known from the Begin; Complete is resolved by
        // `possible_balances` through the purchase it names.
        _ => return None,
    };
    match op.outcome {
        Outcome::Ok => Some((delta, true)),
        Outcome::Unknown(_) => Some((delta, false)),
        Outcome::Failed(_) => None,
    }
}

/// Applies one operation to the set of possible balances; `None` once the
/// set grows beyond [`MAX_POSSIBLE_BALANCES`].
fn step(possible: BTreeSet<i128>, op: &Op, prices: &BTreeMap<u64, u64>) -> Option<BTreeSet<i128>> {
    let effect = match op.kind {
        OpKind::Complete { purchase } => match (op.outcome.clone(), prices.get(&purchase)) {
            (Outcome::Failed(_), _) => None,
            (_, None) => return None, // a completion of a purchase we never saw begin
            (Outcome::Ok, Some(price)) => Some((-i128::from(*price), true)),
            (Outcome::Unknown(_), Some(price)) => Some((-i128::from(*price), false)),
        },
        _ => balance_effect(op),
    };
    let next: BTreeSet<i128> = match effect {
        None => possible,
        Some((delta, true)) => possible.iter().map(|b| b + delta).collect(),
        Some((delta, false)) => possible.iter().flat_map(|b| [*b, b + delta]).collect(),
    };
    (next.len() <= MAX_POSSIBLE_BALANCES).then_some(next)
}

/// Prices of the purchases a buyer began (by purchase id).
fn prices(ops: &[&Op]) -> BTreeMap<u64, u64> {
    ops.iter()
        .filter_map(|op| match (&op.kind, op.value) {
            (OpKind::Begin { price, .. }, Some(id)) => Some((id, *price)),
            _ => None,
        })
        .collect()
}

/// Every balance the buyer's whole history allows (`None`: too many).
fn possible_balances(ops: &[&Op]) -> Option<BTreeSet<i128>> {
    let prices = prices(ops);
    let mut ordered: Vec<&&Op> = ops.iter().collect();
    ordered.sort_by_key(|op| op.seq);
    ordered
        .into_iter()
        .try_fold(BTreeSet::from([0]), |possible, op| {
            step(possible, op, &prices)
        })
}

/// Checks that every read of one buyer saw its journal up to some index
/// from the one the node reported to just before the buyer's next
/// acknowledged write.
fn check_read_prefixes(who: &str, ops: &[&Op], journal: &[Entry]) -> Vec<String> {
    let mut ordered: Vec<&&Op> = ops.iter().collect();
    ordered.sort_by_key(|op| op.seq);
    let prefix = |index: u64| -> i64 {
        journal
            .iter()
            .filter(|e| e.log_index <= index)
            .map(|e| e.amount)
            .sum()
    };
    let mut anomalies = Vec::new();
    for (n, op) in ordered.iter().enumerate() {
        let (OpKind::Read { .. }, Outcome::Ok, Some(balance)) = (&op.kind, &op.outcome, op.value)
        else {
            continue;
        };
        let next_write = ordered[n + 1..]
            .iter()
            .find(|later| {
                later.outcome == Outcome::Ok
                    && later.index > 0
                    && !matches!(later.kind, OpKind::Read { .. })
            })
            .map_or(u64::MAX, |later| later.index);
        let mut candidates = BTreeSet::from([prefix(op.index)]);
        for entry in journal {
            if entry.log_index > op.index && entry.log_index < next_write {
                candidates.insert(prefix(entry.log_index));
            }
        }
        if !candidates.contains(&i64::try_from(balance).unwrap_or(i64::MAX)) {
            anomalies.push(format!(
                "{who}: read {} on node {:?} at applied index {} saw balance {balance}, but the journal sums to {} at that index and to none of {:?} before the next acknowledged write (index {next_write})",
                op.seq,
                op.nodes.last(),
                op.index,
                prefix(op.index),
                candidates
            ));
        }
    }
    anomalies
}

/// Checks each read of one buyer against the history before it. Every
/// operation of a buyer runs one after another, so everything recorded
/// before a read ended before it began.
fn check_reads(buyer: u64, ops: &[&Op]) -> Vec<String> {
    let prices = prices(ops);
    let mut ordered: Vec<&&Op> = ops.iter().collect();
    ordered.sort_by_key(|op| op.seq);
    let mut anomalies = Vec::new();
    let mut possible = Some(BTreeSet::from([0_i128]));
    for op in ordered {
        if let (OpKind::Read { min_index, .. }, Outcome::Ok, Some(balance)) =
            (&op.kind, &op.outcome, op.value)
        {
            if op.index < *min_index {
                anomalies.push(format!(
                    "buyer {buyer}: read {} at min_index {min_index} was answered at applied index {} (read-your-writes broken)",
                    op.seq, op.index
                ));
            }
            if let Some(set) = &possible {
                if !set.contains(&i128::from(balance)) {
                    let near: Vec<&i128> = set.iter().take(8).collect();
                    anomalies.push(format!(
                        "buyer {buyer}: read {} on node {:?} saw balance {balance}, which its history does not allow (e.g. {near:?})",
                        op.seq,
                        op.nodes.last()
                    ));
                }
            }
        }
        possible = possible.and_then(|set| step(set, op, &prices));
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq: u64, kind: OpKind, outcome: Outcome, value: Option<u64>) -> Op {
        Op {
            seq,
            buyer: 10,
            kind,
            request_id: format!("r{seq}"),
            nodes: vec![1],
            outcome,
            index: seq,
            value,
            started_ms: 0,
            ended_ms: 0,
        }
    }

    fn entry(kind: &str, amount: i64, log_index: u64) -> Entry {
        Entry {
            kind: kind.to_owned(),
            amount,
            hold_id: 0,
            log_index,
        }
    }

    /// A clean run: a deposit, an unknown withdrawal that did apply, a
    /// refused one, a read that saw the deposit.
    fn clean() -> (History, FinalState) {
        let history = vec![
            op(1, OpKind::Deposit { amount: 5000 }, Outcome::Ok, None),
            op(
                2,
                OpKind::Read {
                    min_index: 1,
                    linearizable: false,
                },
                Outcome::Ok,
                Some(5000),
            ),
            op(
                3,
                OpKind::Withdraw { amount: 3 },
                Outcome::Unknown("timeout".into()),
                None,
            ),
            op(
                4,
                OpKind::Withdraw { amount: 9999 },
                Outcome::Failed("short".into()),
                None,
            ),
        ];
        let end = FinalState {
            buyers: BTreeMap::from([(
                10,
                AccountRecord {
                    balance: 4997,
                    journal: vec![entry("deposit", 5000, 1), entry("withdrawal", -3, 3)],
                    purchases: Vec::new(),
                },
            )]),
            seller: AccountRecord::default(),
            balance_sum: 0,
            user_money: 4997,
            operator_balance: 0,
            digests: BTreeMap::from([(1, "a".into()), (2, "a".into())]),
        };
        (history, end)
    }

    #[test]
    fn a_clean_run_has_no_anomaly() {
        let (history, end) = clean();
        assert_eq!(check(&history, &end), Vec::<String>::new());
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let (history, end) = clean();
        // An acknowledged deposit applied twice (and money out of nowhere).
        let mut twice = end.clone();
        let buyer = twice.buyers.get_mut(&10).expect("buyer");
        buyer.journal.push(entry("deposit", 5000, 1));
        buyer.balance += 5000;
        twice.user_money += 5000;
        let found = check(&history, &twice);
        assert!(found.iter().any(|a| a.contains("2 time(s)")), "{found:?}");
        assert!(
            found.iter().any(|a| a.contains("final balance")),
            "{found:?}"
        );

        // A refused withdrawal that was applied.
        let mut refused = end.clone();
        let buyer = refused.buyers.get_mut(&10).expect("buyer");
        buyer.journal.push(entry("withdrawal", -9999, 5));
        let found = check(&history, &refused);
        assert!(found.iter().any(|a| a.contains("op 4")), "{found:?}");

        // A stale read, and one that saw an impossible balance.
        let mut stale = history.clone();
        stale[1].index = 0;
        stale[1].value = Some(1);
        let found = check(&stale, &end);
        assert!(
            found.iter().any(|a| a.contains("read-your-writes")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|a| a.contains("does not allow")),
            "{found:?}"
        );
        // A read that saw an older state than the index its node reported.
        let mut skewed = history.clone();
        skewed[1].index = 3;
        let found = check(&skewed, &end);
        assert!(
            found
                .iter()
                .any(|a| a.contains("sums to 4997 at that index")),
            "{found:?}"
        );
        // One that saw a newer state than its node reported is fine, as
        // long as it is older than the buyer's next acknowledged write.
        let mut newer = end.clone();
        let buyer = newer.buyers.get_mut(&10).expect("buyer");
        buyer.journal[0].log_index = 2;
        let mut early = history.clone();
        early[0].index = 2;
        early[1].index = 1;
        early[1].kind = OpKind::Read {
            min_index: 0,
            linearizable: false,
        };
        assert_eq!(check(&early, &newer), Vec::<String>::new());
        // But not newer than the next acknowledged write.
        let mut late = early.clone();
        late.insert(2, op(5, OpKind::Deposit { amount: 7 }, Outcome::Ok, None));
        late[2].index = 2;
        late[1].index = 0;
        let mut too_new = newer.clone();
        too_new
            .buyers
            .get_mut(&10)
            .expect("buyer")
            .journal
            .push(entry("deposit", 7, 2));
        let found = check(&late, &too_new);
        assert!(
            found
                .iter()
                .any(|a| a.contains("before the next acknowledged write")),
            "{found:?}"
        );

        // Money lost, and diverged nodes.
        let mut lost = end;
        lost.user_money -= 1;
        lost.balance_sum = -1;
        lost.digests.insert(3, "b".into());
        let found = check(&history, &lost);
        assert!(found.iter().any(|a| a.contains("sum to -1")), "{found:?}");
        assert!(found.iter().any(|a| a.contains("come to")), "{found:?}");
        assert!(
            found.iter().any(|a| a.contains("digests differ")),
            "{found:?}"
        );
    }

    #[test]
    fn purchases_are_paid_once_and_follow_their_outcomes() {
        let begin = OpKind::Begin {
            listing: 1,
            price: 150,
            hold_secs: 30,
        };
        let history = vec![
            op(1, OpKind::Deposit { amount: 5000 }, Outcome::Ok, None),
            op(2, begin.clone(), Outcome::Ok, Some(7)),
            op(3, OpKind::Complete { purchase: 7 }, Outcome::Ok, None),
            op(4, begin, Outcome::Ok, Some(8)),
            op(
                5,
                OpKind::Cancel { purchase: 8 },
                Outcome::Failed("late".into()),
                None,
            ),
        ];
        let paid = Entry {
            kind: "sale".into(),
            amount: -150,
            hold_id: 1,
            log_index: 3,
        };
        let record = |state8: PurchaseState| FinalState {
            buyers: BTreeMap::from([(
                10,
                AccountRecord {
                    balance: 4850,
                    journal: vec![entry("deposit", 5000, 1), paid.clone()],
                    purchases: vec![
                        PurchaseRecord {
                            id: 7,
                            price: 150,
                            commission: 1,
                            net: 149,
                            state: PurchaseState::Completed as i32,
                        },
                        PurchaseRecord {
                            id: 8,
                            price: 150,
                            commission: 0,
                            net: 0,
                            state: state8 as i32,
                        },
                    ],
                },
            )]),
            seller: AccountRecord {
                balance: 149,
                journal: vec![entry("sale", 149, 3)],
                purchases: vec![PurchaseRecord {
                    id: 7,
                    price: 150,
                    commission: 1,
                    net: 149,
                    state: PurchaseState::Completed as i32,
                }],
            },
            balance_sum: 0,
            user_money: 4999,
            operator_balance: 1,
            digests: BTreeMap::new(),
        };
        assert_eq!(
            check(&history, &record(PurchaseState::Expired)),
            Vec::<String>::new()
        );
        let found = check(&history, &record(PurchaseState::Cancelled));
        assert!(found.iter().any(|a| a.contains("purchase 8")), "{found:?}");
        let mut twice = record(PurchaseState::Expired);
        twice.buyers.get_mut(&10).expect("buyer").journal.push(paid);
        let found = check(&history, &twice);
        assert!(
            found.iter().any(|a| a.contains("more than once")),
            "{found:?}"
        );
    }
}
