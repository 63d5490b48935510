//! Limits on what one buyer can take from a seller and what one request can
//! take from a node, on a three-node cluster with real peers.
//!
//! 1. **Transfers per buyer and in total** (`agora serve
//!    --max-transfers-per-buyer 2 --max-transfers 3`, here an in-process
//!    file server with those limits, real peer TLS on loopback): bea opens
//!    three concurrent streams of a 24 MiB purchase and reads none of them,
//!    so the first two stay open; exactly the third is refused at once with
//!    `RESOURCE_EXHAUSTED` and a sentence naming the per-buyer limit.
//!    Meanwhile mal buys another file through `Buyer::buy` and is served;
//!    mal's next stream is the third open one, and his one after it is
//!    refused by the total limit. While bea is at her limit, her
//!    `Buyer::buy` of a small file is refused and retries; once the test
//!    drains one of her streams it completes. Every stream that was
//!    accepted delivers the whole file: the chunks hash to the sealed
//!    ciphertext root, which is the file encrypted under the key the
//!    cluster releases. Once her streams end, a new stream is accepted.
//! 2. **Request size**: a `Put`, a `Publish` and a `Dispute` just above
//!    their services' decode limits are refused with `RESOURCE_EXHAUSTED`
//!    and a sentence naming the limit; the node answers the next call.
//! 3. **Memory under a flood**: 64 `Put`s, 64 `Publish`es and 64
//!    `Dispute`s, each just under its decode limit, sent at once to the
//!    leader; its resident memory (`VmRSS` in `/proc/PID/status`, sampled
//!    through the flood, and its high-water mark `VmHWM`) stays within
//!    [`FLOOD_RSS_BOUND_MIB`] of what it was, every call gets a definite
//!    answer (the disputes beyond the node's 8 in flight are refused with a
//!    sentence), and the node serves on.
//! 4. **The largest reply**: 80 listings of the largest size the catalogue
//!    accepts; `SellerListings` and `Search` at their largest pages stop
//!    early at their byte budget and the cursor brings the rest, each
//!    listing once; a page
//!    above the maximum is `INVALID_ARGUMENT`; `LogTail` and `Events` asked
//!    for everything return at most their maximum.
//!
//! The ledger audit is clean on every node at the end.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`100_00` is 100.00), which reads better here than thousands grouping.
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_peer::buying::Silent;
use agora_peer::local::DownloadState;
use agora_peer::peer_tls::{self, PeerIdentity};
use agora_peer::selling::MAX_FETCH_MESSAGE_BYTES;
use agora_peer::transfer_slots::TransferLimits;
use agora_peer::{ledger, new_request_id, purchase, request_id, ClusterClient};
use agora_proto::admin::admin_service_client::AdminServiceClient;
use agora_proto::admin::{EventsRequest, LogTailRequest};
use agora_proto::escrow::{self, ChunkCipher, EscrowKey};
use agora_proto::market::catalogue_service_client::CatalogueServiceClient;
use agora_proto::market::kv_service_client::KvServiceClient;
use agora_proto::market::purchase_service_client::PurchaseServiceClient;
use agora_proto::market::{
    DisputeRequest, ListingFields, PublishRequest, PutRequest, SearchRequest, SearchSort,
    SellerListingsRequest,
};
use agora_proto::merkle::{self, Hash, MerkleBuilder};
use agora_proto::peer::fetch_reply::Part;
use agora_proto::peer::seller_service_client::SellerServiceClient;
use agora_proto::peer::{FetchReply, FetchRequest};
use agora_tests::{
    peer_client, wait_clean_audit, wait_for, write_random_file, MarketUser, Probe, TestCluster,
    TestOptions,
};
use anyhow::Context as _;
use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const PASSWORD: &str = "correct horse battery staple";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Chunk size of every listing here.
const CHUNK: u32 = 64 * 1024;
/// The file whose streams are held open: bigger than what the HTTP/2
/// windows (16 MiB per connection) and the seller's pipeline (a few chunks)
/// can hold, so a stream nobody reads cannot finish by itself.
const BIG_FILE: usize = 24 * MIB;
/// The seller's limits in this test.
const LIMITS: TransferLimits = TransferLimits {
    per_buyer: 2,
    total: 3,
};
/// What each buyer starts with (cents).
const START: u64 = 100_00;
/// Longest a replicated change may take to show, or the audit to agree.
const CONVERGE: Duration = Duration::from_secs(30);
/// Longest one transfer may take on a busy machine.
const TRANSFER: Duration = Duration::from_secs(90);

// The node's decode limits (server/src/grpc/limits.rs).
/// `MAX_KV_REQUEST_BYTES`.
const KV_LIMIT: usize = 256 * KIB;
/// `MAX_CATALOGUE_REQUEST_BYTES`.
const CATALOGUE_LIMIT: usize = 256 * KIB;
/// `MAX_PURCHASE_REQUEST_BYTES`.
const PURCHASE_LIMIT: usize = 5 * MIB;
/// `MAX_LISTINGS_REPLY_BYTES` = `MAX_SEARCH_REPLY_BYTES`, and the largest
/// listing, `MAX_LISTING_BYTES`.
const REPLY_BUDGET: usize = 3 * MIB;
const LISTING_BYTES: usize = 64 * KIB;
/// `MAX_LISTINGS_PAGE`, `MAX_SEARCH_PAGE`, `MAX_LOG_LINES`, `MAX_EVENTS_PAGE`.
const MAX_LISTINGS_PAGE: u32 = 500;
const MAX_SEARCH_PAGE: u32 = 100;
const MAX_LOG_LINES: usize = 1000;
const MAX_EVENTS_PAGE: usize = 1000;

/// Requests of each kind in the flood.
const FLOOD: usize = 64;
/// How much the leader's resident memory may grow during the flood, in MiB.
/// Measured: about 43 MiB (docs/BENCHMARKS.md, "Memory under a flood of
/// the largest requests"). What the limits allow at the very worst, every
/// request in flight at once, each buffered and decoded (two copies):
/// 64 × 2 × 256 KiB of Puts, as much of Publishes, 8 × 2 × 5 MiB of
/// disputes, about 150 MiB; the bound adds room for the allocator.
const FLOOD_RSS_BOUND_MIB: u64 = 256;
/// Largest listings published for the reply test: more than one budget.
const BIG_LISTINGS: usize = 80;

async fn user(everyone: &ClusterClient, dir: &Path, name: &str) -> anyhow::Result<MarketUser> {
    MarketUser::register(everyone, dir, name, PASSWORD).await
}

/// Buys `listing_id` as `buyer` with the library's buyer (which retries a
/// seller at its limit); checks the bytes against `original`.
async fn buy(
    buyer: &MarketUser,
    listing_id: u64,
    out: &Path,
    original: &Path,
) -> anyhow::Result<()> {
    let download = tokio::time::timeout(
        TRANSFER,
        buyer
            .buyer()
            .buy(listing_id, Some(out.to_path_buf()), 0, &mut Silent),
    )
    .await
    .with_context(|| format!("buying listing {listing_id} took over {TRANSFER:?}"))?
    .with_context(|| format!("{} buying listing {listing_id}", buyer.name))?;
    anyhow::ensure!(
        download.state == DownloadState::Done,
        "the purchase of listing {listing_id} ended as {download:?}"
    );
    anyhow::ensure!(
        std::fs::read(out)? == std::fs::read(original)?,
        "{} is not a copy of {}",
        out.display(),
        original.display()
    );
    Ok(())
}

/// A peer TLS channel (one connection) to the seller, as `who`.
async fn seller_channel(
    endpoint: &str,
    who: &MarketUser,
    seller_key: [u8; 32],
) -> anyhow::Result<Channel> {
    let identity = PeerIdentity::from_signing_key(&who.session.identity)?;
    let config = peer_tls::client_config(&identity, seller_key)?;
    Ok(peer_tls::connect(endpoint, config).await?)
}

/// Opens a transfer: the stream once the seller accepted it, or its refusal.
async fn open(
    channel: &Channel,
    ticket: &[u8],
    listing_id: u64,
) -> Result<Streaming<FetchReply>, Status> {
    let mut seller = SellerServiceClient::new(channel.clone())
        .max_decoding_message_size(MAX_FETCH_MESSAGE_BYTES);
    let request = FetchRequest {
        ticket: ticket.to_vec().into(),
        listing_id,
        from_chunk: 0,
    };
    Ok(seller.fetch(request).await?.into_inner())
}

/// Fails unless `opened` is a refusal with `RESOURCE_EXHAUSTED` whose
/// sentence contains `says`.
fn expect_busy(
    opened: Result<Streaming<FetchReply>, Status>,
    says: &str,
    what: &str,
) -> anyhow::Result<()> {
    match opened {
        Err(status) if status.code() == Code::ResourceExhausted => {
            anyhow::ensure!(
                status.message().contains(says) && status.message().contains("try again"),
                "{what}: the refusal does not name the limit ({says:?}) and what to do: {:?}",
                status.message()
            );
            eprintln!("    {what}: RESOURCE_EXHAUSTED ({})", status.message());
            Ok(())
        }
        Err(status) => anyhow::bail!("{what}: expected RESOURCE_EXHAUSTED, got {status}"),
        Ok(_) => anyhow::bail!("{what}: expected RESOURCE_EXHAUSTED, the seller accepted it"),
    }
}

/// Reads a transfer to its end: every chunk in order with the right
/// length, then `Sealed`, whose ciphertext root must be the root of the
/// chunks received. Returns that root.
async fn drain(mut stream: Streaming<FetchReply>, chunk_count: u64) -> anyhow::Result<Hash> {
    let mut tree = MerkleBuilder::new();
    let mut next = 0u64;
    let read = async {
        loop {
            let message = stream
                .message()
                .await
                .context("the transfer broke")?
                .context("the transfer ended before Sealed")?;
            match message.part.context("an empty message")? {
                Part::Manifest(m) => anyhow::ensure!(m.chunk_count == chunk_count),
                Part::Leaves(_) => {}
                Part::Chunk(chunk) => {
                    anyhow::ensure!(chunk.index == next, "chunk {} out of order", chunk.index);
                    let plain = escrow::plain_chunk_len(BIG_FILE as u64, CHUNK, next);
                    anyhow::ensure!(chunk.ciphertext.len() == escrow::ciphertext_len(plain));
                    tree.push(escrow::ciphertext_leaf(&chunk.ciphertext));
                    next += 1;
                }
                Part::Sealed(sealed) => {
                    anyhow::ensure!(next == chunk_count, "sealed after {next} of {chunk_count}");
                    let root = tree.finish().context("no chunks")?;
                    anyhow::ensure!(
                        sealed.ciphertext_root.as_ref() == root.as_slice(),
                        "the chunks do not hash to the sealed root"
                    );
                    return Ok(root);
                }
            }
        }
    };
    tokio::time::timeout(TRANSFER, read)
        .await
        .context("draining a transfer took too long")?
}

/// The ciphertext root of `path` encrypted for `purchase_id` under `key`.
fn ciphertext_root(path: &Path, purchase_id: u64, key: &[u8]) -> anyhow::Result<Hash> {
    let key = EscrowKey::from_slice(key).map_err(|e| anyhow::anyhow!("the key: {e}"))?;
    let cipher = ChunkCipher::new(&key, purchase_id);
    let bytes = std::fs::read(path)?;
    let mut tree = MerkleBuilder::new();
    for (index, plain) in bytes.chunks(CHUNK as usize).enumerate() {
        let mut chunk = plain.to_vec();
        cipher.encrypt_in_place(index as u64, &mut chunk);
        tree.push(escrow::ciphertext_leaf(&chunk));
    }
    tree.finish().context("the file is empty")
}

/// A process's memory figure `field` (`VmRSS`: resident now, `VmHWM`: the
/// most it was ever resident) from `/proc/PID/status`, in KiB.
fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} line"))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    memory_kib(pid, "VmRSS")
}

/// Listing text of the largest size the catalogue accepts (four-byte
/// characters, every limit reached), distinct by `n`.
fn largest_fields(n: usize) -> ListingFields {
    let wide = |count: usize| "𝄞".repeat(count);
    ListingFields {
        title: format!("{n:05} {}", wide(194)),
        description: wide(10_000),
        ..ListingFields::default()
    }
}

fn linearizable() -> agora_proto::market::ReadConsistency {
    agora_proto::market::ReadConsistency {
        min_index: 0,
        linearizable: true,
    }
}

#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() -> anyhow::Result<()> {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let everyone = peer_client(&cluster)?;
    everyone.set_leader_hint(leader);
    let admin = cluster.client();
    admin.set_leader_hint(leader);
    let dir: PathBuf = cluster.dir().to_path_buf();

    // --- Setup: a seller with limits, two buyers, three files.
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
    let (big, small, other) = (
        files.join("big.bin"),
        files.join("small.bin"),
        files.join("other.bin"),
    );
    write_random_file(&big, u64::try_from(BIG_FILE)?, 1)?;
    write_random_file(&small, u64::try_from(200 * KIB)?, 2)?;
    write_random_file(&other, u64::try_from(150 * KIB + 7)?, 3)?;
    let l_big = sam.publish_file(&big, "Big", 1_00, CHUNK).await?;
    let l_small = sam.publish_file(&small, "Small", 50, CHUNK).await?;
    let l_other = sam.publish_file(&other, "Other", 25, CHUNK).await?;
    let shop = sam.open_shop_with(None, LIMITS).await?;
    let endpoint = shop.endpoint.clone();
    let sam_key = sam.session.identity.verifying_key().to_bytes();
    let chunk_count = merkle::chunk_count(BIG_FILE as u64, CHUNK);
    eprintln!(
        "[{:>5.1}s] setup: listings {l_big} (24 MiB), {l_small}, {l_other}; seller at {endpoint} with {LIMITS:?}",
        elapsed()
    );

    // --- 1. Transfers per buyer and in total.
    let bea_big = purchase::begin(&bea.client, l_big, 0, bea.request()).await?;
    let bea_purchase = bea_big.purchase.clone().context("no purchase")?.id;
    // One connection per held stream: on a shared connection, a stream
    // nobody reads would take the whole connection window and stall the
    // other one when the test reads it.
    let bea_channel = seller_channel(&endpoint, &bea, sam_key).await?;
    let bea_channel2 = seller_channel(&endpoint, &bea, sam_key).await?;
    let s1 = open(&bea_channel, &bea_big.ticket, l_big).await?;
    let s2 = open(&bea_channel2, &bea_big.ticket, l_big).await?;
    expect_busy(
        open(&bea_channel, &bea_big.ticket, l_big).await,
        "at most 2 transfers to one buyer",
        "bea's third stream",
    )?;
    // From another connection it is the same buyer, and the same limit.
    expect_busy(
        open(&bea_channel2, &bea_big.ticket, l_big).await,
        "at most 2 transfers to one buyer",
        "bea's third stream over a second connection",
    )?;
    eprintln!(
        "[{:>5.1}s] 1. bea holds 2 streams; her third is refused",
        elapsed()
    );

    buy(&mal, l_small, &got.join("mal-small.bin"), &small).await?;
    eprintln!("[{:>5.1}s] 1. mal bought a file meanwhile", elapsed());
    let mal_big = purchase::begin(&mal.client, l_big, 0, mal.request()).await?;
    let mal_channel = seller_channel(&endpoint, &mal, sam_key).await?;
    // The seller may not have let go of mal's finished transfer yet.
    let m1 = wait_for("mal's stream to be accepted", CONVERGE, || {
        let opened = open(&mal_channel, &mal_big.ticket, l_big);
        async move {
            Ok(match opened.await {
                Ok(stream) => Probe::Ready(stream),
                Err(s) if s.code() == Code::ResourceExhausted => {
                    Probe::NotYet(s.message().to_owned())
                }
                Err(s) => anyhow::bail!("mal's stream: {s}"),
            })
        }
    })
    .await?;
    expect_busy(
        open(&mal_channel, &mal_big.ticket, l_big).await,
        "at most 3 transfers at a time",
        "mal's second stream with 3 open in all",
    )?;
    drop(m1);

    // bea at her limit buys another file: refused at first, it retries and
    // completes once the test drains one of her streams.
    let bea_out = got.join("bea-other.bin");
    let (bought, root1) = tokio::join!(buy(&bea, l_other, &bea_out, &other), async {
        wait_for("bea's purchase to begin", CONVERGE, || async {
            Ok(match bea.store.live_download_of(bea.id, l_other).await? {
                Some(_) => Probe::Ready(()),
                None => Probe::NotYet("no download yet".into()),
            })
        })
        .await?;
        drain(s1, chunk_count).await
    });
    bought.context("bea's purchase while at her limit")?;
    let root1 = root1.context("bea's first stream")?;
    let root2 = drain(s2, chunk_count)
        .await
        .context("bea's second stream")?;
    anyhow::ensure!(root1 == root2, "two streams of one purchase differ");
    eprintln!(
        "[{:>5.1}s] 1. bea's streams delivered the file; her waiting purchase completed",
        elapsed()
    );
    let s4 = wait_for("a new stream of bea's to be accepted", CONVERGE, || {
        let opened = open(&bea_channel, &bea_big.ticket, l_big);
        async move {
            Ok(match opened.await {
                Ok(stream) => Probe::Ready(stream),
                Err(s) if s.code() == Code::ResourceExhausted => {
                    Probe::NotYet(s.message().to_owned())
                }
                Err(s) => anyhow::bail!("bea's new stream: {s}"),
            })
        }
    })
    .await?;
    anyhow::ensure!(drain(s4, chunk_count).await? == root1);
    let completed = purchase::complete(&bea.client, bea_purchase, &root1, bea.request()).await?;
    anyhow::ensure!(
        ciphertext_root(&big, bea_purchase, &completed.key)? == root1,
        "the streamed ciphertext is not the file under the released key"
    );
    purchase::cancel(
        &mal.client,
        mal_big.purchase.context("no purchase")?.id,
        mal.request(),
    )
    .await?;
    shop.close().await?;
    eprintln!(
        "[{:>5.1}s] 1. a new stream was accepted; the purchase completed and verified",
        elapsed()
    );

    // --- 2. Requests above the decode limits.
    let leader_channel = admin.channel(leader)?;
    let mut kv = KvServiceClient::new(leader_channel.clone());
    let put = |bytes: usize| PutRequest {
        key: "limits".into(),
        value: vec![7; bytes],
        request_id: Some(request_id("limits")),
    };
    let too_big = kv.put(put(KV_LIMIT)).await;
    expect_too_large(too_big.map(|_| ()), KV_LIMIT, "a Put over the limit")?;
    let sam_catalogue = || CatalogueServiceClient::new(leader_channel.clone());
    let huge_publish = |n: usize, description_bytes: usize| PublishRequest {
        request_id: Some(sam.request()),
        fields: Some(ListingFields {
            title: format!("huge {n}"),
            description: "x".repeat(description_bytes),
            ..ListingFields::default()
        }),
        size: 1 << 20,
        chunk_size: CHUNK,
        merkle_root: vec![1; 32],
        price: 0,
    };
    let too_big = sam_catalogue()
        .publish(sam.client.authorize(huge_publish(0, CATALOGUE_LIMIT)))
        .await;
    expect_too_large(
        too_big.map(|_| ()),
        CATALOGUE_LIMIT,
        "a Publish over the limit",
    )?;
    let dispute = |bytes: usize| DisputeRequest {
        request_id: Some(bea.request()),
        purchase_id: bea_purchase,
        evidence: vec![9; bytes],
    };
    let too_big = PurchaseServiceClient::new(leader_channel.clone())
        .dispute(bea.client.authorize(dispute(PURCHASE_LIMIT)))
        .await;
    expect_too_large(
        too_big.map(|_| ()),
        PURCHASE_LIMIT,
        "a Dispute over the limit",
    )?;
    kv.put(put(1024))
        .await
        .context("the node refused a small Put after the large ones")?;
    eprintln!(
        "[{:>5.1}s] 2. requests over the limits were refused; the node serves on",
        elapsed()
    );

    // --- 3. A flood of requests just under the limits.
    let pid = cluster.node(leader)?.pid;
    let before = rss_kib(pid)?;
    let under = 2 * KIB;
    let puts: Vec<_> = (0..FLOOD)
        .map(|_| {
            let mut kv = kv.clone();
            let request = put(KV_LIMIT - under);
            async move { kv.put(request).await.map(|_| ()) }
        })
        .collect();
    let publishes = (0..FLOOD).map(|n| {
        let mut catalogue = sam_catalogue();
        let request = sam
            .client
            .authorize(huge_publish(n, CATALOGUE_LIMIT - under));
        async move { catalogue.publish(request).await.map(|_| ()) }
    });
    let disputes = (0..FLOOD).map(|_| {
        let mut purchases = PurchaseServiceClient::new(leader_channel.clone());
        let request = bea.client.authorize(dispute(PURCHASE_LIMIT - under));
        async move { purchases.dispute(request).await.map(|_| ()) }
    });
    let flood = async {
        let (a, b, c) = tokio::join!(
            futures::future::join_all(puts),
            futures::future::join_all(publishes),
            futures::future::join_all(disputes)
        );
        [a, b, c].concat()
    };
    tokio::pin!(flood);
    let mut peak = before;
    let answers = loop {
        tokio::select! {
            answers = &mut flood => break answers,
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                peak = peak.max(rss_kib(pid)?);
            }
        }
    };
    // The high-water mark catches a peak between two samples (it may also
    // be an older peak, which only makes the check stricter).
    peak = peak.max(memory_kib(pid, "VmHWM")?);
    let mut codes = std::collections::BTreeMap::new();
    for answer in &answers {
        let code = match answer {
            Ok(()) => Code::Ok,
            Err(s) => s.code(),
        };
        anyhow::ensure!(
            matches!(
                code,
                Code::InvalidArgument
                    | Code::ResourceExhausted
                    | Code::FailedPrecondition
                    | Code::PermissionDenied
            ),
            "a flooded call got no definite refusal: {answer:?}"
        );
        if let Err(s) = answer {
            anyhow::ensure!(
                code != Code::ResourceExhausted || s.message().contains("retry in a moment"),
                "a refusal without a sentence saying what to do: {s}"
            );
        }
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    // The 64 disputes' headers arrive long before 8 of their 5 MiB bodies
    // are through, so the cap on large requests in flight refuses some.
    anyhow::ensure!(
        codes.get("ResourceExhausted").copied().unwrap_or(0) > 0,
        "no dispute was refused by the cap on large requests in flight: {codes:?}"
    );
    let grew_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "[{:>5.1}s] 3. flood of {} requests: leader RSS {} MiB before, peak {} MiB (+{grew_mib} MiB); answers {codes:?}",
        elapsed(),
        answers.len(),
        before / 1024,
        peak / 1024,
    );
    anyhow::ensure!(
        grew_mib <= FLOOD_RSS_BOUND_MIB,
        "the leader's memory grew by {grew_mib} MiB under the flood, over the {FLOOD_RSS_BOUND_MIB} MiB bound"
    );
    kv.put(put(1024))
        .await
        .context("the node refused a small Put after the flood")?;

    // --- 4. The largest reply.
    let mut published: HashSet<u64> = [l_big, l_small, l_other].into();
    for batch in (0..BIG_LISTINGS).collect::<Vec<_>>().chunks(16) {
        let calls = batch.iter().map(|&n| {
            let mut catalogue = sam_catalogue();
            let request = sam.client.authorize(PublishRequest {
                request_id: Some(sam.request()),
                fields: Some(largest_fields(n)),
                size: 1 << 20,
                chunk_size: CHUNK,
                merkle_root: vec![1; 32],
                price: 0,
            });
            async move { catalogue.publish(request).await }
        });
        for reply in futures::future::join_all(calls).await {
            let listing = reply?.into_inner().listing.context("no listing")?;
            anyhow::ensure!(listing.encoded_len() <= LISTING_BYTES);
            published.insert(listing.id);
        }
    }
    let mut seen = HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let reply = sam_catalogue()
            .seller_listings(SellerListingsRequest {
                seller: sam.name.clone(),
                include_inactive: false,
                limit: MAX_LISTINGS_PAGE,
                cursor: cursor.clone(),
                consistency: Some(linearizable()),
            })
            .await?
            .into_inner();
        let bytes = reply.encoded_len();
        anyhow::ensure!(
            bytes <= REPLY_BUDGET + LISTING_BYTES,
            "a SellerListings page is {bytes} bytes"
        );
        pages += 1;
        for l in &reply.listings {
            anyhow::ensure!(seen.insert(l.id), "listing {} came twice", l.id);
        }
        eprintln!(
            "    SellerListings page {pages}: {} listings, {bytes} bytes",
            reply.listings.len()
        );
        if reply.next_cursor.is_empty() {
            break;
        }
        cursor = reply.next_cursor;
    }
    anyhow::ensure!(pages >= 2, "the largest listings fit one page");
    anyhow::ensure!(
        seen == published,
        "the pages did not bring every listing once"
    );
    // Search pages stop at their byte budget too, and the cursor goes on.
    let mut found = HashSet::new();
    let mut cursor = String::new();
    let mut search_pages = 0;
    loop {
        let reply = sam_catalogue()
            .search(SearchRequest {
                seller: sam.name.clone(),
                sort: SearchSort::Newest.into(),
                limit: MAX_SEARCH_PAGE,
                cursor: cursor.clone(),
                consistency: Some(linearizable()),
                ..SearchRequest::default()
            })
            .await?
            .into_inner();
        let bytes = reply.encoded_len();
        anyhow::ensure!(
            bytes <= REPLY_BUDGET + LISTING_BYTES,
            "a Search page is {bytes} bytes"
        );
        search_pages += 1;
        for r in &reply.results {
            let id = r.listing.as_ref().context("a result without a listing")?.id;
            anyhow::ensure!(found.insert(id), "listing {id} found twice");
        }
        eprintln!(
            "    Search page {search_pages}: {} results, {bytes} bytes",
            reply.results.len()
        );
        if reply.next_cursor.is_empty() {
            break;
        }
        cursor = reply.next_cursor;
    }
    anyhow::ensure!(
        search_pages >= 2 && found == published,
        "the search pages did not bring every listing once"
    );
    let too_many = sam_catalogue()
        .seller_listings(SellerListingsRequest {
            seller: sam.name.clone(),
            limit: MAX_LISTINGS_PAGE + 1,
            ..SellerListingsRequest::default()
        })
        .await;
    match too_many {
        Err(s) if s.code() == Code::InvalidArgument => {}
        other => anyhow::bail!("a page above the maximum: {other:?}"),
    }
    let mut admin_api = AdminServiceClient::new(leader_channel.clone());
    let tail = admin_api
        .log_tail(LogTailRequest { lines: u32::MAX })
        .await?
        .into_inner();
    let tail_bytes: usize = tail.lines.iter().map(String::len).sum();
    anyhow::ensure!(tail.lines.len() <= MAX_LOG_LINES && tail_bytes <= MIB);
    let events = admin_api
        .events(EventsRequest {
            since_id: 0,
            limit: u32::MAX,
        })
        .await?
        .into_inner();
    anyhow::ensure!(events.events.len() <= MAX_EVENTS_PAGE);
    eprintln!(
        "[{:>5.1}s] 4. {} listings in {pages} pages; log tail {} lines, {} events",
        elapsed(),
        seen.len(),
        tail.lines.len(),
        events.events.len()
    );

    wait_clean_audit(&admin, "a clean audit on every node", CONVERGE).await?;
    eprintln!("[{:>5.1}s] audit clean on every node", elapsed());
    Ok(())
}

/// Fails unless `answer` is `RESOURCE_EXHAUSTED` with a sentence naming
/// `limit`.
fn expect_too_large(answer: Result<(), Status>, limit: usize, what: &str) -> anyhow::Result<()> {
    match answer {
        Err(s) if s.code() == Code::ResourceExhausted => {
            anyhow::ensure!(
                s.message().contains(&format!("limit of {limit} bytes"))
                    && s.message().contains("send less"),
                "{what}: the refusal does not say what to do: {:?}",
                s.message()
            );
            eprintln!("    {what}: RESOURCE_EXHAUSTED ({})", s.message());
            Ok(())
        }
        other => anyhow::bail!("{what}: expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
}
