//! The ledger benchmark: a mix of deposits, holds and posts through the
//! admin API (operator certificate), as fast as `--clients` concurrent
//! clients can, to compare with the raw replicated-write rate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_peer::{account, ClusterClient};
use agora_proto::admin::{AdminRequestId, CloseHoldRequest, DepositRequest, OpenHoldRequest};
use anyhow::Context;
use clap::Args;
use rand::Rng;

/// Flags of `agora-loadtest ledger`.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The cluster file (its operator certificate signs the admin calls).
    #[arg(long, env = "AGORA_CLUSTER", default_value = "agora-dev/cluster.toml")]
    cluster: PathBuf,
    /// Accounts to move money between.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn rid(run: &str, n: u64) -> Option<AdminRequestId> {
    Some(AdminRequestId {
        id: format!("{run}-{n}"),
    })
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// When the cluster cannot be reached or the users cannot be registered.
pub async fn run(args: LedgerArgs) -> anyhow::Result<()> {
    let client = ClusterClient::load(&args.cluster)?;
    let run_id = format!("lg{}", rand::thread_rng().gen_range(0..1_000_000u32));
    let mut names = Vec::new();
    for i in 0..args.users.max(2) {
        let name = format!("{run_id}_{i}");
        account::register(&client, &name, b"ledger load test", false)
            .await
            .context("registering the load-test users failed")?;
        names.push(name);
    }
    let leader_id = crate::cluster::leader_id(&client).await?;
    let leader = client.channel(leader_id)?;
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let names = Arc::new(names);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (ops, errors, seq, names, run_id) = (
            ops.clone(),
            errors.clone(),
            seq.clone(),
            names.clone(),
            run_id.clone(),
        );
        let mut admin = client.admin_on(leader.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let n = seq.fetch_add(3, Ordering::Relaxed);
                let (a, b) = {
                    let mut rng = rand::thread_rng();
                    let a = rng.gen_range(0..names.len());
                    let mut b = rng.gen_range(0..names.len());
                    if a == b {
                        b = (b + 1) % names.len();
                    }
                    (a, b)
                };
                // A deposit, then a hold of part of it for another user, then
                // its post: three ledger writes.
                let deposit = admin
                    .deposit(DepositRequest {
                        request_id: rid(&run_id, n),
                        username: names[a].clone(),
                        amount: 1_000,
                    })
                    .await;
                if let Err(status) = deposit {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first error: {}", agora_peer::describe_status(&status));
                    }
                    continue;
                }
                ops.fetch_add(1, Ordering::Relaxed);
                let hold = admin
                    .open_hold(OpenHoldRequest {
                        request_id: rid(&run_id, n + 1),
                        username: names[a].clone(),
                        payee: names[b].clone(),
                        amount: 500,
                        ttl_ms: 60_000,
                    })
                    .await;
                let Ok(hold) = hold else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                ops.fetch_add(1, Ordering::Relaxed);
                let post = admin
                    .post_hold(CloseHoldRequest {
                        request_id: rid(&run_id, n + 2),
                        hold_id: hold.into_inner().hold_id,
                    })
                    .await;
                if post.is_ok() {
                    ops.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ops.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let rate = ok as f64 / elapsed;
    println!(
        "ledger: {} clients, {elapsed:.1} s, {ok} ledger writes ok (deposit / hold / post), {} errors, {rate:.0} ledger writes/s",
        args.clients,
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
