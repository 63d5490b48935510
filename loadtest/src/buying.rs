//! The buying benchmark: purchases settled per second, end to end, with
//! the real protocol. One seller serves a small file from an in-process
//! file server (real peer TLS on loopback); `--buyers` buyers, each with
//! its own account and peer database, buy it again and again, closed loop:
//! open the purchase on the leader, fetch from the seller, the seller
//! deposits the key, complete (the money moves), decrypt, verify, write.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::latency::{new_histogram, Percentiles};
use agora_peer::buying::{Buyer, Silent};
use agora_peer::catalogue::{self, NewListing};
use agora_peer::selling::Seller;
use agora_peer::{account, ledger, presence, request_id, ClusterClient, PeerStore};
use agora_proto::market::ListingFields;
use anyhow::Context;
use clap::Args;
use rand::RngCore as _;
use serde::Serialize;
use tokio::sync::Mutex;

/// Flags of `agora-loadtest buying`.
#[derive(Debug, Args)]
pub struct BuyingArgs {
    /// The cluster file (its operator certificate makes the deposits).
    #[arg(long, env = "AGORA_CLUSTER", default_value = "agora-dev/cluster.toml")]
    cluster: PathBuf,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 32)]
    buyers: usize,
    /// Size of the file sold, in KiB.
    #[arg(long, default_value_t = 64)]
    file_kib: usize,
    /// How long to buy, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    buyers: usize,
    file_bytes: usize,
    seconds: f64,
    purchases: u64,
    errors: u64,
    purchases_per_sec: f64,
    latency_ms: Percentiles,
}

/// Runs the benchmark.
///
/// # Errors
/// When the accounts, the listing or the seller cannot be set up.
pub async fn run(args: BuyingArgs) -> anyhow::Result<()> {
    let operator = ClusterClient::load(&args.cluster)?;
    let dir = tempfile::tempdir().context("no temporary directory")?;
    let run_id = format!("buy{}", rand::random::<u32>() % 1_000_000);
    let password = b"buying load test";

    // The seller: an account, a file, a listing, an in-process file server.
    let seller_name = format!("{run_id}_seller");
    let seller_store = PeerStore::open(&dir.path().join("seller")).await?;
    let account = account::register(&operator, &seller_name, password, false).await?;
    let session = account::login_after(&operator, &seller_name, password, account.index).await?;
    seller_store.save_session(&session).await?;
    let seller_client = ClusterClient::load(&args.cluster)?.with_token(&session.token)?;
    let file = dir.path().join("goods.bin");
    let mut bytes = vec![0u8; args.file_kib.max(1) * 1024];
    rand::thread_rng().fill_bytes(&mut bytes);
    std::fs::write(&file, &bytes)?;
    let published = catalogue::publish(
        &seller_client,
        &seller_store,
        &NewListing {
            path: file,
            chunk_size: 64 * 1024,
            fields: ListingFields {
                title: "load test goods".into(),
                ..ListingFields::default()
            },
            price: 100,
        },
        request_id(format!("user:{}", session.user_id)),
        |_, _| {},
    )
    .await
    .context("publishing the file failed")?;
    let listing_id = published.listing.id;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = listener.local_addr()?.to_string();
    let seller = Seller::new(seller_client.clone(), seller_store.clone(), session.user_id).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let identity = session.identity.clone();
    let server = tokio::spawn(async move {
        let mut rx = stop_rx;
        seller
            .serve(listener, &identity, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    presence::announce(&seller_client, &endpoint).await?;

    // The buyers: accounts with money, each its own peer database.
    let mut buyers = Vec::new();
    for i in 0..args.buyers.max(1) {
        let name = format!("{run_id}_b{i}");
        let account = account::register(&operator, &name, password, false).await?;
        let session = account::login_after(&operator, &name, password, account.index).await?;
        ledger::deposit(&operator, &name, 100_000_000, &format!("{run_id}-dep-{i}")).await?;
        let store = PeerStore::open(&dir.path().join(format!("b{i}"))).await?;
        store.save_session(&session).await?;
        let client = ClusterClient::load(&args.cluster)?.with_token(&session.token)?;
        buyers.push((client, store, session));
    }

    let histogram = Arc::new(Mutex::new(new_histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (i, (client, store, session)) in buyers.into_iter().enumerate() {
        let (histogram, ok, errors) = (histogram.clone(), ok.clone(), errors.clone());
        let out_dir = dir.path().join(format!("out{i}"));
        tasks.push(tokio::spawn(async move {
            let _ = std::fs::create_dir_all(&out_dir);
            let buyer = Buyer {
                client: &client,
                store: &store,
                user_id: session.user_id,
                identity: &session.identity,
            };
            let mut n = 0u64;
            let mut first_error = true;
            while Instant::now() < end {
                n += 1;
                let out = out_dir.join(format!("{n}.bin"));
                let t = Instant::now();
                match buyer
                    .buy(listing_id, Some(out.clone()), 0, &mut Silent)
                    .await
                {
                    Ok(_) => {
                        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = histogram.lock().await.record(us.max(1));
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if first_error {
                            eprintln!("buyer {i}: {e}");
                            first_error = false;
                        }
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = std::fs::remove_file(&out);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = presence::go_offline(&seller_client).await;
    let _ = server.await;

    let purchases = ok.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let report = Report {
        buyers: args.buyers,
        file_bytes: bytes.len(),
        seconds,
        purchases,
        errors: errors.load(Ordering::Relaxed),
        purchases_per_sec: purchases as f64 / seconds,
        latency_ms: Percentiles::of(&*histogram.lock().await),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} purchases of a {} KiB file in {:.1} s by {} buyers: {:.0} purchases/s settled end to end, {} errors",
            report.purchases,
            report.file_bytes / 1024,
            report.seconds,
            report.buyers,
            report.purchases_per_sec,
            report.errors
        );
        let l = &report.latency_ms;
        println!(
            "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    Ok(())
}
