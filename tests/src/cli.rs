//! The `agora` peer command line, run from a test as a real process.
//!
//! [`PeerCli`] is one peer: a cluster file, a data directory and a
//! password. [`PeerCli::run`] runs a command to its end; [`PeerCli::spawn`]
//! starts one that keeps running (`agora serve`, a download the test wants
//! to interrupt) and whose stdout and stderr lines the test watches as they
//! come, with [`CliProcess::wait_for_line`]. A test stops such a process by
//! itself: SIGTERM ([`CliProcess::terminate`]), SIGKILL
//! ([`CliProcess::kill`]), or SIGSTOP / SIGCONT ([`CliProcess::pause`],
//! [`CliProcess::unpause`]) to hold it at a point of its work. Dropping one
//! kills it and prints the tail of its stderr (shown only when the test
//! fails).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::binaries::binary;

/// The peer binary.
pub const PEER_BINARY: &str = "agora";
/// Longest [`PeerCli::run`] lets a command take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest the harness waits for a process's output to close once it has
/// exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How many stderr lines of a [`CliProcess`] to print when it is dropped
/// (the same knob as the nodes' logs).
const LOG_LINES_ENV: &str = "AGORA_TEST_LOG_LINES";
/// Default for [`LOG_LINES_ENV`].
const DEFAULT_LOG_LINES: usize = 40;

/// One peer's command line: `agora --cluster F --data-dir D ...`, with the
/// password in `AGORA_PASSWORD`.
#[derive(Debug, Clone)]
pub struct PeerCli {
    cluster_file: PathBuf,
    home: PathBuf,
    password: String,
}

/// How a command that ran to its end went.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Whether it exited with status 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails unless it exited with status 0 (saying what it printed).
    ///
    /// # Errors
    /// When it did not.
    pub fn ok(self) -> anyhow::Result<Self> {
        anyhow::ensure!(self.success(), "{self}");
        Ok(self)
    }

    /// Its stdout as one JSON document.
    ///
    /// # Errors
    /// When stdout is not one JSON document.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).map_err(|err| {
            anyhow::anyhow!(
                "`{}` did not print one JSON document ({err}): {self}",
                self.command
            )
        })
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}; stdout: {:?}; stderr: {:?}",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

impl PeerCli {
    /// The peer whose local state is in `home` (created by `agora login`).
    #[must_use]
    pub fn new(cluster_file: &Path, home: &Path, password: &str) -> Self {
        Self {
            cluster_file: cluster_file.to_path_buf(),
            home: home.to_path_buf(),
            password: password.to_owned(),
        }
    }

    /// The peer's data directory.
    #[must_use]
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Runs `agora ARGS...` to its end (at most [`RUN_TIMEOUT`]); a failed
    /// command is an `Ok` with its status.
    ///
    /// # Errors
    /// When the binary is missing, or the command does not end in time
    /// (it is killed).
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let mut command = self.command(args)?;
        let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "`{}` did not finish within {RUN_TIMEOUT:?}",
                    self.describe(args)
                )
            })?
            .with_context(|| format!("could not run `{}`", self.describe(args)))?;
        Ok(CliOutput {
            command: self.describe(args),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `agora ARGS...`, which must succeed and print one JSON document.
    ///
    /// # Errors
    /// When it fails or prints something else.
    pub async fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.run(args).await?.ok()?.json()
    }

    /// Starts `agora ARGS...` and returns at once; its output is collected
    /// line by line as it comes.
    ///
    /// # Errors
    /// When the binary is missing or cannot be started.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<CliProcess> {
        let what = self.describe(args);
        let mut command = self.command(args)?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start `{what}`"))?;
        let pid = child
            .id()
            .with_context(|| format!("`{what}` has no process id"))?;
        let (stdout, stdout_rx) = watch::channel(OutputLines::default());
        let (stderr, stderr_rx) = watch::channel(OutputLines::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(collect_lines(out, stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(collect_lines(err, stderr)));
        }
        Ok(CliProcess {
            what,
            child,
            pid,
            stdout: stdout_rx,
            stderr: stderr_rx,
            readers,
            status: None,
        })
    }

    /// `agora --cluster F --data-dir D ARGS...`, for messages.
    fn describe(&self, args: &[&str]) -> String {
        format!(
            "agora --data-dir {} {}",
            self.home.display(),
            args.join(" ")
        )
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(binary(PEER_BINARY)?);
        command
            .arg("--cluster")
            .arg(&self.cluster_file)
            .arg("--data-dir")
            .arg(&self.home)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .env("RUST_BACKTRACE", "1")
            // Plain log lines: they are matched as text.
            .env("NO_COLOR", "1");
        // Files a command writes without being told where (a download with
        // no --out) land beside the data directory, not in the source tree.
        if let Some(parent) = self.home.parent().filter(|dir| dir.is_dir()) {
            command.current_dir(parent);
        }
        // Only the command line configures the peer: an `AGORA_*` variable
        // in the developer's shell must not change what the test runs.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AGORA_") {
                command.env_remove(name);
            }
        }
        command.env("AGORA_PASSWORD", &self.password);
        Ok(command)
    }
}

/// Which output of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// Standard output.
    Stdout,
    /// Standard error (where `agora` logs).
    Stderr,
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        })
    }
}

/// The lines of one output so far.
#[derive(Debug, Default)]
struct OutputLines {
    lines: Vec<String>,
    /// The process closed it (it exited, normally).
    closed: bool,
}

/// Reads `output` line by line into `lines` until it closes.
async fn collect_lines(output: impl AsyncRead + Unpin, lines: watch::Sender<OutputLines>) {
    let mut reader = BufReader::new(output);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                lines.send_modify(|output| output.lines.push(line));
            }
        }
    }
    lines.send_modify(|output| output.closed = true);
}

/// A running `agora` command (see [`PeerCli::spawn`]). Dropping it kills
/// the process.
pub struct CliProcess {
    what: String,
    child: tokio::process::Child,
    pid: u32,
    stdout: watch::Receiver<OutputLines>,
    stderr: watch::Receiver<OutputLines>,
    /// The tasks reading stdout and stderr; they end when the process
    /// closes them.
    readers: Vec<JoinHandle<()>>,
    /// How it exited, once reaped.
    status: Option<ExitStatus>,
}

impl fmt::Debug for CliProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliProcess")
            .field("command", &self.what)
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl CliProcess {
    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line, for messages.
    #[must_use]
    pub fn command(&self) -> &str {
        &self.what
    }

    fn receiver(&self, pipe: Pipe) -> &watch::Receiver<OutputLines> {
        match pipe {
            Pipe::Stdout => &self.stdout,
            Pipe::Stderr => &self.stderr,
        }
    }

    /// Every line of `pipe` so far.
    #[must_use]
    pub fn lines(&self, pipe: Pipe) -> Vec<String> {
        self.receiver(pipe).borrow().lines.clone()
    }

    /// How many lines `pipe` has had so far (to wait for a line that
    /// comes after them).
    #[must_use]
    pub fn line_count(&self, pipe: Pipe) -> usize {
        self.receiver(pipe).borrow().lines.len()
    }

    /// Waits until a line of `pipe`, at or after line number `from`,
    /// satisfies `wanted`, and returns it. Reacts as soon as the line is
    /// read (no polling interval).
    ///
    /// # Errors
    /// When `timeout` passes, or the process closes `pipe` (exits)
    /// without such a line; the message names `what` and the process's
    /// last stderr lines.
    pub async fn wait_for_line(
        &self,
        pipe: Pipe,
        from: usize,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.receiver(pipe).clone();
        let mut next = from;
        loop {
            let closed = {
                let output = rx.borrow_and_update();
                if let Some(line) = output.lines.iter().skip(next).find(|line| wanted(line)) {
                    return Ok(line.clone());
                }
                next = next.max(output.lines.len());
                output.closed
            };
            if closed {
                anyhow::bail!(
                    "`{}` closed its {pipe} (exited?) without {what}; its stderr ends with:\n{}",
                    self.what,
                    self.stderr_tail(20)
                );
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The reader task is gone: the next look sees `closed`, or
                // nothing more will come.
                Ok(Err(_)) => {
                    let output = rx.borrow();
                    if let Some(line) = output.lines.iter().skip(next).find(|line| wanted(line)) {
                        return Ok(line.clone());
                    }
                    anyhow::bail!("`{}` stopped writing its {pipe} without {what}", self.what);
                }
                Err(_) => anyhow::bail!(
                    "timed out after {:.0}s waiting for {what} on the {pipe} of `{}`; its stderr ends with:\n{}",
                    timeout.as_secs_f64(),
                    self.what,
                    self.stderr_tail(20)
                ),
            }
        }
    }

    /// The last `n` lines of stderr, joined.
    #[must_use]
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines = self.lines(Pipe::Stderr);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How it exited, if it has (reaping it); `None` while it runs (or is
    /// paused).
    ///
    /// # Errors
    /// When the process cannot be asked.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("could not ask how `{}` is doing", self.what))?;
        }
        Ok(self.status)
    }

    /// Sends `signal` to the running process.
    ///
    /// # Errors
    /// When it has exited already (its id may not be its own any more), or
    /// the signal cannot be sent.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.try_status()? {
            anyhow::bail!(
                "cannot send {signal} to `{}`: it exited ({status}); its stderr ends with:\n{}",
                self.what,
                self.stderr_tail(20)
            );
        }
        let raw = i32::try_from(self.pid).context("process id out of range")?;
        kill(Pid::from_raw(raw), signal)
            .with_context(|| format!("could not send {signal} to `{}`", self.what))
    }

    /// SIGSTOP: the process holds still (its sockets keep their buffers)
    /// until [`unpause`](Self::unpause).
    ///
    /// # Errors
    /// See [`signal`](Self::signal).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`pause`](Self::pause).
    ///
    /// # Errors
    /// See [`signal`](Self::signal).
    pub fn unpause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGKILL (a crash), then reap it. Fine on a process that has exited.
    ///
    /// # Errors
    /// When it cannot be reaped.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        // Fails only when it exited meanwhile; `wait` tells either way.
        let _ = self.child.start_kill();
        let status = tokio::time::timeout(DRAIN_TIMEOUT, self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("`{}` did not die after SIGKILL", self.what))?
            .with_context(|| format!("could not reap `{}`", self.what))?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM (SIGCONT too, in case it is paused), then waits up to
    /// `timeout` for it to exit; SIGKILL if it does not.
    ///
    /// # Errors
    /// When it has already exited, or does not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let _ = self.signal(Signal::SIGCONT);
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("could not reap `{}`", self.what))?;
                self.status = Some(status);
                Ok(status)
            }
            Err(_) => {
                self.kill().await?;
                anyhow::bail!(
                    "`{}` did not exit within {:.0}s of SIGTERM (killed); its stderr ends with:\n{}",
                    self.what,
                    timeout.as_secs_f64(),
                    self.stderr_tail(20)
                )
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself, and
    /// returns everything it printed.
    ///
    /// # Errors
    /// When it does not exit in time (it is killed then).
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<CliOutput> {
        let status = match self.try_status()? {
            Some(status) => status,
            None => match tokio::time::timeout(timeout, self.child.wait()).await {
                Ok(status) => status.with_context(|| format!("could not reap `{}`", self.what))?,
                Err(_) => {
                    self.kill().await?;
                    anyhow::bail!(
                        "`{}` did not finish within {:.0}s (killed); its stderr ends with:\n{}",
                        self.what,
                        timeout.as_secs_f64(),
                        self.stderr_tail(20)
                    )
                }
            },
        };
        self.status = Some(status);
        // The last lines may still be in the pipes.
        for reader in &mut self.readers {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, reader).await;
        }
        Ok(CliOutput {
            command: self.what.clone(),
            status,
            stdout: joined(&self.lines(Pipe::Stdout)),
            stderr: joined(&self.lines(Pipe::Stderr)),
        })
    }
}

fn joined(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        // Test output is shown only for failing tests, so this costs
        // nothing when all is well and explains a failure otherwise.
        let lines = std::env::var(LOG_LINES_ENV)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(DEFAULT_LOG_LINES);
        if lines > 0 {
            let state = match self.try_status() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => "running; killed now".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            eprintln!(
                "----- `{}` (pid {}, {state}), last {lines} lines of its stderr",
                self.what, self.pid
            );
            eprintln!("{}", self.stderr_tail(lines));
        }
        // Never leave a peer behind, whatever the test did; SIGKILL also
        // ends a paused process.
        let _ = self.child.start_kill();
        for reader in &self.readers {
            reader.abort();
        }
    }
}
