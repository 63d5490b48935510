//! `agora-server dev`: a whole local cluster in one command.
//!
//! Makes certificates if missing, starts one `agora-server node` process per
//! node (logs in `DIR/node-N/node.log`), bootstraps the cluster on first
//! run, writes `DIR/cluster.toml` for every client, runs a small demo, and
//! stops every node on Ctrl-C. Running it again on the same directory
//! resumes the same cluster and data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_proto::admin::admin_service_client::AdminServiceClient;
use agora_proto::admin::{InitializeRequest, Member, StatusRequest};
use agora_proto::cluster_file::{ClusterFile, ClusterNode, DEFAULT_SERVER_NAME};
use agora_proto::market::kv_service_client::KvServiceClient;
use agora_proto::market::{GetRequest, PutRequest, ReadConsistency, RequestId};
use agora_server::certs::{ensure_dev_certs, DevCerts};
use anyhow::{bail, Context};
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long to wait for the nodes to come up and elect a leader.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long each node gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Flags of `agora-server dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Directory for certificates, node data, logs and cluster.toml.
    #[arg(long, default_value = "agora-dev")]
    dir: PathBuf,
    /// Node N listens on BASE+N (gRPC), BASE+100+N (Raft), BASE+200+N (metrics).
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Start the nodes and exit once the cluster is up, leaving them running.
    #[arg(long)]
    detach: bool,
    /// Bootstrap with cheap Argon2id parameters (load-test clusters only).
    #[arg(long)]
    load_test_ksf: bool,
}

struct DevNode {
    id: u64,
    api: String,
    raft: String,
    metrics: String,
    child: Option<Child>,
}

fn port(base: u16, offset: u64) -> anyhow::Result<u16> {
    u16::try_from(offset)
        .ok()
        .and_then(|o| base.checked_add(o))
        .context("the ports run past 65535; pick a lower --base-port")
}

/// Runs the dev cluster until Ctrl-C.
pub fn run(args: &DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be 1 or more");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let certs = ensure_dev_certs(&dir.join("certs"), args.nodes)?;
    let exe = std::env::current_exe()?;

    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        nodes.push(DevNode {
            id,
            api: format!("127.0.0.1:{}", port(args.base_port, id)?),
            raft: format!("127.0.0.1:{}", port(args.base_port, 100 + id)?),
            metrics: format!("127.0.0.1:{}", port(args.base_port, 200 + id)?),
            child: None,
        });
    }
    write_cluster_file(&dir, &nodes)?;
    for node in &mut nodes {
        node.child = Some(spawn_node(&exe, &dir, &certs, node, args.load_test_ksf)?);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let tls = operator_tls(&certs)?;
        let leader = bring_up(&nodes, &tls).await?;
        println!(
            "Agora dev cluster of {} node(s) is up in {}",
            nodes.len(),
            dir.display()
        );
        for node in &nodes {
            let mark = if node.id == leader { "  (leader)" } else { "" };
            println!(
                "  node {}: gRPC {}  raft {}  metrics http://{}/metrics{mark}",
                node.id, node.api, node.raft, node.metrics
            );
        }
        println!("  cluster file: {}", dir.join("cluster.toml").display());
        demo(&nodes, leader, &tls).await?;
        ensure_admin(&dir).await?;
        println!();
        println!(
            "Try: cargo run -p agora-admin -- --cluster {} status",
            dir.join("cluster.toml").display()
        );
        if args.detach {
            return Ok(true);
        }
        println!("Press Ctrl-C to stop the cluster.");
        wait_for_stop(&mut nodes).await;
        Ok::<bool, anyhow::Error>(false)
    });
    let detached = matches!(result, Ok(true));
    if !detached {
        stop_all(&mut nodes);
    }
    result.map(|_| ())
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    certs: &DevCerts,
    node: &DevNode,
    load_test_ksf: bool,
) -> anyhow::Result<Child> {
    let data = dir.join(format!("node-{}", node.id));
    std::fs::create_dir_all(&data)?;
    let log_path = data.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut command = Command::new(exe);
    if load_test_ksf {
        command.arg("node").arg("--load-test-ksf");
    } else {
        command.arg("node");
    }
    command
        .args(["--id", &node.id.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-listen", &node.api])
        .args(["--raft-listen", &node.raft])
        .args(["--metrics-listen", &node.metrics])
        .arg("--ca-cert")
        .arg(certs.ca_cert())
        .arg("--cert")
        .arg(certs.node_cert(node.id))
        .arg("--key")
        .arg(certs.node_key(node.id))
        .arg("--log-file")
        .arg(&log_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start node {}", node.id))
}

fn write_cluster_file(dir: &Path, nodes: &[DevNode]) -> anyhow::Result<()> {
    let file = ClusterFile {
        ca_cert: "certs/ca.pem".into(),
        client_cert: Some("certs/client.pem".into()),
        client_key: Some("certs/client.key".into()),
        server_name: DEFAULT_SERVER_NAME.into(),
        nodes: nodes
            .iter()
            .map(|n| ClusterNode {
                id: n.id,
                api_addr: n.api.clone(),
                raft_addr: n.raft.clone(),
                metrics_addr: Some(n.metrics.clone()),
            })
            .collect(),
    };
    std::fs::write(dir.join("cluster.toml"), file.to_toml())?;
    Ok(())
}

fn operator_tls(certs: &DevCerts) -> anyhow::Result<ClientTlsConfig> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(certs.ca_cert())?))
        .identity(Identity::from_pem(
            std::fs::read(certs.client_cert())?,
            std::fs::read(certs.client_key())?,
        ))
        .domain_name(DEFAULT_SERVER_NAME))
}

fn channel(addr: &str, tls: &ClientTlsConfig) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.clone())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Waits for every node to answer, initializes the cluster if it is new,
/// and waits for a leader. Returns the leader's id.
async fn bring_up(nodes: &[DevNode], tls: &ClientTlsConfig) -> anyhow::Result<u64> {
    let deadline = Instant::now() + START_DEADLINE;
    let mut clients = Vec::new();
    for node in nodes {
        let mut client = AdminServiceClient::new(channel(&node.api, tls)?);
        loop {
            match client.status(StatusRequest {}).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "node {} did not come up: {}; see its node.log",
                        node.id,
                        e.message()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        clients.push(client);
    }
    let members = nodes
        .iter()
        .map(|n| Member {
            id: n.id,
            api_addr: n.api.clone(),
            raft_addr: n.raft.clone(),
            voter: true,
        })
        .collect();
    match clients[0].initialize(InitializeRequest { members }).await {
        Ok(_) => println!("bootstrapped a new cluster"),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            println!("resuming the existing cluster")
        }
        Err(s) => bail!("cannot bootstrap the cluster: {}", s.message()),
    }
    loop {
        for client in &mut clients {
            if let Ok(status) = client.status(StatusRequest {}).await {
                let s = status.into_inner();
                if s.role == "leader" {
                    return Ok(s.id);
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no leader was elected within {} s; see the nodes' node.log",
                START_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes through one node and reads it back on another, to show the
/// replicated core at work.
async fn demo(nodes: &[DevNode], leader: u64, tls: &ClientTlsConfig) -> anyhow::Result<()> {
    let writer = nodes.iter().find(|n| n.id != leader).unwrap_or(&nodes[0]);
    let reader = nodes
        .iter()
        .find(|n| n.id != writer.id)
        .unwrap_or(&nodes[0]);
    let mut w = KvServiceClient::new(channel(&writer.api, tls)?);
    let put = w
        .put(PutRequest {
            request_id: Some(RequestId {
                client: "agora-dev".into(),
                id: format!("demo-{}", std::process::id()),
            }),
            key: "greeting".into(),
            value: b"hello from agora".to_vec(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("demo write failed: {}", s.message()))?
        .into_inner();
    let mut r = KvServiceClient::new(channel(&reader.api, tls)?);
    let got = r
        .get(GetRequest {
            key: "greeting".into(),
            consistency: Some(ReadConsistency {
                min_index: put.index,
                linearizable: false,
            }),
        })
        .await
        .map_err(|s| anyhow::anyhow!("demo read failed: {}", s.message()))?
        .into_inner();
    println!(
        "demo: wrote greeting through node {} (forwarded to leader {leader}), applied at index {} (revision {}); node {} read back {:?}",
        writer.id,
        put.index,
        put.revision,
        reader.id,
        String::from_utf8_lossy(&got.value)
    );
    Ok(())
}

/// Name of the first admin account.
const ADMIN_NAME: &str = "admin";

/// Creates the first admin account (OPAQUE, over the operator certificate)
/// unless it exists, and says how to log in.
async fn ensure_admin(dir: &Path) -> anyhow::Result<()> {
    let password_file = dir.join("admin-password");
    let (password, generated) = match std::env::var("AGORA_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => match std::fs::read_to_string(&password_file) {
            Ok(p) => (p.trim().to_owned(), false),
            Err(_) => {
                use rand::Rng;
                let p: String = rand::thread_rng()
                    .sample_iter(&rand::distributions::Alphanumeric)
                    .take(20)
                    .map(char::from)
                    .collect();
                (p, true)
            }
        },
    };
    let client = agora_peer::ClusterClient::load(&dir.join("cluster.toml"))?;
    let cluster = dir.join("cluster.toml");
    match agora_peer::account::register(&client, ADMIN_NAME, password.as_bytes(), true).await {
        Ok(_) => {
            if generated {
                write_secret(&password_file, &password)?;
                println!(
                    "created the admin account {ADMIN_NAME:?}; its password is in {} (or set AGORA_ADMIN_PASSWORD before the first run)",
                    password_file.display()
                );
            } else {
                println!("created the admin account {ADMIN_NAME:?}");
            }
        }
        Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {
            println!("the admin account {ADMIN_NAME:?} exists (from an earlier run)");
        }
        Err(e) => bail!("cannot create the admin account: {e}"),
    }
    println!(
        "log in as admin: AGORA_PASSWORD=$(cat {}) cargo run -p agora-admin -- --cluster {} login {ADMIN_NAME}",
        password_file.display(),
        cluster.display()
    );
    Ok(())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM, reporting nodes that exit on their own.
async fn wait_for_stop(nodes: &mut [DevNode]) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return,
            _ = tick.tick() => {
                for node in nodes.iter_mut() {
                    if let Some(child) = node.child.as_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            eprintln!("node {} exited ({status}); see its node.log", node.id);
                            node.child = None;
                        }
                    }
                }
            }
        }
    }
}

fn stop_all(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Some(child) = &node.child {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        if let Some(mut child) = node.child.take() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    println!("cluster stopped");
}
