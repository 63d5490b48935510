//! `agora-loadtest compare-etcd`: the same replicated-write workload (same
//! value size, same number of concurrent clients, closed loop, fsync on, 3
//! nodes on this machine) against a spawned Agora cluster and a 3-node etcd
//! (the `etcd` binary of the Debian package `etcd-server`) started on
//! loopback in a temporary directory, one after the other in one run; prints
//! both and Agora's writes/s divided by etcd's.
//!
//! etcd is driven through its v3 JSON gateway (`POST /v3/kv/put`) over
//! plain HTTP/1.1 with hyper, one keep-alive connection per client, sent to
//! the leader (as Agora's writes are).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_peer::ClusterClient;
use agora_proto::market::kv_service_client::KvServiceClient;
use agora_proto::market::{PutRequest, RequestId};
use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::latency::{new_histogram, Percentiles};
use crate::spawn::{server_binary, SpawnedCluster};

/// How long etcd gets to come up and elect a leader.
const ETCD_START: Duration = Duration::from_secs(30);
/// How long an etcd member gets to exit after SIGTERM.
const ETCD_STOP: Duration = Duration::from_secs(10);
/// One HTTP request to etcd at most takes this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 connections the Agora clients share (as in `writes`).
const AGORA_CONNECTIONS: usize = 4;

/// Flags of `agora-loadtest compare-etcd`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Concurrent clients (requests in flight), for both.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of writes against each.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// The agora-server binary [default: next to this one].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Write both results and the ratio as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One system's result.
#[derive(Debug, Serialize)]
struct Outcome {
    ok: u64,
    errors: u64,
    seconds: f64,
    writes_per_sec: f64,
    latency_ms: Percentiles,
}

#[derive(Serialize)]
struct Comparison {
    clients: usize,
    value_bytes: usize,
    seconds: u64,
    agora: Outcome,
    etcd: Outcome,
    /// Agora's writes/s divided by etcd's.
    ratio: f64,
}

/// Runs `clients` closed-loop tasks for `duration`; task `c` calls
/// `op(c, n)` for its `n`-th write.
async fn closed_loop<F, Fut>(clients: usize, duration: Duration, op: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Once::new());
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (op, histogram, ok, errors, first_error) = (
            op.clone(),
            histogram.clone(),
            ok.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut n = 0;
            while Instant::now() < end {
                let t = Instant::now();
                match op(c, n).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = local.record(us.max(1));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.call_once(|| eprintln!("first write error: {e}"));
                    }
                }
                n += 1;
            }
            let _ = histogram.lock().await.add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let h = histogram.lock().await;
    #[allow(clippy::cast_precision_loss)]
    Outcome {
        ok,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        writes_per_sec: ok as f64 / seconds,
        latency_ms: Percentiles::of(&h),
    }
}

/// Runs the comparison.
///
/// # Errors
/// When either cluster cannot be started.
pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    // Ctrl-C drops the comparison, whose guards stop every process.
    tokio::select! {
        result = compare(args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    }
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds.max(1));
    let value = vec![b'x'; args.value_bytes];

    // Agora: 3 spawned nodes, puts to the leader.
    let server = server_binary(args.server_bin.as_deref())?;
    eprintln!("starting 3 Agora nodes ...");
    let agora_cluster =
        tokio::task::spawn_blocking(move || SpawnedCluster::start(&server, 3)).await??;
    let agora = {
        let mut channels = Vec::new();
        let first = ClusterClient::load(agora_cluster.cluster_file())?;
        let leader = crate::cluster::leader_id(&first).await?;
        for _ in 0..AGORA_CONNECTIONS {
            channels.push(ClusterClient::load(agora_cluster.cluster_file())?.channel(leader)?);
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        let (value, keys) = (value.clone(), args.keys.max(1));
        eprintln!("Agora: {} clients for {} s ...", args.clients, args.seconds);
        closed_loop(args.clients, duration, move |c, n| {
            let mut kv = KvServiceClient::new(channels[c % channels.len()].clone());
            let request = PutRequest {
                request_id: Some(RequestId {
                    client: format!("{run_id}-{c}"),
                    id: n.to_string(),
                }),
                key: format!("bench-{}", (n * 7919 + c as u64) % keys),
                value: value.clone(),
            };
            async move { kv.put(request).await.map(|_| ()).map_err(|s| s.to_string()) }
        })
        .await
    };
    tokio::task::spawn_blocking(move || {
        let mut cluster = agora_cluster;
        cluster.stop();
    })
    .await?;

    // etcd: 3 members on loopback, puts to the leader.
    eprintln!("starting 3 etcd members ...");
    let etcd = EtcdCluster::start(&args.etcd_bin, 3)?;
    let leader = etcd.leader().await?;
    eprintln!("etcd: {} clients for {} s ...", args.clients, args.seconds);
    let etcd_outcome = {
        let mut connections = Vec::new();
        for _ in 0..args.clients.max(1) {
            connections.push(Mutex::new(http_connection(&leader).await?));
        }
        let connections = Arc::new(connections);
        let b64 = base64::engine::general_purpose::STANDARD;
        let value = b64.encode(&value);
        let keys = args.keys.max(1);
        closed_loop(args.clients, duration, move |c, n| {
            let connections = connections.clone();
            let key = b64.encode(format!("bench-{}", (n * 7919 + c as u64) % keys));
            let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
            let leader = leader.clone();
            async move {
                let mut conn = connections[c].lock().await;
                post(&mut conn, &leader, "/v3/kv/put", body)
                    .await
                    .map(|_| ())
            }
        })
        .await
    };
    drop(etcd);

    let ratio = agora.writes_per_sec / etcd_outcome.writes_per_sec.max(f64::MIN_POSITIVE);
    let comparison = Comparison {
        clients: args.clients,
        value_bytes: args.value_bytes,
        seconds: args.seconds,
        agora,
        etcd: etcd_outcome,
        ratio,
    };
    for (name, o) in [("Agora", &comparison.agora), ("etcd", &comparison.etcd)] {
        println!(
            "{name:<6} {:>8.0} writes/s  ({} ok, {} errors in {:.1} s)  latency ms p50 {:.2} p99 {:.2} max {:.2}",
            o.writes_per_sec, o.ok, o.errors, o.seconds, o.latency_ms.p50, o.latency_ms.p99, o.latency_ms.max
        );
    }
    println!(
        "ratio Agora/etcd: {:.2} ({} clients, {}-byte values, 3 nodes each, fsync on, same machine)",
        comparison.ratio, comparison.clients, comparison.value_bytes
    );
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&comparison)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// One HTTP/1.1 keep-alive connection.
type Http = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens a connection to `addr` (`host:port`).
async fn http_connection(addr: &str) -> anyhow::Result<Http> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to etcd at {addr}"))?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// POSTs `body` (JSON) to `path` on the connection; the reply's body.
async fn post(conn: &mut Http, host: &str, path: &str, body: String) -> Result<Bytes, String> {
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(HTTP_TIMEOUT, async {
        conn.ready().await.map_err(|e| e.to_string())?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)))
        }
    })
    .await;
    answer.unwrap_or_else(|_| Err(format!("no answer within {} s", HTTP_TIMEOUT.as_secs())))
}

/// A local etcd cluster, stopped on drop.
struct EtcdCluster {
    members: Vec<(Child, String)>,
    dir: tempfile::TempDir,
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl EtcdCluster {
    fn start(etcd: &Path, n: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("agora-etcd-").tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut cluster = Self {
            members: Vec::new(),
            dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = cluster.dir.path().join(format!("e{i}"));
            let log = std::fs::File::create(cluster.dir.path().join(format!("e{i}.log")))?;
            let child = Command::new(etcd)
                .arg("--name")
                .arg(format!("e{i}"))
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .args(["--initial-cluster-token", "agora-compare"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start {} (apt-get install -y etcd-server, or pass --etcd-bin)",
                        etcd.display()
                    )
                })?;
            cluster.members.push((child, format!("127.0.0.1:{client}")));
        }
        Ok(cluster)
    }

    /// The leader's client address, once every member is up and one leads.
    async fn leader(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + ETCD_START;
        loop {
            let mut leader = None;
            let mut up = 0;
            for (_, addr) in &self.members {
                let Ok(mut conn) = http_connection(addr).await else {
                    continue;
                };
                if let Ok(body) = post(&mut conn, addr, "/v3/maintenance/status", "{}".into()).await
                {
                    up += 1;
                    let status: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let me = &status["header"]["member_id"];
                    if !me.is_null() && *me == status["leader"] {
                        leader = Some(addr.clone());
                    }
                }
            }
            if let (Some(leader), true) = (leader, up == self.members.len()) {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not elect a leader within {} s",
                    ETCD_START.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (child, _) in &self.members {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + ETCD_STOP;
        for (child, _) in &mut self.members {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
