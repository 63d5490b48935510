//! The bad-input matrix: every RPC of every service the cluster serves
//! (the public market services and the admin service), sent the bad inputs
//! that apply to it, each answer checked against [`TABLE`].
//!
//! The RPCs are read from the descriptor set the server registers for
//! reflection (`agora_proto::FILE_DESCRIPTOR_SET`), as `t121_authz` does,
//! so the table is complete by construction: an RPC without a row fails
//! `every_rpc_has_a_row` (no cluster needed) and names itself; a row for an
//! RPC that no longer exists fails it too.
//!
//! Every RPC gets two cases of its own row's kind besides the row: a
//! malformed message (`INVALID_ARGUMENT`) and one above every service's
//! message limit (`RESOURCE_EXHAUSTED`). A row adds what applies to the
//! method: empty requests and missing fields, invalid UTF-8 in a string
//! field (raw protobuf bytes, which a typed client cannot send), numbers
//! out of range, huge page sizes (refused, or answered with at most the
//! server's page), enum numbers no variant has, and ids that do not exist.
//!
//! For every case: the exact code, a message a person can act on (it names
//! what the row says, and is no debug dump), the node still running. After
//! the matrix: no node log says `panicked`, the state a user can see
//! (users, balances, listings, purchases, topics, settings, the ledger
//! audit's digest, the demo register) is exactly what it was before, the
//! sessions still work, and the cluster takes a normal write.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

// Amounts are written as cents with the decimal point as an underscore
// (`100_00` is 100.00).
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agora_peer::{account, ledger, presence, purchase, ClusterClient};
use agora_proto::admin as ad;
use agora_proto::market as m;
use agora_tests::{call_raw, peer_client, wait_clean_audit, MarketUser, TestCluster, TestOptions};
use anyhow::Context as _;
use prost::encoding::encode_varint as varint;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Services in the descriptor set that the cluster does not serve on its
/// public listener, and why they have no rows.
const NOT_PUBLIC: &[(&str, &str)] = &[
    (
        "agora.raft.v1.RaftService",
        "node to node only, on the Raft listener (t50 sends it malformed messages)",
    ),
    (
        "agora.peer.v1.SellerService",
        "served by selling peers, not by the cluster",
    ),
];

/// Every public RPC and the bad inputs that apply to it.
const TABLE: &[(&str, Row)] = &[
    ("agora.market.v1.KvService/Put", kv_put),
    ("agora.market.v1.KvService/Get", kv_get),
    (
        "agora.market.v1.AccountService/RegisterStart",
        register_start,
    ),
    (
        "agora.market.v1.AccountService/RegisterFinish",
        register_finish,
    ),
    ("agora.market.v1.AccountService/LoginStart", login_start),
    ("agora.market.v1.AccountService/LoginFinish", login_finish),
    ("agora.market.v1.AccountService/Logout", logout),
    ("agora.market.v1.AccountService/WhoAmI", no_fields),
    ("agora.market.v1.LedgerService/Balance", balance),
    ("agora.market.v1.LedgerService/CashFlows", cash_flows),
    ("agora.market.v1.LedgerService/Withdraw", withdraw),
    ("agora.market.v1.CatalogueService/Publish", publish),
    ("agora.market.v1.CatalogueService/EditListing", edit_listing),
    ("agora.market.v1.CatalogueService/Reprice", reprice),
    ("agora.market.v1.CatalogueService/Unpublish", unpublish),
    ("agora.market.v1.CatalogueService/GetListing", get_listing),
    (
        "agora.market.v1.CatalogueService/SellerListings",
        seller_listings,
    ),
    ("agora.market.v1.CatalogueService/Search", search),
    // Only a freshness, which the whole matrix would wait on.
    ("agora.market.v1.CatalogueService/Topics", no_fields),
    ("agora.market.v1.CatalogueService/Announce", announce),
    ("agora.market.v1.CatalogueService/GoOffline", go_offline),
    (
        "agora.market.v1.PurchaseService/BeginPurchase",
        begin_purchase,
    ),
    ("agora.market.v1.PurchaseService/DepositKey", deposit_key),
    (
        "agora.market.v1.PurchaseService/CompletePurchase",
        complete_purchase,
    ),
    (
        "agora.market.v1.PurchaseService/CancelPurchase",
        cancel_purchase,
    ),
    ("agora.market.v1.PurchaseService/GetPurchase", get_purchase),
    ("agora.market.v1.PurchaseService/Purchases", purchases),
    ("agora.market.v1.PurchaseService/TicketKey", no_fields),
    ("agora.market.v1.PurchaseService/Dispute", dispute),
    ("agora.admin.v1.AdminService/Status", no_fields),
    ("agora.admin.v1.AdminService/Initialize", initialize),
    ("agora.admin.v1.AdminService/AddLearner", add_learner),
    ("agora.admin.v1.AdminService/PromoteVoter", promote_voter),
    ("agora.admin.v1.AdminService/RemoveNode", remove_node),
    ("agora.admin.v1.AdminService/StateDigest", no_fields),
    ("agora.admin.v1.AdminService/TriggerSnapshot", no_fields),
    ("agora.admin.v1.AdminService/Deposit", deposit),
    ("agora.admin.v1.AdminService/SetCommission", set_commission),
    ("agora.admin.v1.AdminService/OpenHold", open_hold),
    ("agora.admin.v1.AdminService/PostHold", close_hold),
    ("agora.admin.v1.AdminService/VoidHold", close_hold),
    ("agora.admin.v1.AdminService/Audit", no_fields),
    ("agora.admin.v1.AdminService/AddTopic", add_topic),
    ("agora.admin.v1.AdminService/RemoveTopic", remove_topic),
    (
        "agora.admin.v1.AdminService/SetDisputeWindow",
        set_dispute_window,
    ),
    ("agora.admin.v1.AdminService/SetSuspended", set_suspended),
    ("agora.admin.v1.AdminService/Standing", standing),
    ("agora.admin.v1.AdminService/Events", events),
    ("agora.admin.v1.AdminService/FindUsers", find_users),
    ("agora.admin.v1.AdminService/ShowUser", show_user),
    ("agora.admin.v1.AdminService/DeleteUser", delete_user),
    ("agora.admin.v1.AdminService/GetSettings", no_fields),
    ("agora.admin.v1.AdminService/SetSetting", set_setting),
    ("agora.admin.v1.AdminService/LogTail", log_tail),
    // Refused before any field is read unless fault injection is on; the
    // two cases every RPC gets never reach it.
    ("agora.admin.v1.AdminService/Crash", no_fields),
];

/// RPCs whose cases go to the leader: a follower forwards a membership
/// change (UNAVAILABLE with the leader's address) before judging it, since
/// only the leader's membership is sure to be the latest.
const ON_THE_LEADER: &[&str] = &["agora.admin.v1.AdminService/PromoteVoter"];

/// The client name of this file's request ids.
const CLIENT: &str = "t124";
/// Longest one call may take before the node counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Above every service's message limit (the purchase service's, 5 MiB, is
/// the largest).
const OVERSIZED_BYTES: usize = 6 * 1024 * 1024;
/// An id no object of any kind has in this small cluster.
const MISSING: u64 = 999_999;
/// A name no account has.
const NOBODY: &str = "nobody-here";
/// A topic name nobody added.
const NO_TOPIC: &str = "no-such-topic";
/// Largest amount the ledger takes (`agora_proto::amount::MAX_AMOUNT`).
const MAX_AMOUNT: u64 = agora_proto::amount::MAX_AMOUNT;
/// Bytes that are not UTF-8 (an overlong lead byte, then a stray one).
const NOT_UTF8: &[u8] = &[b'a', 0xC3, 0x28, 0xFF];
/// Largest page of events (the admin lists clamp a huge limit).
const MAX_EVENTS_PAGE: usize = 1000;
/// Largest page of users.
const MAX_USERS_PAGE: usize = 500;
/// Most log lines in one answer.
const MAX_LOG_LINES: usize = 1000;
/// Largest page of purchases (a larger limit is refused).
const MAX_PURCHASES_PAGE: usize = 500;
const PASSWORD: &str = "bad input matrix";

/// The cases of one RPC, given the objects the requests name.
type Row = fn(&World) -> Vec<Case>;

/// Who sends a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// No token, no client certificate.
    Anonymous,
    /// Alice's session: she owns a listing and is buying bob's.
    Alice,
    /// An admin session (market services that let admins read anyone's).
    Admin,
    /// The operator's client certificate (the admin service).
    Operator,
}

/// The answer a case must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Refused with this code; the message contains each word (any case).
    Refused(Code, &'static [&'static str]),
    /// Answered with at most this many items, counted by the function.
    AtMost(usize, fn(&[u8]) -> anyhow::Result<usize>),
}

/// One bad request.
struct Case {
    what: String,
    caller: Caller,
    body: Vec<u8>,
    want: Want,
}

/// The objects the requests name.
struct World {
    /// Alice's listing.
    alice_listing: u64,
    /// Bob's listing, which alice is buying.
    bob_listing: u64,
    /// Alice's open purchase of bob's listing.
    purchase: u64,
}

impl World {
    /// Ids for the no-cluster check of the rows.
    fn placeholder() -> Self {
        Self {
            alice_listing: 1,
            bob_listing: 2,
            purchase: 1,
        }
    }
}

// ---- raw protobuf -------------------------------------------------------

/// Field `field` as length-delimited `bytes`.
fn field_bytes(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field) << 3 | 2, &mut out);
    varint(u64::try_from(bytes.len()).unwrap_or(u64::MAX), &mut out);
    out.extend_from_slice(bytes);
    out
}

/// Field `field` as a varint (an enum number, a count).
fn field_varint(field: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field) << 3, &mut out);
    varint(v, &mut out);
    out
}

/// String field `field` holding bytes that are not UTF-8.
fn not_utf8(field: u32) -> Vec<u8> {
    field_bytes(field, NOT_UTF8)
}

/// `message` with `extra` after it: a later occurrence of a field wins (or
/// merges into a message field), so this replaces one field of a valid
/// request.
fn then(message: &impl Message, extra: &[u8]) -> Vec<u8> {
    let mut out = message.encode_to_vec();
    out.extend_from_slice(extra);
    out
}

/// A market request id (field 1 of every market write) whose client name
/// is not UTF-8.
fn rid_not_utf8() -> Vec<u8> {
    field_bytes(1, &[not_utf8(1), field_bytes(2, b"id")].concat())
}

/// An admin request id (field 1 of every admin write) that is not UTF-8.
fn admin_rid_not_utf8() -> Vec<u8> {
    field_bytes(1, &not_utf8(1))
}

/// An enum number as it travels: a negative one takes ten bytes.
fn enum_number(n: i32) -> u64 {
    u64::from_ne_bytes(i64::from(n).to_ne_bytes())
}

// ---- building cases -----------------------------------------------------

fn rid() -> Option<m::RequestId> {
    Some(agora_peer::request_id(CLIENT))
}

fn arid() -> Option<ad::AdminRequestId> {
    Some(ad::AdminRequestId {
        id: agora_peer::new_request_id(),
    })
}

/// A case refused with `code`, its message naming `words`.
fn refused(
    what: &str,
    caller: Caller,
    body: Vec<u8>,
    code: Code,
    words: &'static [&'static str],
) -> Case {
    Case {
        what: what.to_owned(),
        caller,
        body,
        want: Want::Refused(code, words),
    }
}

/// A case refused as INVALID_ARGUMENT.
fn invalid(what: &str, caller: Caller, body: Vec<u8>, words: &'static [&'static str]) -> Case {
    refused(what, caller, body, Code::InvalidArgument, words)
}

/// A case refused as NOT_FOUND.
fn missing(what: &str, caller: Caller, body: Vec<u8>, words: &'static [&'static str]) -> Case {
    refused(what, caller, body, Code::NotFound, words)
}

/// A case answered with at most `max` items.
fn at_most(
    what: &str,
    caller: Caller,
    body: Vec<u8>,
    max: usize,
    count: fn(&[u8]) -> anyhow::Result<usize>,
) -> Case {
    Case {
        what: what.to_owned(),
        caller,
        body,
        want: Want::AtMost(max, count),
    }
}

/// What every string refused as not UTF-8 must say.
const UTF8: &[&str] = &["UTF-8", "well-formed"];

/// The cases every RPC gets: a message that does not parse, and one above
/// every limit. Both are refused before any handler runs.
fn every_rpc(caller: Caller) -> Vec<Case> {
    vec![
        // Field 1, length-delimited, five bytes announced, one sent.
        invalid(
            "a malformed message",
            caller,
            vec![0x0a, 0x05, 0x01],
            &["well-formed"],
        ),
        refused(
            "a message above the size limit",
            caller,
            field_bytes(1000, &vec![7; OVERSIZED_BYTES]),
            Code::ResourceExhausted,
            &["over this service's limit", "send less"],
        ),
    ]
}

/// Who sends `rpc`'s two common cases.
fn caller_of(rpc: &str) -> Caller {
    let anonymous = [
        "KvService/",
        "RegisterStart",
        "RegisterFinish",
        "LoginStart",
        "LoginFinish",
        "GetListing",
        "SellerListings",
        "Search",
        "Topics",
        "TicketKey",
    ];
    if rpc.contains("AdminService") {
        Caller::Operator
    } else if anonymous.iter().any(|a| rpc.contains(a)) {
        Caller::Anonymous
    } else {
        Caller::Alice
    }
}

// ---- the rows -----------------------------------------------------------

/// A method whose request has no fields a caller can get wrong.
fn no_fields(_: &World) -> Vec<Case> {
    Vec::new()
}

fn kv_put(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let put = |rid, key: &str, value: Vec<u8>| m::PutRequest {
        request_id: rid,
        key: key.into(),
        value,
    };
    vec![
        invalid(
            "an empty request",
            A,
            m::PutRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "no request id",
            A,
            put(None, CLIENT, b"v".to_vec()).encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "an empty request id",
            A,
            put(
                Some(m::RequestId {
                    client: CLIENT.into(),
                    id: String::new(),
                }),
                CLIENT,
                b"v".to_vec(),
            )
            .encode_to_vec(),
            &["request_id.id"],
        ),
        invalid(
            "an empty key",
            A,
            put(rid(), "", b"v".to_vec()).encode_to_vec(),
            &["key"],
        ),
        invalid(
            "a key of 257 bytes",
            A,
            put(rid(), &"k".repeat(257), b"v".to_vec()).encode_to_vec(),
            &["key", "256"],
        ),
        invalid(
            "a value above 64 KiB",
            A,
            put(rid(), CLIENT, vec![1; 64 * 1024 + 1]).encode_to_vec(),
            &["value", "limit"],
        ),
        invalid(
            "a key that is not UTF-8",
            A,
            then(&put(rid(), CLIENT, b"v".to_vec()), &not_utf8(2)),
            &["PutRequest.key", "UTF-8"],
        ),
        invalid(
            "a request id that is not UTF-8",
            A,
            then(&put(None, CLIENT, b"v".to_vec()), &rid_not_utf8()),
            &["RequestId.client", "UTF-8"],
        ),
    ]
}

fn kv_get(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let get = |key: &str, min_index| m::GetRequest {
        key: key.into(),
        consistency: Some(m::ReadConsistency {
            min_index,
            linearizable: false,
        }),
    };
    vec![
        invalid(
            "an empty key",
            A,
            get("", 0).encode_to_vec(),
            &["key", "empty"],
        ),
        invalid(
            "a key of 257 bytes",
            A,
            get(&"k".repeat(257), 0).encode_to_vec(),
            &["key", "256"],
        ),
        invalid(
            "a key that is not UTF-8",
            A,
            then(&get("k", 0), &not_utf8(1)),
            UTF8,
        ),
        // The node waits (boundedly) for an index it may yet reach, then
        // says how far it got.
        refused(
            "min_index u64::MAX",
            A,
            get(CLIENT, u64::MAX).encode_to_vec(),
            Code::Unavailable,
            &["index", "18446744073709551615"],
        ),
    ]
}

fn register_start(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let start = |name: &str, request: Vec<u8>| m::RegisterStartRequest {
        username: name.into(),
        registration_request: request,
    };
    vec![
        invalid(
            "an empty request",
            A,
            m::RegisterStartRequest::default().encode_to_vec(),
            &["username"],
        ),
        invalid(
            "a username of two characters",
            A,
            start("ab", vec![1; 32]).encode_to_vec(),
            &["username", "3"],
        ),
        invalid(
            "a username with a space",
            A,
            start("a b", vec![1; 32]).encode_to_vec(),
            &["username", "' '"],
        ),
        invalid(
            "a username that is not UTF-8",
            A,
            then(&start("newcomer", vec![1; 32]), &not_utf8(1)),
            UTF8,
        ),
        invalid(
            "a registration request that is not OPAQUE",
            A,
            start("newcomer", vec![1; 32]).encode_to_vec(),
            &["registration_request"],
        ),
    ]
}

fn register_finish(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let finish = |name: &str| m::RegisterFinishRequest {
        request_id: rid(),
        username: name.into(),
        registration_upload: vec![1; 64],
        identity_public_key: vec![2; 32],
        encrypted_identity_key: vec![3; 60],
        admin: false,
    };
    vec![
        invalid(
            "an empty request",
            A,
            m::RegisterFinishRequest::default().encode_to_vec(),
            &["username"],
        ),
        invalid(
            "a registration upload that is not OPAQUE",
            A,
            finish("newcomer").encode_to_vec(),
            &["registration_upload"],
        ),
        invalid(
            "a username that is not UTF-8",
            A,
            then(&finish("newcomer"), &not_utf8(2)),
            UTF8,
        ),
    ]
}

fn login_start(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    // Not alice: every login start counts against the name's lockout.
    let start = |name: &str| m::LoginStartRequest {
        username: name.into(),
        credential_request: vec![1; 16],
        min_index: 0,
    };
    vec![
        invalid(
            "an empty request",
            A,
            m::LoginStartRequest::default().encode_to_vec(),
            &["username"],
        ),
        invalid(
            "a username that is not UTF-8",
            A,
            then(&start("stranger"), &not_utf8(1)),
            UTF8,
        ),
        invalid(
            "a credential request that is not OPAQUE",
            A,
            start("stranger").encode_to_vec(),
            &["credential_request"],
        ),
    ]
}

fn login_finish(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let finish = |id: &str| m::LoginFinishRequest {
        login_id: id.into(),
        credential_finalization: vec![1; 16],
    };
    vec![
        invalid(
            "an empty request",
            A,
            m::LoginFinishRequest::default().encode_to_vec(),
            &["login_id"],
        ),
        refused(
            "a login id no node gave out",
            A,
            finish("0123456789abcdef").encode_to_vec(),
            Code::FailedPrecondition,
            &["login", "start"],
        ),
        invalid(
            "a login id that is not UTF-8",
            A,
            then(&finish("x"), &not_utf8(1)),
            UTF8,
        ),
    ]
}

fn logout(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    vec![
        invalid(
            "an empty request",
            U,
            m::LogoutRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "a request id that is not UTF-8",
            U,
            rid_not_utf8(),
            &["RequestId.client", "UTF-8"],
        ),
    ]
}

fn balance(_: &World) -> Vec<Case> {
    vec![missing(
        "a user id that does not exist (as an admin)",
        Caller::Admin,
        m::BalanceRequest {
            user_id: MISSING,
            consistency: None,
        }
        .encode_to_vec(),
        &["999999"],
    )]
}

fn cash_flows(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let flows = |limit, cursor: &str, kinds: Vec<String>| m::CashFlowsRequest {
        limit,
        cursor: cursor.into(),
        kinds,
        ..m::CashFlowsRequest::default()
    };
    vec![
        invalid(
            "a page of u32::MAX",
            U,
            flows(u32::MAX, "", vec![]).encode_to_vec(),
            &["500"],
        ),
        invalid(
            "a cursor the service never gave out",
            U,
            flows(10, "not-a-cursor", vec![]).encode_to_vec(),
            &["cursor"],
        ),
        invalid(
            "a cursor beyond i64",
            U,
            flows(10, &u64::MAX.to_string(), vec![]).encode_to_vec(),
            &["cursor"],
        ),
        at_most(
            "a cursor past the newest entry (i64::MAX)",
            U,
            flows(10, &i64::MAX.to_string(), vec![]).encode_to_vec(),
            10,
            count_flows,
        ),
        // Entries from the far future on: there are none.
        at_most(
            "from_ms u64::MAX",
            U,
            m::CashFlowsRequest {
                from_ms: u64::MAX,
                ..m::CashFlowsRequest::default()
            }
            .encode_to_vec(),
            0,
            count_flows,
        ),
        invalid(
            "a cursor that is not UTF-8",
            U,
            then(&flows(10, "", vec![]), &not_utf8(6)),
            UTF8,
        ),
        invalid(
            "17 kinds",
            U,
            flows(10, "", vec!["deposit".into(); 17]).encode_to_vec(),
            &["16 kinds"],
        ),
        invalid(
            "a kind of 33 characters",
            U,
            flows(10, "", vec!["k".repeat(33)]).encode_to_vec(),
            &["32 characters"],
        ),
        invalid(
            "a kind that is not UTF-8",
            U,
            then(&flows(10, "", vec![]), &not_utf8(2)),
            UTF8,
        ),
        missing(
            "a user id that does not exist (as an admin)",
            Caller::Admin,
            m::CashFlowsRequest {
                user_id: MISSING,
                ..m::CashFlowsRequest::default()
            }
            .encode_to_vec(),
            &["999999"],
        ),
    ]
}

fn withdraw(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let take = |amount| m::WithdrawRequest {
        request_id: rid(),
        amount,
    };
    vec![
        invalid(
            "an empty request",
            U,
            m::WithdrawRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid("an amount of 0", U, take(0).encode_to_vec(), &["amount"]),
        invalid(
            "an amount of u64::MAX",
            U,
            take(u64::MAX).encode_to_vec(),
            &["amount"],
        ),
        refused(
            "more than the account holds",
            U,
            take(MAX_AMOUNT).encode_to_vec(),
            Code::FailedPrecondition,
            &["not enough money"],
        ),
        invalid(
            "a request id that is not UTF-8",
            U,
            then(
                &m::WithdrawRequest {
                    request_id: None,
                    amount: 1,
                },
                &rid_not_utf8(),
            ),
            UTF8,
        ),
    ]
}

/// A publish request that is valid but for what a case changes.
fn good_publish() -> m::PublishRequest {
    m::PublishRequest {
        request_id: rid(),
        fields: Some(m::ListingFields {
            title: "bad input".into(),
            ..m::ListingFields::default()
        }),
        size: 8192,
        chunk_size: 4096,
        merkle_root: vec![7; 32],
        price: 1_00,
    }
}

fn publish(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let with = |change: fn(&mut m::PublishRequest)| {
        let mut request = good_publish();
        change(&mut request);
        request.encode_to_vec()
    };
    let fields = |extra: Vec<u8>| then(&good_publish(), &field_bytes(2, &extra));
    vec![
        invalid(
            "an empty request",
            U,
            m::PublishRequest::default().encode_to_vec(),
            &["fields"],
        ),
        invalid(
            "an empty title",
            U,
            with(|r| r.fields = Some(m::ListingFields::default())),
            &["title"],
        ),
        invalid("a title that is not UTF-8", U, fields(not_utf8(1)), UTF8),
        invalid("a tag that is not UTF-8", U, fields(not_utf8(4)), UTF8),
        invalid(
            "an attribute value that is not UTF-8",
            U,
            fields(field_bytes(
                5,
                &[field_bytes(1, b"author"), not_utf8(2)].concat(),
            )),
            UTF8,
        ),
        invalid(
            "17 tags",
            U,
            with(|r| {
                if let Some(f) = r.fields.as_mut() {
                    f.tags = (0..17).map(|n| format!("tag{n}")).collect();
                }
            }),
            &["16"],
        ),
        invalid(
            "a Merkle root of 31 bytes",
            U,
            with(|r| r.merkle_root = vec![7; 31]),
            &["32 bytes"],
        ),
        invalid("a size of 0", U, with(|r| r.size = 0), &["empty"]),
        invalid(
            "a size of u64::MAX",
            U,
            with(|r| r.size = u64::MAX),
            &["1 TiB"],
        ),
        invalid(
            "a chunk size that is not a power of two",
            U,
            with(|r| r.chunk_size = 3),
            &["chunk"],
        ),
        invalid(
            "a price of u64::MAX",
            U,
            with(|r| r.price = u64::MAX),
            &["price"],
        ),
        invalid(
            "no request id",
            U,
            with(|r| r.request_id = None),
            &["request_id"],
        ),
        missing(
            "a topic nobody added",
            U,
            with(|r| {
                if let Some(f) = r.fields.as_mut() {
                    f.topic = NO_TOPIC.into();
                }
            }),
            &[NO_TOPIC],
        ),
    ]
}

fn edit_listing(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let edit = |listing_id, title: Option<&str>| m::EditListingRequest {
        request_id: rid(),
        listing_id,
        title: title.map(str::to_owned),
        ..m::EditListingRequest::default()
    };
    let mine = world.alice_listing;
    vec![
        invalid(
            "no listing id",
            U,
            edit(0, Some("x")).encode_to_vec(),
            &["listing_id"],
        ),
        missing(
            "a listing that does not exist",
            U,
            edit(MISSING, Some("x")).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "an empty title",
            U,
            edit(mine, Some("")).encode_to_vec(),
            &["title"],
        ),
        invalid(
            "a title that is not UTF-8",
            U,
            then(&edit(mine, None), &not_utf8(3)),
            UTF8,
        ),
        invalid(
            "a topic that is not UTF-8",
            U,
            then(&edit(mine, None), &not_utf8(5)),
            UTF8,
        ),
        invalid(
            "no request id",
            U,
            m::EditListingRequest {
                request_id: None,
                ..edit(mine, Some("x"))
            }
            .encode_to_vec(),
            &["request_id"],
        ),
        missing(
            "a topic nobody added",
            U,
            m::EditListingRequest {
                topic: Some(NO_TOPIC.into()),
                ..edit(mine, None)
            }
            .encode_to_vec(),
            &[NO_TOPIC],
        ),
    ]
}

fn reprice(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let price = |listing_id, price| m::RepriceRequest {
        request_id: rid(),
        listing_id,
        price,
    };
    vec![
        invalid(
            "no listing id",
            U,
            price(0, 1).encode_to_vec(),
            &["listing_id"],
        ),
        missing(
            "a listing that does not exist",
            U,
            price(MISSING, 1).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "a price of u64::MAX",
            U,
            price(world.alice_listing, u64::MAX).encode_to_vec(),
            &["price"],
        ),
        invalid(
            "no request id",
            U,
            m::RepriceRequest {
                request_id: None,
                ..price(world.alice_listing, 1)
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn unpublish(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let off = |listing_id| m::UnpublishRequest {
        request_id: rid(),
        listing_id,
    };
    vec![
        invalid("no listing id", U, off(0).encode_to_vec(), &["listing_id"]),
        missing(
            "a listing that does not exist",
            U,
            off(MISSING).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "no request id",
            U,
            m::UnpublishRequest {
                request_id: None,
                listing_id: world.alice_listing,
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn get_listing(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let get = |listing_id| m::GetListingRequest {
        listing_id,
        consistency: None,
    };
    vec![
        invalid("no listing id", A, get(0).encode_to_vec(), &["listing_id"]),
        missing(
            "a listing that does not exist",
            A,
            get(MISSING).encode_to_vec(),
            &["999999"],
        ),
    ]
}

fn seller_listings(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let list = |seller: &str, limit, cursor: &str| m::SellerListingsRequest {
        seller: seller.into(),
        limit,
        cursor: cursor.into(),
        ..m::SellerListingsRequest::default()
    };
    vec![
        invalid(
            "a page of u32::MAX",
            A,
            list("alice", u32::MAX, "").encode_to_vec(),
            &["500"],
        ),
        missing(
            "a seller that does not exist",
            A,
            list(NOBODY, 10, "").encode_to_vec(),
            &[NOBODY],
        ),
        invalid(
            "a seller name that cannot be a username",
            A,
            list("x", 10, "").encode_to_vec(),
            &["username"],
        ),
        invalid(
            "a seller name that is not UTF-8",
            A,
            then(&list("alice", 10, ""), &not_utf8(1)),
            UTF8,
        ),
        invalid(
            "a cursor the service never gave out",
            A,
            list("alice", 10, "abc").encode_to_vec(),
            &["cursor"],
        ),
        at_most(
            "a cursor past the newest listing (u64::MAX)",
            A,
            list("alice", 10, &u64::MAX.to_string()).encode_to_vec(),
            10,
            count_listings,
        ),
    ]
}

fn search(_: &World) -> Vec<Case> {
    use Caller::Anonymous as A;
    let query = |change: fn(&mut m::SearchRequest)| {
        let mut request = m::SearchRequest::default();
        change(&mut request);
        request.encode_to_vec()
    };
    let plain = m::SearchRequest::default();
    vec![
        invalid(
            "sort 999 (no such enum value)",
            A,
            then(&plain, &field_varint(7, 999)),
            &["sort", "999"],
        ),
        invalid(
            "sort -1 (no such enum value)",
            A,
            then(&plain, &field_varint(7, enum_number(-1))),
            &["sort", "-1"],
        ),
        invalid(
            "a page of u32::MAX",
            A,
            query(|r| r.limit = u32::MAX),
            &["100"],
        ),
        invalid(
            "a lowest price above the highest",
            A,
            query(|r| {
                r.min_price = Some(5_00);
                r.max_price = Some(1_00);
            }),
            &["price"],
        ),
        missing(
            "a topic nobody added",
            A,
            query(|r| r.topic = NO_TOPIC.into()),
            &[NO_TOPIC],
        ),
        invalid(
            "a topic name that cannot be one",
            A,
            query(|r| r.topic = "Not A Topic!".into()),
            &["topic"],
        ),
        invalid(
            "a text of 300 bytes",
            A,
            query(|r| r.text = "w".repeat(300)),
            &["256"],
        ),
        invalid(
            "a text that is not UTF-8",
            A,
            then(&plain, &not_utf8(1)),
            UTF8,
        ),
        invalid(
            "a cursor the service never gave out",
            A,
            query(|r| r.cursor = "garbage".into()),
            &["cursor"],
        ),
        missing(
            "a seller that does not exist",
            A,
            query(|r| r.seller = NOBODY.into()),
            &[NOBODY],
        ),
    ]
}

fn announce(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let at = |endpoint: &str| m::AnnounceRequest {
        endpoint: endpoint.into(),
    };
    vec![
        invalid(
            "an empty request",
            U,
            at("").encode_to_vec(),
            &["endpoint", "host:port"],
        ),
        invalid(
            "an endpoint that is no address",
            U,
            at("not an address").encode_to_vec(),
            &["host:port"],
        ),
        invalid(
            "an endpoint of 300 bytes",
            U,
            at(&format!("{}:9", "h".repeat(298))).encode_to_vec(),
            &["256 bytes"],
        ),
        invalid(
            "an endpoint that is not UTF-8",
            U,
            then(&at("127.0.0.1:9"), &not_utf8(1)),
            UTF8,
        ),
    ]
}

fn go_offline(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    vec![
        invalid(
            "an empty request",
            U,
            m::GoOfflineRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "a request id that is not UTF-8",
            U,
            rid_not_utf8(),
            &["RequestId.client", "UTF-8"],
        ),
    ]
}

fn begin_purchase(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let begin = |listing_id, hold_seconds| m::BeginPurchaseRequest {
        request_id: rid(),
        listing_id,
        hold_seconds,
    };
    vec![
        invalid(
            "an empty request",
            U,
            m::BeginPurchaseRequest::default().encode_to_vec(),
            &["listing_id"],
        ),
        missing(
            "a listing that does not exist",
            U,
            begin(MISSING, 60).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "a hold of u32::MAX seconds",
            U,
            begin(world.bob_listing, u32::MAX).encode_to_vec(),
            &["hold_seconds"],
        ),
        invalid(
            "no request id",
            U,
            m::BeginPurchaseRequest {
                request_id: None,
                ..begin(world.bob_listing, 60)
            }
            .encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "a request id that is not UTF-8",
            U,
            then(
                &m::BeginPurchaseRequest {
                    request_id: None,
                    ..begin(world.bob_listing, 60)
                },
                &rid_not_utf8(),
            ),
            UTF8,
        ),
    ]
}

fn deposit_key(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let deposit = |purchase_id, key: usize, root: usize| m::DepositKeyRequest {
        request_id: rid(),
        purchase_id,
        key: vec![1; key],
        ciphertext_root: vec![2; root],
    };
    vec![
        invalid(
            "an empty request",
            U,
            m::DepositKeyRequest::default().encode_to_vec(),
            &["purchase_id"],
        ),
        missing(
            "a purchase that does not exist",
            U,
            deposit(MISSING, 32, 32).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "a key of 31 bytes",
            U,
            deposit(world.purchase, 31, 32).encode_to_vec(),
            &["key", "32 bytes"],
        ),
        invalid(
            "a ciphertext root of 33 bytes",
            U,
            deposit(world.purchase, 32, 33).encode_to_vec(),
            &["ciphertext root", "32 bytes"],
        ),
        invalid(
            "no request id",
            U,
            m::DepositKeyRequest {
                request_id: None,
                ..deposit(world.purchase, 32, 32)
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn complete_purchase(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let complete = |purchase_id, root: usize| m::CompletePurchaseRequest {
        request_id: rid(),
        purchase_id,
        ciphertext_root: vec![2; root],
    };
    vec![
        invalid(
            "an empty request",
            U,
            m::CompletePurchaseRequest::default().encode_to_vec(),
            &["purchase_id"],
        ),
        missing(
            "a purchase that does not exist",
            U,
            complete(MISSING, 32).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "an empty ciphertext root",
            U,
            complete(world.purchase, 0).encode_to_vec(),
            &["ciphertext root", "32 bytes"],
        ),
        invalid(
            "no request id",
            U,
            m::CompletePurchaseRequest {
                request_id: None,
                ..complete(world.purchase, 32)
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn cancel_purchase(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    vec![
        invalid(
            "an empty request",
            U,
            m::CancelPurchaseRequest::default().encode_to_vec(),
            &["purchase_id"],
        ),
        missing(
            "a purchase that does not exist",
            U,
            m::CancelPurchaseRequest {
                request_id: rid(),
                purchase_id: MISSING,
            }
            .encode_to_vec(),
            &["999999"],
        ),
        // With a request id this would cancel alice's purchase.
        invalid(
            "no request id",
            U,
            m::CancelPurchaseRequest {
                request_id: None,
                purchase_id: world.purchase,
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn get_purchase(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let get = |purchase_id| m::GetPurchaseRequest {
        purchase_id,
        consistency: None,
    };
    vec![
        invalid(
            "an empty request",
            U,
            get(0).encode_to_vec(),
            &["purchase_id"],
        ),
        missing(
            "a purchase that does not exist",
            U,
            get(MISSING).encode_to_vec(),
            &["999999"],
        ),
    ]
}

fn count_flows(bytes: &[u8]) -> anyhow::Result<usize> {
    Ok(m::CashFlowsReply::decode(bytes)?.entries.len())
}

fn count_listings(bytes: &[u8]) -> anyhow::Result<usize> {
    Ok(m::SellerListingsReply::decode(bytes)?.listings.len())
}

fn count_purchases(bytes: &[u8]) -> anyhow::Result<usize> {
    Ok(m::PurchasesReply::decode(bytes)?.purchases.len())
}

fn purchases(_: &World) -> Vec<Case> {
    use Caller::Alice as U;
    let plain = m::PurchasesRequest::default();
    vec![
        invalid(
            "role 999 (no such enum value)",
            U,
            then(&plain, &field_varint(1, 999)),
            &["role", "999"],
        ),
        invalid(
            "role -1 (no such enum value)",
            U,
            then(&plain, &field_varint(1, enum_number(-1))),
            &["role", "-1"],
        ),
        invalid(
            "a page of u32::MAX",
            U,
            m::PurchasesRequest {
                limit: u32::MAX,
                ..m::PurchasesRequest::default()
            }
            .encode_to_vec(),
            &["500"],
        ),
        at_most(
            "before_id u64::MAX (past the newest)",
            U,
            m::PurchasesRequest {
                before_id: u64::MAX,
                ..m::PurchasesRequest::default()
            }
            .encode_to_vec(),
            MAX_PURCHASES_PAGE,
            count_purchases,
        ),
    ]
}

fn dispute(world: &World) -> Vec<Case> {
    use Caller::Alice as U;
    vec![
        invalid(
            "an empty request",
            U,
            m::DisputeRequest::default().encode_to_vec(),
            &["purchase_id"],
        ),
        invalid(
            "evidence that does not decode",
            U,
            m::DisputeRequest {
                request_id: rid(),
                purchase_id: world.purchase,
                evidence: b"not a proof".to_vec(),
            }
            .encode_to_vec(),
            &["evidence"],
        ),
    ]
}

/// A member with `id` and an API address of `api`.
fn member(id: u64, api: &str) -> ad::Member {
    ad::Member {
        id,
        api_addr: api.into(),
        raft_addr: "127.0.0.1:9".into(),
        voter: true,
    }
}

fn initialize(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let init = |members| ad::InitializeRequest { members };
    vec![
        invalid("no members", O, init(vec![]).encode_to_vec(), &["members"]),
        invalid(
            "a member with id 0",
            O,
            init(vec![member(0, "127.0.0.1:9")]).encode_to_vec(),
            &["node id"],
        ),
        invalid(
            "a member address that is no address",
            O,
            init(vec![member(1, "nowhere")]).encode_to_vec(),
            &["api_addr", "host:port"],
        ),
        invalid(
            "a member address that is not UTF-8",
            O,
            field_bytes(1, &then(&member(1, "127.0.0.1:9"), &not_utf8(2))),
            UTF8,
        ),
    ]
}

fn add_learner(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let add = |m| ad::AddLearnerRequest { member: m };
    vec![
        invalid("no member", O, add(None).encode_to_vec(), &["member"]),
        invalid(
            "a member with id 0",
            O,
            add(Some(member(0, "127.0.0.1:9"))).encode_to_vec(),
            &["node id"],
        ),
        invalid(
            "a member address that is no address",
            O,
            add(Some(member(MISSING, "nowhere"))).encode_to_vec(),
            &["api_addr", "host:port"],
        ),
        invalid(
            "a member address that is not UTF-8",
            O,
            field_bytes(1, &then(&member(MISSING, "127.0.0.1:9"), &not_utf8(3))),
            UTF8,
        ),
    ]
}

fn promote_voter(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    vec![
        missing(
            "no node id",
            O,
            ad::PromoteVoterRequest { id: 0 }.encode_to_vec(),
            &["node 0", "member"],
        ),
        missing(
            "a node that is not a member",
            O,
            ad::PromoteVoterRequest { id: MISSING }.encode_to_vec(),
            &["999999", "member"],
        ),
    ]
}

fn remove_node(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    vec![
        missing(
            "no node id",
            O,
            ad::RemoveNodeRequest { id: 0, force: true }.encode_to_vec(),
            &["node 0", "member"],
        ),
        missing(
            "a node that is not a member",
            O,
            ad::RemoveNodeRequest {
                id: MISSING,
                force: true,
            }
            .encode_to_vec(),
            &["999999", "member"],
        ),
    ]
}

fn deposit(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let put = |name: &str, amount| ad::DepositRequest {
        request_id: arid(),
        username: name.into(),
        amount,
    };
    vec![
        invalid(
            "an empty request",
            O,
            ad::DepositRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "no username",
            O,
            put("", 1_00).encode_to_vec(),
            &["username"],
        ),
        missing(
            "a user that does not exist",
            O,
            put(NOBODY, 1_00).encode_to_vec(),
            &[NOBODY],
        ),
        invalid(
            "an amount of 0",
            O,
            put("alice", 0).encode_to_vec(),
            &["amount"],
        ),
        invalid(
            "an amount of u64::MAX",
            O,
            put("alice", u64::MAX).encode_to_vec(),
            &["amount"],
        ),
        invalid(
            "one cent above the largest amount",
            O,
            put("alice", MAX_AMOUNT + 1).encode_to_vec(),
            &["amount"],
        ),
        invalid(
            "a username that is not UTF-8",
            O,
            then(&put("alice", 1_00), &not_utf8(2)),
            UTF8,
        ),
        invalid(
            "a request id that is not UTF-8",
            O,
            then(
                &ad::DepositRequest {
                    request_id: None,
                    ..put("alice", 1_00)
                },
                &admin_rid_not_utf8(),
            ),
            &["AdminRequestId.id", "UTF-8"],
        ),
    ]
}

fn set_commission(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let set = |bps| ad::SetCommissionRequest {
        request_id: arid(),
        bps,
    };
    vec![
        invalid(
            "10,001 basis points",
            O,
            set(10_001).encode_to_vec(),
            &["10000"],
        ),
        invalid(
            "u32::MAX basis points",
            O,
            set(u32::MAX).encode_to_vec(),
            &["10000"],
        ),
        invalid(
            "no request id",
            O,
            ad::SetCommissionRequest {
                request_id: None,
                bps: 100,
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn open_hold(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let hold = |user: &str, payee: &str, amount, ttl_ms| ad::OpenHoldRequest {
        request_id: arid(),
        username: user.into(),
        payee: payee.into(),
        amount,
        ttl_ms,
    };
    vec![
        invalid(
            "an empty request",
            O,
            ad::OpenHoldRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        missing(
            "a holder that does not exist",
            O,
            hold(NOBODY, "bob", 1_00, 0).encode_to_vec(),
            &[NOBODY],
        ),
        missing(
            "a payee that does not exist",
            O,
            hold("alice", NOBODY, 1_00, 0).encode_to_vec(),
            &[NOBODY],
        ),
        invalid(
            "an amount of 0",
            O,
            hold("alice", "bob", 0, 0).encode_to_vec(),
            &["amount"],
        ),
        invalid(
            "an amount of u64::MAX",
            O,
            hold("alice", "bob", u64::MAX, 0).encode_to_vec(),
            &["amount"],
        ),
        refused(
            "more than the holder has",
            O,
            hold("alice", "bob", MAX_AMOUNT, 0).encode_to_vec(),
            Code::FailedPrecondition,
            &["not enough money"],
        ),
        invalid(
            "a lifetime of u64::MAX ms",
            O,
            hold("alice", "bob", 1_00, u64::MAX).encode_to_vec(),
            &["ttl_ms"],
        ),
    ]
}

fn close_hold(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let close = |hold_id| ad::CloseHoldRequest {
        request_id: arid(),
        hold_id,
    };
    vec![
        invalid(
            "no request id",
            O,
            ad::CloseHoldRequest {
                request_id: None,
                hold_id: 1,
            }
            .encode_to_vec(),
            &["request_id"],
        ),
        missing(
            "a hold that does not exist",
            O,
            close(MISSING).encode_to_vec(),
            &["999999"],
        ),
        invalid(
            "a hold id of u64::MAX",
            O,
            close(u64::MAX).encode_to_vec(),
            &["hold_id"],
        ),
    ]
}

fn add_topic(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let add = |name: &str, description: &str| ad::AddTopicRequest {
        request_id: arid(),
        name: name.into(),
        description: description.into(),
    };
    vec![
        invalid(
            "an empty request",
            O,
            ad::AddTopicRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid("no name", O, add("", "x").encode_to_vec(), &["topic"]),
        invalid(
            "a name that cannot be a topic",
            O,
            add("Not A Topic!", "x").encode_to_vec(),
            &["topic"],
        ),
        invalid(
            "a name that is not UTF-8",
            O,
            then(&add("books", "x"), &not_utf8(2)),
            UTF8,
        ),
        invalid(
            "a description of 201 characters",
            O,
            add("books", &"d".repeat(201)).encode_to_vec(),
            &["200"],
        ),
    ]
}

fn remove_topic(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let remove = |name: &str| ad::RemoveTopicRequest {
        request_id: arid(),
        name: name.into(),
    };
    vec![
        invalid(
            "no request id",
            O,
            ad::RemoveTopicRequest {
                request_id: None,
                name: "general".into(),
            }
            .encode_to_vec(),
            &["request_id"],
        ),
        missing(
            "a topic nobody added",
            O,
            remove(NO_TOPIC).encode_to_vec(),
            &[NO_TOPIC],
        ),
        invalid(
            "a name that cannot be a topic",
            O,
            remove("Not A Topic!").encode_to_vec(),
            &["topic"],
        ),
    ]
}

fn set_dispute_window(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    vec![
        invalid(
            "u64::MAX ms",
            O,
            ad::SetDisputeWindowRequest {
                request_id: arid(),
                window_ms: u64::MAX,
            }
            .encode_to_vec(),
            &["90 days"],
        ),
        invalid(
            "no request id",
            O,
            ad::SetDisputeWindowRequest {
                request_id: None,
                window_ms: 1000,
            }
            .encode_to_vec(),
            &["request_id"],
        ),
    ]
}

fn set_suspended(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let suspend = |name: &str| ad::SetSuspendedRequest {
        request_id: arid(),
        username: name.into(),
        suspended: true,
    };
    vec![
        invalid(
            "an empty request",
            O,
            ad::SetSuspendedRequest::default().encode_to_vec(),
            &["request_id"],
        ),
        invalid("no username", O, suspend("").encode_to_vec(), &["username"]),
        missing(
            "a user that does not exist",
            O,
            suspend(NOBODY).encode_to_vec(),
            &[NOBODY],
        ),
        invalid(
            "a username that is not UTF-8",
            O,
            then(&suspend("alice"), &not_utf8(2)),
            UTF8,
        ),
    ]
}

fn standing(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let of = |name: &str| ad::StandingRequest {
        username: name.into(),
    };
    vec![
        invalid("no username", O, of("").encode_to_vec(), &["username"]),
        missing(
            "a user that does not exist",
            O,
            of(NOBODY).encode_to_vec(),
            &[NOBODY],
        ),
        invalid(
            "a username that is not UTF-8",
            O,
            then(&of("alice"), &not_utf8(1)),
            UTF8,
        ),
    ]
}

fn count_events(bytes: &[u8]) -> anyhow::Result<usize> {
    Ok(ad::EventsReply::decode(bytes)?.events.len())
}

fn events(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    vec![
        at_most(
            "a page of u32::MAX",
            O,
            ad::EventsRequest {
                since_id: 0,
                limit: u32::MAX,
            }
            .encode_to_vec(),
            MAX_EVENTS_PAGE,
            count_events,
        ),
        at_most(
            "since_id u64::MAX (past the end)",
            O,
            ad::EventsRequest {
                since_id: u64::MAX,
                limit: 10,
            }
            .encode_to_vec(),
            0,
            count_events,
        ),
    ]
}

fn count_users(bytes: &[u8]) -> anyhow::Result<usize> {
    Ok(ad::FindUsersReply::decode(bytes)?.users.len())
}

fn find_users(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let find = |query: &str, after_id, limit| ad::FindUsersRequest {
        query: query.into(),
        after_id,
        limit,
    };
    vec![
        at_most(
            "a page of u32::MAX",
            O,
            find("", 0, u32::MAX).encode_to_vec(),
            MAX_USERS_PAGE,
            count_users,
        ),
        at_most(
            "after_id u64::MAX (past the end)",
            O,
            find("", u64::MAX, 10).encode_to_vec(),
            0,
            count_users,
        ),
        invalid(
            "a search text of 65 characters",
            O,
            find(&"a".repeat(65), 0, 10).encode_to_vec(),
            &["64"],
        ),
        invalid(
            "a search text that is not UTF-8",
            O,
            then(&find("", 0, 10), &not_utf8(1)),
            UTF8,
        ),
    ]
}

fn show_user(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let show = |name: &str| ad::ShowUserRequest {
        username: name.into(),
    };
    vec![
        invalid("no username", O, show("").encode_to_vec(), &["username"]),
        missing(
            "a user that does not exist",
            O,
            show(NOBODY).encode_to_vec(),
            &[NOBODY],
        ),
        invalid(
            "a username that is not UTF-8",
            O,
            then(&show("alice"), &not_utf8(1)),
            UTF8,
        ),
    ]
}

fn delete_user(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let delete = |name: &str| ad::DeleteUserRequest {
        request_id: arid(),
        username: name.into(),
    };
    vec![
        invalid(
            "no request id",
            O,
            ad::DeleteUserRequest {
                request_id: None,
                username: NOBODY.into(),
            }
            .encode_to_vec(),
            &["request_id"],
        ),
        invalid("no username", O, delete("").encode_to_vec(), &["username"]),
        missing(
            "a user that does not exist",
            O,
            delete(NOBODY).encode_to_vec(),
            &[NOBODY],
        ),
    ]
}

fn set_setting(_: &World) -> Vec<Case> {
    use Caller::Operator as O;
    let set = |name: &str, value: &str| ad::SetSettingRequest {
        request_id: arid(),
        name: name.into(),
        value: value.into(),
    };
    vec![
        invalid(
            "no request id",
            O,
            ad::SetSettingRequest {
                request_id: None,
                ..set("commission_bps", "100")
            }
            .encode_to_vec(),
            &["request_id"],
        ),
        invalid(
            "a setting that does not exist",
            O,
            set("no_such_setting", "1").encode_to_vec(),
            &["no_such_setting"],
        ),
        invalid(
            "a value that is no number",
            O,
            set("commission_bps", "abc").encode_to_vec(),
            &["abc"],
        ),
        invalid(
            "a value beyond u64",
            O,
            set("dispute_window_ms", "99999999999999999999999").encode_to_vec(),
            &["dispute_window_ms", "too large"],
        ),
        invalid(
            "a commission of 10,001 basis points",
            O,
            set("commission_bps", "10001").encode_to_vec(),
            &["10000"],
        ),
        invalid(
            "a name that is not UTF-8",
            O,
            then(&set("commission_bps", "100"), &not_utf8(2)),
            UTF8,
        ),
    ]
}

fn count_lines(bytes: &[u8]) -> anyhow::Result<usize> {
    Ok(ad::LogTailReply::decode(bytes)?.lines.len())
}

fn log_tail(_: &World) -> Vec<Case> {
    vec![at_most(
        "u32::MAX lines",
        Caller::Operator,
        ad::LogTailRequest { lines: u32::MAX }.encode_to_vec(),
        MAX_LOG_LINES,
        count_lines,
    )]
}

// ---- the table against the descriptor set --------------------------------

/// Every RPC in the descriptor set, and the services skipped.
fn rpcs() -> anyhow::Result<(Vec<String>, BTreeSet<String>)> {
    agora_tests::descriptor_rpcs(NOT_PUBLIC)
}

#[test]
fn every_rpc_has_a_row() -> anyhow::Result<()> {
    let (rpcs, skipped) = rpcs()?;
    let rows: BTreeMap<&str, Row> = TABLE.iter().copied().collect();
    let mut problems = Vec::new();
    if rows.len() != TABLE.len() {
        problems.push("TABLE names an RPC twice".to_owned());
    }
    for rpc in &rpcs {
        if !rows.contains_key(rpc.as_str()) {
            problems.push(format!(
                "the RPC {rpc} has no row in TABLE (tests/tests/t124_bad_input.rs): add one with the bad inputs that apply to it and the answers they must get (no_fields if its request has none)"
            ));
        }
    }
    for rpc in rows.keys() {
        if !rpcs.iter().any(|known| known == rpc) {
            problems.push(format!(
                "TABLE has a row for {rpc}, which no service defines any more"
            ));
        }
    }
    for (service, _) in NOT_PUBLIC {
        if !skipped.contains(*service) {
            problems.push(format!("NOT_PUBLIC names {service}, which does not exist"));
        }
    }
    // Every case's body must be what the row claims: a request that
    // decodes, unless it carries invalid UTF-8 on purpose.
    let world = World::placeholder();
    for (rpc, row) in TABLE {
        for case in row(&world) {
            if case.what.is_empty() {
                problems.push(format!("{rpc}: a case has no description"));
            }
            if let Want::Refused(_, words) = case.want {
                if words.is_empty() {
                    problems.push(format!(
                        "{rpc} / {}: name a word the message must contain",
                        case.what
                    ));
                }
            }
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn raw_helpers_make_what_they_say() -> anyhow::Result<()> {
    // A request id whose client is not UTF-8 fails to decode, naming it.
    let body = then(&m::LogoutRequest::default(), &rid_not_utf8());
    let error = m::LogoutRequest::decode(body.as_slice())
        .err()
        .context("invalid UTF-8 decoded")?;
    assert!(error.to_string().contains("RequestId.client"), "{error}");
    // A replaced string field: the later occurrence is the one decoded.
    let put = m::PutRequest {
        key: "k".into(),
        ..m::PutRequest::default()
    };
    let mut body = put.encode_to_vec();
    body.extend(field_bytes(2, b"other"));
    assert_eq!(m::PutRequest::decode(body.as_slice())?.key, "other");
    // An unknown enum number survives decoding (proto3 enums are open):
    // only the handler can refuse it.
    let body = then(&m::SearchRequest::default(), &field_varint(7, 999));
    assert_eq!(m::SearchRequest::decode(body.as_slice())?.sort, 999);
    let body = then(
        &m::SearchRequest::default(),
        &field_varint(7, enum_number(-1)),
    );
    assert_eq!(m::SearchRequest::decode(body.as_slice())?.sort, -1);
    // The malformed case really is malformed, for every request type.
    assert!(m::WhoAmIRequest::decode([0x0a_u8, 0x05, 0x01].as_slice()).is_err());
    Ok(())
}

// ---- the matrix on a cluster ---------------------------------------------

/// Calls `rpc` on `channel`; the outer error means no answer in time.
async fn call(
    channel: &Channel,
    rpc: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> anyhow::Result<Result<Vec<u8>, Status>> {
    call_raw(channel, rpc, body, token, CALL_TIMEOUT).await
}

/// Calls `rpc` and decodes its answer; any refusal is the test's error.
async fn ask<T: Message + Default>(
    channel: &Channel,
    rpc: &str,
    body: &impl Message,
    token: Option<&str>,
) -> anyhow::Result<T> {
    let bytes = call(channel, rpc, body.encode_to_vec(), token)
        .await?
        .map_err(|s| anyhow::anyhow!("{rpc}: {:?} {}", s.code(), s.message()))?;
    T::decode(bytes.as_slice()).with_context(|| format!("the answer of {rpc} does not decode"))
}

/// Everything a user or an operator can see, read linearizably.
#[derive(Debug, PartialEq)]
struct Snapshot {
    users: Vec<ad::UserSummary>,
    details: Vec<ad::UserDetail>,
    listings: Vec<m::Listing>,
    purchases: Vec<m::Purchase>,
    topics: Vec<m::Topic>,
    settings: ad::Settings,
    register: (bool, u64),
    ledger_digest: String,
}

/// The channels and tokens a snapshot reads with.
struct Readers<'a> {
    operator: Channel,
    peer: Channel,
    admin_token: &'a str,
    user_tokens: [&'a str; 2],
}

const LINEARIZABLE: Option<m::ReadConsistency> = Some(m::ReadConsistency {
    min_index: 0,
    linearizable: true,
});

async fn snapshot(client: &ClusterClient, r: &Readers<'_>) -> anyhow::Result<Snapshot> {
    // The audit first: every node clean and agreeing, so the local reads
    // below (settings, users) see the same state on whichever node.
    let (_, ledger_digest) = wait_clean_audit(
        client,
        "a clean, agreed ledger audit",
        Duration::from_secs(60),
    )
    .await?;
    let users: ad::FindUsersReply = ask(
        &r.operator,
        "agora.admin.v1.AdminService/FindUsers",
        &ad::FindUsersRequest {
            query: String::new(),
            after_id: 0,
            limit: 500,
        },
        None,
    )
    .await?;
    let mut details = Vec::new();
    let mut listings = Vec::new();
    for user in &users.users {
        let mut detail: ad::UserDetail = ask(
            &r.operator,
            "agora.admin.v1.AdminService/ShowUser",
            &ad::ShowUserRequest {
                username: user.username.clone(),
            },
            None,
        )
        .await?;
        // Logins are not replicated state (and the matrix logs in nobody).
        detail.last_login_ms = 0;
        details.push(detail);
        let page: m::SellerListingsReply = ask(
            &r.peer,
            "agora.market.v1.CatalogueService/SellerListings",
            &m::SellerListingsRequest {
                seller: user.username.clone(),
                include_inactive: true,
                limit: 500,
                cursor: String::new(),
                consistency: LINEARIZABLE,
            },
            Some(r.admin_token),
        )
        .await?;
        listings.extend(page.listings);
    }
    let mut purchases = Vec::new();
    for token in r.user_tokens {
        for role in [m::PurchaseRole::Buyer, m::PurchaseRole::Seller] {
            let page: m::PurchasesReply = ask(
                &r.peer,
                "agora.market.v1.PurchaseService/Purchases",
                &m::PurchasesRequest {
                    role: role.into(),
                    limit: 500,
                    before_id: 0,
                    consistency: LINEARIZABLE,
                },
                Some(token),
            )
            .await?;
            purchases.extend(page.purchases);
        }
    }
    let topics: m::TopicsReply = ask(
        &r.peer,
        "agora.market.v1.CatalogueService/Topics",
        &m::TopicsRequest {
            consistency: LINEARIZABLE,
        },
        None,
    )
    .await?;
    let settings: ad::Settings = ask(
        &r.operator,
        "agora.admin.v1.AdminService/GetSettings",
        &ad::GetSettingsRequest {},
        None,
    )
    .await?;
    let register: m::GetReply = ask(
        &r.peer,
        "agora.market.v1.KvService/Get",
        &m::GetRequest {
            key: CLIENT.into(),
            consistency: LINEARIZABLE,
        },
        None,
    )
    .await?;
    Ok(Snapshot {
        users: users.users,
        details,
        listings,
        purchases,
        topics: topics.topics,
        settings,
        register: (register.found, register.revision),
        ledger_digest,
    })
}

/// Whether a message reads as a sentence for a person rather than a debug
/// dump.
fn reads_as_a_sentence(message: &str) -> bool {
    let dump = ["Status {", "DecodeError", "Some(", "Err(", "Code::"];
    message.len() >= 12 && message.contains(' ') && !dump.iter().any(|d| message.contains(d))
}

/// What is wrong with `answer` for `case`, if anything.
fn judge(case: &Case, answer: &Result<Vec<u8>, Status>) -> Option<String> {
    match (case.want, answer) {
        (Want::Refused(code, words), Err(status)) => {
            let message = status.message();
            let lower = message.to_lowercase();
            let absent: Vec<&&str> = words
                .iter()
                .filter(|w| !lower.contains(&w.to_lowercase()))
                .collect();
            if status.code() != code {
                Some(format!(
                    "wanted {code:?}, got {:?}: {message:?}",
                    status.code()
                ))
            } else if !reads_as_a_sentence(message) {
                Some(format!("the message is no sentence: {message:?}"))
            } else if !absent.is_empty() {
                Some(format!("the message does not say {absent:?}: {message:?}"))
            } else {
                None
            }
        }
        (Want::Refused(code, _), Ok(bytes)) => Some(format!(
            "wanted {code:?}, but it was answered ({} bytes)",
            bytes.len()
        )),
        (Want::AtMost(max, count), Ok(bytes)) => match count(bytes) {
            Ok(n) if n <= max => None,
            Ok(n) => Some(format!("answered {n} items, more than the page of {max}")),
            Err(e) => Some(format!("the answer does not decode: {e}")),
        },
        (Want::AtMost(max, _), Err(status)) if status.code() == Code::InvalidArgument => {
            // Refusing a huge page is as good as clamping it, with a
            // sentence.
            (!reads_as_a_sentence(status.message())).then(|| {
                format!(
                    "refused a page of at most {max} with no sentence: {:?}",
                    status.message()
                )
            })
        }
        (Want::AtMost(max, _), Err(status)) => Some(format!(
            "wanted at most {max} items or INVALID_ARGUMENT, got {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_input_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let (rpcs, _) = rpcs()?;
    let rows: BTreeMap<&str, Row> = TABLE.iter().copied().collect();
    let cluster = TestCluster::start(
        3,
        TestOptions {
            extra_args: vec!["--load-test-ksf".into()],
            ..TestOptions::default()
        },
    )
    .await?;
    let operator = cluster.client();
    let everyone = peer_client(&cluster)?;
    let dir = cluster.dir().to_path_buf();

    // The people: an admin, alice with money and a listing, bob with a
    // listing alice is buying (for an hour, so nothing lapses during the
    // matrix; bob then goes offline, so no presence lease lapses either).
    let root = account::register(&operator, "root", PASSWORD.as_bytes(), true).await?;
    // On whichever node, once it has the registration.
    let admin = account::login_after(&everyone, "root", PASSWORD.as_bytes(), root.index).await?;
    let alice = MarketUser::register(&everyone, &dir, "alice", PASSWORD).await?;
    let bob = MarketUser::register(&everyone, &dir, "bob", PASSWORD).await?;
    ledger::deposit(&operator, "alice", 100_00, &agora_peer::new_request_id()).await?;
    let file = dir.join("bad-input.bin");
    std::fs::write(&file, vec![5_u8; 8192])?;
    let alice_listing = alice
        .publish_file(&file, "alice's listing", 2_00, 4096)
        .await?;
    let bob_listing = bob.publish_file(&file, "bob's listing", 2_00, 4096).await?;
    presence::announce(&bob.client, "127.0.0.1:9").await?;
    let purchase = purchase::begin(&alice.client, bob_listing, 3600, alice.request())
        .await?
        .purchase
        .context("no purchase in the answer")?
        .id;
    presence::go_offline(&bob.client).await?;
    let world = World {
        alice_listing,
        bob_listing,
        purchase,
    };

    let readers = Readers {
        operator: operator.channel(1)?,
        peer: everyone.channel(1)?,
        admin_token: &admin.token,
        user_tokens: [&alice.session.token, &bob.session.token],
    };
    let before = snapshot(&operator, &readers).await?;
    anyhow::ensure!(
        !before.listings.is_empty() && !before.purchases.is_empty() && before.users.len() == 3,
        "the snapshot misses the world it should compare: {before:?}"
    );
    let setup = started.elapsed();

    // The matrix: one case at a time, spread over the three nodes (so
    // followers that forward and the leader both answer).
    let nodes = cluster.node_ids();
    let mut problems = Vec::new();
    let mut cases = 0_usize;
    for rpc in &rpcs {
        let Some(row) = rows.get(rpc.as_str()) else {
            problems.push(format!("the RPC {rpc} has no row in TABLE"));
            continue;
        };
        let mut all = every_rpc(caller_of(rpc));
        all.extend(row(&world));
        for case in all {
            let node = if ON_THE_LEADER.contains(&rpc.as_str()) {
                cluster.wait_for_leader(None).await?
            } else {
                nodes[cases % nodes.len()]
            };
            cases += 1;
            let (channel, token) = match case.caller {
                Caller::Anonymous => (everyone.channel(node)?, None),
                Caller::Alice => (everyone.channel(node)?, Some(alice.session.token.as_str())),
                Caller::Admin => (everyone.channel(node)?, Some(admin.token.as_str())),
                Caller::Operator => (operator.channel(node)?, None),
            };
            let answer = call(&channel, rpc, case.body.clone(), token)
                .await
                .with_context(|| format!("{rpc} / {} on node {node}", case.what))?;
            if let Some(problem) = judge(&case, &answer) {
                problems.push(format!("{rpc} / {} (node {node}): {problem}", case.what));
            }
            anyhow::ensure!(
                cluster.is_running(node),
                "node {node} stopped after {rpc} / {}",
                case.what
            );
        }
    }
    let matrix = started.elapsed() - setup;

    // No node panicked, and nothing moved.
    for id in &nodes {
        anyhow::ensure!(cluster.is_running(*id), "node {id} is not running");
        let log = std::fs::read_to_string(cluster.log_path(*id)?)?;
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            problems.push(format!("node {id} panicked: {line}"));
        }
    }
    let after = snapshot(&operator, &readers).await?;
    if after != before {
        problems.push(format!(
            "the state changed:\nbefore: {before:#?}\nafter: {after:#?}"
        ));
    }
    // The sessions the matrix used still work...
    for token in [&alice.session.token, &bob.session.token, &admin.token] {
        let who: m::WhoAmIReply = ask(
            &readers.peer,
            "agora.market.v1.AccountService/WhoAmI",
            &m::WhoAmIRequest {},
            Some(token),
        )
        .await?;
        anyhow::ensure!(who.user_id != 0, "a session stopped working: {who:?}");
    }
    // ...and the cluster takes a normal write on every node.
    for node in &nodes {
        let put: m::PutReply = ask(
            &everyone.channel(*node)?,
            "agora.market.v1.KvService/Put",
            &m::PutRequest {
                request_id: rid(),
                key: format!("{CLIENT}-after-{node}"),
                value: b"fine".to_vec(),
            },
            None,
        )
        .await?;
        anyhow::ensure!(put.revision == 1, "a normal put after the matrix: {put:?}");
    }
    eprintln!(
        "{cases} bad-input cases over {} RPCs: setup {:.1}s, matrix {:.1}s, total {:.1}s",
        rpcs.len(),
        setup.as_secs_f64(),
        matrix.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        problems.is_empty(),
        "{} of {cases} cases went wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}
