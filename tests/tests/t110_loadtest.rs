//! The load tester, as its users run it: `agora-loadtest run --spawn 3`
//! (real node processes it starts and stops itself), a few dozen simulated
//! users doing every operation of the mix (purchases included, over real
//! peer TLS), the leader SIGKILLed mid-run and restarted; the JSON report
//! must show a clean closing audit, a failover gap, work of every kind and
//! no error a user saw.
//!
//! Then the admin `Crash` RPC the load tester uses against clusters it did
//! not start: refused (FAILED_PRECONDITION, naming the flag) by a node
//! without `--enable-fault-injection`, obeyed (the process aborts) by one
//! with it.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::Duration;

use agora_proto::admin::CrashRequest;
use agora_tests::{binary, TestCluster, TestOptions, SERVER_BINARY};
use anyhow::Context as _;
use serde_json::Value;

/// Longest the whole load-test run may take (setup, 12 s of load, audit,
/// teardown) on a busy two-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

/// Every operation of the default mix.
const OPS: [&str; 6] = ["search", "balance", "history", "publish", "reprice", "buy"];

/// One test function: the two parts must not run clusters side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_test_and_crash_rpc() -> anyhow::Result<()> {
    a_short_run_with_a_leader_kill_audits_clean().await?;
    crash_rpc_needs_fault_injection().await
}

async fn a_short_run_with_a_leader_kill_audits_clean() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report_path = dir.path().join("report.json");
    let plot_path = dir.path().join("plot.svg");
    let mut command = tokio::process::Command::new(binary("agora-loadtest")?);
    command
        .arg("run")
        .args(["--spawn", "3"])
        .arg("--server-bin")
        .arg(binary(SERVER_BINARY)?)
        .args(["--users", "30", "--think", "200ms", "--duration", "12s"])
        .args(["--sellers", "2", "--file-kib", "8"])
        .args(["--kill-leader-at", "4s", "--restart-after", "3s"])
        .arg("--report")
        .arg(&report_path)
        .arg("--plot")
        .arg(&plot_path)
        .arg("--quiet")
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .context("the load test did not finish in time")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "agora-loadtest failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
    assert_eq!(
        report["audit"]["clean"],
        Value::Bool(true),
        "the audit is not clean: {}\n{stdout}",
        report["audit"]
    );
    let gap = report["failover_gap_ms"]
        .as_u64()
        .with_context(|| format!("no failover gap in the report:\n{stdout}"))?;
    assert!(gap > 0, "a leader kill leaves some gap; got {gap} ms");
    let crashes = report["crashes"].as_array().context("no crashes")?;
    assert_eq!(crashes.len(), 1, "{stdout}");
    assert_eq!(crashes[0]["was_leader"], Value::Bool(true), "{stdout}");
    assert!(crashes[0]["restarted_at_ms"].is_u64(), "{stdout}");
    for op in OPS {
        let ok = report["ops"][op]["ok"].as_u64().unwrap_or(0);
        assert!(ok > 0, "no successful {op} in the run:\n{stdout}");
        assert!(
            report["ops"][op]["latency_ms"]["p99"].is_number(),
            "{op} has no p99"
        );
    }
    assert!(
        report["audit"]["purchases_acknowledged"]
            .as_u64()
            .unwrap_or(0)
            > 0
            && report["audit"]["purchases_acknowledged"]
                == report["audit"]["purchases_settled_once"],
        "{}",
        report["audit"]
    );
    assert_eq!(
        report["errors"]["user_visible_total"].as_u64(),
        Some(0),
        "users saw errors: {}\n{stdout}",
        report["errors"]
    );
    assert!(report["errors"]["retried_away"].is_object());
    assert!(report["per_second"]
        .as_array()
        .is_some_and(|s| s.len() >= 12));
    assert_eq!(report["settings"]["argon2_lowered"], Value::Bool(true));
    let svg = std::fs::read_to_string(&plot_path)?;
    assert!(svg.contains("<svg") && svg.contains("p99"), "not a plot");
    Ok(())
}

async fn crash_rpc_needs_fault_injection() -> anyhow::Result<()> {
    // Without the flag: refused, and the node stays up.
    let cluster = TestCluster::start(1, TestOptions::default()).await?;
    let refused = cluster
        .client()
        .admin(1)?
        .crash(CrashRequest::default())
        .await
        .err()
        .context("a node without --enable-fault-injection crashed on request")?;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("--enable-fault-injection"),
        "{}",
        refused.message()
    );
    assert!(cluster.status(1).await.is_ok(), "the node went down");
    drop(cluster);

    // With it: the reply comes, then the process aborts.
    let options = TestOptions {
        extra_args: vec!["--enable-fault-injection".to_owned()],
        ..TestOptions::default()
    };
    let cluster = TestCluster::start(1, options).await?;
    let reply = cluster
        .client()
        .admin(1)?
        .crash(CrashRequest::default())
        .await?
        .into_inner();
    assert_eq!(reply.id, 1);
    cluster.wait_exited(1).await?;
    Ok(())
}
