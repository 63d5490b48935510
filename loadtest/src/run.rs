//! `agora-loadtest run`: simulated users against a real cluster (named by
//! `--cluster`, or spawned with `--spawn N`), faults on a schedule, and a
//! report with a closing audit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use agora_peer::{ClusterClient, RetryPolicy};
use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use rand::Rng as _;
use serde::Serialize;

use crate::audit::{self, Audit};
use crate::faults::{Crash, Faults};
use crate::report;
use crate::sim::Market;
use crate::spawn::{server_binary, SpawnedCluster};
use crate::stats::{longest_write_gap, Op, Recorder};

/// How long after a crash the failover gap is looked for.
const GAP_WINDOW: Duration = Duration::from_secs(30);
/// How long after a crashed node is back (or writes resume) latency is
/// still counted as the crash's rather than the steady state's.
const CRASH_SETTLE: Duration = Duration::from_secs(5);
/// How long in-flight operations get to finish after the run's end.
const DRAIN: Duration = Duration::from_secs(60);
/// The client library's retries for a load test: long enough to ride out
/// an election and a restart on a loaded machine, so that a user only sees
/// an error the cluster really gave.
const LOAD_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 100,
    budget: Duration::from_secs(45),
    attempt_timeout: Duration::from_secs(5),
    read_timeout: Duration::from_secs(10),
};
/// Longest pause between two attempts of a write: short, so that writes
/// find a new leader within a fraction of a second of its election.
const LOAD_BACKOFF_CAP: Duration = Duration::from_millis(200);

/// A named set of defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Preset {
    /// The seed's demonstration: 1,600 users, a request every 10 s each,
    /// the leader SIGKILLed at the midpoint, 3 nodes.
    Seed,
    /// As many requests per second as the cluster takes with p99 under
    /// 50 ms: an open-loop ramp from 50 to 4,000 requests/s over 60 s,
    /// reads and catalogue writes (no purchases), no faults.
    Peak,
    /// 100,000 users at the seed's cadence, leader killed at the midpoint.
    #[value(name = "100k")]
    HundredK,
}

/// Flags of `agora-loadtest run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A running cluster's file (its operator certificate registers and
    /// funds the accounts).
    #[arg(long, conflicts_with = "spawn")]
    cluster: Option<PathBuf>,
    /// Start this many real nodes in a temporary directory instead (cheap
    /// Argon2id, fault injection on), and stop them at the end.
    #[arg(long)]
    spawn: Option<u64>,
    /// The agora-server binary for --spawn [default: next to this one].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Defaults for a named scenario; explicit flags still win.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Simulated users (tokio tasks).
    #[arg(long)]
    users: Option<usize>,
    /// Accounts the users act as [default: one per user, at most 5,000];
    /// users beyond that share accounts.
    #[arg(long)]
    accounts: Option<usize>,
    /// Each user's pause between requests (closed loop), e.g. 10s, 500ms.
    #[arg(long, value_parser = parse_duration)]
    think: Option<Duration>,
    /// Open loop instead: this many requests per second in total, each by
    /// a random user, however slowly the cluster answers.
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: raise the rate evenly to this by the end of the run (to
    /// find the most the cluster takes).
    #[arg(long, requires = "rate")]
    rate_to: Option<f64>,
    /// How long the load runs, e.g. 60s, 2m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Weights of the operations, e.g. search=50,balance=20,history=10,publish=5,reprice=5,buy=10.
    #[arg(long)]
    mix: Option<String>,
    /// SIGKILL the leader this long into the run (spawned) or ask it to
    /// crash (the admin Crash RPC, external cluster).
    #[arg(long, value_parser = parse_duration)]
    kill_leader_at: Option<Duration>,
    /// Start a killed node again after this long (spawned clusters).
    #[arg(long, value_parser = parse_duration)]
    restart_after: Option<Duration>,
    /// Kill a random node this often (each comes back after
    /// --restart-after, default 5s, before the next goes).
    #[arg(long, value_parser = parse_duration)]
    kill_random_every: Option<Duration>,
    /// Simulated sellers (each a real in-process peer file server).
    #[arg(long, default_value_t = 4)]
    sellers: usize,
    /// Size of the files sold, in KiB.
    #[arg(long, default_value_t = 16)]
    file_kib: usize,
    /// gRPC connections (per node) the users share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw throughput and p99 over time (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

/// The settings a run uses, after presets and defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The preset, if any.
    pub preset: Option<Preset>,
    /// Spawned nodes (0: an external cluster).
    pub spawned_nodes: u64,
    /// Simulated users.
    pub users: usize,
    /// Accounts they act as.
    pub accounts: usize,
    /// Sellers.
    pub sellers: usize,
    /// Think time, ms (closed loop).
    pub think_ms: u64,
    /// Requests per second (open loop), if any.
    pub rate: Option<f64>,
    /// The rate at the end of the run, when it ramps.
    pub rate_to: Option<f64>,
    /// Length of the load, seconds.
    pub duration_s: f64,
    /// The mix, weights by operation.
    pub mix: BTreeMap<String, u32>,
    /// Kill the leader at, ms.
    pub kill_leader_at_ms: Option<u64>,
    /// Restart a killed node after, ms.
    pub restart_after_ms: Option<u64>,
    /// Kill a random node every, ms.
    pub kill_random_every_ms: Option<u64>,
    /// Size of the files sold, bytes.
    pub file_bytes: usize,
    /// Whether the cluster was bootstrapped with cheap Argon2id parameters
    /// (spawned clusters: logins cost less than in production).
    pub argon2_lowered: bool,
}

/// Parses `10s`, `500ms`, `2m`, `1h` or plain seconds.
///
/// # Errors
/// A sentence naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (0 to 24 h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The peak preset's open-loop ramp, requests per second: from, to.
const PEAK_RAMP: (f64, f64) = (50.0, 4_000.0);
/// The latency bound of the peak: the most throughput held with every
/// second's p99 under it.
const PEAK_P99_MS: f64 = 50.0;
/// ... for this many consecutive seconds.
const PEAK_WINDOW: usize = 5;

/// The default mix: mostly reads, as a market is, with every write kind.
const DEFAULT_MIX: &str = "search=50,balance=15,history=10,publish=5,reprice=5,buy=15";

/// The peak preset's mix: the requests a market serves most, without
/// purchases (each is a sequence of calls and a transfer taking far over
/// 50 ms, measured by `agora-loadtest buying` and the seed preset).
const PEAK_MIX: &str = "search=60,balance=20,history=10,publish=5,reprice=5";

/// Parses `--mix`.
///
/// # Errors
/// A sentence naming the bad part.
pub fn parse_mix(text: &str) -> Result<Vec<(Op, u32)>, String> {
    let mut mix = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: write OP=WEIGHT, e.g. search=50"))?;
        let op = Op::ALL
            .into_iter()
            .find(|op| op.name() == name.trim())
            .ok_or_else(|| {
                format!("unknown operation {name:?}; use search, balance, history, publish, reprice, buy")
            })?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
        if weight > 0 {
            mix.push((op, weight));
        }
    }
    if mix.is_empty() {
        return Err("the mix has no operation with a weight above 0".into());
    }
    Ok(mix)
}

/// A random operation drawn from `mix`.
fn pick(mix: &[(Op, u32)]) -> Op {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut r = rand::thread_rng().gen_range(0..total.max(1));
    for (op, w) in mix {
        if r < *w {
            return *op;
        }
        r -= w;
    }
    mix[0].0
}

impl RunArgs {
    /// Presets, then defaults, under the explicit flags.
    fn settings(&self) -> anyhow::Result<(Settings, Vec<(Op, u32)>)> {
        let preset = self.preset;
        let (users, think, duration, spawn) = match preset {
            Some(Preset::Seed) => (1_600, 10_000, 120, 3),
            Some(Preset::HundredK) => (100_000, 10_000, 120, 3),
            Some(Preset::Peak) => (2_000, 0, 60, 3),
            None => (100, 1_000, 30, 0),
        };
        let users = self.users.unwrap_or(users).max(1);
        let duration = self.duration.unwrap_or(Duration::from_secs(duration));
        let kill_leader_at = self.kill_leader_at.or(match preset {
            Some(Preset::Seed | Preset::HundredK) => Some(duration / 2),
            _ => None,
        });
        let restart_after = self.restart_after.or(match preset {
            Some(Preset::Seed | Preset::HundredK) => Some(Duration::from_secs(5)),
            _ => None,
        });
        let spawned_nodes = match (&self.cluster, self.spawn) {
            (Some(_), _) => 0,
            (None, Some(n)) => n,
            (None, None) if spawn > 0 => spawn,
            (None, None) => bail!("name a cluster (--cluster DIR/cluster.toml) or --spawn 3"),
        };
        if spawned_nodes == 1 && (kill_leader_at.is_some() || self.kill_random_every.is_some()) {
            bail!("a one-node cluster cannot survive a crash; spawn 3 nodes or more");
        }
        if self
            .rate
            .into_iter()
            .chain(self.rate_to)
            .any(|r| !(r > 0.0 && r.is_finite()))
        {
            bail!("--rate must be a positive number of requests per second");
        }
        let default_mix = match preset {
            Some(Preset::Peak) => PEAK_MIX,
            _ => DEFAULT_MIX,
        };
        let mix =
            parse_mix(self.mix.as_deref().unwrap_or(default_mix)).map_err(anyhow::Error::msg)?;
        let accounts = self.accounts.unwrap_or(users.min(5_000)).clamp(1, users);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let settings = Settings {
            preset,
            spawned_nodes,
            users,
            accounts,
            sellers: self.sellers.max(1),
            think_ms: ms(self.think.unwrap_or(Duration::from_millis(think))),
            rate: self.rate.or(match preset {
                Some(Preset::Peak) => Some(PEAK_RAMP.0),
                _ => None,
            }),
            rate_to: self.rate_to.or(match preset {
                Some(Preset::Peak) if self.rate.is_none() => Some(PEAK_RAMP.1),
                _ => None,
            }),
            duration_s: duration.as_secs_f64(),
            mix: mix
                .iter()
                .map(|(op, w)| (op.name().to_owned(), *w))
                .collect(),
            kill_leader_at_ms: kill_leader_at.map(ms),
            restart_after_ms: restart_after.map(ms),
            kill_random_every_ms: self.kill_random_every.map(ms),
            file_bytes: self.file_kib.max(1) * 1024,
            argon2_lowered: spawned_nodes > 0,
        };
        Ok((settings, mix))
    }
}

/// The JSON report.
#[derive(Serialize)]
pub struct Report {
    /// What ran.
    pub settings: Settings,
    /// Seconds the load actually ran.
    pub seconds: f64,
    /// Seconds spent making accounts and sellers before the load.
    pub setup_seconds: f64,
    /// Per operation, and `all`.
    pub ops: BTreeMap<String, crate::stats::OpSummary>,
    /// Errors: what users saw and what the client library retried away.
    pub errors: ErrorReport,
    /// Every crash, with its failover gap.
    pub crashes: Vec<Crash>,
    /// The longest failover gap of any crash, ms (null without a crash).
    pub failover_gap_ms: Option<u64>,
    /// The longest time without a finished write anywhere in the run, ms.
    pub longest_write_gap_ms: u64,
    /// The most successful operations per second held for 5 seconds with
    /// every second's p99 under 50 ms (the `peak` preset's answer).
    pub peak: Option<Peak>,
    /// Latency of every operation outside the crash windows (from each
    /// crash to 5 s after its node is back, or after writes resumed).
    pub latency_outside_crashes_ms: crate::latency::Percentiles,
    /// The closing audit.
    pub audit: Audit,
    /// Per second.
    pub per_second: Vec<crate::stats::SecondSummary>,
}

/// The highest throughput held under the latency bound.
#[derive(Serialize)]
pub struct Peak {
    /// Successful operations per second, averaged over the window.
    pub ops_per_sec: f64,
    /// The window's first second.
    pub from_s: u64,
    /// Seconds in the window.
    pub window_s: usize,
    /// The p99 every second of the window stayed under, ms.
    pub p99_under_ms: f64,
}

/// The best [`PEAK_WINDOW`]-second stretch of `seconds` whose every
/// second's p99 is under [`PEAK_P99_MS`] and has no error.
#[allow(clippy::cast_precision_loss)]
fn peak(seconds: &[crate::stats::SecondSummary]) -> Option<Peak> {
    seconds
        .windows(PEAK_WINDOW)
        .filter(|w| {
            w.iter()
                .all(|s| s.p99_ms < PEAK_P99_MS && s.errors == 0 && s.ok > 0)
        })
        .map(|w| {
            let ok: u64 = w.iter().map(|s| s.ok).sum();
            (ok as f64 / PEAK_WINDOW as f64, w[0].t)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(ops_per_sec, from_s)| Peak {
            ops_per_sec,
            from_s,
            window_s: PEAK_WINDOW,
            p99_under_ms: PEAK_P99_MS,
        })
}

/// Errors by kind.
#[derive(Serialize)]
pub struct ErrorReport {
    /// Failures a user saw, `op/kind` -> count.
    pub user_visible: BTreeMap<String, u64>,
    /// Their total.
    pub user_visible_total: u64,
    /// The first message of each kind users saw.
    pub samples: BTreeMap<String, String>,
    /// Failed attempts the client library retried (the user never saw
    /// them), by kind.
    pub retried_away: BTreeMap<String, u64>,
    /// Their total.
    pub retried_away_total: u64,
}

/// Runs the load test.
///
/// # Errors
/// When the cluster cannot be started or set up; an unclean audit is
/// reported, and makes the exit status fail.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (settings, mix) = args.settings()?;
    let spawned = if settings.spawned_nodes > 0 {
        let server = server_binary(args.server_bin.as_deref())?;
        eprintln!(
            "starting {} nodes ({}) with cheap Argon2id parameters ...",
            settings.spawned_nodes,
            server.display()
        );
        let nodes = settings.spawned_nodes;
        let cluster =
            tokio::task::spawn_blocking(move || SpawnedCluster::start(&server, nodes)).await??;
        eprintln!("cluster up in {}", cluster.dir().display());
        Some(Arc::new(StdMutex::new(cluster)))
    } else {
        None
    };
    let cluster_file = match (&spawned, &args.cluster) {
        (Some(c), _) => c
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cluster_file()
            .to_path_buf(),
        (None, Some(path)) => path.clone(),
        (None, None) => bail!("name a cluster (--cluster DIR/cluster.toml) or --spawn 3"),
    };
    // Ctrl-C ends the run early; the nodes are stopped either way.
    let outcome = tokio::select! {
        result = drive(&args, settings, &mix, &cluster_file, spawned.clone()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(cluster) = spawned {
        let mut cluster = cluster.lock().unwrap_or_else(PoisonError::into_inner);
        if outcome.is_err() {
            for id in cluster.running() {
                eprintln!("--- node {id} log (tail) ---\n{}", cluster.log_tail(id, 15));
            }
        }
        cluster.stop();
    }
    let clean = outcome?;
    if !clean {
        bail!("the closing audit is not clean (see the report)");
    }
    Ok(())
}

/// Everything between a cluster that is up and the report. Returns whether
/// the audit is clean.
async fn drive(
    args: &RunArgs,
    settings: Settings,
    mix: &[(Op, u32)],
    cluster_file: &std::path::Path,
    spawned: Option<Arc<StdMutex<SpawnedCluster>>>,
) -> anyhow::Result<bool> {
    let operator = ClusterClient::load(cluster_file)
        .with_context(|| format!("cannot use {}", cluster_file.display()))?
        .with_retry_policy(LOAD_RETRY)
        .with_backoff_cap(LOAD_BACKOFF_CAP);
    // The users' connections: `--connections` clients, each one channel
    // per node, shared by every user (and so counting every retry).
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let client = ClusterClient::load(cluster_file)?
            .with_retry_policy(LOAD_RETRY)
            .with_backoff_cap(LOAD_BACKOFF_CAP);
        clients.push(client.with_bearer(None));
    }
    let dir = tempfile::Builder::new()
        .prefix("agora-loadtest-peers-")
        .tempdir()?;

    let setup_started = Instant::now();
    let bar = report::progress(args.quiet);
    bar.set_message(format!("making {} accounts ...", settings.accounts));
    let market = Market::build(
        &operator,
        &clients,
        dir.path(),
        settings.accounts,
        settings.sellers,
        settings.file_bytes / 1024,
        |n| {
            if n % 50 == 0 {
                bar.set_message(format!("made {n} of {} accounts", settings.accounts));
            }
        },
    )
    .await?;
    let market = Arc::new(market);
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{} accounts and {} sellers ready in {setup_seconds:.1} s",
        settings.accounts,
        market.sellers()
    );

    let recorder = Arc::new(Recorder::new());
    let duration = Duration::from_secs_f64(settings.duration_s);
    let end = recorder.started() + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Faults::start(
        &settings,
        operator.clone(),
        spawned.clone(),
        recorder.clone(),
        stop.clone(),
    );
    let load = tokio::spawn(users(
        settings.clone(),
        mix.to_vec(),
        market.clone(),
        recorder.clone(),
        end,
    ));
    // The live line, once a second, until the load ends.
    let retries = || -> u64 {
        clients
            .iter()
            .map(|c| c.retried().values().sum::<u64>())
            .sum()
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !load.is_finished() {
        tick.tick().await;
        let (ok, failed, p99) = recorder.glance();
        let t = recorder.started().elapsed().as_secs_f64();
        bar.set_message(format!(
            "{t:>5.0}/{:.0} s  {ok} ok ({:.0}/s)  p99 {p99:.1} ms  {failed} errors  {} retried",
            settings.duration_s,
            ok as f64 / t.max(0.001),
            retries()
        ));
    }
    load.await?;
    let seconds = recorder.started().elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let crashes = faults.finish().await;
    bar.finish_and_clear();

    // Every node up again before the audit, so every node is audited.
    if let Some(cluster) = &spawned {
        let down: Vec<u64> = {
            let c = cluster.lock().unwrap_or_else(PoisonError::into_inner);
            (1..=settings.spawned_nodes)
                .filter(|id| !c.running().contains(id))
                .collect()
        };
        for id in down {
            cluster
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .restart(id)?;
        }
    }
    market.close().await?;
    eprintln!("load done; auditing every node ...");
    let audit = audit::run(&operator, &market).await;

    let summary = recorder.summary(seconds);
    let mut crashes = crashes;
    let run_ms = u64::try_from(Duration::from_secs_f64(seconds).as_millis()).unwrap_or(u64::MAX);
    for crash in &mut crashes {
        // From the last write before the crash to the first after it,
        // and any longer stall while the cluster recovers.
        let to = (crash.at_ms + ms(GAP_WINDOW)).min(run_ms);
        crash.gap_ms = Some(longest_write_gap(&summary.write_done_ms, crash.at_ms, to));
    }
    let failover_gap_ms = crashes.iter().filter_map(|c| c.gap_ms).max();
    let windows: Vec<(u64, u64)> = crashes
        .iter()
        .map(|c| {
            let back = c
                .restarted_at_ms
                .unwrap_or(c.at_ms + c.gap_ms.unwrap_or(0))
                .max(c.at_ms + c.gap_ms.unwrap_or(0));
            (c.at_ms / 1000, (back + ms(CRASH_SETTLE)) / 1000)
        })
        .collect();
    let latency_outside_crashes_ms = recorder.latency_outside(&windows);
    let longest_write_gap_ms = longest_write_gap(&summary.write_done_ms, 0, run_ms);
    let retried_away: BTreeMap<String, u64> = {
        let mut all = BTreeMap::new();
        for client in clients.iter().chain(std::iter::once(&operator)) {
            for (kind, n) in client.retried() {
                *all.entry(kind).or_default() += n;
            }
        }
        all
    };
    let report = Report {
        settings,
        seconds,
        setup_seconds,
        errors: ErrorReport {
            user_visible_total: summary.errors.values().sum(),
            user_visible: summary.errors,
            samples: summary.error_samples,
            retried_away_total: retried_away.values().sum(),
            retried_away,
        },
        ops: summary.ops,
        crashes,
        failover_gap_ms,
        longest_write_gap_ms,
        // The last second is partial (the drain), so it is left out.
        peak: peak(
            summary
                .per_second
                .get(..summary.per_second.len().saturating_sub(1))
                .unwrap_or(&[]),
        ),
        latency_outside_crashes_ms,
        audit,
        per_second: summary.per_second,
    };
    report::print(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        report::plot(&report, path)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(report.audit.clean)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the users until `end`, then waits (bounded) for what is in flight.
async fn users(
    settings: Settings,
    mix: Vec<(Op, u32)>,
    market: Arc<Market>,
    recorder: Arc<Recorder>,
    end: Instant,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let accounts = market.accounts.len();
    match settings.rate {
        Some(rate) => {
            // Open loop: arrivals on a fixed schedule; latency counts from
            // when the request was due, so a slow cluster cannot hide its
            // queueing (no coordinated omission).
            let rate_to = settings.rate_to.unwrap_or(rate);
            let length = Duration::from_secs_f64(settings.duration_s);
            let start = Instant::now();
            let limit = Arc::new(tokio::sync::Semaphore::new(settings.users));
            let mut due = Instant::now();
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let op = pick(&mix);
                let a = rand::thread_rng().gen_range(0..accounts);
                let (market, recorder) = (market.clone(), recorder.clone());
                let scheduled = due;
                tasks.spawn(async move {
                    let result = market.perform(op, a).await;
                    record(&recorder, op, scheduled, result);
                    drop(permit);
                });
                // The rate now, on the ramp from `rate` to `rate_to`.
                let along = (due.saturating_duration_since(start).as_secs_f64()
                    / length.as_secs_f64().max(0.001))
                .min(1.0);
                due += Duration::from_secs_f64(1.0 / (rate + (rate_to - rate) * along));
                // Reap what finished, so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
        }
        None => {
            let think = Duration::from_millis(settings.think_ms);
            for user in 0..settings.users {
                let (market, recorder, mix) = (market.clone(), recorder.clone(), mix.clone());
                tasks.spawn(async move {
                    let a = user % accounts;
                    // Users start spread over one think time.
                    let first = think.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
                    tokio::time::sleep(first).await;
                    while Instant::now() < end {
                        let op = pick(&mix);
                        let started = Instant::now();
                        let result = market.perform(op, a).await;
                        record(&recorder, op, started, result);
                        if !think.is_zero() {
                            let pause = think.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
                            tokio::time::sleep_until((Instant::now() + pause).min(end).into())
                                .await;
                        }
                    }
                });
            }
        }
    }
    // The users stop by themselves at `end`; what is still in flight then
    // gets `DRAIN` to finish.
    let drained = tokio::time::timeout_at((end + DRAIN).into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "{} operations were still running {} s after the end; abandoned",
            tasks.len(),
            DRAIN.as_secs()
        );
        tasks.abort_all();
    }
}

fn record(recorder: &Recorder, op: Op, started: Instant, result: Result<(), crate::sim::OpError>) {
    match result {
        Ok(()) => recorder.ok(op, started.elapsed()),
        Err(e) => recorder.failed(op, &e.kind, &e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn parses_the_mix() {
        let mix = parse_mix("search=50, buy=10,reprice=0").expect("valid mix");
        assert_eq!(mix, vec![(Op::Search, 50), (Op::Buy, 10)]);
        assert!(parse_mix("search").is_err());
        assert!(parse_mix("sell=3").is_err());
        assert!(parse_mix("search=0").is_err());
        assert!(parse_mix(DEFAULT_MIX).is_ok());
        for _ in 0..100 {
            assert!(matches!(pick(&mix), Op::Search | Op::Buy));
        }
    }
}
