//! Disputes on a three-node cluster, driven through the peer library so
//! that the test can also file proofs by hand: replayed, misdirected, late,
//! or about a chunk that is fine.
//!
//! Two sellers serve from in-process file servers (real peer TLS on
//! loopback) and keep their presence alive: sam is honest, dan flips a
//! byte of chunk 1 of every file before encrypting it (his ciphertext root
//! is consistent with what he sends, so only the decrypted chunk gives him
//! away). The buyers bea and mallory (mal) get 50.00 each. In order, on one
//! cluster:
//!
//! 1. **Setup**: the dispute window is set to 10 minutes (every dispute in
//!    phases 2-4 is in time); sam and dan each publish a 200 KiB file cut
//!    in 64 KiB chunks, sam's at 2.00, dan's at 3.00.
//! 2. **A cheated buyer gets everything back**: bea's `Buyer::buy` of dan's
//!    listing pays, finds chunk 1 bad, files the proof itself and ends with
//!    `BuyError::Refunded { index: 1 }`. Every account is back where it
//!    started (bea's price, dan's pending proceeds, the operator's
//!    commission); the purchase reads `refunded`; dan's listing shows one
//!    strike; the download is marked disputed and no file was written; the
//!    refund is in the journal; the audit is clean.
//! 3. **A good chunk proves nothing**: bea buys sam's listing; the proceeds
//!    are pending on sam's account (held, not available). A proof of a good
//!    chunk, rebuilt from the file and the released key, is
//!    `FAILED_PRECONDITION` ("decrypts to exactly the listing's leaf"), and
//!    so is every chunk's; undecodable evidence is `INVALID_ARGUMENT`.
//!    Nothing moves.
//! 4. **Replays and other people's purchases**: evidence made for one
//!    purchase and filed against another purchase of the same listing, or
//!    bea's upheld proof against dan filed again (on her refunded purchase:
//!    "already refunded"; on another: "not what the seller committed to"),
//!    are `FAILED_PRECONDITION`; a dispute on someone else's purchase,
//!    even with a valid proof, or by the seller, is `PERMISSION_DENIED`; a
//!    dispute before payment is `FAILED_PRECONDITION`. mal then buys from
//!    dan step by step (begin, fetch, complete: no automatic dispute) and
//!    files his own proof by hand: upheld, a second strike. Nothing else
//!    moves.
//! 5. **The window**: set to 2 s by the admin. A new sale of sam's is
//!    released by the leader's timer (sam's `pending` drops, `available`
//!    grows) while the older sales keep their 10-minute window. A sale of
//!    dan's bought step by step is released the same way; mal's valid proof
//!    filed afterwards is `FAILED_PRECONDITION` (the window has closed).
//!    With the window at 0, bea's `Buyer::buy` from dan ends with
//!    `BuyError::DisputeRefused` naming the window: the seller keeps the
//!    money, no strike is added.
//! 6. **The end**: dan's sales list the two reversed sales as `refunded`,
//!    bea's purchases too; the listings show sales and strikes; the ledger
//!    audit is clean on every node.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`50_00` is 50.00), which reads better here than thousands grouping.
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_peer::buying::{BuyError, Silent};
use agora_peer::catalogue;
use agora_peer::local::{Download, DownloadState};
use agora_peer::peer_tls::{self, PeerIdentity};
use agora_peer::selling::MAX_FETCH_MESSAGE_BYTES;
use agora_peer::{ledger, new_request_id, purchase, ClientError, ClusterClient, PeerStore};
use agora_proto::dispute;
use agora_proto::escrow::{self, ChunkCipher, EscrowKey};
use agora_proto::market::{
    BalanceReply, BeginPurchaseReply, Listing, Purchase, PurchaseRole, PurchaseState,
    ReadConsistency,
};
use agora_proto::merkle::{self, Hash};
use agora_proto::peer::fetch_reply::Part;
use agora_proto::peer::seller_service_client::SellerServiceClient;
use agora_proto::peer::FetchRequest;
use agora_tests::{
    peer_client, wait_clean_audit, wait_for, write_random_file, MarketUser, PeerCli, Probe,
    TestCluster, TestOptions,
};
use anyhow::Context as _;
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
/// Size of both sellers' files: four chunks, so that chunk 1 has
/// neighbours on both sides in the Merkle tree. Equal sizes make a proof
/// from one listing the right length for the other, so that a replay is
/// refused for what it is and not for its length.
const FILE_SIZE: u64 = 200 * 1024;
/// Chunk size of every listing here.
const CHUNK: u32 = 64 * 1024;
/// The chunk dan corrupts.
const BAD_CHUNK: u64 = 1;
/// Price of sam's listing (cents).
const PRICE: u64 = 2_00;
/// Price of dan's listing (cents).
const BAD_PRICE: u64 = 3_00;
/// What each buyer starts with (cents).
const START: u64 = 50_00;
/// The commission until an admin sets one (basis points).
const DEFAULT_BPS: u64 = 100;
/// The dispute window of phases 2-4: long enough that no dispute there is
/// late, however slow the machine.
const LONG_WINDOW_MS: u64 = 600_000;
/// The dispute window of phase 5: short enough to wait out.
const SHORT_WINDOW_MS: u64 = 2_000;
/// Longest a replicated change may take to show, the timer to release
/// proceeds, or the audit to agree (the short window included).
const CONVERGE: Duration = Duration::from_secs(30);
/// Longest one real purchase of a small file may take on a busy machine.
const TRANSFER: Duration = Duration::from_secs(60);

/// The commission on `price` at the default rate (exact for both prices).
const fn fee(price: u64) -> u64 {
    price * DEFAULT_BPS / 10_000
}

/// What the seller keeps of `price`.
const fn net(price: u64) -> u64 {
    price - fee(price)
}

/// A registered, logged-in user with its own peer database.
type User = MarketUser;

async fn user(everyone: &ClusterClient, dir: &Path, name: &str) -> anyhow::Result<User> {
    MarketUser::register(everyone, dir, name, PASSWORD).await
}

fn linearizable() -> ReadConsistency {
    ReadConsistency {
        min_index: 0,
        linearizable: true,
    }
}

/// Purchase `id` as `who` (its buyer or seller) sees it, linearizable.
async fn purchase_of(who: &User, id: u64) -> anyhow::Result<Purchase> {
    purchase::get(&who.client, id, linearizable())
        .await
        .with_context(|| format!("reading purchase {id} as {}", who.name))
}

/// Listing `id`, linearizable: its seller's sales and strikes.
async fn listing(who: &User, id: u64) -> anyhow::Result<Listing> {
    Ok(catalogue::get_listing(&who.client, id, linearizable()).await?)
}

/// One account's money (cents). `available` is not kept: every reading
/// checks that it is `balance - held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Account {
    balance: u64,
    held: u64,
    /// Of `held`: sale proceeds still in their dispute window.
    pending: u64,
}

impl Account {
    /// Money with nothing held.
    const fn free(balance: u64) -> Self {
        Self {
            balance,
            held: 0,
            pending: 0,
        }
    }

    /// A seller's money with `pending` of it in dispute windows.
    const fn selling(balance: u64, pending: u64) -> Self {
        Self {
            balance,
            held: pending,
            pending,
        }
    }

    fn of(reply: &BalanceReply) -> anyhow::Result<Self> {
        anyhow::ensure!(
            reply.held <= reply.balance && reply.available == reply.balance - reply.held,
            "available is not balance less held: {reply:?}"
        );
        anyhow::ensure!(
            reply.pending <= reply.held,
            "pending proceeds are not part of the held money: {reply:?}"
        );
        Ok(Self {
            balance: reply.balance,
            held: reply.held,
            pending: reply.pending,
        })
    }
}

/// Everybody's money at one moment: what the checks compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Money {
    bea: Account,
    mal: Account,
    sam: Account,
    dan: Account,
    /// The operator's revenue (the commissions).
    operator: i64,
}

/// The people whose money is compared, and where the operator's revenue
/// is read.
struct Parties<'a> {
    bea: &'a User,
    mal: &'a User,
    sam: &'a User,
    dan: &'a User,
    admin: &'a ClusterClient,
    /// Every node, the leader first: the audit reports the operator's
    /// revenue, read on the first node that has applied what the balances
    /// showed.
    nodes: Vec<u64>,
}

impl Parties<'_> {
    async fn money(&self) -> anyhow::Result<Money> {
        let replies = [
            self.bea.balance().await?,
            self.mal.balance().await?,
            self.sam.balance().await?,
            self.dan.balance().await?,
        ];
        let index = replies.iter().map(|r| r.applied_index).max().unwrap_or(0);
        Ok(Money {
            bea: Account::of(&replies[0])?,
            mal: Account::of(&replies[1])?,
            sam: Account::of(&replies[2])?,
            dan: Account::of(&replies[3])?,
            operator: self.operator_cents(index).await?,
        })
    }

    /// The operator's revenue on the first node that has applied `index`.
    async fn operator_cents(&self, index: u64) -> anyhow::Result<i64> {
        let (admin, nodes) = (self.admin, &self.nodes);
        wait_for(
            &format!("a node to audit at index {index} or later"),
            CONVERGE,
            || async move {
                let mut seen = Vec::new();
                for &node in nodes {
                    match ledger::audit_on(admin, node).await {
                        Ok(reply) if reply.applied_index >= index => {
                            return Ok(Probe::Ready(reply.operator_balance))
                        }
                        Ok(reply) => {
                            seen.push(format!("node {node} applied {}", reply.applied_index));
                        }
                        Err(err) => seen.push(format!("node {node}: {err}")),
                    }
                }
                Ok(Probe::NotYet(seen.join("; ")))
            },
        )
        .await
    }
}

/// The operator's revenue `cents` above `base`.
fn plus(base: i64, cents: u64) -> anyhow::Result<i64> {
    Ok(base + i64::try_from(cents)?)
}

/// Fails unless `result` is an error with `code` whose message contains
/// `says`.
fn expect_refusal<T: Debug>(
    result: Result<T, ClientError>,
    code: Code,
    says: &str,
    what: &str,
) -> anyhow::Result<()> {
    match result {
        Err(err) if err.code() == Some(code) => {
            let message = err
                .status()
                .map_or_else(|| err.to_string(), |s| s.message().to_owned());
            anyhow::ensure!(
                message.contains(says),
                "{what}: {code:?} as expected, but the message does not say {says:?}: {message}"
            );
            eprintln!("    {what}: {code:?} ({message})");
            Ok(())
        }
        other => anyhow::bail!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// Buys `listing_id` as `buyer` into `out` with the library's buyer;
/// checks the bytes against `original`; returns the purchase id.
async fn buy(buyer: &User, listing_id: u64, out: &Path, original: &Path) -> anyhow::Result<u64> {
    let download = buy_result(buyer, listing_id, out)
        .await?
        .with_context(|| format!("{} buying listing {listing_id}", buyer.name))?;
    anyhow::ensure!(
        download.state == DownloadState::Done && download.listing_id == listing_id,
        "the purchase of listing {listing_id} ended as {download:?}"
    );
    anyhow::ensure!(
        std::fs::read(out)? == std::fs::read(original)?,
        "{} is not a copy of {}",
        out.display(),
        original.display()
    );
    Ok(download.purchase_id)
}

/// What `Buyer::buy` of `listing_id` into `out` ends with.
async fn buy_result(
    buyer: &User,
    listing_id: u64,
    out: &Path,
) -> anyhow::Result<Result<Download, BuyError>> {
    tokio::time::timeout(
        TRANSFER,
        buyer
            .buyer()
            .buy(listing_id, Some(out.to_path_buf()), 0, &mut Silent),
    )
    .await
    .with_context(|| format!("buying listing {listing_id} took over {TRANSFER:?}"))
}

/// A sale as its buyer holds it: the listing's plaintext leaves, every
/// ciphertext chunk, and the ciphertext root they add up to. Whatever
/// evidence a buyer can make comes from this.
struct Received {
    plain_leaves: Vec<Hash>,
    ciphertexts: Vec<Vec<u8>>,
    root: Hash,
}

impl Received {
    fn new(plain_leaves: Vec<Hash>, ciphertexts: Vec<Vec<u8>>) -> anyhow::Result<Self> {
        let leaves: Vec<Hash> = ciphertexts
            .iter()
            .map(|c| escrow::ciphertext_leaf(c))
            .collect();
        let root = merkle::root(&leaves).context("no chunks")?;
        Ok(Self {
            plain_leaves,
            ciphertexts,
            root,
        })
    }

    fn ciphertext_leaves(&self) -> Vec<Hash> {
        self.ciphertexts
            .iter()
            .map(|c| escrow::ciphertext_leaf(c))
            .collect()
    }

    /// The encoded evidence about chunk `index`.
    fn evidence(&self, index: u64) -> anyhow::Result<Vec<u8>> {
        let chunk = self
            .ciphertexts
            .get(usize::try_from(index)?)
            .with_context(|| format!("no chunk {index}"))?
            .clone();
        let evidence =
            dispute::evidence(index, chunk, &self.ciphertext_leaves(), &self.plain_leaves)
                .with_context(|| format!("no evidence can be made about chunk {index}"))?;
        Ok(dispute::encode(&evidence))
    }

    /// The chunks that do not decrypt under `key` to the listing's leaf:
    /// what the buyer would dispute.
    fn bad_chunks(&self, key: &EscrowKey, purchase_id: u64) -> Vec<u64> {
        let cipher = ChunkCipher::new(key, purchase_id);
        let mut bad = Vec::new();
        for (index, chunk) in self.ciphertexts.iter().enumerate() {
            let mut plain = chunk.clone();
            let good = cipher.decrypt_in_place(index as u64, &mut plain).is_ok()
                && self.plain_leaves.get(index) == Some(&merkle::leaf_hash(&plain));
            if !good {
                bad.push(index as u64);
            }
        }
        bad
    }
}

/// The file at `path` as an honest seller sends it for `purchase_id` under
/// `key`: what a buyer of a good purchase held before its files were
/// cleaned up.
fn sealed_copy(path: &Path, purchase_id: u64, key: &EscrowKey) -> anyhow::Result<Received> {
    let cipher = ChunkCipher::new(key, purchase_id);
    let bytes = std::fs::read(path)?;
    let mut plain_leaves = Vec::new();
    let mut ciphertexts = Vec::new();
    for (index, plain) in bytes.chunks(CHUNK as usize).enumerate() {
        plain_leaves.push(merkle::leaf_hash(plain));
        let mut chunk = plain.to_vec();
        cipher.encrypt_in_place(index as u64, &mut chunk);
        ciphertexts.push(chunk);
    }
    Received::new(plain_leaves, ciphertexts)
}

/// What `store`'s download of `purchase_id` (a file of `size` bytes) kept
/// on disk: the ciphertext at fixed offsets, the plaintext leaves; the
/// stored ciphertext leaves must be those of the stored chunks.
fn kept_download(store: &PeerStore, purchase_id: u64, size: u64) -> anyhow::Result<Received> {
    let dir = store.downloads_dir();
    let read = |ext: &str| -> anyhow::Result<Vec<u8>> {
        let path = dir.join(format!("{purchase_id}.{ext}"));
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let hashes = |bytes: Vec<u8>| -> Vec<Hash> {
        bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect()
    };
    let part = read("part")?;
    let stride = escrow::ciphertext_len(CHUNK as usize);
    let mut ciphertexts = Vec::new();
    for index in 0..merkle::chunk_count(size, CHUNK) {
        let len = escrow::ciphertext_len(escrow::plain_chunk_len(size, CHUNK, index));
        let at = usize::try_from(index)? * stride;
        ciphertexts.push(
            part.get(at..at + len)
                .with_context(|| format!("the part file lacks chunk {index}"))?
                .to_vec(),
        );
    }
    let kept = Received::new(hashes(read("manifest")?), ciphertexts)?;
    anyhow::ensure!(
        hashes(read("leaves")?) == kept.ciphertext_leaves(),
        "the kept ciphertext leaves are not those of the kept chunks"
    );
    Ok(kept)
}

/// Fetches everything the seller sends for the purchase `opened` of
/// `listing_id`, as `buyer`, over the seller's peer TLS: the manifest's
/// leaves, every chunk, the sealed root. The seller has deposited its key
/// by the time it seals.
async fn fetch_all(
    buyer: &User,
    opened: &BeginPurchaseReply,
    listing_id: u64,
) -> anyhow::Result<Received> {
    let identity = PeerIdentity::from_signing_key(&buyer.session.identity)?;
    let seller_key: [u8; 32] = opened
        .seller_key
        .as_slice()
        .try_into()
        .context("the seller key is not 32 bytes")?;
    let config = peer_tls::client_config(&identity, seller_key)?;
    let channel = peer_tls::connect(&opened.seller_endpoint, config).await?;
    let mut seller =
        SellerServiceClient::new(channel).max_decoding_message_size(MAX_FETCH_MESSAGE_BYTES);
    let request = FetchRequest {
        ticket: opened.ticket.clone().into(),
        listing_id,
        from_chunk: 0,
    };
    let transfer = async {
        let mut stream = seller.fetch(request).await?.into_inner();
        let mut plain_leaves = Vec::new();
        let mut ciphertexts = Vec::new();
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(Part::Manifest(_)) => {}
                Some(Part::Leaves(batch)) => {
                    plain_leaves.extend(batch.leaves.chunks_exact(32).map(|c| {
                        let mut h = [0u8; 32];
                        h.copy_from_slice(c);
                        h
                    }));
                }
                Some(Part::Chunk(chunk)) => {
                    anyhow::ensure!(
                        chunk.index == ciphertexts.len() as u64,
                        "chunk {} came out of order",
                        chunk.index
                    );
                    ciphertexts.push(chunk.ciphertext.to_vec());
                }
                Some(Part::Sealed(sealed)) => {
                    let received = Received::new(plain_leaves, ciphertexts)?;
                    anyhow::ensure!(
                        sealed.ciphertext_root.as_ref() == received.root.as_slice(),
                        "the seller sealed a root that is not its chunks'"
                    );
                    return Ok(received);
                }
                None => anyhow::bail!("an empty message"),
            }
        }
        anyhow::bail!("the seller ended the stream before sealing")
    };
    tokio::time::timeout(TRANSFER, transfer)
        .await
        .with_context(|| format!("fetching listing {listing_id} took over {TRANSFER:?}"))?
}

/// A purchase of `listing_id` by `buyer` taken step by step, so that no
/// dispute is filed on its own: begin, fetch, complete. Returns the
/// purchase id, what was received and the released key. `before_payment`
/// runs between the fetch and the completion.
async fn buy_by_hand<F, Fut>(
    buyer: &User,
    listing_id: u64,
    before_payment: F,
) -> anyhow::Result<(u64, Received, EscrowKey)>
where
    F: FnOnce(u64, Received) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Received>>,
{
    let opened = purchase::begin(&buyer.client, listing_id, 0, buyer.request()).await?;
    let id = opened
        .purchase
        .as_ref()
        .context("BeginPurchase names no purchase")?
        .id;
    let received = fetch_all(buyer, &opened, listing_id).await?;
    let received = before_payment(id, received).await?;
    let completed = purchase::complete(&buyer.client, id, &received.root, buyer.request()).await?;
    let key = EscrowKey::from_slice(&completed.key)
        .map_err(|e| anyhow::anyhow!("the released key: {e}"))?;
    Ok((id, received, key))
}

/// The committed ciphertext root and the released key of `buyer`'s
/// completed purchase `id`, asked again with a new request id (the same
/// answer as the first time; nothing is charged).
async fn released_key(buyer: &User, id: u64) -> anyhow::Result<(Hash, EscrowKey)> {
    let done = purchase_of(buyer, id).await?;
    anyhow::ensure!(done.state() == PurchaseState::Completed);
    let root: Hash = done
        .ciphertext_root
        .as_slice()
        .try_into()
        .context("the completed purchase has no ciphertext root")?;
    let again = purchase::complete(&buyer.client, id, &root, buyer.request()).await?;
    let key =
        EscrowKey::from_slice(&again.key).map_err(|e| anyhow::anyhow!("the released key: {e}"))?;
    Ok((root, key))
}

/// Waits until `seller`'s proceeds of purchase `id` are released by the
/// leader's timer and the seller's money reads `expected`.
async fn wait_released(
    seller: &User,
    id: u64,
    expected: Account,
    what: &str,
) -> anyhow::Result<()> {
    wait_for(what, CONVERGE, || async {
        let p = purchase_of(seller, id).await?;
        let money = Account::of(&seller.balance().await?)?;
        Ok(if !p.proceeds_pending && money == expected {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!(
                "purchase {id} pending: {}, {}'s money {money:?}",
                p.proceeds_pending, seller.name
            ))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One story on one cluster, told in order.
async fn disputes() -> anyhow::Result<()> {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let everyone = peer_client(&cluster)?;
    everyone.set_leader_hint(leader);
    let admin = cluster.client();
    admin.set_leader_hint(leader);
    let dir: PathBuf = cluster.dir().to_path_buf();
    let mut nodes = cluster.node_ids();
    nodes.sort_by_key(|id| *id != leader);

    // --- 1. Setup: a long window, accounts, money, listings, two shops.
    ledger::set_dispute_window(&admin, LONG_WINDOW_MS, &new_request_id()).await?;
    let sam = user(&everyone, &dir, "sam").await?;
    let dan = user(&everyone, &dir, "dan").await?;
    let bea = user(&everyone, &dir, "bea").await?;
    let mal = user(&everyone, &dir, "mallory").await?;
    for buyer in [&bea, &mal] {
        ledger::deposit(&admin, &buyer.name, START, &new_request_id()).await?;
    }
    let files = dir.join("files");
    let got = dir.join("got");
    std::fs::create_dir_all(&files)?;
    std::fs::create_dir_all(&got)?;
    let goods = files.join("goods.bin");
    let fakes = files.join("fakes.bin");
    write_random_file(&goods, FILE_SIZE, 1)?;
    write_random_file(&fakes, FILE_SIZE, 2)?;
    let l_good = sam.publish_file(&goods, "Goods", PRICE, CHUNK).await?;
    let l_bad = dan
        .publish_file(&fakes, "Too good to be true", BAD_PRICE, CHUNK)
        .await?;
    let sam_shop = sam.open_shop(None).await?;
    let dan_shop = dan.open_shop(Some(BAD_CHUNK)).await?;
    let parties = Parties {
        bea: &bea,
        mal: &mal,
        sam: &sam,
        dan: &dan,
        admin: &admin,
        nodes,
    };
    let start = parties.money().await?;
    assert_eq!(
        start,
        Money {
            bea: Account::free(START),
            mal: Account::free(START),
            sam: Account::default(),
            dan: Account::default(),
            operator: start.operator,
        }
    );
    let op = start.operator;
    eprintln!(
        "[{:>5.1}s] 1. window {LONG_WINDOW_MS} ms; listings {l_good} (sam at {}), {l_bad} (dan at {})",
        elapsed(),
        sam_shop.endpoint,
        dan_shop.endpoint
    );

    // --- 2. The cheated buyer: the library disputes and gets it all back.
    let out_a = got.join("fakes-bea.bin");
    let p_a = match buy_result(&bea, l_bad, &out_a).await? {
        Err(BuyError::Refunded {
            purchase_id,
            index: BAD_CHUNK,
        }) => purchase_id,
        other => anyhow::bail!(
            "bea's purchase from dan: expected Refunded at chunk {BAD_CHUNK}, got {other:?}"
        ),
    };
    assert_eq!(
        parties.money().await?,
        start,
        "the reversed sale did not put every account back where it started"
    );
    for who in [&bea, &dan] {
        let p = purchase_of(who, p_a).await?;
        assert_eq!(p.state(), PurchaseState::Completed, "{}", who.name);
        assert!(p.refunded, "purchase {p_a} as {} is not refunded", who.name);
        assert!(!p.proceeds_pending, "{}", who.name);
        assert_eq!(
            (p.price, p.commission, p.net),
            (BAD_PRICE, fee(BAD_PRICE), net(BAD_PRICE))
        );
    }
    let bad_listing = listing(&bea, l_bad).await?;
    assert_eq!(
        (bad_listing.seller_sales, bad_listing.seller_strikes),
        (1, 1),
        "dan's reputation after one reversed sale (sales count completions, reversed or not)"
    );
    let good_listing = listing(&bea, l_good).await?;
    assert_eq!(
        (good_listing.seller_sales, good_listing.seller_strikes),
        (0, 0)
    );
    let d = bea.download(p_a).await?;
    assert!(d.disputed, "bea's download is not marked disputed: {d:?}");
    assert_eq!(d.state, DownloadState::Cancelled);
    assert!(!out_a.exists(), "a file was written from a bad purchase");
    // The refund is in the journal: dan and the operator paid bea back.
    let refunds = |who: &User| {
        let client = who.client.clone();
        async move {
            let flows = ledger::all_cash_flows(&client, 0, &["refund".to_owned()], None).await?;
            let mut amounts: Vec<i64> = flows.iter().map(|f| f.amount).collect();
            amounts.sort_unstable();
            anyhow::Ok(amounts)
        }
    };
    let (fee_a, net_a) = (
        i64::try_from(fee(BAD_PRICE))?,
        i64::try_from(net(BAD_PRICE))?,
    );
    assert_eq!(refunds(&bea).await?, vec![fee_a, net_a]);
    assert_eq!(refunds(&dan).await?, vec![-net_a]);
    wait_clean_audit(&admin, "a clean audit after the refund", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] 2. purchase {p_a} refunded after the automatic dispute; dan has a strike",
        elapsed()
    );

    // --- 3. An honest sale: the proceeds are pending; a good chunk proves
    // nothing.
    let p_b = buy(&bea, l_good, &got.join("goods-bea.bin"), &goods).await?;
    let paid_b = Money {
        bea: Account::free(START - PRICE),
        sam: Account::selling(net(PRICE), net(PRICE)),
        operator: plus(op, fee(PRICE))?,
        ..start
    };
    assert_eq!(
        parties.money().await?,
        paid_b,
        "the sale's proceeds are not pending on sam's account"
    );
    let b = purchase_of(&sam, p_b).await?;
    assert!(b.proceeds_pending && !b.refunded, "{b:?}");
    assert_eq!(
        b.dispute_until_ms,
        b.closed_ms + LONG_WINDOW_MS,
        "the window does not run from the sale"
    );
    let (root_b, key_b) = released_key(&bea, p_b).await?;
    let copy_b = sealed_copy(&goods, p_b, &key_b)?;
    assert_eq!(
        copy_b.root, root_b,
        "the rebuilt copy is not what sam committed to"
    );
    assert!(copy_b.bad_chunks(&key_b, p_b).is_empty());
    for index in 0..merkle::chunk_count(FILE_SIZE, CHUNK) {
        expect_refusal(
            bea.dispute(p_b, copy_b.evidence(index)?).await,
            Code::FailedPrecondition,
            "decrypts to exactly the listing's leaf",
            &format!("bea disputing good chunk {index} of purchase {p_b}"),
        )?;
    }
    expect_refusal(
        bea.dispute(p_b, vec![1, 2, 3]).await,
        Code::InvalidArgument,
        "does not decode",
        "evidence that does not decode",
    )?;
    assert_eq!(
        parties.money().await?,
        paid_b,
        "refused disputes moved money"
    );
    let b = purchase_of(&bea, p_b).await?;
    assert!(b.proceeds_pending && !b.refunded, "{b:?}");
    assert_eq!(listing(&bea, l_good).await?.seller_strikes, 0);
    eprintln!(
        "[{:>5.1}s] 3. purchase {p_b}: proceeds pending; disputes of good chunks refused",
        elapsed()
    );

    // --- 4. Replays and other people's purchases.
    let p_c = buy(&mal, l_good, &got.join("goods-mal.bin"), &goods).await?;
    let paid_c = Money {
        mal: Account::free(START - PRICE),
        sam: Account::selling(2 * net(PRICE), 2 * net(PRICE)),
        operator: plus(op, 2 * fee(PRICE))?,
        ..paid_b
    };
    assert_eq!(parties.money().await?, paid_c);
    expect_refusal(
        mal.dispute(p_c, copy_b.evidence(BAD_CHUNK)?).await,
        Code::FailedPrecondition,
        "not what the seller committed to",
        "mal filing the evidence of bea's purchase of the same listing",
    )?;
    // bea's proof against dan, as her download kept it: it was upheld once.
    let kept_a = kept_download(&bea.store, p_a, FILE_SIZE)?;
    assert_eq!(
        purchase_of(&bea, p_a).await?.ciphertext_root,
        kept_a.root.to_vec(),
        "the kept download is not what dan committed to"
    );
    let proof_a = kept_a.evidence(BAD_CHUNK)?;
    expect_refusal(
        bea.dispute(p_a, proof_a.clone()).await,
        Code::FailedPrecondition,
        "already refunded",
        "bea filing her upheld proof again",
    )?;
    expect_refusal(
        bea.dispute(p_b, proof_a.clone()).await,
        Code::FailedPrecondition,
        "not what the seller committed to",
        "bea filing her proof against dan on her purchase from sam",
    )?;
    expect_refusal(
        mal.dispute(p_a, proof_a.clone()).await,
        Code::PermissionDenied,
        "not yours",
        "mal filing bea's upheld proof on her purchase",
    )?;
    expect_refusal(
        bea.dispute(p_c, copy_b.evidence(BAD_CHUNK)?).await,
        Code::PermissionDenied,
        "not yours",
        "bea disputing mal's purchase",
    )?;
    expect_refusal(
        sam.dispute(p_b, copy_b.evidence(BAD_CHUNK)?).await,
        Code::PermissionDenied,
        "not yours",
        "sam disputing his own sale",
    )?;
    assert_eq!(
        parties.money().await?,
        paid_c,
        "refused disputes moved money"
    );

    // mal buys from dan step by step: nothing disputes on its own.
    let (p_e, got_e, key_e) = buy_by_hand(&mal, l_bad, |id, received| {
        let (mal, evidence) = (&mal, received.evidence(BAD_CHUNK));
        async move {
            expect_refusal(
                mal.dispute(id, evidence?).await,
                Code::FailedPrecondition,
                "not completed",
                "mal disputing before he paid",
            )?;
            Ok(received)
        }
    })
    .await?;
    assert_eq!(
        got_e.bad_chunks(&key_e, p_e),
        vec![BAD_CHUNK],
        "dan did not corrupt exactly chunk {BAD_CHUNK}"
    );
    let paid_e = Money {
        mal: Account::free(START - PRICE - BAD_PRICE),
        dan: Account::selling(net(BAD_PRICE), net(BAD_PRICE)),
        operator: plus(op, 2 * fee(PRICE) + fee(BAD_PRICE))?,
        ..paid_c
    };
    assert_eq!(parties.money().await?, paid_e);
    let proof_e = got_e.evidence(BAD_CHUNK)?;
    expect_refusal(
        mal.dispute(p_e, proof_a.clone()).await,
        Code::FailedPrecondition,
        "not what the seller committed to",
        "mal filing bea's upheld proof (same listing, same chunk) on his purchase",
    )?;
    expect_refusal(
        bea.dispute(p_e, proof_e.clone()).await,
        Code::PermissionDenied,
        "not yours",
        "bea filing mal's valid proof on his purchase",
    )?;
    assert_eq!(
        parties.money().await?,
        paid_e,
        "refused disputes moved money"
    );
    assert_eq!(listing(&mal, l_bad).await?.seller_strikes, 1);
    // mal's own proof, by hand: upheld.
    let upheld = mal.dispute(p_e, proof_e.clone()).await?;
    let e = upheld.purchase.context("Dispute names no purchase")?;
    assert!(e.refunded && !e.proceeds_pending, "{e:?}");
    let refunded_e = Money {
        mal: Account::free(START - PRICE),
        dan: Account::default(),
        operator: plus(op, 2 * fee(PRICE))?,
        ..paid_e
    };
    assert_eq!(
        parties.money().await?,
        refunded_e,
        "mal's upheld dispute did not reverse the sale exactly"
    );
    let bad_listing = listing(&mal, l_bad).await?;
    assert_eq!(
        (bad_listing.seller_sales, bad_listing.seller_strikes),
        (2, 2)
    );
    expect_refusal(
        mal.dispute(p_e, proof_e).await,
        Code::FailedPrecondition,
        "already refunded",
        "mal filing his upheld proof again",
    )?;
    assert_eq!(parties.money().await?, refunded_e, "a second refund");
    wait_clean_audit(&admin, "a clean audit after the replays", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] 4. replays and others' purchases refused; purchase {p_e} bought by hand and refunded",
        elapsed()
    );

    // --- 5. The window: released by the timer, then too late to dispute.
    ledger::set_dispute_window(&admin, SHORT_WINDOW_MS, &new_request_id()).await?;
    let p_d = buy(&mal, l_good, &got.join("goods-mal-2.bin"), &goods).await?;
    let d = purchase_of(&mal, p_d).await?;
    assert_eq!(d.dispute_until_ms, d.closed_ms + SHORT_WINDOW_MS);
    // The two older sales keep the window they were made with.
    let released_d = Money {
        mal: Account::free(START - 2 * PRICE),
        sam: Account {
            balance: 3 * net(PRICE),
            held: 2 * net(PRICE),
            pending: 2 * net(PRICE),
        },
        operator: plus(op, 3 * fee(PRICE))?,
        ..refunded_e
    };
    wait_released(
        &sam,
        p_d,
        released_d.sam,
        &format!("the timer to release purchase {p_d}'s proceeds"),
    )
    .await?;
    assert_eq!(parties.money().await?, released_d);
    for id in [p_b, p_c] {
        assert!(
            purchase_of(&sam, id).await?.proceeds_pending,
            "purchase {id} lost its window when the window changed"
        );
    }

    let (p_f, got_f, key_f) =
        buy_by_hand(&mal, l_bad, |_, received| async move { Ok(received) }).await?;
    assert_eq!(got_f.bad_chunks(&key_f, p_f), vec![BAD_CHUNK]);
    let released_f = Money {
        mal: Account::free(START - 2 * PRICE - BAD_PRICE),
        dan: Account::free(net(BAD_PRICE)),
        operator: plus(op, 3 * fee(PRICE) + fee(BAD_PRICE))?,
        ..released_d
    };
    wait_released(
        &dan,
        p_f,
        released_f.dan,
        &format!("the timer to release purchase {p_f}'s proceeds"),
    )
    .await?;
    assert_eq!(parties.money().await?, released_f);
    expect_refusal(
        mal.dispute(p_f, got_f.evidence(BAD_CHUNK)?).await,
        Code::FailedPrecondition,
        "dispute window",
        "mal filing a valid proof after the window closed",
    )?;
    assert_eq!(
        parties.money().await?,
        released_f,
        "a late dispute moved money"
    );
    let f = purchase_of(&mal, p_f).await?;
    assert!(!f.refunded && !f.proceeds_pending, "{f:?}");
    assert_eq!(listing(&mal, l_bad).await?.seller_strikes, 2);

    // No window at all: the library's own dispute comes too late.
    ledger::set_dispute_window(&admin, 0, &new_request_id()).await?;
    let out_g = got.join("fakes-bea-2.bin");
    let p_g = match buy_result(&bea, l_bad, &out_g).await? {
        Err(BuyError::DisputeRefused {
            purchase_id,
            index: BAD_CHUNK,
            reason,
            ..
        }) if reason.contains("dispute window") => purchase_id,
        other => anyhow::bail!(
            "bea's purchase from dan with no window: expected DisputeRefused naming the window, got {other:?}"
        ),
    };
    let kept_g = Money {
        bea: Account::free(START - PRICE - BAD_PRICE),
        dan: Account::free(2 * net(BAD_PRICE)),
        operator: plus(op, 3 * fee(PRICE) + 2 * fee(BAD_PRICE))?,
        ..released_f
    };
    assert_eq!(
        parties.money().await?,
        kept_g,
        "a dispute refused for the window moved money"
    );
    let g = purchase_of(&bea, p_g).await?;
    assert!(
        g.state() == PurchaseState::Completed && !g.refunded && !g.proceeds_pending,
        "{g:?}"
    );
    let d_g = bea.download(p_g).await?;
    assert!(!d_g.disputed, "{d_g:?}");
    // The refusal is final: the download is over, so buying the listing
    // again would open a new purchase instead of disputing this one again.
    assert!(d_g.dispute_refused && !d_g.state.is_live(), "{d_g:?}");
    assert!(!out_g.exists(), "a file was written from a bad purchase");
    assert_eq!(listing(&bea, l_bad).await?.seller_strikes, 2);
    eprintln!(
        "[{:>5.1}s] 5. purchases {p_d} and {p_f} released by the timer; late disputes refused ({p_f} by hand, {p_g} by the library)",
        elapsed()
    );

    // --- 6. The record, and a clean audit everywhere.
    sam_shop.close().await?;
    dan_shop.close().await?;
    let sales: BTreeMap<u64, (PurchaseState, bool)> =
        purchase::list(&dan.client, PurchaseRole::Seller, 0, linearizable())
            .await?
            .iter()
            .map(|p| (p.id, (p.state(), p.refunded)))
            .collect();
    let completed = PurchaseState::Completed;
    assert_eq!(
        sales,
        BTreeMap::from([
            (p_a, (completed, true)),
            (p_e, (completed, true)),
            (p_f, (completed, false)),
            (p_g, (completed, false)),
        ]),
        "dan's sales"
    );
    let bought: BTreeMap<u64, bool> =
        purchase::list(&bea.client, PurchaseRole::Buyer, 0, linearizable())
            .await?
            .iter()
            .map(|p| (p.id, p.refunded))
            .collect();
    assert_eq!(
        bought,
        BTreeMap::from([(p_a, true), (p_b, false), (p_g, false)]),
        "bea's purchases"
    );
    // The same record through the CLI, from the users' own data directories.
    let cluster_file = cluster.write_cluster_file()?;
    let cli = |name: &str| PeerCli::new(&cluster_file, &dir.join(format!("peer-{name}")), PASSWORD);
    let disputes = cli("bea").json(&["--json", "disputes"]).await?;
    let listed: Vec<u64> = disputes
        .as_array()
        .context("agora disputes --json is not an array")?
        .iter()
        .filter_map(|d| d["purchase_id"].as_u64())
        .collect();
    assert_eq!(listed, vec![p_a], "agora disputes for bea: {disputes}");
    let dan_sales = cli("dan").json(&["--json", "sales"]).await?;
    let refunded: Vec<u64> = dan_sales
        .as_array()
        .context("agora sales --json is not an array")?
        .iter()
        .filter(|s| s["state"] == "refunded" && s["proceeds"] == "refunded")
        .filter_map(|s| s["purchase_id"].as_u64())
        .collect();
    assert_eq!(refunded, vec![p_e, p_a], "agora sales for dan: {dan_sales}");
    let (bad_listing, good_listing) = (listing(&bea, l_bad).await?, listing(&bea, l_good).await?);
    assert_eq!(
        (bad_listing.seller_sales, bad_listing.seller_strikes),
        (4, 2)
    );
    assert_eq!(
        (good_listing.seller_sales, good_listing.seller_strikes),
        (3, 0)
    );
    assert_eq!(parties.money().await?, kept_g);
    let (index, digest) =
        wait_clean_audit(&admin, "a clean audit on all three nodes", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] 6. dan: 4 sales, 2 strikes; all three nodes clean at {index} ({digest}); done",
        elapsed()
    );
    Ok(())
}
