//! A checker for the state machine: command sequences made from bytes,
//! applied to a real [`StateMachine`] on a SQLite file, with the ledger's
//! rules checked after every entry.
//!
//! Shared by the seeded unit test below (every `cargo test`) and the
//! `state_machine_apply` cargo-fuzz target in `fuzz/`, so both check the
//! same things:
//!
//! - applying never fails (a storage error would stop a node);
//! - after every entry the ledger audit ([`store::audit::audit`]) is clean:
//!   balances equal their journals, they sum to zero, held money matches
//!   the open holds and pending proceeds, purchases agree with their holds;
//! - an entry whose every proposal was refused (or was a retry answered
//!   from memory) changes nothing but the applied index and the
//!   remembered request ids;
//! - a second state machine that applies the same log in other batch
//!   sizes, as a follower catching up does, gives the same answers and
//!   the same state digest;
//! - a third one that installs a snapshot the first built halfway through
//!   (as a follower that fell behind does), then applies the rest of the
//!   log, gives the same answers for the rest and ends at the same digest.
//!
//! Inputs are [`Script`]s: [`arbitrary`] turns bytes into a sequence of
//! [`Action`]s over small id spaces (a handful of users, listings, holds
//! and purchases), so most commands name things that exist. Each action
//! maps onto the [`Op`] a proposer would send, with both valid and invalid
//! arguments.
//!
//! Built only for this crate's tests and with the `apply-check` feature
//! (the fuzz crate turns it on).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use agora_proto::amount::MAX_AMOUNT;
use agora_proto::auth::{AgoraOpaque, KsfParams, Role};
use arbitrary::{Arbitrary, Unstructured};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use sqlx::Connection;

use super::command::{
    Actor, Answer, Command, ListingEdit, Op, Outcome, Proposal, RequestKey, MAX_PURCHASE_TTL_MS,
};
use super::state_machine::StateMachine;
use super::typ::{Entry, LogId, Snapshot};
use crate::domain::catalogue::{FileFacts, ListingText};
use crate::store;

/// Most steps (log entries) in one script: enough to open, settle and
/// dispute several purchases, few enough that one run stays in the tens of
/// milliseconds.
pub const MAX_STEPS: usize = 64;

/// Ids are drawn from `0..ID_SPACE` (0 never exists; ids start at 1).
const ID_SPACE: u8 = 5;
/// Hold ids go further: every priced purchase opens one.
const HOLD_ID_SPACE: u8 = 13;
/// The first command's time (Unix ms, November 2023).
const START_MS: u64 = 1_700_000_000_000;

/// A sequence of entries to apply, made from fuzzer or random bytes.
#[derive(Debug, Clone)]
pub struct Script {
    /// Start from a small market (users with money, topics, listings,
    /// sellers online, a dispute window) instead of an empty one.
    pub prelude: bool,
    /// How many entries the replica applies per batch (1 to 8).
    pub replica_batch: usize,
    /// The entries after the prelude.
    pub steps: Vec<Step>,
}

impl Script {
    /// Reads a script from bytes; any bytes give one (missing bytes read as
    /// zeros). Steps are read until they stand for [`MAX_STEPS`] entries
    /// (a sale is up to four), so a script has at most `MAX_STEPS + 3`
    /// entries after its opening.
    #[must_use]
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        // Three scripts in four start from the small market.
        let prelude = u8::arbitrary(&mut u).unwrap_or(0) % 4 != 0;
        let replica_batch = 1 + usize::from(u8::arbitrary(&mut u).unwrap_or(0) % 8);
        let mut steps = Vec::new();
        let mut entries = 0;
        while entries < MAX_STEPS && !u.is_empty() {
            match Step::arbitrary(&mut u) {
                Ok(step) => {
                    entries += step.entries().len();
                    steps.push(step);
                }
                Err(_) => break,
            }
        }
        Self {
            prelude,
            replica_batch,
            steps,
        }
    }
}

/// One or a few log entries.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    /// One entry: the clock moves, then one or two proposals in a batch.
    Entry {
        /// How far the leader's clock moved since the previous entry.
        clock: Clock,
        /// The first proposal.
        first: Proposed,
        /// A second proposal in the same entry (a batch).
        second: Option<Proposed>,
    },
    /// A purchase driven by its buyer and seller, one entry per command a
    /// second apart: begin, deposit the key, then complete (and perhaps
    /// dispute), cancel, or leave it to expire. Random commands seldom
    /// line up like this, and this is where money moves.
    Sale(Sale),
}

/// A purchase's commands, from its buyer and seller.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Sale {
    /// The buyer.
    pub buyer: Id,
    /// The listing.
    pub listing: Id,
    /// How long the purchase holds the money.
    pub ttl: Span,
    /// The key (and ciphertext root) the seller deposits.
    pub key: u8,
    /// The buyer reports another ciphertext root than the seller's.
    pub wrong_root: bool,
    /// How it ends.
    pub end: SaleEnd,
}

/// How a [`Sale`] ends.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum SaleEnd {
    /// The buyer completes it.
    Complete,
    /// The buyer completes it, then proves a bad chunk.
    Dispute,
    /// The buyer cancels it.
    Cancel,
    /// Nobody does anything more (an expiry may end it).
    Abandon,
}

impl Step {
    /// The entries this step stands for: each the clock's move and the
    /// proposals.
    #[must_use]
    pub fn entries(&self) -> Vec<(Clock, Vec<Proposed>)> {
        match self {
            Step::Entry {
                clock,
                first,
                second,
            } => vec![(
                *clock,
                std::iter::once(first).chain(second).cloned().collect(),
            )],
            Step::Sale(sale) => {
                let newest = PurchaseRef::Newest;
                let mut actions = vec![
                    Action::BeginPurchase {
                        buyer: sale.buyer,
                        listing: sale.listing,
                        ttl: sale.ttl,
                    },
                    Action::DepositKey {
                        purchase: newest,
                        seller: Party::Its,
                        key: sale.key,
                        root: Root(sale.key),
                    },
                ];
                let complete = Action::CompletePurchase {
                    purchase: newest,
                    buyer: Party::Its,
                    root: sale.wrong_root.then_some(Root(sale.key.wrapping_add(1))),
                };
                match sale.end {
                    SaleEnd::Complete => actions.push(complete),
                    SaleEnd::Dispute => {
                        actions.push(complete);
                        actions.push(Action::ReverseSale {
                            purchase: newest,
                            buyer: Party::Its,
                            chunk: sale.key,
                            no_fault: false,
                        });
                    }
                    SaleEnd::Cancel => actions.push(Action::CancelPurchase {
                        purchase: newest,
                        who: Who {
                            user: sale.buyer,
                            admin: false,
                        },
                    }),
                    SaleEnd::Abandon => {}
                }
                actions
                    .into_iter()
                    .map(|action| {
                        (
                            Clock::Second,
                            vec![Proposed {
                                request: None,
                                action,
                            }],
                        )
                    })
                    .collect()
            }
        }
    }
}

/// A proposal: an action, with or without a request id.
#[derive(Debug, Clone, Arbitrary)]
pub struct Proposed {
    /// The request id (one of 256, so a script of tens of proposals
    /// often retries or reuses one), or none as for the leader's own
    /// timer commands.
    pub request: Option<u8>,
    /// What it does.
    pub action: Action,
}

/// How the leader's clock moved between two entries.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Clock {
    /// Not at all (same millisecond).
    Same,
    /// One millisecond.
    Milli,
    /// A second.
    Second,
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day and a bit (past the longest purchase hold).
    Day,
    /// A minute back: a new leader whose clock is behind the old one's.
    Back,
}

impl Clock {
    fn advance(self, now: u64) -> u64 {
        match self {
            Clock::Same => now,
            Clock::Milli => now + 1,
            Clock::Second => now + 1_000,
            Clock::Minute => now + 60_000,
            Clock::Hour => now + 3_600_000,
            Clock::Day => now + MAX_PURCHASE_TTL_MS + 1,
            Clock::Back => now.saturating_sub(60_000),
        }
    }
}

/// An id from a small space (0 names nothing), or rarely one at the edge
/// of the integer range, which storage must take without harm.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Id(u8);

impl Id {
    fn get(self) -> u64 {
        match self.0 {
            u8::MAX => u64::MAX,
            254 => 1 << 63,
            n => u64::from(n % ID_SPACE),
        }
    }
}

/// What the clients of a real market know before a step: their own
/// purchases (parties and root) and the holds they were given, read from
/// the state.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Each purchase by id.
    pub purchases: BTreeMap<u64, KnownPurchase>,
    /// The newest hold's id (0: none).
    pub last_hold: i64,
}

impl Known {
    fn new() -> Self {
        Self::default()
    }

    fn purchase(&self, id: u64) -> Option<&KnownPurchase> {
        self.purchases.get(&id)
    }

    fn last_purchase(&self) -> u64 {
        self.purchases.keys().next_back().copied().unwrap_or(0)
    }
}

/// Which purchase an action names: the newest (as a client acting on the
/// purchase it just opened), or one by id.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum PurchaseRef {
    /// The newest purchase.
    Newest,
    /// A purchase by id.
    Id(Id),
}

impl PurchaseRef {
    fn get(self, known: &Known) -> u64 {
        match self {
            PurchaseRef::Newest => known.last_purchase(),
            PurchaseRef::Id(id) => id.get(),
        }
    }
}

/// Which hold an action names: the newest, or one by id.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum HoldRef {
    /// The newest hold.
    Newest,
    /// A hold by id.
    Id(HoldId),
}

impl HoldRef {
    fn get(self, known: &Known) -> i64 {
        match self {
            HoldRef::Newest => known.last_hold,
            HoldRef::Id(id) => id.get(),
        }
    }
}

/// What a purchase's own clients know about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct KnownPurchase {
    /// The buyer.
    pub buyer_id: u64,
    /// The seller.
    pub seller_id: u64,
    /// The ciphertext root the seller deposited, once keyed.
    pub ciphertext_root: Option<[u8; 32]>,
}

/// Who acts on a purchase: its own party (its seller depositing the key,
/// its buyer completing), or any id.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Party {
    /// The purchase's own buyer or seller (as the action needs).
    Its,
    /// Someone by id.
    Anyone(Id),
}

impl Party {
    fn get(self, purchase: u64, known: &Known, its: impl Fn(&KnownPurchase) -> u64) -> u64 {
        match self {
            Party::Anyone(id) => id.get(),
            Party::Its => known.purchase(purchase).map_or(0, its),
        }
    }
}

/// A hold id (small, or rarely negative or the largest).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct HoldId(u8);

impl HoldId {
    fn get(self) -> i64 {
        match self.0 {
            u8::MAX => i64::MAX,
            254 => -1,
            253 => i64::MIN,
            n => i64::from(n % HOLD_ID_SPACE),
        }
    }
}

/// An amount of cents: small ones three times in four, else an edge.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Amount {
    kind: u8,
    cents: u16,
}

impl Amount {
    /// `cents + 1` cents.
    fn cents(cents: u16) -> Self {
        Self { kind: 4, cents }
    }

    fn get(self) -> u64 {
        match self.kind % 16 {
            // Zero (refused for money, free for a price).
            0 => 0,
            // The largest amount allowed, one over it, and `u64::MAX`.
            1 => MAX_AMOUNT,
            2 => MAX_AMOUNT + 1,
            3 => u64::MAX,
            _ => 1 + u64::from(self.cents),
        }
    }
}

/// A duration in milliseconds, for holds, windows and settings: mostly
/// usable ones, sometimes zero or past every limit.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Span {
    kind: u8,
    ms: u8,
}

impl Span {
    fn get(self) -> u64 {
        match self.kind % 8 {
            0 => 0,
            1 => u64::MAX,
            2 => 1 + u64::from(self.ms),
            3 | 4 => 60_000,
            5 => 3_600_000,
            6 => MAX_PURCHASE_TTL_MS,
            _ => u64::from(self.ms) * 1000,
        }
    }
}

/// Listing text: normal words, or text a proposer would have refused.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Text {
    /// A short normalized text.
    Word(u8),
    /// Empty.
    Empty,
    /// Leading and trailing spaces (not normalized).
    Padded,
    /// Too long for a title.
    Long,
}

impl Text {
    fn get(self) -> String {
        match self {
            Text::Word(n) => format!("item {n}"),
            Text::Empty => String::new(),
            Text::Padded => " padded ".into(),
            Text::Long => "x".repeat(201),
        }
    }
}

/// A topic name.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Topic {
    /// The default topic (always there, never removable).
    General,
    /// One the prelude adds.
    Music,
    /// One nobody adds unless a script does.
    Books,
    /// Not a valid name.
    Bad,
}

impl Topic {
    fn get(self) -> String {
        match self {
            Topic::General => agora_proto::listing::DEFAULT_TOPIC.into(),
            Topic::Music => "music".into(),
            Topic::Books => "books".into(),
            Topic::Bad => "Bad Topic!".into(),
        }
    }
}

/// A 32-byte value from a few, so a buyer's root often matches the
/// seller's.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Root(u8);

impl Root {
    fn get(self) -> [u8; 32] {
        [self.0 % 3; 32]
    }
}

/// Who asks for a listing or purchase change.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Who {
    /// The user.
    pub user: Id,
    /// Claims to be an admin.
    pub admin: bool,
}

impl Who {
    fn get(self) -> Actor {
        Actor {
            user_id: self.user.get(),
            admin: self.admin,
        }
    }
}

/// One command, over small id spaces. Each maps onto one [`Op`].
#[derive(Debug, Clone, Arbitrary)]
#[allow(missing_docs)] // The variants are the ops they name.
pub enum Action {
    InitCluster,
    Register {
        name: u8,
        admin: bool,
    },
    Deposit {
        user: Id,
        amount: Amount,
    },
    Withdraw {
        user: Id,
        amount: Amount,
    },
    OpenHold {
        user: Id,
        payee: Id,
        amount: Amount,
        ttl: Span,
    },
    PostHold {
        hold: HoldRef,
    },
    VoidHold {
        hold: HoldRef,
    },
    ExpireHolds,
    SetCommission {
        bps: u16,
    },
    Publish {
        seller: Id,
        title: Text,
        topic: Topic,
        price: Amount,
        size: u16,
        chunk_shift: u8,
        root: Root,
    },
    EditListing {
        listing: Id,
        who: Who,
        title: Option<Text>,
        description: Option<Text>,
        topic: Option<Topic>,
        tag: Option<u8>,
    },
    Reprice {
        listing: Id,
        who: Who,
        price: Amount,
    },
    Unpublish {
        listing: Id,
        who: Who,
    },
    AddTopic {
        topic: Topic,
        description: Text,
    },
    RemoveTopic {
        topic: Topic,
    },
    SetPresence {
        user: Id,
        online: bool,
        bad_endpoint: bool,
    },
    LapsePresence {
        user: Id,
        since: u8,
    },
    BeginPurchase {
        buyer: Id,
        listing: Id,
        ttl: Span,
    },
    DepositKey {
        purchase: PurchaseRef,
        seller: Party,
        key: u8,
        root: Root,
    },
    CompletePurchase {
        purchase: PurchaseRef,
        buyer: Party,
        /// `None`: the root the seller deposited.
        root: Option<Root>,
    },
    CancelPurchase {
        purchase: PurchaseRef,
        who: Who,
    },
    SetDisputeWindow {
        ms: Span,
    },
    ReverseSale {
        purchase: PurchaseRef,
        buyer: Party,
        chunk: u8,
        no_fault: bool,
    },
    SetSuspended {
        user: Id,
        suspended: bool,
    },
    RecordEvent {
        node: u8,
        empty_kind: bool,
    },
    DeleteUser {
        user: Id,
    },
    SetHoldTtl {
        ms: Span,
    },
    SetKsf {
        memory: u8,
        iterations: u8,
        parallelism: u8,
    },
    RevokeSession {
        session: u8,
        user: Id,
        ttl: Span,
    },
    Put {
        key: u8,
        value: u8,
    },
}

impl Action {
    /// The op a proposer would send for this action at `now_ms`, with the
    /// purchases that exist (`known`) filling in [`Party::Its`].
    #[must_use]
    pub fn op(&self, now_ms: u64, known: &Known) -> Op {
        match *self {
            Action::InitCluster => init_cluster(),
            Action::Register { name, admin } => {
                let fixture = fixture();
                Op::Register {
                    // A few names (so some are taken), and one that is not
                    // canonical.
                    username: if name == u8::MAX {
                        "Not Canonical".into()
                    } else {
                        format!("user{}", name % 8)
                    },
                    role: if admin { Role::Admin } else { Role::User },
                    password_file: fixture.password_file.clone(),
                    identity_public_key: fixture.identity_public_key.clone(),
                    encrypted_identity_key: vec![7; 60],
                }
            }
            Action::Deposit { user, amount } => Op::Deposit {
                user_id: user.get(),
                amount: amount.get(),
            },
            Action::Withdraw { user, amount } => Op::Withdraw {
                user_id: user.get(),
                amount: amount.get(),
            },
            Action::OpenHold {
                user,
                payee,
                amount,
                ttl,
            } => Op::OpenHold {
                user_id: user.get(),
                payee_user_id: payee.get(),
                amount: amount.get(),
                ttl_ms: ttl.get(),
                purchase_id: None,
            },
            Action::PostHold { hold } => Op::PostHold {
                hold_id: hold.get(known),
            },
            Action::VoidHold { hold } => Op::VoidHold {
                hold_id: hold.get(known),
            },
            Action::ExpireHolds => Op::ExpireHolds,
            Action::SetCommission { bps } => Op::SetCommission {
                // Mostly in range; over it one time in eight.
                bps: if bps % 8 == 0 {
                    10_001 + u32::from(bps)
                } else {
                    u32::from(bps) % 10_001
                },
            },
            Action::Publish {
                seller,
                title,
                topic,
                price,
                size,
                chunk_shift,
                root,
            } => Op::Publish {
                seller_id: seller.get(),
                text: ListingText {
                    title: title.get(),
                    description: String::new(),
                    topic: topic.get(),
                    tags: Vec::new(),
                    attributes: BTreeMap::new(),
                },
                facts: FileFacts {
                    // 0 (refused) to 64 KiB.
                    size: u64::from(size),
                    // 4 KiB to 8 MiB (over 4 MiB is refused).
                    chunk_size: 1 << (12 + u32::from(chunk_shift % 12)),
                    merkle_root: root.get(),
                },
                price: price.get(),
            },
            Action::EditListing {
                listing,
                who,
                title,
                description,
                topic,
                tag,
            } => Op::EditListing {
                listing_id: listing.get(),
                actor: who.get(),
                edit: ListingEdit {
                    title: title.map(Text::get),
                    description: description.map(Text::get),
                    topic: topic.map(Topic::get),
                    tags: tag.map(|t| vec![format!("tag{t}")]),
                    attributes: None,
                },
            },
            Action::Reprice {
                listing,
                who,
                price,
            } => Op::Reprice {
                listing_id: listing.get(),
                actor: who.get(),
                price: price.get(),
            },
            Action::Unpublish { listing, who } => Op::Unpublish {
                listing_id: listing.get(),
                actor: who.get(),
            },
            Action::AddTopic { topic, description } => Op::AddTopic {
                name: topic.get(),
                description: description.get(),
            },
            Action::RemoveTopic { topic } => Op::RemoveTopic { name: topic.get() },
            Action::SetPresence {
                user,
                online,
                bad_endpoint,
            } => Op::SetPresence {
                user_id: user.get(),
                endpoint: match (online, bad_endpoint) {
                    (false, _) => None,
                    (true, false) => Some(format!("127.0.0.1:{}", 7000 + user.get())),
                    (true, true) => Some("no port".into()),
                },
            },
            Action::LapsePresence { user, since } => Op::LapsePresence {
                lapses: vec![(user.get(), u64::from(since))],
            },
            Action::BeginPurchase {
                buyer,
                listing,
                ttl,
            } => Op::BeginPurchase {
                buyer_id: buyer.get(),
                listing_id: listing.get(),
                ttl_ms: ttl.get(),
            },
            Action::DepositKey {
                purchase,
                seller,
                key,
                root,
            } => Op::DepositKey {
                purchase_id: purchase.get(known),
                seller_id: seller.get(purchase.get(known), known, |p| p.seller_id),
                key: [key; 32],
                ciphertext_root: root.get(),
            },
            Action::CompletePurchase {
                purchase,
                buyer,
                root,
            } => Op::CompletePurchase {
                purchase_id: purchase.get(known),
                buyer_id: buyer.get(purchase.get(known), known, |p| p.buyer_id),
                ciphertext_root: match root {
                    Some(root) => root.get(),
                    None => known
                        .purchase(purchase.get(known))
                        .and_then(|p| p.ciphertext_root)
                        .unwrap_or_default(),
                },
            },
            Action::CancelPurchase { purchase, who } => Op::CancelPurchase {
                purchase_id: purchase.get(known),
                actor: who.get(),
            },
            Action::SetDisputeWindow { ms } => Op::SetDisputeWindow { ms: ms.get() },
            Action::ReverseSale {
                purchase,
                buyer,
                chunk,
                no_fault,
            } => Op::ReverseSale {
                purchase_id: purchase.get(known),
                buyer_id: buyer.get(purchase.get(known), known, |p| p.buyer_id),
                chunk_index: u64::from(chunk),
                fault: if no_fault {
                    String::new()
                } else {
                    "hash mismatch".into()
                },
                evidence_hash: [chunk; 32],
            },
            Action::SetSuspended { user, suspended } => Op::SetSuspended {
                user_id: user.get(),
                suspended,
            },
            Action::RecordEvent { node, empty_kind } => Op::RecordEvent {
                node_id: u64::from(node % 4),
                kind: if empty_kind {
                    String::new()
                } else {
                    "leader_elected".into()
                },
                subject_node_id: 0,
                term: u64::from(node),
                message: "a fuzzed event".into(),
            },
            Action::DeleteUser { user } => Op::DeleteUser {
                user_id: user.get(),
            },
            Action::SetHoldTtl { ms } => Op::SetHoldTtl { ms: ms.get() },
            Action::SetKsf {
                memory,
                iterations,
                parallelism,
            } => Op::SetKsf {
                ksf: KsfParams {
                    memory_kib: [0, 8, 64, 19 * 1024, u32::MAX][usize::from(memory % 5)],
                    iterations: u32::from(iterations % 4),
                    // Rarely more lanes than argon2 takes.
                    parallelism: if parallelism == u8::MAX {
                        u32::MAX
                    } else {
                        u32::from(parallelism % 3)
                    },
                },
            },
            Action::RevokeSession { session, user, ttl } => Op::RevokeSession {
                session_id: if session == 0 {
                    String::new()
                } else {
                    format!("session-{}", session % 4)
                },
                user_id: user.get(),
                expires_at_ms: now_ms.saturating_add(ttl.get()),
            },
            Action::Put { key, value } => Op::Put {
                key: if key == 0 {
                    String::new()
                } else {
                    format!("k{}", key % 4)
                },
                value: vec![value],
            },
        }
    }

    /// The action's name, for tallies.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Action::InitCluster => "InitCluster",
            Action::Register { .. } => "Register",
            Action::Deposit { .. } => "Deposit",
            Action::Withdraw { .. } => "Withdraw",
            Action::OpenHold { .. } => "OpenHold",
            Action::PostHold { .. } => "PostHold",
            Action::VoidHold { .. } => "VoidHold",
            Action::ExpireHolds => "ExpireHolds",
            Action::SetCommission { .. } => "SetCommission",
            Action::Publish { .. } => "Publish",
            Action::EditListing { .. } => "EditListing",
            Action::Reprice { .. } => "Reprice",
            Action::Unpublish { .. } => "Unpublish",
            Action::AddTopic { .. } => "AddTopic",
            Action::RemoveTopic { .. } => "RemoveTopic",
            Action::SetPresence { .. } => "SetPresence",
            Action::LapsePresence { .. } => "LapsePresence",
            Action::BeginPurchase { .. } => "BeginPurchase",
            Action::DepositKey { .. } => "DepositKey",
            Action::CompletePurchase { .. } => "CompletePurchase",
            Action::CancelPurchase { .. } => "CancelPurchase",
            Action::SetDisputeWindow { .. } => "SetDisputeWindow",
            Action::ReverseSale { .. } => "ReverseSale",
            Action::SetSuspended { .. } => "SetSuspended",
            Action::RecordEvent { .. } => "RecordEvent",
            Action::DeleteUser { .. } => "DeleteUser",
            Action::SetHoldTtl { .. } => "SetHoldTtl",
            Action::SetKsf { .. } => "SetKsf",
            Action::RevokeSession { .. } => "RevokeSession",
            Action::Put { .. } => "Put",
        }
    }
}

/// Registration material: real OPAQUE and ed25519 bytes (the state machine
/// checks that they parse), made once per process from a fixed seed so a
/// script always means the same commands.
struct Fixture {
    server_setup: Vec<u8>,
    password_file: Vec<u8>,
    identity_public_key: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        use opaque_ke::{
            ClientRegistration, ClientRegistrationFinishParameters, ServerRegistration, ServerSetup,
        };
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let setup = ServerSetup::<AgoraOpaque>::new(&mut rng);
        let password = b"correct horse battery staple";
        let start = ClientRegistration::<AgoraOpaque>::start(&mut rng, password)
            .expect("a registration starts");
        let response = ServerRegistration::<AgoraOpaque>::start(&setup, start.message, b"user")
            .expect("the server answers");
        let ksf = KsfParams::LOAD_TEST
            .argon2()
            .expect("cheap argon2 parameters");
        let finish = start
            .state
            .finish(
                &mut rng,
                password,
                response.message,
                ClientRegistrationFinishParameters::new(Default::default(), Some(&ksf)),
            )
            .expect("the registration finishes");
        let password_file = ServerRegistration::<AgoraOpaque>::finish(finish.message)
            .serialize()
            .to_vec();
        let identity = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        Fixture {
            server_setup: setup.serialize().to_vec(),
            password_file,
            identity_public_key: identity.verifying_key().to_bytes().to_vec(),
        }
    })
}

fn init_cluster() -> Op {
    Op::InitCluster {
        server_setup: fixture().server_setup.clone(),
        token_seed: [1; 32],
        ksf: KsfParams::LOAD_TEST,
    }
}

/// The prelude: a small market that purchases can start from at once.
/// Users 1-3 have money and list one file each (listing 2 is free), user 4
/// is an admin, sellers 1-3 are online, proceeds stay held for an hour.
fn prelude() -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, admin) in [(1, false), (2, false), (3, false), (4, true)] {
        ops.push(Action::Register { name, admin }.op(START_MS, &Known::new()));
    }
    for user in 1..=3 {
        ops.push(Op::Deposit {
            user_id: user,
            amount: 100_000,
        });
    }
    ops.push(Op::AddTopic {
        name: "music".into(),
        description: "songs".into(),
    });
    for (seller, price) in [(1, 500), (2, 0), (3, 2_500)] {
        ops.push(
            Action::Publish {
                seller: Id(seller),
                title: Text::Word(seller),
                topic: if seller == 1 {
                    Topic::Music
                } else {
                    Topic::General
                },
                price: if price == 0 {
                    Amount { kind: 0, cents: 0 }
                } else {
                    Amount::cents(price - 1)
                },
                size: 10_000,
                chunk_shift: 0,
                root: Root(seller),
            }
            .op(START_MS, &Known::new()),
        );
        ops.push(Op::SetPresence {
            user_id: u64::from(seller),
            endpoint: Some(format!("127.0.0.1:{}", 7000 + u64::from(seller))),
        });
    }
    ops.push(Op::SetCommission { bps: 500 });
    ops.push(Op::SetDisputeWindow { ms: 3_600_000 });
    ops
}

/// What went wrong, and at which entry.
#[derive(Debug, thiserror::Error)]
#[error("log index {index}: {problem}")]
pub struct Violation {
    /// The entry after which the rule broke (0: at the end).
    pub index: u64,
    /// What broke.
    pub problem: String,
}

fn violation(index: u64, problem: impl Into<String>) -> Violation {
    Violation {
        index,
        problem: problem.into(),
    }
}

/// What a script did: how many entries and proposals, and how each kind of
/// action fared (accepted, refused).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Entries applied (prelude included).
    pub entries: u64,
    /// Proposals applied.
    pub proposals: u64,
    /// Per action: (accepted, refused or answered from memory).
    pub actions: BTreeMap<&'static str, (u64, u64)>,
}

impl Tally {
    /// Adds another tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.entries += other.entries;
        self.proposals += other.proposals;
        for (name, (ok, no)) in &other.actions {
            let e = self.actions.entry(name).or_default();
            e.0 += ok;
            e.1 += no;
        }
    }
}

/// Hashes the replicated data except the bookkeeping every entry changes
/// (the applied index in `meta`, the remembered request ids in
/// `requests`), with [`store::digest::tables_digest`].
struct DataDigest {
    tables: Vec<String>,
}

impl DataDigest {
    async fn new(sm: &StateMachine) -> Result<Self, sqlx::Error> {
        let mut conn = sm.readers().acquire().await?;
        let tables = store::replicated_tables(&mut conn, "main")
            .await?
            .into_iter()
            .filter(|table| table != "meta" && table != "requests")
            .collect();
        Ok(Self { tables })
    }

    async fn of(&self, sm: &StateMachine) -> Result<String, sqlx::Error> {
        let mut conn = sm.readers().acquire().await?;
        let mut tx = conn.begin().await?;
        let digest = store::digest::tables_digest(&mut tx, &self.tables).await?;
        tx.rollback().await?;
        Ok(digest)
    }
}

async fn audit_problems(sm: &StateMachine) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = sm.readers().acquire().await?;
    let mut tx = conn.begin().await?;
    let report = store::audit::audit(&mut tx).await?;
    tx.rollback().await?;
    Ok(report.problems)
}

/// The purchases and what their parties know, as the state has them.
async fn known(sm: &StateMachine) -> Result<Known, sqlx::Error> {
    let rows: Vec<(i64, i64, i64, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT id, buyer_id, seller_id, ciphertext_root FROM purchases")
            .fetch_all(sm.readers())
            .await?;
    let (last_hold,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM holds")
        .fetch_one(sm.readers())
        .await?;
    let purchases = rows
        .into_iter()
        .map(|(id, buyer, seller, root)| {
            (
                store::to_u64(id),
                KnownPurchase {
                    buyer_id: store::to_u64(buyer),
                    seller_id: store::to_u64(seller),
                    ciphertext_root: root.and_then(|r| r.try_into().ok()),
                },
            )
        })
        .collect();
    Ok(Known {
        purchases,
        last_hold,
    })
}

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// The commands every script starts with: the bootstrap, then (with
/// `prelude`) the small market, one op per entry.
fn opening(prelude_too: bool) -> Vec<Command> {
    let mut ops = vec![init_cluster()];
    if prelude_too {
        ops.extend(prelude());
    }
    ops.into_iter()
        .map(|op| Command {
            time_ms: START_MS,
            proposals: vec![Proposal { request: None, op }],
        })
        .collect()
}

/// A real log to start from: the bootstrap entry and the prelude's market
/// (registrations, deposits, listings, presence, settings), one op per
/// entry. The decoding fuzz target damages its encodings.
#[must_use]
pub fn sample_log() -> Vec<Entry> {
    opening(true)
        .into_iter()
        .zip(1..)
        .map(|(command, index)| entry(index, command))
        .collect()
}

fn storage(index: u64, e: &impl std::fmt::Display) -> Violation {
    violation(index, format!("storage error: {e}"))
}

/// One state machine under check, and the log applied to it so far.
struct Run {
    sm: StateMachine,
    digest: DataDigest,
    /// The data digest after the last entry.
    before: String,
    log: Vec<Entry>,
    answers: Vec<Vec<Answer>>,
    tally: Tally,
}

impl Run {
    /// Appends `command` as the next entry, applies it alone, and checks
    /// every rule. `names` names each proposal's action (`None` for the
    /// opening).
    async fn step(
        &mut self,
        command: Command,
        names: &[Option<&'static str>],
    ) -> Result<(), Violation> {
        let index = u64::try_from(self.log.len()).unwrap_or(u64::MAX) + 1;
        let proposals = command.proposals.len();
        let entry = entry(index, command);
        let mut applied = self
            .sm
            .apply(vec![entry.clone()])
            .await
            .map_err(|e| storage(index, &e))?;
        self.log.push(entry);
        let got = applied.pop().unwrap_or_default();
        if got.len() != proposals {
            return Err(violation(
                index,
                format!("{proposals} proposals got {} answers", got.len()),
            ));
        }
        self.tally.entries += 1;
        let mut changes_nothing = true;
        for (answer, name) in got.iter().zip(names) {
            self.tally.proposals += 1;
            // A refusal, a retry answered from memory, or an expiry run
            // that found nothing due.
            let unchanged = matches!(
                answer.outcome,
                Outcome::Rejected(_) | Outcome::Expired { count: 0 }
            ) || answer.index != index;
            changes_nothing &= unchanged;
            if let Some(name) = name {
                let e = self.tally.actions.entry(name).or_default();
                if unchanged {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
            }
        }
        let problems = audit_problems(&self.sm)
            .await
            .map_err(|e| storage(index, &e))?;
        if !problems.is_empty() {
            return Err(violation(
                index,
                format!(
                    "the ledger audit failed: {}; answers: {got:?}",
                    problems.join("; ")
                ),
            ));
        }
        let after = self
            .digest
            .of(&self.sm)
            .await
            .map_err(|e| storage(index, &e))?;
        if changes_nothing && after != self.before {
            return Err(violation(
                index,
                format!(
                    "every proposal was refused or a retry, yet the state changed; answers: {got:?}"
                ),
            ));
        }
        self.before = after;
        self.answers.push(got);
        Ok(())
    }
}

/// Applies `script` to a fresh state machine in `dir`, one entry per
/// batch, checking the rules after every entry; then applies the same log
/// to a second one in `replica_dir`, in batches of `script.replica_batch`,
/// and compares their answers and state digests. Both directories must be
/// empty.
///
/// # Errors
/// The first rule that broke.
pub async fn check(script: &Script, dir: &Path, replica_dir: &Path) -> Result<Tally, Violation> {
    let sm = StateMachine::open(dir).await.map_err(|e| storage(0, &e))?;
    let digest = DataDigest::new(&sm).await.map_err(|e| storage(0, &e))?;
    let before = digest.of(&sm).await.map_err(|e| storage(0, &e))?;
    let mut run = Run {
        sm,
        digest,
        before,
        log: Vec::new(),
        answers: Vec::new(),
        tally: Tally::default(),
    };
    let opening = opening(script.prelude);
    let entries: Vec<(Clock, Vec<Proposed>)> =
        script.steps.iter().flat_map(Step::entries).collect();
    // Halfway through, the state machine builds a snapshot, as a leader
    // does for a follower that fell behind.
    let midpoint = (opening.len() + entries.len()) / 2;
    let mut snapshot = None;
    for command in opening {
        run.step(command, &[None]).await?;
        if run.log.len() == midpoint {
            snapshot = Some(build_snapshot(&mut run.sm, midpoint).await?);
        }
    }
    let mut now = START_MS;
    for (clock, proposed) in entries {
        now = clock.advance(now);
        let index = u64::try_from(run.log.len()).unwrap_or(u64::MAX) + 1;
        let known = known(&run.sm).await.map_err(|e| storage(index, &e))?;
        let mut proposals = Vec::new();
        let mut names = Vec::new();
        for p in &proposed {
            proposals.push(Proposal {
                request: p.request.map(|id| RequestKey {
                    client: "fuzz".into(),
                    id: format!("r{id}"),
                }),
                op: p.action.op(now, &known),
            });
            names.push(Some(p.action.name()));
        }
        run.step(
            Command {
                time_ms: now,
                proposals,
            },
            &names,
        )
        .await?;
        if run.log.len() == midpoint {
            snapshot = Some(build_snapshot(&mut run.sm, midpoint).await?);
        }
    }
    let (_, digest) = run.sm.digest().await.map_err(|e| storage(0, &e))?;

    // The replica: the same log in larger batches, as a follower that
    // catches up applies it.
    let mut replica = StateMachine::open(replica_dir)
        .await
        .map_err(|e| storage(0, &e))?;
    let mut replica_answers = Vec::with_capacity(run.log.len());
    for batch in run.log.chunks(script.replica_batch.max(1)) {
        let last = batch.last().map_or(0, |e| e.log_id.index);
        replica_answers.extend(
            replica
                .apply(batch.to_vec())
                .await
                .map_err(|e| storage(last, &e))?,
        );
    }
    if replica_answers != run.answers {
        let at = run
            .answers
            .iter()
            .zip(&replica_answers)
            .position(|(a, b)| a != b)
            .unwrap_or(run.answers.len());
        return Err(violation(
            u64::try_from(at).unwrap_or(0) + 1,
            format!(
                "the replica answered differently: {:?} instead of {:?}",
                replica_answers.get(at),
                run.answers.get(at)
            ),
        ));
    }
    let (_, replica_digest) = replica.digest().await.map_err(|e| storage(0, &e))?;
    if replica_digest != digest {
        return Err(violation(
            0,
            format!("the replica's state digest {replica_digest} differs from {digest}"),
        ));
    }
    replica.readers().close().await;

    // A third node: installs the midpoint snapshot, then applies the rest
    // of the log in one batch, and must end where the others did.
    if let Some(snapshot) = snapshot {
        let mut installed = StateMachine::open(&replica_dir.join("from-snapshot"))
            .await
            .map_err(|e| storage(0, &e))?;
        install_snapshot(&mut installed, snapshot, midpoint).await?;
        let rest = run.log[midpoint..].to_vec();
        let rest_answers = installed.apply(rest).await.map_err(|e| storage(0, &e))?;
        if rest_answers[..] != run.answers[midpoint..] {
            return Err(violation(
                0,
                "a node that installed the midpoint snapshot answered the rest of the log differently",
            ));
        }
        let (_, installed_digest) = installed.digest().await.map_err(|e| storage(0, &e))?;
        if installed_digest != digest {
            return Err(violation(
                0,
                format!(
                    "a node that installed the midpoint snapshot ends at digest {installed_digest}, not {digest}"
                ),
            ));
        }
        installed.readers().close().await;
    }
    run.sm.readers().close().await;
    Ok(run.tally)
}

async fn build_snapshot(sm: &mut StateMachine, at: usize) -> Result<Snapshot, Violation> {
    let index = u64::try_from(at).unwrap_or(0);
    let mut builder = sm.get_snapshot_builder().await;
    builder
        .build_snapshot()
        .await
        .map_err(|e| violation(index, format!("building a snapshot failed: {e}")))
}

async fn install_snapshot(
    sm: &mut StateMachine,
    snapshot: Snapshot,
    at: usize,
) -> Result<(), Violation> {
    let index = u64::try_from(at).unwrap_or(0);
    let failed = |e: &dyn std::fmt::Display| {
        violation(index, format!("installing the snapshot failed: {e}"))
    };
    let mut file = sm
        .begin_receiving_snapshot()
        .await
        .map_err(|e| failed(&e))?;
    let mut source = snapshot.snapshot;
    tokio::io::copy(&mut *source, &mut *file)
        .await
        .map_err(|e| failed(&e))?;
    sm.install_snapshot(&snapshot.meta, file)
        .await
        .map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A temporary directory in memory when the machine has a tmpfs at
    /// /dev/shm (a state machine's files see many small commits).
    fn scratch_dir() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(dir) = tempfile::tempdir_in(shm) {
                return dir;
            }
        }
        tempfile::tempdir().expect("a temporary directory")
    }

    /// Random scripts (a fixed seed list, so a failure replays): every rule
    /// holds after every entry, and the replica agrees. Also checks that
    /// the scripts reach the interesting paths (settled and disputed
    /// purchases, expiries), so the test cannot pass by refusing
    /// everything.
    #[tokio::test]
    async fn random_command_sequences_keep_the_ledger_sound() {
        const SCRIPTS: u64 = 120;
        let mut total = Tally::default();
        for seed in 0..SCRIPTS {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let len = rng.gen_range(64..1024);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let script = Script::from_bytes(&bytes);
            let dir = scratch_dir();
            let replica = scratch_dir();
            match check(&script, dir.path(), replica.path()).await {
                Ok(tally) => total.merge(&tally),
                Err(v) => panic!("seed {seed}: {v}\n{script:#?}"),
            }
        }
        eprintln!("{total:#?}");
        for action in ["CompletePurchase", "ReverseSale", "ExpireHolds", "PostHold"] {
            let (accepted, _) = total.actions.get(action).copied().unwrap_or_default();
            assert!(accepted > 0, "no {action} was accepted: {total:#?}");
        }
    }
}
