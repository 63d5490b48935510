//! The rules of the buying protocol on a three-node cluster, driven
//! through the peer library rather than the `agora` command line, so that
//! the test can do what an honest peer never does: present another buyer's
//! ticket, forge or truncate one, call another party's purchase steps,
//! deposit a key for ciphertext nobody received, and complete with the
//! wrong root.
//!
//! The seller sam serves from an in-process file server (real peer TLS on
//! loopback) and keeps its presence alive; the buyers bea and mallory
//! (mal) get 50.00 each. In order, on one cluster:
//!
//! 1. **Setup**: sam publishes a 200 KiB file cut in 64 KiB chunks at
//!    2.00, a second listing, and a free one.
//! 2. **The seller checks the ticket**: bea opens a purchase; mal
//!    presenting bea's ticket over his own TLS identity is refused
//!    (`PERMISSION_DENIED`), so is bea asking for another listing with it
//!    (`PERMISSION_DENIED`); a ticket signed by a random key is
//!    `UNAUTHENTICATED`, a truncated one `INVALID_ARGUMENT`.
//! 3. **Only the parties take their steps**: mal cannot deposit a key,
//!    complete, cancel or even read bea's purchase (`PERMISSION_DENIED`);
//!    bea cannot deposit a key on her own purchase (she is not its
//!    seller), nor complete it before a key is there
//!    (`FAILED_PRECONDITION`); sam cannot cancel it (`PERMISSION_DENIED`).
//!    The purchase stays open, the money held.
//! 4. **Root mismatch**: sam deposits a key for root R; bea completing
//!    with another root is `FAILED_PRECONDITION` and moves nothing; the
//!    same deposit again is accepted, a different key is not; bea cancels
//!    and the money is available at once; the cancelled purchase takes no
//!    deposit and no completion (`FAILED_PRECONDITION`).
//! 5. **Expiry**: a purchase held for one second expires by itself (the
//!    hold is voided); afterwards the deposit, the completion and a fetch
//!    with its ticket are all `FAILED_PRECONDITION`.
//! 6. **A retry gets the same answer**: a real purchase through
//!    `Buyer::buy`; completing it again with new request ids returns the
//!    key that encrypts the file to the committed ciphertext root and
//!    charges nothing more; it cannot be cancelled; `BeginPurchase` sent
//!    twice with one request id opens one purchase and holds once, the
//!    same id with another listing is `ALREADY_EXISTS`, and the same id
//!    sent by mal opens mal's own purchase (never answers with bea's).
//! 7. **A free listing** bought through `Buyer::buy`: nothing moves.
//! 8. The ledger audit is clean on every node.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`50_00` is 50.00), which reads better here than thousands grouping.
#![allow(clippy::inconsistent_digit_grouping)]

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_peer::buying::Silent;
use agora_peer::catalogue;
use agora_peer::local::DownloadState;
use agora_peer::peer_tls::{self, PeerIdentity};
use agora_peer::selling::MAX_FETCH_MESSAGE_BYTES;
use agora_peer::{account, ledger, new_request_id, purchase, ClientError, ClusterClient};
use agora_proto::escrow::{self, ChunkCipher, EscrowKey};
use agora_proto::market::{PurchaseState, ReadConsistency};
use agora_proto::merkle::{Hash, MerkleBuilder};
use agora_proto::peer::seller_service_client::SellerServiceClient;
use agora_proto::peer::FetchRequest;
use agora_proto::ticket::{ticket_signing_key, Ticket};
use agora_tests::{
    peer_client, wait_clean_audit, wait_for, write_random_file, MarketUser, Probe, TestCluster,
    TestOptions,
};
use anyhow::Context as _;
use tonic::transport::Channel;
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const KIB: u64 = 1024;
/// Chunk size of every listing here: small files, several chunks each.
const CHUNK: u32 = 64 * 1024;
/// Price of the listing bought (cents).
const PRICE: u64 = 2_00;
/// What each buyer starts with (cents).
const START: u64 = 50_00;
/// The commission until an admin sets one (basis points).
const DEFAULT_BPS: u64 = 100;
/// Longest a replicated change may take to show, the expiry timer to end a
/// purchase, or the audit to agree.
const CONVERGE: Duration = Duration::from_secs(30);
/// Longest one real purchase of a small file may take on a busy machine.
const TRANSFER: Duration = Duration::from_secs(60);

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
async fn state_of(who: &User, id: u64) -> anyhow::Result<PurchaseState> {
    Ok(purchase::get(&who.client, id, linearizable())
        .await?
        .state())
}

/// Everybody's money at one moment (cents): what the checks compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Money {
    bea_balance: u64,
    bea_held: u64,
    mal_balance: u64,
    mal_held: u64,
    sam_balance: u64,
    sam_held: u64,
}

async fn money(bea: &User, mal: &User, sam: &User) -> anyhow::Result<Money> {
    let (b, m, s) = (
        bea.balance().await?,
        mal.balance().await?,
        sam.balance().await?,
    );
    Ok(Money {
        bea_balance: b.balance,
        bea_held: b.held,
        mal_balance: m.balance,
        mal_held: m.held,
        sam_balance: s.balance,
        sam_held: s.held,
    })
}

/// Fails unless `result` is an error with `code`.
fn expect_code<T: Debug>(
    result: Result<T, ClientError>,
    code: Code,
    what: &str,
) -> anyhow::Result<()> {
    match result {
        Err(err) if err.code() == Some(code) => Ok(()),
        other => anyhow::bail!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// A peer TLS channel to the seller at `addr`, presenting `identity` and
/// pinning `seller_key`: one per identity, reused for every fetch.
async fn seller_channel(
    addr: &str,
    identity: &PeerIdentity,
    seller_key: [u8; 32],
) -> anyhow::Result<Channel> {
    let config = peer_tls::client_config(identity, seller_key)?;
    Ok(peer_tls::connect(addr, config).await?)
}

/// Calls the seller's `Fetch` with `ticket` for `listing_id` from chunk 0:
/// `Ok(())` once the first streamed message arrives, else the status the
/// call (or the stream's first message) failed with.
async fn fetch(
    channel: &Channel,
    ticket: &[u8],
    listing_id: u64,
) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut seller = SellerServiceClient::new(channel.clone())
        .max_decoding_message_size(MAX_FETCH_MESSAGE_BYTES);
    let request = FetchRequest {
        ticket: ticket.to_vec().into(),
        listing_id,
        from_chunk: 0,
    };
    let mut stream = match seller.fetch(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    match stream.message().await {
        Ok(Some(_)) => Ok(Ok(())),
        Ok(None) => anyhow::bail!("the seller ended the stream without a message"),
        Err(status) => Ok(Err(status)),
    }
}

/// Fails unless the fetch was refused with `code`.
fn expect_refused(result: Result<(), tonic::Status>, code: Code, what: &str) -> anyhow::Result<()> {
    match result {
        Err(status) if status.code() == code => {
            eprintln!("    {what}: {code:?} ({})", status.message());
            Ok(())
        }
        Err(status) => anyhow::bail!(
            "{what}: expected {code:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(()) => anyhow::bail!("{what}: expected {code:?}, the seller started the transfer"),
    }
}

/// 32 random bytes (two random UUIDs), for a key nobody else knows.
fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed
}

/// The ciphertext Merkle root of the file at `path` encrypted for
/// `purchase_id` under `key`: what the seller commits to for that sale.
fn ciphertext_root(
    path: &Path,
    chunk_size: u32,
    purchase_id: u64,
    key: &[u8],
) -> anyhow::Result<Hash> {
    let key = EscrowKey::from_slice(key).map_err(|e| anyhow::anyhow!("the key: {e}"))?;
    let cipher = ChunkCipher::new(&key, purchase_id);
    let bytes = std::fs::read(path)?;
    let mut tree = MerkleBuilder::new();
    for (index, plain) in bytes.chunks(chunk_size as usize).enumerate() {
        let mut chunk = plain.to_vec();
        cipher.encrypt_in_place(index as u64, &mut chunk);
        tree.push(escrow::ciphertext_leaf(&chunk));
    }
    tree.finish().context("the file is empty")
}

/// Buys `listing_id` as `buyer` into `out` with the library's buyer;
/// checks the bytes against `original`; returns the purchase id.
async fn buy(buyer: &User, listing_id: u64, out: &Path, original: &Path) -> anyhow::Result<u64> {
    let download = tokio::time::timeout(
        TRANSFER,
        buyer
            .buyer()
            .buy(listing_id, Some(out.to_path_buf()), 0, &mut Silent),
    )
    .await
    .with_context(|| format!("buying listing {listing_id} took over {TRANSFER:?}"))?
    .with_context(|| format!("buying listing {listing_id}"))?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_rules() -> anyhow::Result<()> {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let everyone = peer_client(&cluster)?;
    everyone.set_leader_hint(leader);
    let admin = cluster.client();
    admin.set_leader_hint(leader);
    let dir: PathBuf = cluster.dir().to_path_buf();

    // --- 1. Setup: accounts, money, listings, the seller's file server.
    let sam = user(&everyone, &dir, "sam").await?;
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
    let other = files.join("other.bin");
    // Not a multiple of the chunk size: the last chunk is short.
    let free = files.join("free.bin");
    write_random_file(&goods, 200 * KIB, 1)?;
    write_random_file(&other, 64 * KIB, 2)?;
    write_random_file(&free, 100_000, 3)?;
    let l_goods = sam.publish_file(&goods, "Goods", PRICE, CHUNK).await?;
    let l_other = sam.publish_file(&other, "Other goods", 1_00, CHUNK).await?;
    let l_free = sam.publish_file(&free, "Free sample", 0, CHUNK).await?;

    let shop = sam.open_shop(None).await?;
    let endpoint = shop.endpoint.clone();
    let start_money = money(&bea, &mal, &sam).await?;
    assert_eq!(
        start_money,
        Money {
            bea_balance: START,
            bea_held: 0,
            mal_balance: START,
            mal_held: 0,
            sam_balance: 0,
            sam_held: 0,
        }
    );
    eprintln!(
        "[{:>5.1}s] 1. listings {l_goods}, {l_other}, {l_free}; seller serving at {endpoint}",
        elapsed()
    );

    // --- 2. The seller checks the ticket before serving anything.
    let opened = purchase::begin(&bea.client, l_goods, 0, bea.request()).await?;
    let p1 = opened
        .purchase
        .clone()
        .context("BeginPurchase names no purchase")?;
    assert_eq!(opened.seller_endpoint, endpoint);
    let sam_key = sam.session.identity.verifying_key().to_bytes();
    assert_eq!(opened.seller_key, sam_key.to_vec());
    let held = money(&bea, &mal, &sam).await?;
    assert_eq!(
        held,
        Money {
            bea_held: PRICE,
            ..start_money
        },
        "opening the purchase holds its price"
    );
    let ticket_key = purchase::ticket_key(&bea.client).await?;
    let ticket = Ticket::verify(&opened.ticket, &ticket_key)
        .map_err(|e| anyhow::anyhow!("bea's own ticket does not verify: {e}"))?;
    assert_eq!(
        (
            ticket.purchase_id,
            ticket.listing_id,
            ticket.seller_id,
            ticket.buyer_id
        ),
        (p1.id, l_goods, sam.id, bea.id)
    );
    assert_eq!(
        ticket.buyer_key,
        bea.session.identity.verifying_key().to_bytes()
    );
    let bea_tls = PeerIdentity::from_signing_key(&bea.session.identity)?;
    let mal_tls = PeerIdentity::from_signing_key(&mal.session.identity)?;
    let bea_channel = seller_channel(&endpoint, &bea_tls, sam_key).await?;
    let mal_channel = seller_channel(&endpoint, &mal_tls, sam_key).await?;
    expect_refused(
        fetch(&mal_channel, &opened.ticket, l_goods).await?,
        Code::PermissionDenied,
        "mal presenting bea's ticket",
    )?;
    expect_refused(
        fetch(&bea_channel, &opened.ticket, l_other).await?,
        Code::PermissionDenied,
        "bea's ticket for another listing",
    )?;
    let forged = ticket.sign(&ticket_signing_key(&random_seed()));
    expect_refused(
        fetch(&bea_channel, &forged, l_goods).await?,
        Code::Unauthenticated,
        "a ticket signed by another key",
    )?;
    expect_refused(
        fetch(
            &bea_channel,
            &opened.ticket[..opened.ticket.len() - 1],
            l_goods,
        )
        .await?,
        Code::InvalidArgument,
        "a truncated ticket",
    )?;
    assert_eq!(state_of(&bea, p1.id).await?, PurchaseState::Open);
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        held,
        "refused fetches moved money"
    );
    eprintln!(
        "[{:>5.1}s] 2. the seller refused every bad ticket",
        elapsed()
    );

    // --- 3. Only the parties take their steps.
    let key = [7u8; 32];
    let root = [1u8; 32];
    expect_code(
        purchase::deposit_key(&mal.client, p1.id, &key, &root, mal.request()).await,
        Code::PermissionDenied,
        "mal depositing a key on bea's purchase",
    )?;
    expect_code(
        purchase::complete(&mal.client, p1.id, &root, mal.request()).await,
        Code::PermissionDenied,
        "mal completing bea's purchase",
    )?;
    expect_code(
        purchase::cancel(&mal.client, p1.id, mal.request()).await,
        Code::PermissionDenied,
        "mal cancelling bea's purchase",
    )?;
    expect_code(
        purchase::get(&mal.client, p1.id, linearizable()).await,
        Code::PermissionDenied,
        "mal reading bea's purchase",
    )?;
    expect_code(
        purchase::deposit_key(&bea.client, p1.id, &key, &root, bea.request()).await,
        Code::PermissionDenied,
        "bea depositing a key on her own purchase",
    )?;
    expect_code(
        purchase::cancel(&sam.client, p1.id, sam.request()).await,
        Code::PermissionDenied,
        "sam cancelling bea's purchase",
    )?;
    expect_code(
        purchase::complete(&bea.client, p1.id, &root, bea.request()).await,
        Code::FailedPrecondition,
        "bea completing before any key is deposited",
    )?;
    assert_eq!(state_of(&bea, p1.id).await?, PurchaseState::Open);
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        held,
        "refused steps moved money"
    );
    eprintln!("[{:>5.1}s] 3. only the parties took their steps", elapsed());

    // --- 4. Root mismatch: nothing moves; one key per purchase.
    let deposited = purchase::deposit_key(&sam.client, p1.id, &key, &root, sam.request()).await?;
    let keyed = deposited.purchase.context("DepositKey names no purchase")?;
    assert_eq!(keyed.state(), PurchaseState::Keyed);
    assert_eq!(keyed.ciphertext_root, root.to_vec());
    expect_code(
        purchase::complete(&bea.client, p1.id, &[2u8; 32], bea.request()).await,
        Code::FailedPrecondition,
        "bea completing with another ciphertext root",
    )?;
    assert_eq!(state_of(&bea, p1.id).await?, PurchaseState::Keyed);
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        held,
        "a root mismatch moved money"
    );
    // The same deposit again (a resumed transfer) is accepted; another key
    // is not.
    purchase::deposit_key(&sam.client, p1.id, &key, &root, sam.request()).await?;
    expect_code(
        purchase::deposit_key(&sam.client, p1.id, &[8u8; 32], &root, sam.request()).await,
        Code::FailedPrecondition,
        "sam depositing a second, different key",
    )?;
    let cancelled = purchase::cancel(&bea.client, p1.id, bea.request()).await?;
    assert_eq!(
        cancelled.purchase.map(|p| p.state()),
        Some(PurchaseState::Cancelled)
    );
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        start_money,
        "cancelling gives the money back at once"
    );
    expect_code(
        purchase::deposit_key(&sam.client, p1.id, &key, &root, sam.request()).await,
        Code::FailedPrecondition,
        "sam depositing the key again on a cancelled purchase",
    )?;
    expect_code(
        purchase::complete(&bea.client, p1.id, &root, bea.request()).await,
        Code::FailedPrecondition,
        "bea completing a cancelled purchase with the committed root",
    )?;
    eprintln!(
        "[{:>5.1}s] 4. root mismatch refused; purchase {} cancelled",
        elapsed(),
        p1.id
    );

    // --- 5. Expiry: the cluster ends the purchase by itself.
    let short = purchase::begin(&bea.client, l_goods, 1, bea.request()).await?;
    let p2 = short
        .purchase
        .clone()
        .context("BeginPurchase names no purchase")?;
    let began = Instant::now();
    wait_for(
        &format!("purchase {} to expire and its hold to be voided", p2.id),
        CONVERGE,
        || async {
            let state = state_of(&bea, p2.id).await?;
            let held = bea.balance().await?.held;
            Ok(if state == PurchaseState::Expired && held == 0 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{state:?}, {held} cents held"))
            })
        },
    )
    .await?;
    eprintln!(
        "[{:>5.1}s] 5. purchase {} expired {:.1}s after it opened",
        elapsed(),
        p2.id,
        began.elapsed().as_secs_f64()
    );
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        start_money,
        "the expiry moved money"
    );
    expect_code(
        purchase::deposit_key(&sam.client, p2.id, &key, &root, sam.request()).await,
        Code::FailedPrecondition,
        "sam depositing a key on an expired purchase",
    )?;
    expect_code(
        purchase::complete(&bea.client, p2.id, &root, bea.request()).await,
        Code::FailedPrecondition,
        "bea completing an expired purchase",
    )?;
    expect_refused(
        fetch(&bea_channel, &short.ticket, l_goods).await?,
        Code::FailedPrecondition,
        "a fetch with the expired purchase's ticket",
    )?;
    // Cancelling what expired answers with the purchase as it is.
    let again = purchase::cancel(&bea.client, p2.id, bea.request()).await?;
    assert_eq!(
        again.purchase.map(|p| p.state()),
        Some(PurchaseState::Expired)
    );
    assert_eq!(state_of(&bea, p2.id).await?, PurchaseState::Expired);
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        start_money,
        "refused steps moved money"
    );

    // --- 6. A retry gets the same answer and charges once.
    let p3 = buy(&bea, l_goods, &got.join("goods.bin"), &goods).await?;
    let paid = money(&bea, &mal, &sam).await?;
    let fee = PRICE * DEFAULT_BPS / 10_000;
    assert_eq!(
        paid,
        Money {
            bea_balance: START - PRICE,
            sam_balance: PRICE - fee,
            // The proceeds stay held for the dispute window (24 h here).
            sam_held: PRICE - fee,
            ..start_money
        },
        "the purchase charged bea its price once and paid sam less the commission, held for disputes"
    );
    let done = purchase::get(&bea.client, p3, linearizable()).await?;
    assert_eq!(done.state(), PurchaseState::Completed);
    let committed: Hash = done
        .ciphertext_root
        .as_slice()
        .try_into()
        .context("the completed purchase has no ciphertext root")?;
    let first = purchase::complete(&bea.client, p3, &committed, bea.request()).await?;
    let second = purchase::complete(&bea.client, p3, &committed, bea.request()).await?;
    assert_eq!(first.key, second.key, "two retries released different keys");
    assert_eq!(
        ciphertext_root(&goods, CHUNK, p3, &first.key)?,
        committed,
        "the key released again does not encrypt the file to the committed root"
    );
    assert_eq!(
        first.purchase.map(|p| p.state()),
        Some(PurchaseState::Completed)
    );
    expect_code(
        purchase::cancel(&bea.client, p3, bea.request()).await,
        Code::FailedPrecondition,
        "bea cancelling a completed purchase",
    )?;
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        paid,
        "a retried completion charged again"
    );

    let once = bea.request();
    let begun = purchase::begin(&bea.client, l_goods, 0, once.clone()).await?;
    let retried = purchase::begin(&bea.client, l_goods, 0, once.clone()).await?;
    let (a, b) = (
        begun.purchase.context("BeginPurchase names no purchase")?,
        retried
            .purchase
            .context("BeginPurchase names no purchase")?,
    );
    assert_eq!(
        a.id, b.id,
        "a retried BeginPurchase opened a second purchase"
    );
    assert_eq!(
        begun.index, retried.index,
        "the retry answers at the first index"
    );
    assert_eq!(
        begun.ticket, retried.ticket,
        "the retry carries the same ticket"
    );
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        Money {
            bea_held: PRICE,
            ..paid
        },
        "a retried BeginPurchase held the price twice"
    );
    // The same id for another listing is refused; the same id sent by
    // another user is that user's own request: it opens mal's purchase and
    // never answers with bea's (which would hand him her ticket).
    expect_code(
        purchase::begin(&bea.client, l_other, 0, once.clone()).await,
        Code::AlreadyExists,
        "bea's request id reused for another listing",
    )?;
    let mals = purchase::begin(&mal.client, l_goods, 0, once).await?;
    let m = mals.purchase.context("BeginPurchase names no purchase")?;
    assert_ne!(
        m.id, a.id,
        "mal's request with bea's id answered with her purchase"
    );
    assert_eq!((m.buyer_id, m.listing_id), (mal.id, l_goods));
    assert_ne!(mals.ticket, begun.ticket);
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        Money {
            bea_held: PRICE,
            mal_held: PRICE,
            ..paid
        },
        "each of the two purchases holds its buyer's money once"
    );
    purchase::cancel(&bea.client, a.id, bea.request()).await?;
    purchase::cancel(&mal.client, m.id, mal.request()).await?;
    assert_eq!(money(&bea, &mal, &sam).await?, paid);
    eprintln!(
        "[{:>5.1}s] 6. purchase {p3} bought, completed again with the same key, charged once; purchase {} opened once",
        elapsed(),
        a.id
    );

    // --- 7. A free listing: bought, nothing moves.
    let p4 = buy(&bea, l_free, &got.join("free.bin"), &free).await?;
    assert_eq!(state_of(&bea, p4).await?, PurchaseState::Completed);
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        paid,
        "a free purchase moved money"
    );
    eprintln!("[{:>5.1}s] 7. free purchase {p4} moved nothing", elapsed());

    // --- 7b. Suspension: the seller's listings leave search and sale, and
    // come back when it is lifted.
    let found = |reply: &agora_proto::market::SearchReply, id: u64| {
        reply
            .results
            .iter()
            .any(|r| r.listing.as_ref().is_some_and(|l| l.id == id))
    };
    let search_goods = agora_proto::market::SearchRequest {
        text: "Goods".into(),
        consistency: Some(linearizable()),
        ..Default::default()
    };
    assert!(found(
        &catalogue::search(&everyone, &search_goods).await?,
        l_goods
    ));
    let standing = ledger::set_suspended(&admin, "sam", true, &new_request_id()).await?;
    assert!(
        standing.suspended && standing.active_listings == 0,
        "{standing:?}"
    );
    assert_eq!(
        standing.sales, 2,
        "two paid or free sales completed: {standing:?}"
    );
    assert!(
        !found(&catalogue::search(&everyone, &search_goods).await?, l_goods),
        "a suspended seller's listing is still found"
    );
    let refused = purchase::begin(&bea.client, l_goods, 0, bea.request()).await;
    assert_eq!(
        refused.as_ref().err().and_then(ClientError::code),
        Some(Code::FailedPrecondition),
        "buying from a suspended seller: {refused:?}"
    );
    account::register(&admin, "root", b"an operator's passphrase", true).await?;
    let cannot = ledger::set_suspended(&admin, "root", true, &new_request_id()).await;
    assert_eq!(
        cannot.as_ref().err().and_then(ClientError::code),
        Some(Code::FailedPrecondition),
        "suspending an admin: {cannot:?}"
    );
    let lifted = ledger::set_suspended(&admin, "sam", false, &new_request_id()).await?;
    assert!(
        !lifted.suspended && lifted.active_listings == 3,
        "{lifted:?}"
    );
    assert!(found(
        &catalogue::search(&everyone, &search_goods).await?,
        l_goods
    ));
    assert_eq!(
        money(&bea, &mal, &sam).await?,
        paid,
        "suspension moved money"
    );
    eprintln!(
        "[{:>5.1}s] 7b. suspension took sam's listings off sale and back",
        elapsed()
    );

    // --- 8. The seller stops; the audit is clean everywhere.
    shop.close().await?;
    let (index, digest) =
        wait_clean_audit(&admin, "a clean audit on all three nodes", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] 8. all three nodes clean at {index} ({digest}); done",
        elapsed()
    );
    Ok(())
}
