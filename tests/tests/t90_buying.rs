//! Buying end to end on a three-node cluster, with real `agora` peers: a
//! seller publishes files and runs `agora serve`; a buyer runs `agora buy`
//! and friends as separate processes, each with its own data directory.
//!
//! In order, on one cluster:
//!
//! 1. **A paid purchase** of a 20 MiB file (1 MiB chunks) at 12.34: the file
//!    arrives byte for byte; the buyer pays the price, the seller gets the
//!    price less the 1% commission, the operator the commission; `agora
//!    sales` and `agora downloads` say so; the audit is clean on every node.
//! 2. **Resume**: a 48 MiB purchase is cut mid-transfer by SIGKILLing the
//!    seller's `agora serve` (the buyer is held still with SIGSTOP while the
//!    test reads its progress, so the cut falls mid-file on any machine);
//!    `agora buy` fails naming the purchase; after `agora serve` restarts,
//!    `agora resume` completes it, and the seller's log shows it served only
//!    the chunks the buyer was missing.
//! 3. **Leader crash between DepositKey and CompletePurchase**: the buyer
//!    is paused (SIGSTOP) the moment the seller logs the transfer, the
//!    test waits until the purchase is KEYED, SIGKILLs the leader, and lets
//!    the buyer go on: it completes through the new leader, charged exactly
//!    once; the old leader comes back and the audit is clean on all nodes.
//! 4. **Cancel** (seller SIGKILLed, so still shown online but unreachable):
//!    `agora buy` fails with the money held; `agora cancel` returns it at
//!    once.
//! 5. **Hold expiry**: the same with `--hold-secs 2`: the cluster voids the
//!    hold by itself and the purchase reads EXPIRED; `agora resume` of it
//!    (seller back) fails and says it expired.
//! 6. **A free listing**: bought, nothing moves.
//! 7. **Seller offline** (`agora serve` ended by SIGTERM): `agora buy`
//!    fails saying the seller is offline; nothing is charged, no purchase
//!    is opened.
//!
//! Money, bytes and purchase states are asserted at once. What the
//! commands print for a person (wording of errors, local download states)
//! is collected as findings and asserted at the end, so that one run
//! reports all of them.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`100_00` is 100.00), which reads better here than thousands grouping.
#![allow(clippy::inconsistent_digit_grouping)]

use std::io::{BufWriter, Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use agora_peer::ledger;
use agora_peer::{account, new_request_id, purchase, ClusterClient};
use agora_proto::market::{BalanceReply, PurchaseRole, PurchaseState, ReadConsistency};
use agora_tests::{
    wait_clean_audit, wait_for, CliProcess, PeerCli, Pipe, Probe, TestCluster, TestOptions,
};
use anyhow::Context as _;
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";
const MIB: u64 = 1 << 20;
/// Longest a replicated change may take to show, the expiry timer to void
/// a hold, or an election to settle.
const CONVERGE: Duration = Duration::from_secs(30);
/// Longest one transfer (a buy or resume of the biggest file) may take.
const TRANSFER: Duration = Duration::from_secs(90);
/// Longest `agora serve` may take to listen and announce itself.
const SERVE_READY: Duration = Duration::from_secs(30);
/// How long the interrupted buyer runs between two looks at its progress
/// (it is paused while the test looks). Not a wait for a condition: a
/// slice of the buyer's own time, so the test sees the download part-way
/// however fast the machine is.
const STEP: Duration = Duration::from_millis(20);
/// The prices of the paid purchases that complete, in order (cents).
const PAID: [u64; 3] = [12_34, 5_00, 3_21];
/// The commission until an admin sets one (basis points).
const DEFAULT_BPS: u64 = 100;

/// A client of exactly the nodes `ids`; with the operator certificate or not.
fn client_for(cluster: &TestCluster, ids: &[u64], operator: bool) -> anyhow::Result<ClusterClient> {
    let mut tls = cluster.client_tls().clone();
    if !operator {
        tls.identity = None;
    }
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push((*id, cluster.node(*id)?.api_addr.clone()));
    }
    Ok(ClusterClient::from_parts(&tls, nodes)?)
}

/// A registered user with a library session (to read balances, journals
/// and purchases) and a command line of its own (its own data directory).
struct User {
    name: String,
    client: ClusterClient,
    cli: PeerCli,
}

async fn user(
    everyone: &ClusterClient,
    cluster_file: &Path,
    dir: &Path,
    name: &str,
) -> anyhow::Result<User> {
    let account = account::register(everyone, name, PASSWORD.as_bytes(), false).await?;
    let session = account::login_after(everyone, name, PASSWORD.as_bytes(), account.index).await?;
    let cli = PeerCli::new(cluster_file, &dir.join(format!("peer-{name}")), PASSWORD);
    cli.run(&["login", name]).await?.ok()?;
    Ok(User {
        name: account.username,
        client: everyone.clone().with_token(&session.token)?,
        cli,
    })
}

/// The user's balance, linearizable.
async fn balance(user: &User) -> anyhow::Result<BalanceReply> {
    Ok(ledger::balance(&user.client, 0, None).await?)
}

fn linearizable() -> ReadConsistency {
    ReadConsistency {
        min_index: 0,
        linearizable: true,
    }
}

/// Purchase `id` as its buyer sees it, linearizable.
async fn purchase_state(buyer: &User, id: u64) -> anyhow::Result<PurchaseState> {
    Ok(purchase::get(&buyer.client, id, linearizable())
        .await?
        .state())
}

/// The operator's revenue on node `node` once it has applied `index`.
async fn operator_cents(admin: &ClusterClient, node: u64, index: u64) -> anyhow::Result<i64> {
    wait_for(
        &format!("node {node} to audit at index {index} or later"),
        CONVERGE,
        || async move {
            Ok(match ledger::audit_on(admin, node).await {
                Ok(reply) if reply.applied_index >= index => Probe::Ready(reply.operator_balance),
                Ok(reply) => Probe::NotYet(format!("applied {}", reply.applied_index)),
                Err(err) => Probe::NotYet(err.to_string()),
            })
        },
    )
    .await
}

/// Buyer, seller and operator money at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Money {
    buyer_balance: u64,
    buyer_held: u64,
    buyer_available: u64,
    seller_balance: u64,
    operator: i64,
}

/// Everybody's money, read after everything the caller saw finish
/// (linearizable balances; the operator's at their index, on `node`).
async fn money(
    buyer: &User,
    seller: &User,
    admin: &ClusterClient,
    node: u64,
) -> anyhow::Result<Money> {
    let b = balance(buyer).await?;
    let s = balance(seller).await?;
    let index = b.applied_index.max(s.applied_index);
    Ok(Money {
        buyer_balance: b.balance,
        buyer_held: b.held,
        buyer_available: b.available,
        seller_balance: s.balance,
        operator: operator_cents(admin, node, index).await?,
    })
}

/// The commission on `price` at the default rate, rounded down.
fn commission(price: u64) -> u64 {
    price * DEFAULT_BPS / 10_000
}

/// What `user`'s journal says each settled hold moved, oldest hold first;
/// checks that the journal adds up to the balance.
async fn charges(user: &User) -> anyhow::Result<Vec<i64>> {
    let entries = ledger::all_cash_flows(&user.client, 0, &[], None).await?;
    let total: i64 = entries.iter().map(|e| e.amount).sum();
    let balance = balance(user).await?;
    anyhow::ensure!(
        u64::try_from(total).ok() == Some(balance.balance),
        "{}'s journal adds up to {total} cents, the balance is {}",
        user.name,
        balance.balance
    );
    let mut holds: std::collections::BTreeMap<u64, i64> = std::collections::BTreeMap::new();
    for entry in entries.iter().filter(|e| e.hold_id != 0) {
        *holds.entry(entry.hold_id).or_default() += entry.amount;
    }
    Ok(holds.into_values().collect())
}

/// Checks that a completed sale at `price` moved exactly its money.
fn assert_sold(before: Money, after: Money, price: u64, what: &str) -> anyhow::Result<()> {
    let fee = commission(price);
    anyhow::ensure!(
        after.buyer_balance == before.buyer_balance - price
            && after.buyer_held == before.buyer_held
            && after.buyer_available == before.buyer_available - price,
        "{what}: the buyer should have paid {price} cents once: before {before:?}, after {after:?}"
    );
    anyhow::ensure!(
        after.seller_balance == before.seller_balance + price - fee,
        "{what}: the seller should have got {} cents: before {before:?}, after {after:?}",
        price - fee
    );
    anyhow::ensure!(
        after.operator - before.operator == i64::try_from(fee)?,
        "{what}: the operator should have got {fee} cents: before {before:?}, after {after:?}"
    );
    Ok(())
}

/// Writes `size` pseudo-random bytes from `seed` to `path`. A splitmix64
/// stream: reproducible from the seed, different in every chunk, and no
/// dependency of the test crate.
fn write_random_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut state = seed;
    let mut block = Vec::with_capacity(1 << 20);
    let mut left = size;
    while left > 0 {
        block.clear();
        while block.len() < block.capacity() {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            block.extend_from_slice(&z.to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64))?;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Fails unless the files at `a` and `b` hold the same bytes.
fn assert_same_file(a: &Path, b: &Path) -> anyhow::Result<()> {
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    anyhow::ensure!(
        la == lb,
        "{} has {la} bytes, {} has {lb}",
        a.display(),
        b.display()
    );
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(());
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            let at = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            anyhow::bail!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                offset + at as u64
            );
        }
        offset += n as u64;
    }
}

/// An amount a command printed: cents as a number, or a decimal string
/// like "12.34".
fn cents(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => agora_proto::amount::parse_amount(s).ok(),
        _ => None,
    }
}

fn field_u64(value: &Value, field: &str) -> anyhow::Result<u64> {
    value
        .get(field)
        .and_then(Value::as_u64)
        .with_context(|| format!("no number {field:?} in {value}"))
}

/// The entry of a JSON array whose `field` is `id`.
fn entry_with<'a>(list: &'a Value, field: &str, id: u64) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|entry| entry.get(field).and_then(Value::as_u64) == Some(id))
}

/// Whether `text` names the number `n` as a word of its own ("purchase 12"
/// names 12, "purchase 123" does not).
fn names_number(text: &str, n: u64) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|word| word.parse::<u64>().ok() == Some(n))
}

/// The purchase, first and end chunk of a seller's log line
/// `... served purchase P chunks A..B ...`.
fn served_range(line: &str) -> Option<(u64, u64, u64)> {
    let rest = &line[line.find("served purchase ")? + "served purchase ".len()..];
    let (purchase, rest) = rest.split_once(" chunks ")?;
    let range: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (first, end) = range.split_once("..")?;
    Some((
        purchase.trim().parse().ok()?,
        first.parse().ok()?,
        end.parse().ok()?,
    ))
}

/// A running `agora serve`.
struct Serving {
    process: CliProcess,
    /// How many listings it said it serves.
    listings: u64,
    /// Where it listens.
    addr: std::net::SocketAddr,
}

/// Starts `agora serve --listen LISTEN` for `seller` and waits for its
/// `serving N listing(s) at 127.0.0.1:PORT` line.
async fn serve(seller: &User, listen: &str) -> anyhow::Result<Serving> {
    let server = seller.cli.spawn(&["serve", "--listen", listen])?;
    let line = server
        .wait_for_line(
            Pipe::Stdout,
            0,
            "the `serving N listing(s) at ADDR` line",
            SERVE_READY,
            |line| line.starts_with("serving "),
        )
        .await?;
    let (count, addr) = line
        .strip_prefix("serving ")
        .and_then(|rest| rest.split_once(" listing(s) at "))
        .with_context(|| format!("agora serve said {line:?}"))?;
    let addr: std::net::SocketAddr = addr
        .trim()
        .parse()
        .with_context(|| format!("agora serve names no address: {line:?}"))?;
    anyhow::ensure!(
        addr.ip().is_loopback() && addr.port() != 0,
        "agora serve listens at {addr}"
    );
    Ok(Serving {
        listings: count.trim().parse()?,
        process: server,
        addr,
    })
}

/// Publishes `file` through `seller`'s command line; returns the listing id.
async fn publish(
    seller: &User,
    file: &Path,
    title: &str,
    price: &str,
    chunk_size: Option<u32>,
) -> anyhow::Result<u64> {
    let path = file.to_string_lossy().into_owned();
    let chunk = chunk_size.map(|c| c.to_string());
    let mut args = vec![
        "--json", "publish", &path, "--title", title, "--price", price,
    ];
    if let Some(chunk) = &chunk {
        args.extend(["--chunk-size", chunk.as_str()]);
    }
    let published = seller.cli.json(&args).await?;
    published["listing"]["id"]
        .as_u64()
        .with_context(|| format!("no listing id in {published}"))
}

/// `agora downloads --json` of `buyer`.
async fn downloads(buyer: &User) -> anyhow::Result<Value> {
    let list = buyer.cli.json(&["--json", "downloads"]).await?;
    anyhow::ensure!(list.is_array(), "agora downloads --json: {list}");
    Ok(list)
}

/// `agora sales --json` of `seller`.
async fn sales(seller: &User) -> anyhow::Result<Value> {
    let list = seller.cli.json(&["--json", "sales"]).await?;
    anyhow::ensure!(list.is_array(), "agora sales --json: {list}");
    Ok(list)
}

/// The purchase opened for `listing` in `buyer`'s downloads (the newest).
async fn purchase_of_listing(buyer: &User, listing: u64) -> anyhow::Result<(u64, Value)> {
    let list = downloads(buyer).await?;
    let entry = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d.get("listing_id").and_then(Value::as_u64) == Some(listing))
        .max_by_key(|d| d.get("purchase_id").and_then(Value::as_u64))
        .with_context(|| {
            format!("agora downloads shows no purchase of listing {listing}: {list}")
        })?;
    Ok((field_u64(entry, "purchase_id")?, entry.clone()))
}

/// Checks what `agora buy` / `agora resume` printed for a finished download.
fn check_done(
    done: &Value,
    listing: u64,
    out: &Path,
    size: u64,
    price: u64,
) -> anyhow::Result<u64> {
    let purchase = field_u64(done, "purchase_id")?;
    anyhow::ensure!(
        done["listing_id"].as_u64() == Some(listing)
            && done["size"].as_u64() == Some(size)
            && cents(&done["price"]) == Some(price)
            && done["state"] == "done"
            && done["path"].as_str().map(Path::new) == Some(out),
        "expected listing {listing}, {size} bytes at {price} cents, done, in {}: {done}",
        out.display()
    );
    Ok(purchase)
}

/// Checks that came out wrong in what the commands tell a person; asserted
/// at the end so that one run reports all of them.
#[derive(Debug, Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FINDING: {what}");
            self.0.push(what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buying_end_to_end() -> anyhow::Result<()> {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    let mut findings = Findings::default();
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let all = cluster.node_ids();
    let leader = cluster.wait_for_leader(None).await?;
    let everyone = client_for(&cluster, &all, false)?;
    everyone.set_leader_hint(leader);
    let admin = cluster.client();
    admin.set_leader_hint(leader);
    let cluster_file = cluster.write_cluster_file()?;
    let dir = cluster.dir().to_path_buf();

    let sam = user(&everyone, &cluster_file, &dir, "sam").await?;
    let bea = user(&everyone, &cluster_file, &dir, "bea").await?;
    ledger::deposit(&admin, &bea.name, 100_00, &new_request_id()).await?;
    let start_money = money(&bea, &sam, &admin, leader).await?;
    assert_eq!(
        (
            start_money.buyer_balance,
            start_money.buyer_available,
            start_money.seller_balance
        ),
        (100_00, 100_00, 0)
    );
    eprintln!("[{:>5.1}s] users ready; leader {leader}", elapsed());

    // --- The seller's files, published from its own data directory.
    let files = dir.join("files");
    let got = dir.join("got");
    std::fs::create_dir_all(&files)?;
    std::fs::create_dir_all(&got)?;
    let file = |name: &str| files.join(name);
    let out = |name: &str| got.join(name);
    // (file, size); each file's bytes come from its own seed.
    let aurora = (file("aurora.bin"), 20 * MIB);
    let glacier = (file("glacier.bin"), 48 * MIB);
    let crash = (file("crash.bin"), 4 * MIB);
    let cancel = (file("cancel.bin"), 64 * 1024);
    let expiry = (file("expiry.bin"), 64 * 1024);
    // Not a multiple of the chunk size: the last chunk is short.
    let free = (file("free.bin"), 100_000);
    let offline = (file("offline.bin"), 64 * 1024);
    for (seed, (path, size)) in [&aurora, &glacier, &crash, &cancel, &expiry, &free, &offline]
        .into_iter()
        .enumerate()
    {
        write_random_file(path, *size, seed as u64 + 1)?;
    }
    let l_aurora = publish(&sam, &aurora.0, "Aurora timelapse", "12.34", None).await?;
    let l_glacier = publish(&sam, &glacier.0, "Glacier survey", "5.00", None).await?;
    let l_crash = publish(&sam, &crash.0, "Crash course", "3.21", None).await?;
    let l_cancel = publish(&sam, &cancel.0, "Cancelled plans", "1.50", None).await?;
    let l_expiry = publish(&sam, &expiry.0, "Expiry notes", "1.00", None).await?;
    let l_free = publish(&sam, &free.0, "Free sample", "0", Some(4096)).await?;
    let l_offline = publish(&sam, &offline.0, "Offline album", "2.00", None).await?;
    eprintln!("[{:>5.1}s] 7 listings published", elapsed());

    let first = serve(&sam, "127.0.0.1:0").await?;
    assert_eq!(first.listings, 7, "agora serve serves every active listing");
    let mut serve1 = first.process;
    eprintln!("[{:>5.1}s] agora serve is up at {}", elapsed(), first.addr);

    // --- 1. A paid purchase of 20 MiB.
    let before = money(&bea, &sam, &admin, leader).await?;
    let aurora_out = out("aurora.bin");
    let aurora_out_arg = aurora_out.to_string_lossy().into_owned();
    let bought = bea
        .cli
        .json(&[
            "--json",
            "buy",
            &l_aurora.to_string(),
            "--out",
            &aurora_out_arg,
        ])
        .await?;
    let p_aurora = check_done(&bought, l_aurora, &aurora_out, aurora.1, 12_34)?;
    assert_same_file(&aurora_out, &aurora.0)?;
    let after = money(&bea, &sam, &admin, leader).await?;
    assert_sold(before, after, 12_34, "the 20 MiB purchase")?;
    assert_eq!(
        purchase_state(&bea, p_aurora).await?,
        PurchaseState::Completed
    );
    let line = serve1
        .wait_for_line(Pipe::Stderr, 0, "the log of the transfer", CONVERGE, |l| {
            served_range(l).is_some_and(|(p, _, _)| p == p_aurora)
        })
        .await?;
    assert_eq!(served_range(&line), Some((p_aurora, 0, 20)), "{line}");
    let sold = sales(&sam).await?;
    let sale = entry_with(&sold, "purchase_id", p_aurora)
        .with_context(|| format!("agora sales does not show purchase {p_aurora}: {sold}"))?;
    assert_eq!(sale["listing_id"].as_u64(), Some(l_aurora), "{sale}");
    assert_eq!(sale["buyer"], "bea", "{sale}");
    assert_eq!(cents(&sale["price"]), Some(12_34), "{sale}");
    assert_eq!(cents(&sale["commission"]), Some(12), "{sale}");
    assert_eq!(cents(&sale["net"]), Some(12_22), "{sale}");
    assert_eq!(sale["state"], "completed", "{sale}");
    assert!(sale["closed_ms"].as_u64().unwrap_or(0) > 0, "{sale}");
    let list = downloads(&bea).await?;
    let download = entry_with(&list, "purchase_id", p_aurora)
        .with_context(|| format!("agora downloads does not show purchase {p_aurora}: {list}"))?;
    assert_eq!(download["state"], "done", "{download}");
    assert_eq!(download["received_chunks"].as_u64(), Some(20), "{download}");
    assert_eq!(download["chunk_count"].as_u64(), Some(20), "{download}");
    let shown = bea.cli.json(&["--json", "balance"]).await?;
    assert_eq!(
        shown["available_cents"].as_u64(),
        Some(100_00 - 12_34),
        "{shown}"
    );
    assert_eq!(shown["held_cents"].as_u64(), Some(0), "{shown}");
    wait_clean_audit(&admin, "a clean audit after the first sale", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] 1. bought 20 MiB (purchase {p_aurora}); money and audit right",
        elapsed()
    );

    // --- 2. Resume: cut the transfer mid-file by killing the seller.
    let before = money(&bea, &sam, &admin, leader).await?;
    let glacier_out = out("glacier.bin");
    let glacier_out_arg = glacier_out.to_string_lossy().into_owned();
    let mut buy = bea.cli.spawn(&[
        "--json",
        "buy",
        &l_glacier.to_string(),
        "--out",
        &glacier_out_arg,
    ])?;
    // Let the buyer run a slice at a time and look at its progress while
    // it is paused, until it holds some chunks but not all: then the seller
    // dies while the buyer is paused, so the cut falls where the test saw
    // it (plus at most what the socket buffers and the 16 MiB flow-control
    // window held), whatever the machine's speed.
    let deadline = Instant::now() + TRANSFER;
    let (p_glacier, seen, chunk_count) = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the purchase of listing {l_glacier} did not start within {TRANSFER:?}"
        );
        buy.unpause()?;
        tokio::time::sleep(STEP).await;
        if buy.pause().is_err() || buy.try_status()?.is_some() {
            let output = buy.wait(CONVERGE).await?;
            anyhow::bail!(
                "agora buy ended before the test could interrupt it; use a bigger file: {output}"
            );
        }
        // The paused buyer may hold its database; then look again later.
        let Ok(list) = downloads(&bea).await else {
            continue;
        };
        let Some(d) = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d.get("listing_id").and_then(Value::as_u64) == Some(l_glacier))
        else {
            continue;
        };
        let received = d["received_chunks"].as_u64().unwrap_or(0);
        if received > 0 {
            break (
                field_u64(d, "purchase_id")?,
                received,
                field_u64(d, "chunk_count")?,
            );
        }
    };
    assert_eq!(chunk_count, 48, "48 MiB in 1 MiB chunks");
    anyhow::ensure!(
        seen < chunk_count,
        "the buyer had all {chunk_count} chunks at the first look; use a bigger file"
    );
    serve1.kill().await?;
    buy.unpause()?;
    let broken = buy.wait(TRANSFER).await?;
    assert!(
        !broken.success(),
        "agora buy succeeded without its seller: {broken}"
    );
    assert!(
        names_number(&broken.stderr, p_glacier),
        "agora buy's error names the purchase {p_glacier}: {broken}"
    );
    let list = downloads(&bea).await?;
    let download = entry_with(&list, "purchase_id", p_glacier)
        .with_context(|| format!("agora downloads lost purchase {p_glacier}: {list}"))?;
    let kept = field_u64(download, "received_chunks")?;
    assert_eq!(download["state"], "fetching", "{download}");
    assert!(
        (seen..chunk_count).contains(&kept),
        "the buyer saw {seen} chunks, then kept {kept} of {chunk_count}: the transfer was not cut mid-file"
    );
    let held = balance(&bea).await?;
    assert_eq!(
        (held.balance, held.held),
        (before.buyer_balance, before.buyer_held + 5_00),
        "the price stays held while the download is broken"
    );
    eprintln!(
        "[{:>5.1}s] 2. transfer of purchase {p_glacier} cut after {kept} of {chunk_count} chunks (seen {seen})",
        elapsed()
    );
    // Restarted like a seller restarts it: on a port of its own choosing,
    // which the buyer learns from the cluster (the seller's presence).
    let second = serve(&sam, "127.0.0.1:0").await?;
    let mut serve2 = second.process;
    eprintln!(
        "[{:>5.1}s] 2. agora serve restarted at {} (was {})",
        elapsed(),
        second.addr,
        first.addr
    );
    let resumed = bea
        .cli
        .json(&["--json", "resume", &p_glacier.to_string()])
        .await?;
    assert_eq!(
        check_done(&resumed, l_glacier, &glacier_out, glacier.1, 5_00)?,
        p_glacier
    );
    assert_same_file(&glacier_out, &glacier.0)?;
    let after = money(&bea, &sam, &admin, leader).await?;
    assert_sold(before, after, 5_00, "the resumed purchase")?;
    let line = serve2
        .wait_for_line(
            Pipe::Stderr,
            0,
            "the log of the resumed transfer",
            CONVERGE,
            |l| served_range(l).is_some_and(|(p, _, _)| p == p_glacier),
        )
        .await?;
    let (_, first, end) = served_range(&line).with_context(|| line.clone())?;
    assert_eq!(end, chunk_count, "{line}");
    assert!(
        first >= seen,
        "the restarted seller sent from chunk {first}; the buyer had {seen} already: {line}"
    );
    assert_eq!(
        first, kept,
        "resumed from the next missing chunk ({kept}): {line}"
    );
    let served_again = serve2
        .lines(Pipe::Stderr)
        .iter()
        .filter(|l| served_range(l).is_some_and(|(p, _, _)| p == p_glacier))
        .count();
    assert_eq!(served_again, 1, "one resumed transfer");
    eprintln!(
        "[{:>5.1}s] 2. resumed purchase {p_glacier} from chunk {first}; bytes and money right",
        elapsed()
    );

    // --- 3. SIGKILL the leader between DepositKey and CompletePurchase.
    let leader = cluster.leader_id().await?.unwrap_or(leader);
    let before = money(&bea, &sam, &admin, leader).await?;
    let crash_out = out("crash.bin");
    let crash_out_arg = crash_out.to_string_lossy().into_owned();
    let logged = serve2.line_count(Pipe::Stderr);
    let mut buy = bea.cli.spawn(&[
        "--json",
        "buy",
        &l_crash.to_string(),
        "--out",
        &crash_out_arg,
    ])?;
    // The seller logs the transfer once the last chunk is out, then
    // deposits the key; the buyer completes once it has the seal. Pausing
    // the buyer at the log line holds it before CompletePurchase.
    let line = serve2
        .wait_for_line(
            Pipe::Stderr,
            logged,
            "the log of a new transfer",
            TRANSFER,
            |l| served_range(l).is_some_and(|(p, _, _)| p > p_glacier),
        )
        .await?;
    let paused = buy.pause().is_ok();
    let (p_crash, _, _) = served_range(&line).with_context(|| line.clone())?;
    let state = wait_for(
        &format!("purchase {p_crash} to be keyed"),
        CONVERGE,
        || async {
            Ok(match purchase_state(&bea, p_crash).await? {
                state @ (PurchaseState::Keyed | PurchaseState::Completed) => Probe::Ready(state),
                state => Probe::NotYet(format!("{state:?}")),
            })
        },
    )
    .await?;
    let between = paused && state == PurchaseState::Keyed;
    cluster.kill(leader)?;
    let killed_at = Instant::now();
    if paused {
        buy.unpause()?;
    }
    let done = buy.wait(TRANSFER).await?.ok()?.json()?;
    let completed_after = killed_at.elapsed();
    assert_eq!(
        check_done(&done, l_crash, &crash_out, crash.1, 3_21)?,
        p_crash
    );
    assert_same_file(&crash_out, &crash.0)?;
    let new_leader = cluster.wait_for_leader(Some(leader)).await?;
    let after = money(&bea, &sam, &admin, new_leader).await?;
    assert_sold(before, after, 3_21, "the purchase across the leader crash")?;
    assert_eq!(
        purchase_state(&bea, p_crash).await?,
        PurchaseState::Completed
    );
    // Each purchase so far charged once: one settled hold each, for its
    // price (the seller's net and the commission as two entries).
    let settled = |buyer: bool| -> Vec<i64> {
        PAID.iter()
            .map(|p| {
                let cents = i64::try_from(if buyer { *p } else { p - commission(*p) });
                let cents = cents.unwrap_or(i64::MAX);
                if buyer {
                    -cents
                } else {
                    cents
                }
            })
            .collect()
    };
    assert_eq!(
        charges(&bea).await?,
        settled(true),
        "the buyer's settled holds"
    );
    assert_eq!(
        charges(&sam).await?,
        settled(false),
        "the seller's settled holds"
    );
    eprintln!(
        "[{:>5.1}s] 3. killed leader {leader} {} purchase {p_crash}; completed {:.1}s later through leader {new_leader}, charged once",
        elapsed(),
        if between {
            "between DepositKey and CompletePurchase of"
        } else {
            "(the window was missed: the buyer had completed already) after"
        },
        completed_after.as_secs_f64()
    );
    cluster.restart(leader).await?;
    let every_node = client_for(&cluster, &all, true)?;
    let (index, digest) = wait_clean_audit(
        &every_node,
        "a clean audit on all three nodes after the crash",
        CONVERGE,
    )
    .await?;
    eprintln!(
        "[{:>5.1}s] 3. old leader {leader} back; all nodes clean at {index} ({digest})",
        elapsed()
    );
    let admin = every_node;
    let node = new_leader;

    // --- 4. Cancel a purchase whose seller is unreachable. SIGKILL leaves
    // the seller online in the cluster until its lease lapses, so the
    // purchase opens and the fetch fails.
    serve2.kill().await?;
    let before = balance(&bea).await?;
    let cancel_out = out("cancel.bin");
    let failed = bea
        .cli
        .run(&[
            "--json",
            "buy",
            &l_cancel.to_string(),
            "--out",
            &cancel_out.to_string_lossy(),
        ])
        .await?;
    assert!(!failed.success(), "bought from a dead seller: {failed}");
    let (p_cancel, download) = purchase_of_listing(&bea, l_cancel).await?;
    assert!(
        names_number(&failed.stderr, p_cancel),
        "agora buy's error names the purchase {p_cancel}: {failed}"
    );
    findings.check(failed.stderr.contains("agora cancel"), || {
        format!("a buy whose seller is unreachable does not say how to get the money back (`agora cancel`): {failed}")
    });
    findings.check(download["state"] == "fetching", || {
        format!("a download whose seller was unreachable shows {download}, not fetching")
    });
    let held = balance(&bea).await?;
    assert_eq!(
        (held.balance, held.held, held.available),
        (before.balance, before.held + 1_50, before.available - 1_50),
        "the price is held while the seller is unreachable"
    );
    let cancelled = bea
        .cli
        .json(&["--json", "cancel", &p_cancel.to_string()])
        .await?;
    assert_eq!(
        cancelled["purchase_id"].as_u64(),
        Some(p_cancel),
        "{cancelled}"
    );
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let now = balance(&bea).await?;
    assert_eq!(
        (now.balance, now.held, now.available),
        (before.balance, before.held, before.available),
        "cancelling returns the money at once"
    );
    assert_eq!(
        purchase_state(&bea, p_cancel).await?,
        PurchaseState::Cancelled
    );
    let list = downloads(&bea).await?;
    let download = entry_with(&list, "purchase_id", p_cancel)
        .with_context(|| format!("agora downloads lost purchase {p_cancel}: {list}"))?;
    assert_eq!(download["state"], "cancelled", "{download}");
    assert!(!cancel_out.exists(), "a cancelled purchase wrote its file");
    eprintln!(
        "[{:>5.1}s] 4. purchase {p_cancel} cancelled; the money is back",
        elapsed()
    );

    // --- 5. A 2 s hold lapses by itself.
    let before = balance(&bea).await?;
    let expiry_out = out("expiry.bin");
    let failed = bea
        .cli
        .run(&[
            "--json",
            "buy",
            &l_expiry.to_string(),
            "--out",
            &expiry_out.to_string_lossy(),
            "--hold-secs",
            "2",
        ])
        .await?;
    let failed_at = Instant::now();
    assert!(!failed.success(), "bought from a dead seller: {failed}");
    let (p_expiry, _) = purchase_of_listing(&bea, l_expiry).await?;
    assert!(
        names_number(&failed.stderr, p_expiry),
        "agora buy's error names the purchase {p_expiry}: {failed}"
    );
    wait_for(
        &format!("the hold of purchase {p_expiry} to expire"),
        CONVERGE,
        || async {
            let now = balance(&bea).await?;
            let state = purchase_state(&bea, p_expiry).await?;
            Ok(
                if now.held == before.held
                    && now.available == before.available
                    && state == PurchaseState::Expired
                {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!(
                        "{state:?}, {} cents held, {} available",
                        now.held, now.available
                    ))
                },
            )
        },
    )
    .await?;
    assert_eq!(
        balance(&bea).await?.balance,
        before.balance,
        "an expired purchase charged"
    );
    eprintln!(
        "[{:>5.1}s] 5. purchase {p_expiry} expired {:.1}s after the buy gave up; the money is back",
        elapsed(),
        failed_at.elapsed().as_secs_f64()
    );

    // The seller comes back; the expired purchase cannot be resumed.
    let mut serve3 = serve(&sam, "127.0.0.1:0").await?.process;
    let late = bea
        .cli
        .run(&["--json", "resume", &p_expiry.to_string()])
        .await?;
    assert!(!late.success(), "an expired purchase was resumed: {late}");
    assert!(!expiry_out.exists(), "an expired purchase wrote its file");
    findings.check(late.stderr.contains("expired"), || {
        format!("resuming an expired purchase does not say it expired: {late}")
    });
    let list = downloads(&bea).await?;
    let download = entry_with(&list, "purchase_id", p_expiry).cloned();
    findings.check(
        download.as_ref().is_some_and(|d| d["state"] == "expired"),
        || format!("agora downloads does not show purchase {p_expiry} as expired: {download:?}"),
    );
    assert_eq!(
        balance(&bea).await?.balance,
        before.balance,
        "a late resume charged"
    );
    eprintln!(
        "[{:>5.1}s] 5. the expired purchase stays expired",
        elapsed()
    );

    // --- 6. A free listing: bought, nothing moves.
    let before = money(&bea, &sam, &admin, node).await?;
    let free_out = out("free.bin");
    let bought = bea
        .cli
        .json(&[
            "--json",
            "buy",
            &l_free.to_string(),
            "--out",
            &free_out.to_string_lossy(),
        ])
        .await?;
    let p_free = check_done(&bought, l_free, &free_out, free.1, 0)?;
    assert_same_file(&free_out, &free.0)?;
    assert_eq!(
        money(&bea, &sam, &admin, node).await?,
        before,
        "a free purchase moved money"
    );
    assert_eq!(
        purchase_state(&bea, p_free).await?,
        PurchaseState::Completed
    );
    let line = serve3
        .wait_for_line(
            Pipe::Stderr,
            0,
            "the log of the free transfer",
            CONVERGE,
            |l| served_range(l).is_some_and(|(p, _, _)| p == p_free),
        )
        .await?;
    assert_eq!(served_range(&line), Some((p_free, 0, 25)), "{line}");
    let sold = sales(&sam).await?;
    let sale = entry_with(&sold, "purchase_id", p_free)
        .with_context(|| format!("agora sales does not show purchase {p_free}: {sold}"))?;
    assert_eq!(
        (
            cents(&sale["price"]),
            cents(&sale["net"]),
            cents(&sale["commission"])
        ),
        (Some(0), Some(0), Some(0)),
        "{sale}"
    );
    eprintln!("[{:>5.1}s] 6. free purchase {p_free}", elapsed());

    // --- 7. The seller goes offline: nothing can be bought from it.
    let status = serve3.terminate(CONVERGE).await?;
    assert!(
        status.success(),
        "agora serve did not end gracefully on SIGTERM: {status}"
    );
    let before = balance(&bea).await?;
    let opened = purchase::list(&bea.client, PurchaseRole::Buyer, 0, linearizable())
        .await?
        .len();
    let offline_out = out("offline.bin");
    let refused = bea
        .cli
        .run(&[
            "--json",
            "buy",
            &l_offline.to_string(),
            "--out",
            &offline_out.to_string_lossy(),
        ])
        .await?;
    assert!(
        !refused.success(),
        "bought from an offline seller: {refused}"
    );
    assert!(
        refused.stderr.contains("offline"),
        "agora buy says the seller is offline: {refused}"
    );
    let now = balance(&bea).await?;
    assert_eq!(
        (now.balance, now.held, now.available),
        (before.balance, before.held, before.available),
        "a refused purchase moved money"
    );
    let opened_now = purchase::list(&bea.client, PurchaseRole::Buyer, 0, linearizable())
        .await?
        .len();
    assert_eq!(opened_now, opened, "a refused purchase was opened");
    let list = downloads(&bea).await?;
    assert!(
        entry_with(&list, "listing_id", l_offline).is_none(),
        "a refused purchase is in the downloads: {list}"
    );
    assert!(!offline_out.exists());
    eprintln!(
        "[{:>5.1}s] 7. an offline seller's listing is refused",
        elapsed()
    );

    // --- Everything adds up, and every node agrees.
    let end = money(&bea, &sam, &admin, node).await?;
    let paid: u64 = PAID.iter().sum();
    let fees: u64 = PAID.iter().map(|p| commission(*p)).sum();
    assert_eq!(end.buyer_balance, start_money.buyer_balance - paid);
    assert_eq!(
        (end.buyer_held, end.buyer_available),
        (0, end.buyer_balance)
    );
    assert_eq!(end.seller_balance, start_money.seller_balance + paid - fees);
    assert_eq!(end.operator - start_money.operator, i64::try_from(fees)?);
    // The cancelled, expired, free and refused purchases settled nothing.
    assert_eq!(
        charges(&bea).await?,
        settled(true),
        "the buyer's settled holds"
    );
    assert_eq!(
        charges(&sam).await?,
        settled(false),
        "the seller's settled holds"
    );
    let (index, digest) = wait_clean_audit(&admin, "a clean audit at the end", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] all three nodes clean at {index} ({digest}); done",
        elapsed()
    );
    assert!(
        findings.0.is_empty(),
        "{} finding(s) about what the commands say:\n{}",
        findings.0.len(),
        findings.0.join("\n")
    );
    Ok(())
}

/// The helpers that read what the commands print (no cluster needed).
#[test]
fn reads_log_lines_and_amounts() {
    let line = "2026-11-21T04:50:37Z  INFO agora_peer::selling: served purchase 12 chunks 3..48 of listing 2";
    assert_eq!(served_range(line), Some((12, 3, 48)));
    assert_eq!(
        served_range("served purchase 7 chunks 0..1"),
        Some((7, 0, 1))
    );
    assert_eq!(served_range("serving 7 listing(s) at 127.0.0.1:1"), None);
    assert!(names_number("purchase 12: the seller ...", 12));
    assert!(!names_number("purchase 123: the seller ...", 12));
    assert_eq!(cents(&Value::from(1234)), Some(12_34));
    assert_eq!(cents(&Value::from("12.34")), Some(12_34));
    assert_eq!(cents(&Value::Null), None);
}
