//! One `agora-server node` process: how it is started, found, and stopped.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::wait::{wait_for, Probe};

/// What a node writes to `<data dir>/node.json` once it listens: who it is
/// and the addresses it bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Raft node id.
    pub id: u64,
    /// Operating-system process id.
    pub pid: u32,
    /// Public gRPC address.
    pub api_addr: String,
    /// Internal Raft address.
    pub raft_addr: String,
    /// Prometheus metrics address.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

/// The file a node writes once it listens.
const NODE_INFO_FILE: &str = "node.json";

/// Where one node keeps its files, and the files it is started with.
#[derive(Debug, Clone)]
pub(crate) struct NodeFiles {
    /// State database, Raft log, `node.json`; kept across restarts.
    pub data_dir: PathBuf,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
    /// The cluster CA.
    pub ca_cert: PathBuf,
    /// This node's certificate and key.
    pub cert: PathBuf,
    /// Private key of `cert`.
    pub key: PathBuf,
}

/// How to run a node apart from its identity and files.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    /// Arguments appended to every `agora-server node` command line
    /// (timeouts, snapshot policy, extra flags).
    pub args: Vec<String>,
    /// `RUST_LOG` for the node, when set.
    pub log_filter: Option<String>,
}

/// A node of a test cluster, running or not.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    pub id: u64,
    pub files: NodeFiles,
    /// The addresses of its latest run; a restart binds them again.
    pub info: Option<NodeInfo>,
    /// The process, while one was started and not yet reaped. Behind a
    /// mutex so that `&self` queries can notice a node that died by itself.
    child: Mutex<Option<Child>>,
}

impl NodeProcess {
    /// A node that has never run.
    pub fn new(id: u64, files: NodeFiles) -> Self {
        Self {
            id,
            files,
            info: None,
            child: Mutex::new(None),
        }
    }

    /// Starts the process. Listens on port 0 the first time and on the
    /// previous run's addresses afterwards.
    pub fn spawn(&mut self, server: &Path, settings: &NodeSettings) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(), "node {} is already running", self.id);
        std::fs::create_dir_all(&self.files.data_dir)
            .with_context(|| format!("could not create {}", self.files.data_dir.display()))?;
        // A stale node.json from the previous run must not be mistaken for
        // the new one's.
        match std::fs::remove_file(self.info_path()) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).context("could not remove the previous node.json"),
        }
        let (api, raft, metrics) = match &self.info {
            Some(info) => (
                info.api_addr.clone(),
                info.raft_addr.clone(),
                info.metrics_addr
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:0".to_owned()),
            ),
            None => (
                "127.0.0.1:0".to_owned(),
                "127.0.0.1:0".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
        };
        let mut command = Command::new(server);
        command
            .arg("node")
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.files.data_dir)
            .args(["--api-listen", &api, "--raft-listen", &raft])
            .args(["--metrics-listen", &metrics])
            .arg("--ca-cert")
            .arg(&self.files.ca_cert)
            .arg("--cert")
            .arg(&self.files.cert)
            .arg("--key")
            .arg(&self.files.key)
            // Its output goes to this file (below); the node serves its
            // tail to `agora-admin log`.
            .arg("--log-file")
            .arg(&self.files.log)
            .args(&settings.args)
            .stdin(Stdio::null())
            .env("RUST_BACKTRACE", "1")
            // Plain text logs: they are read in files, not on a terminal.
            .env("NO_COLOR", "1");
        // Only the command line configures a test node: an `AGORA_*`
        // variable in the developer's shell (a config file, JSON logs) must
        // not change what the test runs.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AGORA_") {
                command.env_remove(name);
            }
        }
        if let Some(filter) = &settings.log_filter {
            command.env("RUST_LOG", filter);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.files.log)
            .with_context(|| format!("could not open {}", self.files.log.display()))?;
        writeln!(log, "=== harness: starting node {}: {command:?}", self.id)?;
        let stdout: File = log.try_clone()?;
        command.stdout(stdout).stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("could not start {}", server.display()))?;
        *self.lock_child() = Some(child);
        Ok(())
    }

    /// Waits until the running process has written its `node.json`, and
    /// records the addresses in it.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<NodeInfo> {
        let pid = self
            .pid()
            .with_context(|| format!("node {} is not running", self.id))?;
        let path = self.info_path();
        let this = &*self;
        let info = wait_for(
            &format!("node {} to write node.json", self.id),
            timeout,
            || {
                let result = this.read_info(&path, pid);
                async move { result }
            },
        )
        .await?;
        self.info = Some(info.clone());
        Ok(info)
    }

    fn read_info(&self, path: &Path, pid: u32) -> anyhow::Result<Probe<NodeInfo>> {
        if let Some(status) = self.exit_status() {
            anyhow::bail!(
                "node {} exited ({status}) before it was ready; its log ends with:\n{}",
                self.id,
                self.log_tail(40)
            );
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Probe::NotYet("no node.json yet".to_owned()))
            }
            Err(err) => {
                return Err(err).with_context(|| format!("could not read {}", path.display()))
            }
        };
        // Written atomically, so a parse error is a format mismatch rather
        // than a half-written file.
        let info: NodeInfo = serde_json::from_str(&text).with_context(|| {
            format!("{} is not what the harness expects: {text}", path.display())
        })?;
        anyhow::ensure!(
            info.id == self.id,
            "node {} wrote node.json for node {}",
            self.id,
            info.id
        );
        if info.pid == pid {
            Ok(Probe::Ready(info))
        } else {
            Ok(Probe::NotYet(format!(
                "node.json names pid {}, the process is {pid}",
                info.pid
            )))
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// Whether the process is alive (started and not exited).
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// How the process ended, if it was started and has ended by itself.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock_child()
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// SIGKILL, then reap. Nothing happens to a node that is not running.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.lock_child().take() {
            // Fails only when it already exited, which is fine.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("could not reap node {}", self.id))?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `timeout` for a graceful exit; SIGKILL if it
    /// does not come.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self
            .pid()
            .with_context(|| format!("node {} is not running", self.id))?;
        if self.exit_status().is_none() {
            let raw = i32::try_from(pid).context("process id out of range")?;
            kill(Pid::from_raw(raw), Signal::SIGTERM)
                .with_context(|| format!("could not send SIGTERM to node {}", self.id))?;
        }
        let this = &*self;
        let waited = wait_for(
            &format!("node {} to exit after SIGTERM", self.id),
            timeout,
            || {
                let status = this.exit_status();
                async move {
                    Ok(match status {
                        Some(status) => Probe::Ready(status),
                        None => Probe::NotYet("still running".to_owned()),
                    })
                }
            },
        )
        .await;
        match waited {
            Ok(status) => {
                self.lock_child().take();
                Ok(status)
            }
            Err(err) => {
                self.kill()?;
                Err(err)
            }
        }
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.files.log) {
            Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
            Err(err) => format!("(no log: {err})"),
        }
    }

    fn info_path(&self) -> PathBuf {
        self.files.data_dir.join(NODE_INFO_FILE)
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // Only ever replaced whole, so a poisoned lock is still consistent.
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Never leave a node behind, whatever the test did.
        let _ = self.kill();
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn node_json_parses_with_or_without_metrics() -> anyhow::Result<()> {
        let info: NodeInfo = serde_json::from_str(
            r#"{"id":1,"pid":123,"api_addr":"127.0.0.1:1","raft_addr":"127.0.0.1:2","metrics_addr":"127.0.0.1:3"}"#,
        )?;
        assert_eq!(info.metrics_addr.as_deref(), Some("127.0.0.1:3"));
        let info: NodeInfo = serde_json::from_str(
            r#"{"id":1,"pid":123,"api_addr":"127.0.0.1:1","raft_addr":"127.0.0.1:2"}"#,
        )?;
        assert_eq!(info.metrics_addr, None);
        Ok(())
    }
}
