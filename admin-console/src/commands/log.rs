//! `agora-admin log NODE [--lines N]`: the end of one node's own log file
//! (the node must have been started with `--log-file`, as `agora-server
//! dev` and the test harness do).

use agora_proto::admin::LogTailRequest;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Most lines one call returns (the server's cap too).
const MAX_LINES: u32 = 1000;

/// Show the end of a node's log file.
#[derive(Debug, clap::Args)]
pub struct Log {
    /// The node's id.
    node: u64,
    /// How many lines from the end (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LINES)))]
    lines: u32,
}

impl Log {
    /// Asks that node, and only that node: a log is not replicated.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let mut admin = console
            .client
            .admin(self.node)
            .with_context(|| format!("node {} is not in the cluster file", self.node))?;
        let reply = tokio::time::timeout(
            crate::fleet::NODE_TIMEOUT,
            admin.log_tail(LogTailRequest { lines: self.lines }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("node {} did not answer in time", self.node))?
        .map_err(|status| anyhow::anyhow!(agora_peer::describe_status(&status)))
        .with_context(|| format!("could not read the log of node {}", self.node))?
        .into_inner();
        if console.json {
            return Console::print_json(&json!({
                "node_id": reply.node_id,
                "path": reply.path,
                "file_bytes": reply.file_bytes,
                "lines": reply.lines,
            }));
        }
        println!(
            "== node {}: last {} line(s) of {} ({} bytes) ==",
            reply.node_id,
            reply.lines.len(),
            reply.path,
            reply.file_bytes
        );
        for line in &reply.lines {
            println!("{line}");
        }
        Ok(())
    }
}
