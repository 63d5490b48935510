//! A cluster the load tester starts itself: `agora-server dev --detach`
//! (the same code that makes certificates, starts `agora-server node`
//! processes, bootstraps and waits for a leader) in a temporary directory,
//! with cheap Argon2id parameters, faster elections and fault injection on.
//! Nodes are SIGKILLed and restarted by pid, with the command line they were
//! started with; all of them are stopped at the end, whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng as _;

/// How long a node gets to exit after SIGTERM at the end of a run.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a SIGKILLed node may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How many random base ports are tried before giving up.
const PORT_TRIES: u32 = 50;
/// Raft timings of a spawned cluster: a crashed leader is replaced within
/// about a second (the node defaults, 1.5-3 s, suit real networks).
const NODE_CONFIG: &str = "heartbeat_ms = 75\nelection_min_ms = 300\nelection_max_ms = 600\nenable_fault_injection = true\n";
/// The environment variable a node reads its config file from.
const NODE_CONFIG_ENV: &str = "AGORA_NODE_CONFIG";

/// One node of a spawned cluster.
#[derive(Debug)]
struct SpawnedNode {
    id: u64,
    /// Its `agora-server node ...` command line (from /proc), to restart it.
    argv: Vec<String>,
    /// The running process's id, `None` while it is down.
    pid: Option<u32>,
    /// The process when this tool started it (a restart), to reap it.
    child: Option<Child>,
    log: PathBuf,
}

/// A cluster of real node processes in a temporary directory.
#[derive(Debug)]
pub struct SpawnedCluster {
    nodes: Vec<SpawnedNode>,
    cluster_file: PathBuf,
    /// Dropped last, after every node has been stopped.
    dir: tempfile::TempDir,
}

/// The `agora-server` binary: `--server-bin`, else next to this one.
///
/// # Errors
/// When it cannot be found.
pub fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe.parent().context("this program has no directory")?;
    // Next to us, or one up when we run as a test in target/<profile>/deps.
    for candidate in [dir.join("agora-server"), dir.join("../agora-server")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no agora-server next to {}; build it (cargo build --workspace --bins) or pass --server-bin",
        exe.display()
    )
}

/// Whether the `nodes` ports of `dev --base-port base` are all free.
fn ports_free(base: u16, nodes: u64) -> bool {
    (1..=nodes).all(|id| {
        [0u64, 100, 200].iter().all(|off| {
            u16::try_from(off + id)
                .ok()
                .and_then(|o| base.checked_add(o))
                .is_some_and(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
    })
}

impl SpawnedCluster {
    /// Starts `nodes` nodes with `server` and waits until they have a
    /// leader, an admin account and a cluster file.
    ///
    /// # Errors
    /// When `agora-server dev` fails (its output is included).
    pub fn start(server: &Path, nodes: u64) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("agora-loadtest-")
            .tempdir()
            .context("no temporary directory")?;
        let config = dir.path().join("node-config.toml");
        std::fs::write(&config, NODE_CONFIG)?;
        let mut base = None;
        for _ in 0..PORT_TRIES {
            let candidate = rand::thread_rng().gen_range(20_000..60_000);
            if ports_free(candidate, nodes) {
                base = Some(candidate);
                break;
            }
        }
        let base = base.context("found no free loopback ports for the cluster")?;
        let out = Command::new(server)
            .args(["dev", "--detach", "--load-test-ksf"])
            .args(["--nodes", &nodes.to_string()])
            .args(["--base-port", &base.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .env(NODE_CONFIG_ENV, &config)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", server.display()))?;
        // Whatever happened, the nodes that did start are ours to stop.
        let mut cluster = Self {
            nodes: Vec::new(),
            cluster_file: dir.path().join("cluster.toml"),
            dir,
        };
        for id in 1..=nodes {
            let data = cluster.dir.path().join(format!("node-{id}"));
            if let Ok(pid) = read_pid(&data) {
                let argv = read_argv(pid)?;
                cluster.nodes.push(SpawnedNode {
                    id,
                    argv,
                    pid: Some(pid),
                    child: None,
                    log: data.join("node.log"),
                });
            }
        }
        if !out.status.success() {
            bail!(
                "agora-server dev failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        anyhow::ensure!(
            cluster.nodes.len() == usize::try_from(nodes).unwrap_or(usize::MAX),
            "not every node wrote its node.json"
        );
        Ok(cluster)
    }

    /// The cluster file (with the operator certificate).
    #[must_use]
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }

    /// The directory of certificates, data and logs.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs node `id` and waits until it is gone.
    ///
    /// # Errors
    /// When the node is unknown or down, or does not die in time.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id)?;
        let pid = node
            .pid
            .take()
            .with_context(|| format!("node {id} is down"))?;
        let _ = kill(as_pid(pid)?, Signal::SIGKILL);
        if let Some(mut child) = node.child.take() {
            let _ = child.wait();
        }
        wait_gone(pid, KILL_WAIT)
    }

    /// Starts node `id` again with its original command line.
    ///
    /// # Errors
    /// When the node is unknown or running, or cannot be started.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let config = self.dir.path().join("node-config.toml");
        let node = self.node(id)?;
        anyhow::ensure!(node.pid.is_none(), "node {id} is running");
        let (exe, args) = node.argv.split_first().context("empty command line")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(exe)
            .args(args)
            .env(NODE_CONFIG_ENV, config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot restart node {id}"))?;
        node.pid = Some(child.id());
        node.child = Some(child);
        Ok(())
    }

    /// Ids of the nodes that are running.
    #[must_use]
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.pid.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Stops every node: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.pid {
                if let Ok(pid) = as_pid(pid) {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(pid) = node.pid.take() {
                if let Some(child) = node.child.as_mut() {
                    let deadline = Instant::now() + STOP_GRACE;
                    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                } else if wait_gone(pid, STOP_GRACE).is_ok() {
                    continue;
                }
                if let Ok(p) = as_pid(pid) {
                    let _ = kill(p, Signal::SIGKILL);
                }
                if let Some(mut child) = node.child.take() {
                    let _ = child.wait();
                }
            }
        }
    }

    /// The last `lines` lines of node `id`'s log.
    #[must_use]
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Some(node) = self.nodes.iter().find(|n| n.id == id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn node(&mut self, id: u64) -> anyhow::Result<&mut SpawnedNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id} in the spawned cluster"))
    }
}

impl Drop for SpawnedCluster {
    fn drop(&mut self) {
        // An error or a panic must not leave nodes behind.
        for node in &mut self.nodes {
            if let Some(pid) = node.pid.take() {
                if let Ok(pid) = as_pid(pid) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            if let Some(mut child) = node.child.take() {
                let _ = child.wait();
            }
        }
    }
}

fn as_pid(pid: u32) -> anyhow::Result<Pid> {
    Ok(Pid::from_raw(
        i32::try_from(pid).context("process id out of range")?,
    ))
}

/// The pid a node wrote in `DATA/node.json`.
fn read_pid(data: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(data.join("node.json"))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .context("node.json has no pid")
}

/// The command line of process `pid`.
fn read_argv(pid: u32) -> anyhow::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("cannot read the command line of process {pid}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect())
}

/// Waits until process `pid` no longer exists (or is a zombie).
fn wait_gone(pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 3 is the state; Z is a zombie, already dead.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "process {pid} is still alive {} s after SIGKILL",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
