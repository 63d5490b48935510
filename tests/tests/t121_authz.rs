//! The authorization matrix: every RPC of every service the cluster
//! serves publicly, called as eight callers, each answer checked against
//! [`TABLE`].
//!
//! The RPCs are read from the descriptor set the server itself registers
//! for reflection (`agora_proto::FILE_DESCRIPTOR_SET`), so the table is
//! complete by construction: an RPC without a row fails
//! `every_rpc_has_a_row` (no cluster needed) and names itself; a row for an
//! RPC that no longer exists fails it too.
//!
//! Callers, in the order of each row's letters:
//!
//! 1. `anonymous`: no token (and no client certificate);
//! 2. `user`: alice, who owns the listing and the purchase the requests
//!    name, and has money;
//! 3. `other`: bob, another user (the seller of alice's purchase);
//! 4. `suspended`: sam, a user an admin suspended;
//! 5. `admin`: an admin session;
//! 6. `expired`: alice's claims signed by the cluster key but expired (the
//!    key is read from a node's `state.db`, so the signature is genuine);
//! 7. `revoked`: an alice session that logged out;
//! 8. `wrong-key`: alice's claims signed by a key that is not the
//!    cluster's.
//!
//! Letters: `.` answered, `U` UNAUTHENTICATED, `P` PERMISSION_DENIED,
//! `F` FAILED_PRECONDITION, `I` INVALID_ARGUMENT, `N` NOT_FOUND,
//! `A` ALREADY_EXISTS, `?` anything else. The requests are fixed and run in
//! descriptor order (`GoOffline` and `Logout` last: they take bob off sale
//! and end sessions), so the
//! non-authorization answers (`F`, `I`, `N`) are deterministic too; what
//! matters most is where `U` and `P` stand.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`100_00` is 100.00).
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agora_peer::{account, ledger, presence, purchase};
use agora_proto::auth::{sign_token, SessionClaims};
use agora_proto::market::{
    BalanceRequest, BeginPurchaseRequest, CancelPurchaseRequest, CashFlowsRequest,
    CompletePurchaseRequest, DepositKeyRequest, DisputeRequest, EditListingRequest,
    GetListingRequest, GetPurchaseRequest, GetRequest, LogoutRequest, PurchasesRequest, PutRequest,
    ReadConsistency, RepriceRequest, RequestId, SellerListingsRequest, UnpublishRequest,
    WithdrawRequest,
};
use agora_tests::{call_raw, peer_client, MarketUser, TestCluster, TestOptions};
use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The callers, in the order of a row's letters.
const CALLERS: [&str; 8] = [
    "anonymous",
    "user",
    "other",
    "suspended",
    "admin",
    "expired",
    "revoked",
    "wrong-key",
];

/// Services in the descriptor set that the cluster does not serve on its
/// public listener, and why they have no rows.
const NOT_PUBLIC: &[(&str, &str)] = &[
    (
        "agora.raft.v1.RaftService",
        "node to node only, on the Raft listener, which requires a node certificate (mutual TLS)",
    ),
    (
        "agora.peer.v1.SellerService",
        "served by selling peers, not by the cluster; tickets authorize it (t91_purchase_rules)",
    ),
];

/// Every public RPC and its answers, caller by caller (see the module
/// comment for the letters).
const TABLE: &[(&str, &str)] = &[
    // KvService: the replicated core's demo store.
    ("agora.market.v1.KvService/Put", "........"),
    ("agora.market.v1.KvService/Get", "........"),
    // AccountService.
    ("agora.market.v1.AccountService/RegisterStart", "IIIIIIII"),
    ("agora.market.v1.AccountService/RegisterFinish", "IIIIIIII"),
    ("agora.market.v1.AccountService/LoginStart", "IIIIIIII"),
    ("agora.market.v1.AccountService/LoginFinish", "IIIIIIII"),
    ("agora.market.v1.AccountService/Logout", "U....UUU"),
    ("agora.market.v1.AccountService/WhoAmI", "U....UUU"),
    // LedgerService.
    ("agora.market.v1.LedgerService/Balance", "U.PP.UUU"),
    ("agora.market.v1.LedgerService/CashFlows", "U.PP.UUU"),
    ("agora.market.v1.LedgerService/Withdraw", "U.F.FUUU"),
    // CatalogueService.
    ("agora.market.v1.CatalogueService/Publish", "UIIIIUUU"),
    ("agora.market.v1.CatalogueService/EditListing", "U.PP.UUU"),
    ("agora.market.v1.CatalogueService/Reprice", "U.PP.UUU"),
    ("agora.market.v1.CatalogueService/Unpublish", "U.PP.UUU"),
    ("agora.market.v1.CatalogueService/GetListing", "........"),
    (
        "agora.market.v1.CatalogueService/SellerListings",
        ".....UUU",
    ),
    ("agora.market.v1.CatalogueService/Search", "........"),
    ("agora.market.v1.CatalogueService/Topics", "........"),
    ("agora.market.v1.CatalogueService/Announce", "U....UUU"),
    ("agora.market.v1.CatalogueService/GoOffline", "U....UUU"),
    // PurchaseService.
    ("agora.market.v1.PurchaseService/BeginPurchase", "U.FFFUUU"),
    ("agora.market.v1.PurchaseService/DepositKey", "UP.PPUUU"),
    (
        "agora.market.v1.PurchaseService/CompletePurchase",
        "U.PPPUUU",
    ),
    ("agora.market.v1.PurchaseService/CancelPurchase", "UFPPFUUU"),
    ("agora.market.v1.PurchaseService/GetPurchase", "U..P.UUU"),
    ("agora.market.v1.PurchaseService/Purchases", "U....UUU"),
    ("agora.market.v1.PurchaseService/TicketKey", "........"),
    ("agora.market.v1.PurchaseService/Dispute", "UIIIIUUU"),
    // AdminService.
    ("agora.admin.v1.AdminService/Status", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/Initialize", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/AddLearner", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/PromoteVoter", "UPPPNUUU"),
    ("agora.admin.v1.AdminService/RemoveNode", "UPPPNUUU"),
    ("agora.admin.v1.AdminService/StateDigest", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/TriggerSnapshot", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/Deposit", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/SetCommission", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/OpenHold", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/PostHold", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/VoidHold", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/Audit", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/AddTopic", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/RemoveTopic", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/SetDisputeWindow", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/SetSuspended", "UPPPIUUU"),
    ("agora.admin.v1.AdminService/Standing", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/Events", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/FindUsers", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/ShowUser", "UPPP.UUU"),
    // alice has money on her account: even an admin cannot delete it.
    ("agora.admin.v1.AdminService/DeleteUser", "UPPPFUUU"),
    ("agora.admin.v1.AdminService/GetSettings", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/SetSetting", "UPPP.UUU"),
    ("agora.admin.v1.AdminService/LogTail", "UPPP.UUU"),
    // The test nodes run without --enable-fault-injection: even an admin
    // cannot crash them.
    ("agora.admin.v1.AdminService/Crash", "UPPPFUUU"),
];

/// Methods that change what the callers after them can do, run last and
/// in this order: `GoOffline` takes bob's listing off sale, `Logout` ends
/// sessions. An RPC that stops a node or ends sessions belongs here too
/// (with a harmless request in `request`).
const RUN_LAST: &[&str] = &["GoOffline", "Logout"];

/// Longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const PASSWORD: &str = "authorization matrix";

/// Every RPC in the descriptor set, and the services skipped.
fn rpcs() -> anyhow::Result<(Vec<String>, BTreeSet<String>)> {
    agora_tests::descriptor_rpcs(NOT_PUBLIC)
}

#[test]
fn every_rpc_has_a_row() -> anyhow::Result<()> {
    let (rpcs, skipped) = rpcs()?;
    let rows: BTreeMap<&str, &str> = TABLE.iter().copied().collect();
    let missing: Vec<&String> = rpcs
        .iter()
        .filter(|r| !rows.contains_key(r.as_str()))
        .collect();
    let stale: Vec<&&str> = rows
        .keys()
        .filter(|r| !rpcs.iter().any(|known| known == *r))
        .collect();
    let mut problems = Vec::new();
    for rpc in &missing {
        problems.push(format!(
            "the RPC {rpc} has no row in TABLE (tests/tests/t121_authz.rs): add one with the answer each caller must get, in the order {CALLERS:?}"
        ));
    }
    for rpc in &stale {
        problems.push(format!(
            "TABLE has a row for {rpc}, which no service defines any more"
        ));
    }
    for row in TABLE {
        if row.1.chars().count() != CALLERS.len() {
            problems.push(format!(
                "the row of {} needs {} letters",
                row.0,
                CALLERS.len()
            ));
        }
    }
    for (service, _) in NOT_PUBLIC {
        if !skipped.contains(*service) {
            problems.push(format!("NOT_PUBLIC names {service}, which does not exist"));
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The letter of an answer.
fn letter(result: &Result<Vec<u8>, Status>) -> char {
    match result {
        Ok(_) => '.',
        Err(status) => match status.code() {
            Code::Unauthenticated => 'U',
            Code::PermissionDenied => 'P',
            Code::FailedPrecondition => 'F',
            Code::InvalidArgument => 'I',
            Code::NotFound => 'N',
            Code::AlreadyExists => 'A',
            _ => '?',
        },
    }
}

/// The objects the requests name.
struct World {
    alice_id: u64,
    /// Alice's listing.
    listing_a: u64,
    /// Bob's listing, which alice is buying.
    listing_b: u64,
    /// Alice's purchase of `listing_b`.
    purchase: u64,
}

fn rid() -> Option<RequestId> {
    Some(agora_peer::request_id("authz"))
}

fn admin_rid() -> Option<agora_proto::admin::AdminRequestId> {
    Some(agora_proto::admin::AdminRequestId {
        id: agora_peer::new_request_id(),
    })
}

/// The request sent for `rpc` (a fresh request id each time): it names
/// alice's things where the RPC takes an id; otherwise the empty message.
fn request(rpc: &str, world: &World) -> Vec<u8> {
    let method = rpc.rsplit('/').next().unwrap_or_default();
    let linearizable = Some(ReadConsistency {
        min_index: 0,
        linearizable: true,
    });
    match (rpc.contains("AdminService"), method) {
        (false, "Put") => PutRequest {
            request_id: rid(),
            key: "authz".into(),
            value: b"matrix".to_vec(),
        }
        .encode_to_vec(),
        (false, "Get") => GetRequest {
            key: "authz".into(),
            consistency: None,
        }
        .encode_to_vec(),
        (false, "Logout") => LogoutRequest { request_id: rid() }.encode_to_vec(),
        (false, "Balance") => BalanceRequest {
            user_id: world.alice_id,
            consistency: linearizable,
        }
        .encode_to_vec(),
        (false, "CashFlows") => CashFlowsRequest {
            user_id: world.alice_id,
            limit: 10,
            consistency: linearizable,
            ..CashFlowsRequest::default()
        }
        .encode_to_vec(),
        (false, "Withdraw") => WithdrawRequest {
            request_id: rid(),
            amount: 1,
        }
        .encode_to_vec(),
        (false, "EditListing") => EditListingRequest {
            request_id: rid(),
            listing_id: world.listing_a,
            description: Some("edited by the authorization matrix".into()),
            ..EditListingRequest::default()
        }
        .encode_to_vec(),
        (false, "Reprice") => RepriceRequest {
            request_id: rid(),
            listing_id: world.listing_a,
            price: 3_00,
        }
        .encode_to_vec(),
        (false, "Unpublish") => UnpublishRequest {
            request_id: rid(),
            listing_id: world.listing_a,
        }
        .encode_to_vec(),
        (false, "GetListing") => GetListingRequest {
            listing_id: world.listing_b,
            consistency: None,
        }
        .encode_to_vec(),
        (false, "SellerListings") => SellerListingsRequest {
            seller: "bob".into(),
            include_inactive: false,
            limit: 10,
            ..SellerListingsRequest::default()
        }
        .encode_to_vec(),
        (false, "Announce") => agora_proto::market::AnnounceRequest {
            endpoint: "127.0.0.1:9".into(),
        }
        .encode_to_vec(),
        (false, "GoOffline") => {
            agora_proto::market::GoOfflineRequest { request_id: rid() }.encode_to_vec()
        }
        (false, "BeginPurchase") => BeginPurchaseRequest {
            request_id: rid(),
            listing_id: world.listing_b,
            hold_seconds: 60,
        }
        .encode_to_vec(),
        (false, "DepositKey") => DepositKeyRequest {
            request_id: rid(),
            purchase_id: world.purchase,
            key: vec![1; 32],
            ciphertext_root: vec![2; 32],
        }
        .encode_to_vec(),
        (false, "CompletePurchase") => CompletePurchaseRequest {
            request_id: rid(),
            purchase_id: world.purchase,
            ciphertext_root: vec![2; 32],
        }
        .encode_to_vec(),
        (false, "CancelPurchase") => CancelPurchaseRequest {
            request_id: rid(),
            purchase_id: world.purchase,
        }
        .encode_to_vec(),
        (false, "GetPurchase") => GetPurchaseRequest {
            purchase_id: world.purchase,
            consistency: linearizable,
        }
        .encode_to_vec(),
        (false, "Purchases") => PurchasesRequest {
            limit: 10,
            ..PurchasesRequest::default()
        }
        .encode_to_vec(),
        (false, "Dispute") => DisputeRequest {
            request_id: rid(),
            purchase_id: world.purchase,
            evidence: b"not a proof".to_vec(),
        }
        .encode_to_vec(),
        (true, "Standing") => agora_proto::admin::StandingRequest {
            username: "alice".into(),
        }
        .encode_to_vec(),
        (true, "ShowUser") => agora_proto::admin::ShowUserRequest {
            username: "alice".into(),
        }
        .encode_to_vec(),
        (true, "DeleteUser") => agora_proto::admin::DeleteUserRequest {
            request_id: admin_rid(),
            username: "alice".into(),
        }
        .encode_to_vec(),
        // The default commission again: harmless for the callers after it.
        (true, "SetSetting") => agora_proto::admin::SetSettingRequest {
            request_id: admin_rid(),
            name: "commission_bps".into(),
            value: "100".into(),
        }
        .encode_to_vec(),
        (true, "Deposit") => agora_proto::admin::DepositRequest {
            request_id: admin_rid(),
            username: String::new(),
            amount: 0,
        }
        .encode_to_vec(),
        _ => Vec::new(),
    }
}

/// Calls `rpc` on `channel` with `body`, presenting `token`.
async fn call(
    channel: &Channel,
    rpc: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> anyhow::Result<Result<Vec<u8>, Status>> {
    call_raw(channel, rpc, body, token, CALL_TIMEOUT).await
}

/// `token`'s claims, re-signed by `key` after `change`.
fn resign(
    token: &str,
    key: &SigningKey,
    change: impl FnOnce(&mut SessionClaims),
) -> anyhow::Result<String> {
    let body = token.split('.').next().context("a token has two parts")?;
    let mut claims: SessionClaims = bincode::deserialize(&URL_SAFE_NO_PAD.decode(body)?)?;
    change(&mut claims);
    Ok(sign_token(&claims, key))
}

/// The cluster's token-signing key, read from node 1's state database.
async fn cluster_key(cluster: &TestCluster) -> anyhow::Result<SigningKey> {
    let path = cluster.data_dir(1)?.join("state.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    let seed: Vec<u8> = sqlx::query_scalar("SELECT token_seed FROM cluster_secrets WHERE id = 1")
        .fetch_one(&pool)
        .await
        .context("no cluster secrets in node 1's state.db")?;
    pool.close().await;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| anyhow::anyhow!("the token seed is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_caller_as_the_table_says() -> anyhow::Result<()> {
    let (mut rpcs, _) = rpcs()?;
    rpcs.sort_by_key(|rpc| {
        let method = rpc.rsplit('/').next().unwrap_or_default();
        RUN_LAST
            .iter()
            .position(|last| *last == method)
            .map_or(0, |n| n + 1)
    });
    let cluster = TestCluster::start(
        1,
        TestOptions {
            extra_args: vec!["--load-test-ksf".into()],
            ..TestOptions::default()
        },
    )
    .await?;
    let operator = cluster.client();
    let everyone = peer_client(&cluster)?;
    let dir = cluster.dir().to_path_buf();

    // The people.
    account::register(&operator, "root", PASSWORD.as_bytes(), true).await?;
    let admin = account::login(&everyone, "root", PASSWORD.as_bytes()).await?;
    let alice = MarketUser::register(&everyone, &dir, "alice", PASSWORD).await?;
    let bob = MarketUser::register(&everyone, &dir, "bob", PASSWORD).await?;
    let sam = MarketUser::register(&everyone, &dir, "sam", PASSWORD).await?;
    ledger::deposit(&operator, "alice", 100_00, &agora_peer::new_request_id()).await?;
    ledger::deposit(&operator, "sam", 100_00, &agora_peer::new_request_id()).await?;

    // The things: a listing each for alice and bob, bob online, alice
    // buying bob's.
    let file = dir.join("authz.bin");
    std::fs::write(&file, vec![5_u8; 8192])?;
    let listing_a = alice
        .publish_file(&file, "alice's listing", 2_00, 4096)
        .await?;
    let listing_b = bob.publish_file(&file, "bob's listing", 2_00, 4096).await?;
    presence::announce(&bob.client, "127.0.0.1:9").await?;
    let purchase = purchase::begin(&alice.client, listing_b, 600, alice.request())
        .await?
        .purchase
        .context("no purchase in the answer")?
        .id;
    ledger::set_suspended(&operator, "sam", true, &agora_peer::new_request_id()).await?;

    // The tokens.
    let key = cluster_key(&cluster).await?;
    let expired = resign(&alice.session.token, &key, |c| {
        c.expires_at_ms = c.issued_at_ms.saturating_sub(1_000);
        c.issued_at_ms = c.issued_at_ms.saturating_sub(60_000);
    })?;
    let wrong = resign(
        &alice.session.token,
        &SigningKey::from_bytes(&[42; 32]),
        |_| {},
    )?;
    let ended = account::login(&everyone, "alice", PASSWORD.as_bytes()).await?;
    account::logout(&everyone, &ended.token).await?;
    // The genuine key signs a valid copy: proof that only expiry differs.
    let control = resign(&alice.session.token, &key, |_| {})?;
    let tokens: [Option<&str>; 8] = [
        None,
        Some(&alice.session.token),
        Some(&bob.session.token),
        Some(&sam.session.token),
        Some(&admin.token),
        Some(&expired),
        Some(&ended.token),
        Some(&wrong),
    ];
    let world = World {
        alice_id: alice.id,
        listing_a,
        listing_b,
        purchase,
    };
    let channel = everyone.channel(1)?;
    let whoami = "agora.market.v1.AccountService/WhoAmI";
    anyhow::ensure!(
        call(&channel, whoami, Vec::new(), Some(&control)).await?.is_ok(),
        "a token re-signed with the key read from state.db is refused: the expired and wrong-key cells would prove nothing"
    );

    let rows: BTreeMap<&str, &str> = TABLE.iter().copied().collect();
    let mut observed = Vec::new();
    let mut problems = Vec::new();
    for rpc in &rpcs {
        let mut seen = String::new();
        let mut messages = Vec::new();
        for (caller, token) in CALLERS.iter().zip(tokens) {
            let answer = call(&channel, rpc, request(rpc, &world), token).await?;
            seen.push(letter(&answer));
            if let Err(status) = &answer {
                messages.push(format!(
                    "{caller}: {:?} {}",
                    status.code(),
                    status.message()
                ));
            }
        }
        match rows.get(rpc.as_str()) {
            None => problems.push(format!(
                "the RPC {rpc} has no row in TABLE; it answered {seen:?} ({CALLERS:?})"
            )),
            Some(wanted) if *wanted != seen => {
                let cells: Vec<String> = CALLERS
                    .iter()
                    .zip(wanted.chars().zip(seen.chars()))
                    .filter(|(_, (w, s))| w != s)
                    .map(|(caller, (w, s))| format!("{caller} wanted {w} got {s}"))
                    .collect();
                problems.push(format!(
                    "{rpc}: {} [{}]",
                    cells.join(", "),
                    messages.join("; ")
                ));
            }
            Some(_) => {}
        }
        observed.push(format!("    (\"{rpc}\", \"{seen}\"),"));
    }
    if !problems.is_empty() {
        eprintln!("observed rows:\n{}", observed.join("\n"));
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
