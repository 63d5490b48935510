//! The login benchmark: OPAQUE logins per second served by a cluster, spread
//! over every node. Users are registered first (or reused); then concurrent
//! clients log in as random users for a fixed time.
//!
//! The client's Argon2id stretching is the expensive half of a login, paid
//! by the client, not the cluster. To measure the servers, run this against
//! a cluster bootstrapped with cheap parameters (`agora-server dev
//! --load-test-ksf`); the report prints what one login would cost a client
//! under the cluster's real setting (OWASP) on its own line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_peer::{account, ClusterClient};
use agora_proto::auth::KsfParams;
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Mutex;

/// Flags of `agora-loadtest logins`.
#[derive(Debug, Args)]
pub struct LoginsArgs {
    /// The cluster file.
    #[arg(long, env = "AGORA_CLUSTER", default_value = "agora-dev/cluster.toml")]
    cluster: PathBuf,
    /// Accounts to log in as (registered first if missing).
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    seconds: f64,
    ok: u64,
    errors: u64,
    logins_per_sec: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    client_argon2_owasp_ms: f64,
}

const PASSWORD: &[u8] = b"load test password";

/// Runs the benchmark and prints the report.
///
/// # Errors
/// When the cluster cannot be reached or the users cannot be registered.
pub async fn run(args: LoginsArgs) -> anyhow::Result<()> {
    let client = ClusterClient::load(&args.cluster)?;
    let prefix = format!("lt{}", rand::thread_rng().gen_range(0..1_000_000u32));
    let names: Vec<String> = (0..args.users.max(1))
        .map(|i| format!("{prefix}_{i}"))
        .collect();
    for name in &names {
        match account::register(&client, name, PASSWORD, false).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
            Err(e) => return Err(e).context("registering the load-test users failed"),
        }
    }
    // Every node must know every user before logins start anywhere.
    let warm = account::login(&client, &names[names.len() - 1], PASSWORD).await;
    let _ = warm;

    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
    ));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let names = Arc::new(names);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, names, ok, errors, histogram) = (
            client.clone(),
            names.clone(),
            ok.clone(),
            errors.clone(),
            histogram.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            while Instant::now() < end {
                let name = &names[rand::thread_rng().gen_range(0..names.len())];
                let t = Instant::now();
                match account::login(&client, name, PASSWORD).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = local.as_mut() {
                            let _ = h.record(
                                u64::try_from(t.elapsed().as_micros())
                                    .unwrap_or(u64::MAX)
                                    .max(1),
                            );
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Some(h) = local {
                let _ = histogram.lock().await.add(&h);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();

    // What the real (OWASP) setting costs a client, once.
    let argon2 = KsfParams::OWASP.argon2()?;
    let mut out = [0u8; 64];
    let t = Instant::now();
    argon2
        .hash_password_into(PASSWORD, b"agora load test salt", &mut out)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let argon2_ms = t.elapsed().as_secs_f64() * 1000.0;

    let h = histogram.lock().await;
    #[allow(clippy::cast_precision_loss)]
    let report = Report {
        clients: args.clients,
        seconds: elapsed,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        logins_per_sec: ok.load(Ordering::Relaxed) as f64 / elapsed,
        latency_ms_p50: h.value_at_quantile(0.5) as f64 / 1000.0,
        latency_ms_p99: h.value_at_quantile(0.99) as f64 / 1000.0,
        client_argon2_owasp_ms: argon2_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "logins: {} clients, {:.1} s, {} ok, {} errors, {:.0} logins/s; latency ms p50 {:.2} p99 {:.2}",
            report.clients, report.seconds, report.ok, report.errors, report.logins_per_sec,
            report.latency_ms_p50, report.latency_ms_p99
        );
        println!(
            "client cost: one Argon2id stretch with the OWASP setting (19 MiB, t=2, p=1) takes {argon2_ms:.1} ms on this machine, paid by the client per login"
        );
    }
    Ok(())
}
