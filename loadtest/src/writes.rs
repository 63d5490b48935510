//! The raw replicated-write benchmark: `Put`s of small values to the leader
//! from many concurrent clients, closed loop (as fast as each client can) or
//! open loop (a fixed arrival rate, latency measured from each request's
//! scheduled start so a stall is not hidden).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::latency::{new_histogram, Percentiles};
use agora_peer::ClusterClient;
use agora_proto::market::kv_service_client::KvServiceClient;
use agora_proto::market::{PutRequest, RequestId};
use clap::Args;
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// HTTP/2 connections to spread the clients over.
const CONNECTIONS: usize = 4;

/// Flags of `agora-loadtest writes`.
#[derive(Debug, Args)]
pub struct WritesArgs {
    /// The cluster file.
    #[arg(long, env = "AGORA_CLUSTER", default_value = "agora-dev/cluster.toml")]
    cluster: PathBuf,
    /// Concurrent clients (requests in flight at most).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Open loop: this many requests per second in total (0: closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Send to every node in turn instead of the leader (followers forward).
    #[arg(long)]
    any_node: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    mode: String,
    clients: usize,
    seconds: f64,
    ok: u64,
    errors: u64,
    writes_per_sec: f64,
    latency_ms: Percentiles,
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// When the cluster cannot be reached.
pub async fn run(args: WritesArgs) -> anyhow::Result<()> {
    // One client per connection: each ClusterClient keeps one HTTP/2
    // channel per node.
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(ClusterClient::load(&args.cluster)?);
    }
    let targets: Vec<Channel> = if args.any_node {
        let mut all = Vec::new();
        for client in &clients {
            for id in client.node_ids() {
                all.push(client.channel(id)?);
            }
        }
        all
    } else {
        let leader = crate::cluster::leader_id(&clients[0]).await?;
        clients
            .iter()
            .map(|c| c.channel(leader))
            .collect::<Result<_, _>>()?
    };
    let value = vec![b'x'; args.value_bytes];
    let run_id = uuid::Uuid::new_v4().to_string();
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let end = started + duration;
    // Open loop: one shared schedule; each client takes the next slot.
    let interval_ns = 1_000_000_000u64.checked_div(args.rate).unwrap_or(0);

    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = KvServiceClient::new(targets[c % targets.len()].clone());
        let (value, run_id, histogram, ok, errors, seq) = (
            value.clone(),
            run_id.clone(),
            histogram.clone(),
            ok.clone(),
            errors.clone(),
            seq.clone(),
        );
        let keys = args.keys.max(1);
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram();
            loop {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let scheduled = if interval_ns > 0 {
                    let at = started + Duration::from_nanos(n * interval_ns);
                    if at >= end {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    at
                } else {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    now
                };
                let request = PutRequest {
                    request_id: Some(RequestId {
                        client: run_id.clone(),
                        id: n.to_string(),
                    }),
                    key: format!("bench-{}", n % keys),
                    value: value.clone(),
                };
                match client.put(request).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let us = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = local.record(us.max(1));
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = histogram.lock().await.add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = histogram.lock().await;
    let ok = ok.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let report = Report {
        mode: if args.rate > 0 {
            format!("open loop at {} writes/s", args.rate)
        } else {
            "closed loop".into()
        },
        clients: args.clients,
        seconds: elapsed,
        ok,
        errors: errors.load(Ordering::Relaxed),
        writes_per_sec: ok as f64 / elapsed,
        latency_ms: Percentiles::of(&h),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} clients, {:.1} s, {} ok, {} errors, {:.0} writes/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            report.mode,
            report.clients,
            report.seconds,
            report.ok,
            report.errors,
            report.writes_per_sec,
            report.latency_ms.p50,
            report.latency_ms.p90,
            report.latency_ms.p99,
            report.latency_ms.p999,
            report.latency_ms.max
        );
    }
    Ok(())
}
