//! The ledger end to end on a three-node cluster: deposits read back on a
//! follower (at `min_index` and linearizably), withdrawals refused beyond
//! the available money, writes retried with one request id applied once
//! (and a reused id with another body refused), the commission's rounding
//! on posted holds, holds closed at most once, a hold voided by the
//! cluster's expiry timer, and a SIGKILLed leader in the middle of a stream
//! of deposits and withdrawals: every acknowledged operation is in the
//! journal exactly once, and the audit is clean on every node with equal
//! digests. The `agora` and `agora-admin` commands are run against the same
//! cluster.
//!
//! One test function: the phases share one cluster, and clusters must not
//! run side by side on a small machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`100_00` is 100.00), which reads better here than thousands grouping.
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_peer::ledger::{self, NewHold};
use agora_peer::RetryPolicy;
use agora_peer::{account, is_retryable, new_request_id, request_id, ClientError, ClusterClient};
use agora_proto::amount::MAX_AMOUNT;
use agora_proto::market::{BalanceReply, CashFlow, ReadConsistency, WithdrawRequest};
use agora_tests::{binary, wait_clean_audit, wait_for, Probe, TestCluster, TestOptions};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
/// Longest a replicated change may take to show, and the expiry timer to
/// void a hold.
const CONVERGE: Duration = Duration::from_secs(30);
/// The commission until an admin sets one.
const DEFAULT_BPS: u64 = 100;
/// A short hold, voided by the cluster's timer.
const SHORT_TTL: Duration = Duration::from_millis(1500);
/// Operations of the stream acknowledged before the crash, and after it.
const OPS_BEFORE_CRASH: usize = 12;
const OPS_AFTER_CRASH: usize = 12;
/// Longest one operation of the stream keeps retrying with its request id.
const OP_DEADLINE: Duration = Duration::from_secs(60);
/// Pause of the stream after a failed attempt.
const OP_PAUSE: Duration = Duration::from_millis(100);

/// A client of exactly the nodes `ids`; with the operator certificate or not.
fn client_for(cluster: &TestCluster, ids: &[u64], operator: bool) -> anyhow::Result<ClusterClient> {
    let mut tls = cluster.client_tls().clone();
    if !operator {
        tls.identity = None;
    }
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push((*id, cluster.node(*id)?.api_addr.clone()));
    }
    Ok(ClusterClient::from_parts(&tls, nodes)?)
}

/// A registered, logged-in user and a client (of every node) presenting
/// the session.
struct User {
    id: u64,
    name: String,
    client: ClusterClient,
}

async fn user(
    everyone: &ClusterClient,
    name: &str,
    admin: Option<&ClusterClient>,
) -> anyhow::Result<User> {
    let registrar = admin.unwrap_or(everyone);
    let account = account::register(registrar, name, PASSWORD.as_bytes(), admin.is_some()).await?;
    let session = account::login_after(everyone, name, PASSWORD.as_bytes(), account.index).await?;
    Ok(User {
        id: account.user_id,
        name: account.username,
        client: everyone.clone().with_token(&session.token)?,
    })
}

/// The user's own balance, linearizable.
async fn balance(user: &User) -> anyhow::Result<BalanceReply> {
    Ok(ledger::balance(&user.client, 0, None).await?)
}

/// Fails unless `result` is an error with `code`.
fn expect_code<T: Debug>(
    result: Result<T, ClientError>,
    code: Code,
    what: &str,
) -> anyhow::Result<()> {
    match result {
        Err(err) if err.code() == Some(code) => Ok(()),
        other => anyhow::bail!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// Retries (same request id, same body) that did not answer as the first
/// time, as sentences. A retry must return the first answer, index
/// included; this is checked last, so that it does not hide the other
/// checks.
#[derive(Debug, Default)]
struct RetryAnswers(Vec<String>);

impl RetryAnswers {
    /// Notes a retry that answered with another index.
    fn check(&mut self, what: &str, first: u64, again: u64) {
        if first != again {
            self.0.push(format!(
                "{what}: first answer at index {first}, retry answered {again}"
            ));
        }
    }

    /// The retry's answer, noting a refusal (the test then goes on with the
    /// first answer).
    fn answer<T>(&mut self, what: &str, again: Result<T, ClientError>) -> Option<T> {
        match again {
            Ok(answer) => Some(answer),
            Err(err) => {
                self.0.push(format!("{what}: the retry was refused: {err}"));
                None
            }
        }
    }
}

/// The operator's revenue on node `node` once it has applied `index`.
async fn operator_cents(admin: &ClusterClient, node: u64, index: u64) -> anyhow::Result<i64> {
    wait_for(
        &format!("node {node} to audit at index {index} or later"),
        CONVERGE,
        || async move {
            Ok(match ledger::audit_on(admin, node).await {
                Ok(reply) if reply.applied_index >= index => Probe::Ready(reply.operator_balance),
                Ok(reply) => Probe::NotYet(format!("applied {}", reply.applied_index)),
                Err(err) => Probe::NotYet(err.to_string()),
            })
        },
    )
    .await
}

/// Buyer, seller and operator money at one moment.
#[derive(Debug, Clone, Copy)]
struct Money {
    buyer: BalanceReply,
    seller: BalanceReply,
    operator: i64,
}

async fn money(
    buyer: &User,
    seller: &User,
    admin: &ClusterClient,
    leader: u64,
    index: u64,
) -> anyhow::Result<Money> {
    Ok(Money {
        buyer: balance(buyer).await?,
        seller: balance(seller).await?,
        operator: operator_cents(admin, leader, index).await?,
    })
}

/// `Money` with the applied indexes blanked, to compare amounts only.
fn amounts(money: Money) -> (u64, u64, u64, u64, u64, i64) {
    (
        money.buyer.balance,
        money.buyer.held,
        money.buyer.available,
        money.seller.balance,
        money.seller.held,
        money.operator,
    )
}

/// Every cash flow of the user, linearizable.
async fn flows(user: &User) -> anyhow::Result<Vec<CashFlow>> {
    Ok(ledger::all_cash_flows(&user.client, 0, &[], None).await?)
}

/// Checks that the user's journal adds up to its balance.
async fn journal_matches_balance(user: &User) -> anyhow::Result<Vec<CashFlow>> {
    let entries = flows(user).await?;
    let sum: i64 = entries.iter().map(|e| e.amount).sum();
    let balance = balance(user).await?;
    anyhow::ensure!(
        u64::try_from(sum).ok() == Some(balance.balance),
        "{}'s cash flows add up to {sum} cents, the balance is {}",
        user.name,
        balance.balance
    );
    Ok(entries)
}

/// What one operation of the crash stream was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum OpKind {
    Deposit,
    Withdrawal,
}

impl OpKind {
    fn journal_kind(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
        }
    }
}

/// One operation of the crash stream and what came of it.
#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    amount: u64,
    request_id: String,
    /// Failed attempts before the outcome (each retried with the same id).
    failed_attempts: u32,
    /// The index it was applied at, once acknowledged; else the last error.
    outcome: Result<u64, String>,
}

/// Deposits (admin) and withdrawals (the user), alternating, each with its
/// own request id and retried with it after any retryable error, until
/// `stop`. Amounts are distinct, so each operation is found in the journal.
async fn op_stream(
    admin: ClusterClient,
    user: ClusterClient,
    username: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let kind = if n % 2 == 1 {
            OpKind::Deposit
        } else {
            OpKind::Withdrawal
        };
        // Deposits 5.01, 5.03, ...; withdrawals 1.02, 1.04, ...: distinct.
        let amount = match kind {
            OpKind::Deposit => 500 + n,
            OpKind::Withdrawal => 100 + n,
        };
        let id = new_request_id();
        let wire_id = agora_proto::market::RequestId {
            client: username.clone(),
            id: id.clone(),
        };
        let started = Instant::now();
        let mut failed_attempts = 0;
        let outcome = loop {
            let result = match kind {
                OpKind::Deposit => ledger::deposit(&admin, &username, amount, &id)
                    .await
                    .map(|reply| reply.index),
                OpKind::Withdrawal => ledger::withdraw(&user, amount, wire_id.clone())
                    .await
                    .map(|reply| reply.index),
            };
            match result {
                Ok(index) => break Ok(index),
                Err(ClientError::Rpc(status))
                    if is_retryable(&status) && started.elapsed() < OP_DEADLINE =>
                {
                    failed_attempts += 1;
                    tokio::time::sleep(OP_PAUSE).await;
                }
                Err(err) => break Err(format!("{err} ({:?})", err.code())),
            }
        };
        if outcome.is_ok() {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        ops.push(Op {
            kind,
            amount,
            request_id: id,
            failed_attempts,
            outcome,
        });
    }
    ops
}

/// Runs a workspace binary with `args`; returns (success, stdout, stderr).
async fn run_cli(
    name: &str,
    args: &[&str],
    password: bool,
) -> anyhow::Result<(bool, String, String)> {
    let mut command = tokio::process::Command::new(binary(name)?);
    command.args(args).stdin(std::process::Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AGORA_") {
            command.env_remove(key);
        }
    }
    if password {
        command.env("AGORA_PASSWORD", PASSWORD);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("`{name} {}` did not finish within 60 s", args.join(" ")))??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `agora --cluster F --data-dir D ARGS...`.
async fn agora(
    cluster_file: &Path,
    home: &Path,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut all = vec![
        "--cluster",
        cluster_file.to_str().unwrap_or_default(),
        "--data-dir",
        home.to_str().unwrap_or_default(),
    ];
    all.extend_from_slice(args);
    run_cli("agora", &all, true).await
}

/// `agora-admin --cluster F --data-dir D ARGS...` (the operator certificate
/// in the cluster file authorizes it).
async fn agora_admin(
    cluster_file: &Path,
    home: &Path,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut all = vec![
        "--cluster",
        cluster_file.to_str().unwrap_or_default(),
        "--data-dir",
        home.to_str().unwrap_or_default(),
    ];
    all.extend_from_slice(args);
    run_cli("agora-admin", &all, false).await
}

/// A field of a JSON document printed by a command.
fn json_u64(stdout: &str, field: &str) -> anyhow::Result<u64> {
    let value: serde_json::Value = serde_json::from_str(stdout)
        .map_err(|err| anyhow::anyhow!("not one JSON document ({err}): {stdout}"))?;
    value
        .get(field)
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("no number {field:?} in {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_end_to_end() -> anyhow::Result<()> {
    let test_started = Instant::now();
    let mut mismatches = RetryAnswers::default();
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let all = cluster.node_ids();
    let leader = cluster.wait_for_leader(None).await?;
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let everyone = client_for(&cluster, &all, false)?;
    let admin = cluster.client();
    admin.set_leader_hint(leader);

    let buyer = user(&everyone, "buyer", None).await?;
    let seller = user(&everyone, "seller", None).await?;
    let boss = user(&everyone, "boss", Some(&admin)).await?;
    eprintln!(
        "[{:>5.1}s] users ready",
        test_started.elapsed().as_secs_f64()
    );

    // --- A deposit, read back on a follower: at its index, and linearizably.
    let deposit = ledger::deposit(&admin, "buyer", 100_00, &new_request_id()).await?;
    let at_index = ReadConsistency {
        min_index: deposit.index,
        linearizable: false,
    };
    let read = ledger::balance_on(&buyer.client, followers[0], 0, Some(at_index)).await?;
    assert_eq!(
        (read.balance, read.held, read.available),
        (100_00, 0, 100_00)
    );
    assert_eq!(read.user_id, buyer.id);
    assert!(read.applied_index >= deposit.index, "{read:?}");
    let read = ledger::balance_on(&buyer.client, followers[1], 0, None).await?;
    assert_eq!(
        read.balance, 100_00,
        "linearizable read on node {}",
        followers[1]
    );
    // An admin reads anyone's balance; a user only their own.
    let read = ledger::balance(&boss.client, buyer.id, None).await?;
    assert_eq!(read.balance, 100_00);
    expect_code(
        ledger::balance(&seller.client, buyer.id, None).await,
        Code::PermissionDenied,
        "a user reading another user's balance",
    )?;
    expect_code(
        ledger::balance(&everyone, 0, None).await,
        Code::Unauthenticated,
        "a balance without a session",
    )?;

    // --- Withdrawing more than is available changes nothing.
    expect_code(
        ledger::withdraw(&buyer.client, 100_01, request_id("buyer")).await,
        Code::FailedPrecondition,
        "withdrawing more than available",
    )?;
    assert_eq!(balance(&buyer).await?.balance, 100_00);
    // Amounts no call accepts are refused before any call ...
    expect_code(
        ledger::withdraw(&buyer.client, 0, request_id("buyer")).await,
        Code::InvalidArgument,
        "withdrawing nothing",
    )?;
    // ... and by the cluster when a client sends them anyway.
    for amount in [0, MAX_AMOUNT + 1] {
        let mut raw = buyer.client.ledger(leader)?;
        let status = raw
            .withdraw(WithdrawRequest {
                request_id: Some(request_id("buyer")),
                amount,
            })
            .await
            .err();
        assert_eq!(
            status.as_ref().map(tonic::Status::code),
            Some(Code::InvalidArgument),
            "a raw withdrawal of {amount} cents: {status:?}"
        );
    }
    assert_eq!(balance(&buyer).await?.balance, 100_00);

    // --- One request id, one effect; the same id with another body: refused.
    let id = request_id("buyer");
    let first = ledger::withdraw(&buyer.client, 5_00, id.clone()).await?;
    let again = ledger::withdraw(&buyer.client, 5_00, id.clone()).await?;
    assert_eq!(first.balance, again.balance);
    mismatches.check("a retried withdrawal", first.index, again.index);
    assert_eq!(first.balance, 95_00);
    expect_code(
        ledger::withdraw(&buyer.client, 6_00, id).await,
        Code::AlreadyExists,
        "a request id reused for another withdrawal",
    )?;
    let id = new_request_id();
    let first = ledger::deposit(&admin, "buyer", 10_00, &id).await?;
    let again = ledger::deposit(&admin, "buyer", 10_00, &id).await?;
    mismatches.check("a retried deposit", first.index, again.index);
    expect_code(
        ledger::deposit(&admin, "buyer", 11_00, &id).await,
        Code::AlreadyExists,
        "a request id reused for another deposit",
    )?;
    assert_eq!(balance(&buyer).await?.balance, 105_00);
    let entries = journal_matches_balance(&buyer).await?;
    let kinds: Vec<(&str, i64)> = entries
        .iter()
        .map(|e| (e.kind.as_str(), e.amount))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("deposit", 10_00),
            ("withdrawal", -5_00),
            ("deposit", 100_00)
        ],
        "newest first"
    );
    assert!(
        entries.iter().all(|e| e.counterparty == "external"),
        "{entries:?}"
    );
    eprintln!(
        "[{:>5.1}s] deposits, withdrawals, request ids",
        test_started.elapsed().as_secs_f64()
    );

    // --- The commission on posted holds, rounded down.
    ledger::deposit(&admin, "buyer", 500_00, &new_request_id()).await?;
    let mut posted = Vec::new();
    for (price, bps) in [
        (1, 100),
        (99, 100),
        (100, 100),
        (123_45, 100),
        (123_45, 250),
        (1_00, 0),
    ] {
        let set = ledger::set_commission(&admin, bps, &new_request_id()).await?;
        let before = money(&buyer, &seller, &admin, leader, set.index).await?;
        let hold = NewHold {
            holder: "buyer".into(),
            payee: "seller".into(),
            amount: price,
            ttl: None,
        };
        let open_id = new_request_id();
        let opened = ledger::open_hold(&admin, &hold, &open_id).await?;
        assert_eq!(opened.state, "open");
        // Retried with its request id (as after a lost answer), the hold is
        // the same one, opened once.
        let retried = ledger::open_hold(&admin, &hold, &open_id).await;
        if let Some(retried) = mismatches.answer("a retried open hold", retried) {
            assert_eq!(
                retried.hold_id, opened.hold_id,
                "a retried hold opened another"
            );
            mismatches.check("a retried open hold", opened.index, retried.index);
        }
        let held = balance(&buyer).await?;
        assert_eq!(
            (held.balance, held.held, held.available),
            (before.buyer.balance, price, before.buyer.balance - price),
            "hold of {price}"
        );
        let post_id = new_request_id();
        let done = ledger::post_hold(&admin, opened.hold_id, &post_id).await?;
        assert_eq!(
            (done.hold_id, done.state.as_str()),
            (opened.hold_id, "posted")
        );
        let retried = ledger::post_hold(&admin, opened.hold_id, &post_id).await?;
        assert_eq!(retried.state, "posted");
        mismatches.check("a retried post", done.index, retried.index);
        let after = money(&buyer, &seller, &admin, leader, done.index).await?;
        let commission = price * u64::from(bps) / 10_000;
        assert_eq!(
            after.buyer.balance,
            before.buyer.balance - price,
            "buyer, price {price} at {bps} bps"
        );
        assert_eq!(after.buyer.held, 0);
        assert_eq!(
            after.seller.balance,
            before.seller.balance + price - commission,
            "seller, price {price} at {bps} bps"
        );
        assert_eq!(
            after.operator - before.operator,
            i64::try_from(commission)?,
            "operator, price {price} at {bps} bps"
        );
        posted.push(opened.hold_id);
    }
    let set =
        ledger::set_commission(&admin, u32::try_from(DEFAULT_BPS)?, &new_request_id()).await?;
    expect_code(
        ledger::set_commission(&admin, 10_001, &new_request_id()).await,
        Code::InvalidArgument,
        "a commission above 100%",
    )?;
    let audit = wait_clean_audit(&admin, "a clean audit after the sales", CONVERGE).await?;
    assert!(audit.0 >= set.index);
    let seller_flows = journal_matches_balance(&seller).await?;
    for entry in &seller_flows {
        assert!(
            posted.contains(&entry.hold_id),
            "the seller's entry {entry:?} names a hold that was posted"
        );
        assert_eq!(entry.counterparty, "user:buyer", "{entry:?}");
    }
    journal_matches_balance(&buyer).await?;
    eprintln!(
        "[{:>5.1}s] commission rounding",
        test_started.elapsed().as_secs_f64()
    );

    // --- A hold is closed once: posting or voiding it again moves nothing.
    let settled = *posted
        .last()
        .ok_or_else(|| anyhow::anyhow!("no hold posted"))?;
    let index = ledger::deposit(&admin, "buyer", 1, &new_request_id())
        .await?
        .index;
    let before = money(&buyer, &seller, &admin, leader, index).await?;
    expect_code(
        ledger::post_hold(&admin, settled, &new_request_id()).await,
        Code::FailedPrecondition,
        "posting a posted hold",
    )?;
    expect_code(
        ledger::void_hold(&admin, settled, &new_request_id()).await,
        Code::FailedPrecondition,
        "voiding a posted hold",
    )?;
    let hold = NewHold {
        holder: "buyer".into(),
        payee: "seller".into(),
        amount: 2_00,
        ttl: None,
    };
    let opened = ledger::open_hold(&admin, &hold, &new_request_id()).await?;
    let voided = ledger::void_hold(&admin, opened.hold_id, &new_request_id()).await?;
    assert_eq!(voided.state, "voided");
    expect_code(
        ledger::void_hold(&admin, opened.hold_id, &new_request_id()).await,
        Code::FailedPrecondition,
        "voiding a voided hold",
    )?;
    expect_code(
        ledger::post_hold(&admin, opened.hold_id, &new_request_id()).await,
        Code::FailedPrecondition,
        "posting a voided hold",
    )?;
    let after = money(&buyer, &seller, &admin, leader, voided.index).await?;
    assert_eq!(
        amounts(after),
        amounts(before),
        "refused closes moved money"
    );
    // A hold beyond the available money is refused.
    let too_much = NewHold {
        amount: before.buyer.available + 1,
        ..hold.clone()
    };
    expect_code(
        ledger::open_hold(&admin, &too_much, &new_request_id()).await,
        Code::FailedPrecondition,
        "a hold beyond the available money",
    )?;

    // --- A short hold is voided by the cluster's expiry timer.
    let short = NewHold {
        amount: 3_00,
        ttl: Some(SHORT_TTL),
        ..hold
    };
    let opened = ledger::open_hold(&admin, &short, &new_request_id()).await?;
    let held = balance(&buyer).await?;
    assert!(held.held == 3_00 || held.held == 0, "{held:?}");
    let expired_at = Instant::now();
    wait_for(
        "the expiry timer to void the short hold",
        CONVERGE,
        || async {
            let now = balance(&buyer).await?;
            Ok(if now.held == 0 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{} cents held", now.held))
            })
        },
    )
    .await?;
    eprintln!(
        "[{:>5.1}s] short hold voided {:.1}s after it was opened",
        test_started.elapsed().as_secs_f64(),
        expired_at.elapsed().as_secs_f64()
    );
    expect_code(
        ledger::post_hold(&admin, opened.hold_id, &new_request_id()).await,
        Code::FailedPrecondition,
        "posting an expired hold",
    )?;
    let after = money(&buyer, &seller, &admin, leader, opened.index).await?;
    assert_eq!(
        amounts(after),
        amounts(before),
        "the expired hold moved money"
    );

    // --- The command lines, against the same cluster.
    let cluster_file = cluster.write_cluster_file()?;
    let peer_home = cluster.dir().join("peer-seller");
    let admin_home = cluster.dir().join("admin-console");
    let (ok, _, err) = agora(&cluster_file, &peer_home, &["login", "seller"]).await?;
    assert!(ok, "agora login: {err}");
    let (ok, out, err) = agora(&cluster_file, &peer_home, &["balance"]).await?;
    assert!(ok && out.contains("available"), "agora balance: {out}{err}");
    eprint!("agora balance:\n{out}");
    let (ok, out, err) = agora(&cluster_file, &peer_home, &["balance", "--json"]).await?;
    assert!(ok, "agora balance: {err}");
    let seller_cents = json_u64(&out, "available_cents")?;
    assert_eq!(seller_cents, balance(&seller).await?.available);
    for bad in ["1.234", "-1", "0", "abc", &format!("{seller_cents}00")] {
        let (ok, _, err) = agora(&cluster_file, &peer_home, &["withdraw", bad]).await?;
        assert!(!ok, "agora withdraw {bad} succeeded");
        assert!(!err.trim().is_empty(), "agora withdraw {bad} said nothing");
    }
    assert_eq!(
        balance(&seller).await?.available,
        seller_cents,
        "a refused withdrawal moved money"
    );
    let (ok, out, err) = agora(&cluster_file, &peer_home, &["withdraw", "0.50", "--json"]).await?;
    assert!(ok, "agora withdraw 0.50: {err}");
    assert_eq!(json_u64(&out, "available_cents")?, seller_cents - 50);
    let (ok, out, err) = agora(
        &cluster_file,
        &peer_home,
        &["history", "--kind", "withdrawal"],
    )
    .await?;
    assert!(
        ok && out.contains("-0.50") && out.contains("withdrawal"),
        "agora history: {out}{err}"
    );
    eprint!("agora history --kind withdrawal:\n{out}");
    let (ok, out, err) =
        agora_admin(&cluster_file, &admin_home, &["deposit", "seller", "2.50"]).await?;
    assert!(ok, "agora-admin deposit: {out}{err}");
    assert_eq!(balance(&seller).await?.available, seller_cents - 50 + 2_50);
    let (ok, _, _) =
        agora_admin(&cluster_file, &admin_home, &["deposit", "seller", "2.505"]).await?;
    assert!(!ok, "agora-admin deposit 2.505 succeeded");
    let (ok, out, err) = agora_admin(
        &cluster_file,
        &admin_home,
        &["hold", "open", "seller", "buyer", "1.00"],
    )
    .await?;
    assert!(ok, "agora-admin hold open: {out}{err}");
    assert_eq!(balance(&seller).await?.held, 1_00);
    let hold_id: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|word| word.trim_end_matches(':').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no hold id in {out:?}"))?;
    let (ok, out, err) = agora_admin(
        &cluster_file,
        &admin_home,
        &["hold", "void", &hold_id.to_string()],
    )
    .await?;
    assert!(
        ok && out.contains("voided"),
        "agora-admin hold void: {out}{err}"
    );
    let (ok, out, err) = agora_admin(
        &cluster_file,
        &admin_home,
        &["hold", "void", &hold_id.to_string()],
    )
    .await?;
    assert!(!ok, "voiding twice succeeded: {out}{err}");
    assert_eq!(balance(&seller).await?.held, 0);
    eprintln!(
        "[{:>5.1}s] command lines",
        test_started.elapsed().as_secs_f64()
    );

    // --- SIGKILL the leader in the middle of deposits and withdrawals.
    let streamer = user(&everyone, "streamer", None).await?;
    let start = ledger::deposit(&admin, "streamer", 1_000_00, &new_request_id()).await?;
    // Short budgets, so that failures reach the stream, which retries them
    // with the same request id.
    let impatient = RetryPolicy {
        max_attempts: 3,
        budget: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn(op_stream(
        admin.clone().with_retry_policy(impatient),
        streamer.client.clone().with_retry_policy(impatient),
        streamer.name.clone(),
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    wait_for("operations before the crash", CONVERGE, || async {
        let n = acked.load(Ordering::SeqCst);
        Ok(if n >= OPS_BEFORE_CRASH {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{n} acknowledged"))
        })
    })
    .await?;
    let leader = cluster.leader_id().await?.unwrap_or(leader);
    cluster.kill(leader)?;
    let killed_at = Instant::now();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    let new_leader = cluster.wait_for_leader(Some(leader)).await?;
    wait_for("operations after the crash", CONVERGE * 2, || async {
        let n = acked.load(Ordering::SeqCst);
        Ok(if n >= acked_at_kill + OPS_AFTER_CRASH {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{n} acknowledged, {acked_at_kill} at the crash"))
        })
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    let ops = stream.await?;
    eprintln!(
        "[{:>5.1}s] killed leader {leader}; new leader {new_leader}; {} operations, {} of them retried after a failed attempt; stream resumed within {:.1}s",
        test_started.elapsed().as_secs_f64(),
        ops.len(),
        ops.iter().filter(|op| op.failed_attempts > 0).count(),
        killed_at.elapsed().as_secs_f64(),
    );
    let failed: Vec<&Op> = ops.iter().filter(|op| op.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "operations that never succeeded: {failed:#?}"
    );

    // Sending every operation again with its request id answers as the
    // first time and applies nothing.
    for op in &ops {
        let again = match op.kind {
            OpKind::Deposit => ledger::deposit(&admin, &streamer.name, op.amount, &op.request_id)
                .await
                .map(|reply| reply.index),
            OpKind::Withdrawal => {
                let id = agora_proto::market::RequestId {
                    client: streamer.name.clone(),
                    id: op.request_id.clone(),
                };
                ledger::withdraw(&streamer.client, op.amount, id)
                    .await
                    .map(|reply| reply.index)
            }
        };
        match (&op.outcome, again) {
            (Ok(first), Ok(again)) => {
                mismatches.check(&format!("{op:?} sent again"), *first, again);
            }
            (_, again) => anyhow::bail!("{op:?} sent again: {again:?}"),
        }
    }

    // Every acknowledged operation is in the journal exactly once, at the
    // index its acknowledgement named; nothing else is.
    let entries = journal_matches_balance(&streamer).await?;
    let mut journal: BTreeMap<(&str, u64), Vec<&CashFlow>> = BTreeMap::new();
    for entry in &entries {
        journal
            .entry((entry.kind.as_str(), entry.amount.unsigned_abs()))
            .or_default()
            .push(entry);
    }
    for op in &ops {
        let found = journal
            .get(&(op.kind.journal_kind(), op.amount))
            .map_or(&[][..], Vec::as_slice);
        assert_eq!(
            found.len(),
            1,
            "{op:?} is in the journal {} times: {found:?}",
            found.len()
        );
        if let (Ok(index), [entry]) = (&op.outcome, found) {
            mismatches.check(
                &format!("{op:?} (its journal entry is at the first index)"),
                entry.log_index,
                *index,
            );
            let sign = if op.kind == OpKind::Deposit { 1 } else { -1 };
            assert_eq!(entry.amount, sign * i64::try_from(op.amount)?, "{op:?}");
        }
    }
    assert_eq!(
        entries.len(),
        ops.len() + 1,
        "the journal holds operations nobody made"
    );
    let expected: i64 = 1_000_00
        + ops
            .iter()
            .map(|op| match op.kind {
                OpKind::Deposit => i64::try_from(op.amount).unwrap_or(i64::MAX),
                OpKind::Withdrawal => -i64::try_from(op.amount).unwrap_or(i64::MAX),
            })
            .sum::<i64>();
    assert_eq!(i64::try_from(balance(&streamer).await?.balance)?, expected);
    assert!(entries.iter().any(|e| e.log_index == start.index));

    // The audit is clean on the survivors, at one index with one digest.
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let live = client_for(&cluster, &survivors, true)?;
    let (index, digest) =
        wait_clean_audit(&live, "a clean audit on the survivors", CONVERGE).await?;
    eprintln!(
        "[{:>5.1}s] survivors clean at {index} ({digest})",
        test_started.elapsed().as_secs_f64()
    );

    // The old leader comes back, catches up, and agrees.
    cluster.restart(leader).await?;
    let everyone_again = client_for(&cluster, &all, true)?;
    let (index, digest) = wait_clean_audit(
        &everyone_again,
        "a clean audit on all three nodes",
        CONVERGE,
    )
    .await?;
    let (ok, out, err) = agora_admin(&cluster_file, &admin_home, &["audit"]).await?;
    assert!(
        ok && out.contains("ledger audit: clean on all 3 nodes at index"),
        "agora-admin audit: {out}{err}"
    );
    eprint!("agora-admin audit:\n{out}");
    eprintln!(
        "[{:>5.1}s] all three nodes clean at {index} ({digest}); done",
        test_started.elapsed().as_secs_f64()
    );
    assert!(
        mismatches.0.is_empty(),
        "{} retries did not answer as the first time, among them:\n{}",
        mismatches.0.len(),
        mismatches.0[..mismatches.0.len().min(8)].join("\n")
    );
    Ok(())
}
