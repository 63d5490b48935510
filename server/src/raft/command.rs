//! The one replicated command type.
//!
//! A client's [`Proposal`] (what to do, and the request id that makes a retry
//! safe) is batched with the other proposals waiting on the leader, stamped
//! with the leader's clock into one [`Command`] and appended to the Raft log
//! as one entry: one fsync on each node carries the whole batch. Every node applies the same commands in the same order and
//! gets the same [`Outcome`]: application never reads the clock or a random
//! source, only what the command carries.
//!
//! Each [`Op`] variant keeps its validation (`validate`, run by the proposer
//! before it spends a log entry) and its application (`apply`, run by every
//! node) side by side.

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use agora_proto::auth::{KsfParams, Role};

use agora_proto::amount::MAX_AMOUNT;

use std::collections::BTreeMap;

use crate::domain::catalogue::{self, FileFacts, ListingText};
use crate::domain::ledger::{self, LedgerError};
use crate::domain::purchases::PurchaseState;
use crate::domain::{accounts, kv};
use crate::store;

mod purchases;

/// Identifies one logical write: a retry carries the same key and gets the
/// first write's outcome instead of a second application.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    /// Who sent it (a client name; the user id once accounts exist).
    pub client: String,
    /// Unique per client and logical write.
    pub id: String,
}

/// What a client asked the cluster to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Present on every client write; absent on internal commands the leader
    /// makes itself (timers).
    pub request: Option<RequestKey>,
    /// The operation.
    pub op: Op,
}

/// A log entry's payload: a batch of proposals stamped by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's wall clock when it proposed this, in Unix milliseconds.
    /// The only notion of "now" application may use.
    pub time_ms: u64,
    /// The proposals, applied in order.
    pub proposals: Vec<Proposal>,
}

/// One replicated operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Bootstrap secrets, made once by the first leader (random, so they
    /// travel in the command). Applied once; later copies change nothing.
    InitCluster {
        /// Serialized OPAQUE `ServerSetup`.
        server_setup: Vec<u8>,
        /// Seed of the ed25519 key that signs session tokens.
        token_seed: [u8; 32],
        /// First Argon2id parameters.
        ksf: KsfParams,
    },
    /// Create an account from a finished OPAQUE registration.
    Register {
        /// Canonical username.
        username: String,
        /// Role of the new account.
        role: Role,
        /// Serialized OPAQUE `ServerRegistration` (the password file).
        password_file: Vec<u8>,
        /// ed25519 identity public key.
        identity_public_key: Vec<u8>,
        /// The identity private key sealed under the user's export key.
        encrypted_identity_key: Vec<u8>,
    },
    /// Money in from outside (admin, or a payment hook).
    Deposit {
        /// The user credited.
        user_id: u64,
        /// Cents.
        amount: u64,
    },
    /// Money out to outside, only from available money.
    Withdraw {
        /// The user debited.
        user_id: u64,
        /// Cents.
        amount: u64,
    },
    /// Reserve a user's money for a payee.
    OpenHold {
        /// Whose money.
        user_id: u64,
        /// Who gets it when posted.
        payee_user_id: u64,
        /// Cents.
        amount: u64,
        /// How long until the timer voids it, from the command's time
        /// (so a retry of the same request has the same body).
        ttl_ms: u64,
        /// The purchase it pays for, if any.
        purchase_id: Option<String>,
    },
    /// Settle a hold (price to the payee less commission, commission to the
    /// operator).
    PostHold {
        /// The hold.
        hold_id: i64,
    },
    /// Release a hold.
    VoidHold {
        /// The hold.
        hold_id: i64,
    },
    /// Void every open hold past its expiry at the command's time (the
    /// leader proposes this on a timer).
    ExpireHolds,
    /// Set the commission.
    SetCommission {
        /// Basis points, 0..=10000.
        bps: u32,
    },
    /// End a session on every node.
    RevokeSession {
        /// The session.
        session_id: String,
        /// Its account.
        user_id: u64,
        /// When it would have expired anyway.
        expires_at_ms: u64,
    },
    /// Write `value` under `key` in the replicated register.
    Put {
        /// Key (1..=256 bytes).
        key: String,
        /// Value (at most 64 KiB).
        value: Vec<u8>,
    },
    // New variants go last: entries in existing logs are bincode with the
    // variant's position.
    /// Put a file up for sale.
    Publish {
        /// The seller (from the session).
        seller_id: u64,
        /// Title, description, topic, tags, attributes (normalized).
        text: ListingText,
        /// Size, chunking and plaintext Merkle root.
        facts: FileFacts,
        /// Cents; 0 = free.
        price: u64,
    },
    /// Change what a listing says; only the fields given.
    EditListing {
        /// The listing.
        listing_id: u64,
        /// Who asks (the seller or an admin).
        actor: Actor,
        /// The changes.
        edit: ListingEdit,
    },
    /// Change a listing's price.
    Reprice {
        /// The listing.
        listing_id: u64,
        /// Who asks.
        actor: Actor,
        /// New price in cents.
        price: u64,
    },
    /// Take a listing off sale.
    Unpublish {
        /// The listing.
        listing_id: u64,
        /// Who asks.
        actor: Actor,
    },
    /// Add a topic or change its description.
    AddTopic {
        /// Normalized name.
        name: String,
        /// Description.
        description: String,
    },
    /// Remove a topic no listing uses.
    RemoveTopic {
        /// Name.
        name: String,
    },
    /// A seller came online at an endpoint (`Some`) or went offline.
    SetPresence {
        /// The seller.
        user_id: u64,
        /// Where it serves files, or `None` for offline.
        endpoint: Option<String>,
    },
    /// Sellers whose presence lease lapsed on the leader: offline, unless
    /// their presence changed after the index the lease stood for.
    LapsePresence {
        /// (seller, index of the presence change the lapsed lease stood for).
        lapses: Vec<(u64, u64)>,
    },
    /// Open a purchase: hold the price on the buyer's account.
    BeginPurchase {
        /// The buyer (from the session).
        buyer_id: u64,
        /// The listing.
        listing_id: u64,
        /// How long until the purchase lapses, from the command's time.
        ttl_ms: u64,
    },
    /// The seller deposits the purchase's key and ciphertext root.
    DepositKey {
        /// The purchase.
        purchase_id: u64,
        /// Who deposits (must be the seller).
        seller_id: u64,
        /// The AES-256-GCM key.
        key: [u8; 32],
        /// Merkle root over the ciphertext chunks.
        ciphertext_root: [u8; 32],
    },
    /// The buyer settles: post the hold and release the key, in one step.
    CompletePurchase {
        /// The purchase.
        purchase_id: u64,
        /// Who completes (must be the buyer).
        buyer_id: u64,
        /// The ciphertext root the buyer received.
        ciphertext_root: [u8; 32],
    },
    /// The buyer (or an admin) gives up a purchase: void the hold.
    CancelPurchase {
        /// The purchase.
        purchase_id: u64,
        /// Who asks.
        actor: Actor,
    },
    /// Set how long a sale's proceeds stay held for disputes.
    SetDisputeWindow {
        /// Milliseconds (0 = proceeds are available at once).
        ms: u64,
    },
    /// Reverse a sale after a proven dispute. The proof was judged once,
    /// by the node that took the request, against the escrowed key; the
    /// verdict travels here, so no node redoes the cryptography. Applying
    /// checks only what may have changed since: the purchase is completed,
    /// its proceeds are still pending, and it was not reversed before.
    ReverseSale {
        /// The purchase.
        purchase_id: u64,
        /// Who disputes (must be the buyer).
        buyer_id: u64,
        /// The chunk proven bad.
        chunk_index: u64,
        /// What was wrong with it.
        fault: String,
        /// BLAKE3 of the evidence.
        evidence_hash: [u8; 32],
    },
    /// Suspend a user (its listings leave sale and search) or lift it.
    SetSuspended {
        /// The user.
        user_id: u64,
        /// Suspend (true) or lift (false).
        suspended: bool,
    },
    /// Something happened to the cluster (an election, a crash, a
    /// snapshot...): appended to the event log with the command's time.
    RecordEvent {
        /// The node that saw it.
        node_id: u64,
        /// What happened (`events::EventKind` as text).
        kind: String,
        /// The node it is about (0: none).
        subject_node_id: u64,
        /// The recording node's term when it saw it.
        term: u64,
        /// A sentence for people.
        message: String,
    },
    /// Delete an inactive account (refused while anything ties it to the
    /// market, and for admins).
    DeleteUser {
        /// The account.
        user_id: u64,
    },
    /// Set how long a purchase holds the buyer's money (0: each node's
    /// `--purchase-hold-ms`).
    SetHoldTtl {
        /// Milliseconds.
        ms: u64,
    },
    /// Set the Argon2id parameters handed to new registrations.
    SetKsf {
        /// The parameters.
        ksf: KsfParams,
    },
}

/// Who asks for a change to a listing. The session's claims, checked by
/// the proposer; apply checks that the actor may touch the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The caller's user id.
    pub user_id: u64,
    /// The caller is an admin (may change anyone's listing).
    pub admin: bool,
}

/// The fields an edit changes; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingEdit {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New topic.
    pub topic: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New attributes.
    pub attributes: Option<BTreeMap<String, String>>,
}

impl ListingEdit {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The listing's text after the edit, normalized.
    fn applied_to(&self, current: &ListingText) -> Result<ListingText, String> {
        ListingText {
            title: self.title.clone().unwrap_or_else(|| current.title.clone()),
            description: self
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            topic: self.topic.clone().unwrap_or_else(|| current.topic.clone()),
            tags: self.tags.clone().unwrap_or_else(|| current.tags.clone()),
            attributes: self
                .attributes
                .clone()
                .unwrap_or_else(|| current.attributes.clone()),
        }
        .normalized()
    }
}

/// What applying a command produced. Identical on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Bootstrap secrets stored (or already present).
    Initialized,
    /// An account was created.
    Registered {
        /// Its id.
        user_id: u64,
    },
    /// A session was revoked.
    Revoked,
    /// Money moved on a user's account: its state after.
    Balance {
        /// Balance in cents.
        balance: i64,
        /// Held cents.
        held: u64,
    },
    /// A hold changed.
    Hold {
        /// Its id.
        hold_id: i64,
        /// "open", "posted" or "voided".
        state: String,
        /// When it expires.
        expires_at_ms: u64,
    },
    /// Holds voided by expiry.
    Expired {
        /// How many.
        count: u64,
    },
    /// A setting changed.
    SettingChanged,
    /// A `Put` was applied: the key's revision after it.
    Put {
        /// Number of writes to the key so far.
        revision: u64,
    },
    /// The command was refused; nothing changed (except that the refusal is
    /// remembered for its request id).
    Rejected(Rejection),
    /// A listing was published or changed.
    Listing {
        /// Its id.
        listing_id: u64,
    },
    /// Presence changed.
    Presence {
        /// Sellers whose state changed.
        changed: u64,
    },
    /// A purchase was opened or changed.
    Purchase {
        /// Its id.
        purchase_id: u64,
    },
    /// An event was appended to the event log.
    Event {
        /// Its id.
        event_id: u64,
    },
    /// An account was deleted.
    UserDeleted {
        /// Its id.
        user_id: u64,
        /// The name it had (now free).
        username: String,
    },
}

/// What one proposal of an entry produced, and the log index it was
/// applied at: the entry's own, or for a retried request the index of its
/// first application (so a retry returns the first answer whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Log index the request was (first) applied at.
    pub index: u64,
    /// The outcome.
    pub outcome: Outcome,
}

/// A deterministic refusal, decided while applying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The request id was used before for a different operation.
    #[error("request id {0:?} was already used for a different request; use a new request id for a new request")]
    RequestIdReused(String),
    /// The input breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// Something with that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The cluster is not ready for this yet.
    #[error("{0}")]
    NotReady(String),
    /// The state does not allow it (not enough money, hold closed, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<LedgerError> for Rejection {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::BadAmount | LedgerError::BadCommission(_) | LedgerError::SameAccount => {
                Rejection::Invalid(e.to_string())
            }
            LedgerError::Insufficient { .. }
            | LedgerError::HoldClosed { .. }
            | LedgerError::Overflow => Rejection::FailedPrecondition(e.to_string()),
        }
    }
}

/// Where and when a command is applied.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext {
    /// Log index of the entry.
    pub index: u64,
    /// The leader's timestamp from the command.
    pub time_ms: u64,
}

impl Op {
    /// Whether applying it can change what a search returns.
    #[must_use]
    pub fn touches_catalogue(&self) -> bool {
        matches!(
            self,
            Op::Publish { .. }
                | Op::EditListing { .. }
                | Op::Reprice { .. }
                | Op::Unpublish { .. }
                | Op::AddTopic { .. }
                | Op::RemoveTopic { .. }
                | Op::SetPresence { .. }
                | Op::LapsePresence { .. }
                | Op::SetSuspended { .. }
                | Op::ReverseSale { .. }
                | Op::CompletePurchase { .. }
        )
    }

    /// Checks the operation on its own, before it is proposed.
    ///
    /// # Errors
    /// A [`Rejection::Invalid`] saying what is wrong.
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Op::Put { key, value } => kv::validate_put(key, value).map_err(Rejection::Invalid),
            Op::InitCluster {
                server_setup, ksf, ..
            } => {
                ksf.argon2()
                    .map_err(|e| Rejection::Invalid(e.to_string()))?;
                accounts::validate_server_setup(server_setup).map_err(Rejection::Invalid)
            }
            Op::Register {
                username,
                password_file,
                identity_public_key,
                encrypted_identity_key,
                ..
            } => accounts::validate_registration(
                username,
                password_file,
                identity_public_key,
                encrypted_identity_key,
            )
            .map_err(Rejection::Invalid),
            Op::Deposit { amount, .. } | Op::Withdraw { amount, .. } => {
                if *amount == 0 || *amount > MAX_AMOUNT {
                    return Err(LedgerError::BadAmount.into());
                }
                Ok(())
            }
            Op::OpenHold {
                user_id,
                payee_user_id,
                amount,
                ..
            } => {
                if *amount == 0 || *amount > MAX_AMOUNT {
                    return Err(LedgerError::BadAmount.into());
                }
                if user_id == payee_user_id {
                    return Err(LedgerError::SameAccount.into());
                }
                Ok(())
            }
            Op::PostHold { .. } | Op::VoidHold { .. } | Op::ExpireHolds => Ok(()),
            Op::SetCommission { bps } => {
                if *bps > ledger::MAX_BPS {
                    return Err(LedgerError::BadCommission(*bps).into());
                }
                Ok(())
            }
            Op::Publish {
                text, facts, price, ..
            } => {
                normalized(text)?;
                facts.validate().map_err(Rejection::Invalid)?;
                catalogue::price(*price).map_err(Rejection::Invalid)?;
                Ok(())
            }
            Op::EditListing { edit, .. } => {
                if edit.is_empty() {
                    return Err(Rejection::Invalid(
                        "the edit changes nothing; give at least one field".into(),
                    ));
                }
                Ok(())
            }
            Op::Reprice { price, .. } => {
                catalogue::price(*price).map_err(Rejection::Invalid)?;
                Ok(())
            }
            Op::Unpublish { .. } => Ok(()),
            Op::BeginPurchase { ttl_ms, .. } => {
                if *ttl_ms == 0 || *ttl_ms > MAX_PURCHASE_TTL_MS {
                    return Err(Rejection::Invalid(format!(
                        "a purchase holds the money for 1 ms to {} hours",
                        MAX_PURCHASE_TTL_MS / 3_600_000
                    )));
                }
                Ok(())
            }
            Op::DepositKey { .. } | Op::CompletePurchase { .. } | Op::CancelPurchase { .. } => {
                Ok(())
            }
            Op::SetSuspended { .. } | Op::DeleteUser { .. } => Ok(()),
            Op::RecordEvent { kind, message, .. } => {
                if kind.is_empty() || kind.len() > MAX_EVENT_KIND {
                    return Err(Rejection::Invalid(format!(
                        "an event kind has 1 to {MAX_EVENT_KIND} characters"
                    )));
                }
                if message.len() > MAX_EVENT_MESSAGE {
                    return Err(Rejection::Invalid(format!(
                        "an event message has at most {MAX_EVENT_MESSAGE} bytes"
                    )));
                }
                Ok(())
            }
            Op::SetHoldTtl { ms } => {
                if *ms > MAX_PURCHASE_TTL_MS {
                    return Err(Rejection::Invalid(format!(
                        "a purchase holds the money for at most {} hours",
                        MAX_PURCHASE_TTL_MS / 3_600_000
                    )));
                }
                Ok(())
            }
            Op::SetKsf { ksf } => {
                crate::domain::settings::check_ksf(*ksf).map_err(Rejection::Invalid)
            }
            Op::SetDisputeWindow { ms } => {
                if *ms > store::purchases::MAX_DISPUTE_WINDOW_MS {
                    return Err(Rejection::Invalid(
                        "the dispute window is at most 90 days".into(),
                    ));
                }
                Ok(())
            }
            Op::ReverseSale { fault, .. } => {
                if fault.is_empty() || fault.len() > 64 {
                    return Err(Rejection::Invalid("a fault is 1 to 64 characters".into()));
                }
                Ok(())
            }
            Op::AddTopic { name, description } => {
                if catalogue::topic_name(name).map_err(Rejection::Invalid)? != *name
                    || catalogue::topic_description(description).map_err(Rejection::Invalid)?
                        != *description
                {
                    return Err(Rejection::Invalid("the topic is not normalized".into()));
                }
                Ok(())
            }
            Op::RemoveTopic { name } => {
                catalogue::topic_name(name).map_err(Rejection::Invalid)?;
                Ok(())
            }
            Op::SetPresence { endpoint, .. } => {
                if let Some(e) = endpoint {
                    catalogue::endpoint(e).map_err(Rejection::Invalid)?;
                }
                Ok(())
            }
            Op::LapsePresence { lapses } => {
                if lapses.len() > MAX_LAPSES {
                    return Err(Rejection::Invalid(format!(
                        "at most {MAX_LAPSES} lapses per command"
                    )));
                }
                Ok(())
            }
            Op::RevokeSession { session_id, .. } => {
                if session_id.is_empty() || session_id.len() > 64 {
                    return Err(Rejection::Invalid(
                        "a session id has 1 to 64 characters".into(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Applies the operation inside the batch's transaction.
    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        ctx: ApplyContext,
    ) -> Result<Outcome, sqlx::Error> {
        // Validation is pure and deterministic, so running it again here
        // keeps a bad command from a buggy or old proposer out of the state.
        if let Err(rejection) = self.validate() {
            return Ok(Outcome::Rejected(rejection));
        }
        match self {
            Op::Put { key, value } => {
                let revision = store::kv::put(conn, key, value, ctx.index).await?;
                Ok(Outcome::Put { revision })
            }
            Op::InitCluster {
                server_setup,
                token_seed,
                ksf,
            } => {
                store::accounts::init_secrets(conn, server_setup, token_seed, ksf).await?;
                Ok(Outcome::Initialized)
            }
            Op::Register {
                username,
                role,
                password_file,
                identity_public_key,
                encrypted_identity_key,
            } => {
                if store::accounts::secrets(&mut *conn).await?.is_none() {
                    return Ok(Outcome::Rejected(Rejection::NotReady(
                        "the cluster is still starting up (no bootstrap secrets yet); retry in a moment".into(),
                    )));
                }
                let user = store::accounts::NewUser {
                    username,
                    role: *role,
                    password_file,
                    identity_public_key,
                    encrypted_identity_key,
                };
                Ok(
                    match store::accounts::insert_user(conn, &user, ctx.time_ms).await? {
                        Some(user_id) => {
                            store::ledger::open_user_account(conn, user_id).await?;
                            Outcome::Registered { user_id }
                        }
                        None => Outcome::Rejected(Rejection::AlreadyExists(format!(
                            "the username {username:?} is taken; pick another"
                        ))),
                    },
                )
            }
            Op::Deposit { user_id, amount } => {
                apply_money(conn, ctx, *user_id, *amount, true).await
            }
            Op::Withdraw { user_id, amount } => {
                apply_money(conn, ctx, *user_id, *amount, false).await
            }
            Op::OpenHold {
                user_id,
                payee_user_id,
                amount,
                ttl_ms,
                purchase_id,
            } => {
                let expires_at_ms = ctx.time_ms.saturating_add(*ttl_ms);
                let Some(mut buyer) = store::ledger::user_account(&mut *conn, *user_id).await?
                else {
                    return Ok(no_account(*user_id));
                };
                let Some(payee) = store::ledger::user_account(&mut *conn, *payee_user_id).await?
                else {
                    return Ok(no_account(*payee_user_id));
                };
                if let Err(e) = ledger::open_hold(&mut buyer, *amount) {
                    return Ok(Outcome::Rejected(e.into()));
                }
                let hold = ledger::Hold {
                    id: 0,
                    account: buyer.id,
                    payee: payee.id,
                    amount: *amount,
                    state: ledger::HoldState::Open,
                    expires_at_ms,
                };
                let hold_id =
                    store::ledger::insert_hold(conn, &hold, purchase_id.as_deref(), ctx.index)
                        .await?;
                store::ledger::save_accounts(conn, &[&buyer]).await?;
                Ok(Outcome::Hold {
                    hold_id,
                    state: "open".into(),
                    expires_at_ms,
                })
            }
            Op::PostHold { hold_id } | Op::VoidHold { hold_id } => {
                if let Some(purchase_id) =
                    store::purchases::purchase_of_hold(&mut *conn, *hold_id).await?
                {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(format!(
                        "hold {hold_id} pays for purchase {purchase_id}; it settles with the purchase (complete, cancel or expiry), not on its own"
                    ))));
                }
                let post = matches!(self, Op::PostHold { .. });
                let reason = if post { "posted" } else { "voided" };
                close_hold(conn, ctx, *hold_id, post, reason, None).await
            }
            Op::ExpireHolds => {
                let mut count = 0;
                // Bounded per command; the timer proposes again for the rest.
                // Proceeds whose dispute window ended become available.
                for purchase_id in
                    store::purchases::due_proceeds(&mut *conn, ctx.time_ms, 1000).await?
                {
                    if purchases::release(conn, purchase_id).await? {
                        count += 1;
                    }
                }
                // Purchases first: each voids its own hold.
                for purchase_id in store::purchases::expired(&mut *conn, ctx.time_ms, 1000).await? {
                    if purchases::close_unpaid(conn, ctx, purchase_id, PurchaseState::Expired)
                        .await?
                    {
                        count += 1;
                    }
                }
                for hold_id in store::ledger::expired_holds(&mut *conn, ctx.time_ms, 1000).await? {
                    if let Outcome::Hold { .. } =
                        close_hold(conn, ctx, hold_id, false, "expired", None).await?
                    {
                        count += 1;
                    }
                }
                Ok(Outcome::Expired { count })
            }
            Op::SetCommission { bps } => {
                store::ledger::set_commission_bps(conn, *bps).await?;
                Ok(Outcome::SettingChanged)
            }
            Op::Publish {
                seller_id,
                text,
                facts,
                price,
            } => {
                match store::catalogue::user_suspended(&mut *conn, *seller_id).await? {
                    None => return Ok(no_user(*seller_id)),
                    Some(true) => {
                        return Ok(Outcome::Rejected(Rejection::FailedPrecondition(
                            "your account is suspended; you cannot publish".into(),
                        )))
                    }
                    Some(false) => {}
                }
                if let Some(rejected) = missing_topic(conn, &text.topic).await? {
                    return Ok(rejected);
                }
                let listing_id = store::catalogue::insert_listing(
                    conn,
                    *seller_id,
                    text,
                    facts,
                    *price,
                    ctx.index,
                    ctx.time_ms,
                )
                .await?;
                Ok(Outcome::Listing { listing_id })
            }
            Op::EditListing {
                listing_id,
                actor,
                edit,
            } => {
                if let Some(rejected) = check_actor(conn, *listing_id, *actor, true).await? {
                    return Ok(rejected);
                }
                let Some(current) = store::catalogue::listing(&mut *conn, *listing_id).await?
                else {
                    return Ok(no_listing(*listing_id));
                };
                let text = match edit.applied_to(&current.text) {
                    Ok(t) => t,
                    Err(e) => return Ok(Outcome::Rejected(Rejection::Invalid(e))),
                };
                if text.topic != current.text.topic {
                    if let Some(rejected) = missing_topic(conn, &text.topic).await? {
                        return Ok(rejected);
                    }
                }
                store::catalogue::update_text(conn, *listing_id, &text, ctx.index, ctx.time_ms)
                    .await?;
                Ok(Outcome::Listing {
                    listing_id: *listing_id,
                })
            }
            Op::Reprice {
                listing_id,
                actor,
                price,
            } => {
                if let Some(rejected) = check_actor(conn, *listing_id, *actor, true).await? {
                    return Ok(rejected);
                }
                store::catalogue::set_price(conn, *listing_id, *price, ctx.index, ctx.time_ms)
                    .await?;
                Ok(Outcome::Listing {
                    listing_id: *listing_id,
                })
            }
            Op::Unpublish { listing_id, actor } => {
                if let Some(rejected) = check_actor(conn, *listing_id, *actor, false).await? {
                    return Ok(rejected);
                }
                store::catalogue::deactivate(conn, *listing_id, ctx.index, ctx.time_ms).await?;
                Ok(Outcome::Listing {
                    listing_id: *listing_id,
                })
            }
            Op::AddTopic { name, description } => {
                store::catalogue::upsert_topic(conn, name, description, ctx.time_ms).await?;
                Ok(Outcome::SettingChanged)
            }
            Op::RemoveTopic { name } => {
                if name == catalogue::DEFAULT_TOPIC {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(format!(
                        "the topic {name:?} is where listings without a topic go; it cannot be removed"
                    ))));
                }
                let used = store::catalogue::listings_in_topic(&mut *conn, name).await?;
                if used > 0 {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(format!(
                        "{used} listing(s) are filed under {name:?}; move them to another topic first"
                    ))));
                }
                if !store::catalogue::delete_topic(conn, name).await? {
                    return Ok(Outcome::Rejected(Rejection::NotFound(format!(
                        "there is no topic {name:?}"
                    ))));
                }
                Ok(Outcome::SettingChanged)
            }
            Op::SetPresence { user_id, endpoint } => {
                if store::catalogue::user_suspended(&mut *conn, *user_id)
                    .await?
                    .is_none()
                {
                    return Ok(no_user(*user_id));
                }
                store::catalogue::set_presence(
                    conn,
                    *user_id,
                    endpoint.as_deref(),
                    ctx.index,
                    ctx.time_ms,
                )
                .await?;
                Ok(Outcome::Presence { changed: 1 })
            }
            Op::LapsePresence { lapses } => {
                let mut changed = 0;
                for (user_id, since_index) in lapses {
                    if store::catalogue::lapse_presence(
                        conn,
                        *user_id,
                        *since_index,
                        ctx.index,
                        ctx.time_ms,
                    )
                    .await?
                    {
                        changed += 1;
                    }
                }
                Ok(Outcome::Presence { changed })
            }
            Op::BeginPurchase {
                buyer_id,
                listing_id,
                ttl_ms,
            } => purchases::begin(conn, ctx, *buyer_id, *listing_id, *ttl_ms).await,
            Op::DepositKey {
                purchase_id,
                seller_id,
                key,
                ciphertext_root,
            } => {
                purchases::deposit(conn, ctx, *purchase_id, *seller_id, key, ciphertext_root).await
            }
            Op::CompletePurchase {
                purchase_id,
                buyer_id,
                ciphertext_root,
            } => purchases::complete(conn, ctx, *purchase_id, *buyer_id, ciphertext_root).await,
            Op::CancelPurchase { purchase_id, actor } => {
                purchases::cancel(conn, ctx, *purchase_id, *actor).await
            }
            Op::SetSuspended { user_id, suspended } => {
                let Some(user) = store::accounts::user_by_id(&mut *conn, *user_id).await? else {
                    return Ok(no_user(*user_id));
                };
                if user.role == Role::Admin && *suspended {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(format!(
                        "{} is an admin; an admin account cannot be suspended",
                        user.username
                    ))));
                }
                store::catalogue::set_suspended(conn, *user_id, *suspended, ctx.index, ctx.time_ms)
                    .await?;
                Ok(Outcome::SettingChanged)
            }
            Op::SetDisputeWindow { ms } => {
                store::purchases::set_dispute_window_ms(conn, *ms).await?;
                Ok(Outcome::SettingChanged)
            }
            Op::RecordEvent {
                node_id,
                kind,
                subject_node_id,
                term,
                message,
            } => {
                let event = store::events::NewEvent {
                    node_id: *node_id,
                    kind,
                    subject_node_id: *subject_node_id,
                    term: *term,
                    message,
                };
                let event_id = store::events::insert(conn, &event, ctx.time_ms, ctx.index).await?;
                Ok(Outcome::Event { event_id })
            }
            Op::DeleteUser { user_id } => {
                let Some(user) = store::accounts::user_by_id(&mut *conn, *user_id).await? else {
                    return Ok(no_user(*user_id));
                };
                if store::users::is_deleted(&mut *conn, *user_id).await? {
                    return Ok(no_user(*user_id));
                }
                let ties = store::users::ties(conn, *user_id).await?;
                if let Some(blocker) = ties.delete_blocker(&user.username, user.role == Role::Admin)
                {
                    return Ok(Outcome::Rejected(Rejection::FailedPrecondition(blocker)));
                }
                store::users::tombstone(conn, *user_id, ctx.time_ms).await?;
                Ok(Outcome::UserDeleted {
                    user_id: *user_id,
                    username: user.username,
                })
            }
            Op::SetHoldTtl { ms } => {
                store::purchases::set_hold_ttl_ms(conn, *ms).await?;
                Ok(Outcome::SettingChanged)
            }
            Op::SetKsf { ksf } => {
                store::accounts::set_ksf(conn, ksf).await?;
                Ok(Outcome::SettingChanged)
            }
            Op::ReverseSale {
                purchase_id,
                buyer_id,
                chunk_index,
                fault,
                evidence_hash,
            } => {
                purchases::reverse(
                    conn,
                    ctx,
                    &store::purchases::DisputeRow {
                        purchase_id: *purchase_id,
                        buyer_id: *buyer_id,
                        seller_id: 0,
                        chunk_index: *chunk_index,
                        fault: fault.clone(),
                        evidence_hash: *evidence_hash,
                    },
                )
                .await
            }
            Op::RevokeSession {
                session_id,
                user_id,
                expires_at_ms,
            } => {
                store::accounts::revoke_session(
                    conn,
                    session_id,
                    *user_id,
                    *expires_at_ms,
                    ctx.time_ms,
                )
                .await?;
                Ok(Outcome::Revoked)
            }
        }
    }
}

impl Command {
    /// Applies every proposal of the batch, in order; one outcome each.
    ///
    /// A proposal whose request id was seen before (in an earlier entry or
    /// earlier in this batch) gets the stored outcome instead of a second
    /// application, or a refusal if its body differs. The batch's request
    /// ids are looked up in one query and recorded in one more, so exactly-
    /// once costs two queries per batch, not two per write.
    ///
    /// # Errors
    /// Only storage errors; every domain refusal is an [`Outcome::Rejected`].
    pub async fn apply(
        &self,
        conn: &mut SqliteConnection,
        index: u64,
    ) -> Result<Vec<Answer>, sqlx::Error> {
        let ctx = ApplyContext {
            index,
            time_ms: self.time_ms,
        };
        let keys: Vec<&RequestKey> = self
            .proposals
            .iter()
            .filter_map(|p| p.request.as_ref())
            .collect();
        let mut seen = store::requests::find_many(conn, &keys).await?;
        let mut fresh: Vec<(&RequestKey, [u8; 32], Outcome)> = Vec::new();
        let mut outcomes = Vec::with_capacity(self.proposals.len());
        for proposal in &self.proposals {
            let Some(request) = &proposal.request else {
                outcomes.push(Answer {
                    index,
                    outcome: proposal.op.apply(conn, ctx).await?,
                });
                continue;
            };
            let hash = body_hash(&proposal.op);
            let answer = match seen.get(request) {
                // A retry: the first answer, with the index it was applied at.
                Some(earlier) if earlier.body_hash[..] == hash[..] => Answer {
                    index: earlier.log_index,
                    outcome: earlier.outcome.clone(),
                },
                Some(_) => Answer {
                    index,
                    outcome: Outcome::Rejected(Rejection::RequestIdReused(request.id.clone())),
                },
                None => {
                    let outcome = proposal.op.apply(conn, ctx).await?;
                    seen.insert(
                        request.clone(),
                        store::requests::SeenRequest {
                            body_hash: hash.to_vec(),
                            outcome: outcome.clone(),
                            log_index: index,
                        },
                    );
                    fresh.push((request, hash, outcome.clone()));
                    Answer { index, outcome }
                }
            };
            outcomes.push(answer);
        }
        store::requests::insert_many(conn, &fresh, ctx).await?;
        if index.is_multiple_of(PRUNE_EVERY) {
            // Deterministic housekeeping: the same entries prune the same
            // rows on every node.
            let horizon = self.time_ms.saturating_sub(REQUEST_RETENTION_MS);
            store::requests::prune(conn, horizon).await?;
            store::accounts::prune_revoked(conn, self.time_ms).await?;
        }
        Ok(outcomes)
    }
}

/// Longest a purchase may hold the buyer's money (24 h).
pub const MAX_PURCHASE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Longest event kind, bytes.
const MAX_EVENT_KIND: usize = 32;
/// Longest event message, bytes.
const MAX_EVENT_MESSAGE: usize = 1024;

/// Most sellers one `LapsePresence` takes offline.
pub const MAX_LAPSES: usize = 10_000;

/// Checks that listing text arrives as the proposer must send it.
fn normalized(text: &ListingText) -> Result<(), Rejection> {
    let n = text.clone().normalized().map_err(Rejection::Invalid)?;
    if n != *text {
        return Err(Rejection::Invalid(
            "the listing text is not normalized".into(),
        ));
    }
    Ok(())
}

fn no_user(user_id: u64) -> Outcome {
    Outcome::Rejected(Rejection::NotFound(format!("there is no user {user_id}")))
}

fn no_listing(listing_id: u64) -> Outcome {
    Outcome::Rejected(Rejection::NotFound(format!(
        "there is no listing {listing_id}"
    )))
}

/// A refusal when `topic` does not exist.
async fn missing_topic(
    conn: &mut SqliteConnection,
    topic: &str,
) -> Result<Option<Outcome>, sqlx::Error> {
    Ok(
        (!store::catalogue::topic_exists(&mut *conn, topic).await?).then(|| {
            Outcome::Rejected(Rejection::NotFound(format!(
                "there is no topic {topic:?}; `agora topics` lists them"
            )))
        }),
    )
}

/// A refusal unless `actor` may change the listing (its seller, or an
/// admin) and, when `must_be_active`, it is still on sale.
async fn check_actor(
    conn: &mut SqliteConnection,
    listing_id: u64,
    actor: Actor,
    must_be_active: bool,
) -> Result<Option<Outcome>, sqlx::Error> {
    let Some((seller, active)) = store::catalogue::listing_owner(&mut *conn, listing_id).await?
    else {
        return Ok(Some(no_listing(listing_id)));
    };
    if seller != actor.user_id && !actor.admin {
        return Ok(Some(Outcome::Rejected(Rejection::PermissionDenied(
            format!("listing {listing_id} is not yours; only its seller or an admin can change it"),
        ))));
    }
    if must_be_active && !active {
        return Ok(Some(Outcome::Rejected(Rejection::FailedPrecondition(
            format!("listing {listing_id} is unpublished; it cannot change any more"),
        ))));
    }
    Ok(None)
}

fn no_account(user_id: u64) -> Outcome {
    Outcome::Rejected(Rejection::NotFound(format!(
        "user {user_id} has no ledger account"
    )))
}

/// A deposit (`incoming`) or a withdrawal on a user's account.
async fn apply_money(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    user_id: u64,
    amount: u64,
    incoming: bool,
) -> Result<Outcome, sqlx::Error> {
    let Some(mut user) = store::ledger::user_account(&mut *conn, user_id).await? else {
        return Ok(no_account(user_id));
    };
    let mut external = store::ledger::account(&mut *conn, ledger::EXTERNAL).await?;
    let entry = if incoming {
        ledger::deposit(&mut user, &mut external, amount)
    } else {
        ledger::withdraw(&mut user, &mut external, amount)
    };
    let entry = match entry {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::Rejected(e.into())),
    };
    store::ledger::save_accounts(conn, &[&user, &external]).await?;
    let entry_ctx = store::ledger::EntryContext {
        hold_id: None,
        purchase_id: None,
        log_index: ctx.index,
        time_ms: ctx.time_ms,
    };
    store::ledger::journal(conn, &[entry], entry_ctx).await?;
    Ok(Outcome::Balance {
        balance: user.balance,
        held: user.held,
    })
}

/// Posts (`post`) or voids a hold; `reason` is recorded with it, and the
/// journal entries of a post name `purchase_id`.
async fn close_hold(
    conn: &mut SqliteConnection,
    ctx: ApplyContext,
    hold_id: i64,
    post: bool,
    reason: &str,
    purchase_id: Option<&str>,
) -> Result<Outcome, sqlx::Error> {
    let Some(mut hold) = store::ledger::hold(&mut *conn, hold_id).await? else {
        return Ok(Outcome::Rejected(Rejection::NotFound(format!(
            "there is no hold {hold_id}"
        ))));
    };
    let mut buyer = store::ledger::account(&mut *conn, hold.account).await?;
    if post {
        let mut seller = store::ledger::account(&mut *conn, hold.payee).await?;
        let mut operator = store::ledger::account(&mut *conn, ledger::OPERATOR).await?;
        let bps = store::ledger::commission_bps(&mut *conn).await?;
        let entries =
            match ledger::post_hold(&mut hold, &mut buyer, &mut seller, &mut operator, bps) {
                Ok(e) => e,
                Err(e) => return Ok(Outcome::Rejected(e.into())),
            };
        store::ledger::save_accounts(conn, &[&buyer, &seller, &operator]).await?;
        let entry_ctx = store::ledger::EntryContext {
            hold_id: Some(hold.id),
            purchase_id,
            log_index: ctx.index,
            time_ms: ctx.time_ms,
        };
        store::ledger::journal(conn, &entries, entry_ctx).await?;
    } else {
        if let Err(e) = ledger::void_hold(&mut hold, &mut buyer) {
            return Ok(Outcome::Rejected(e.into()));
        }
        store::ledger::save_accounts(conn, &[&buyer]).await?;
    }
    store::ledger::close_hold(conn, &hold, ctx.index, reason).await?;
    Ok(Outcome::Hold {
        hold_id: hold.id,
        state: hold.state.as_str().into(),
        expires_at_ms: hold.expires_at_ms,
    })
}

/// How long the outcome of a request is remembered for retries: a retry
/// later than this after the first attempt is treated as a new request.
pub const REQUEST_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Housekeeping runs on entries whose index is a multiple of this.
const PRUNE_EVERY: u64 = 256;

/// A stable fingerprint of an operation's body, to tell a retry from a
/// different request that reuses an id.
#[must_use]
pub fn body_hash(op: &Op) -> [u8; 32] {
    // bincode of a plain enum is deterministic.
    let bytes = bincode::serialize(op).unwrap_or_default();
    *blake3::hash(&bytes).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hash_tells_bodies_apart() {
        let a = Op::Put {
            key: "k".into(),
            value: b"1".to_vec(),
        };
        let b = Op::Put {
            key: "k".into(),
            value: b"2".to_vec(),
        };
        assert_eq!(body_hash(&a), body_hash(&a.clone()));
        assert_ne!(body_hash(&a), body_hash(&b));
    }

    fn put(id: &str, value: &[u8]) -> Proposal {
        Proposal {
            request: Some(RequestKey {
                client: "c".into(),
                id: id.into(),
            }),
            op: Op::Put {
                key: "k".into(),
                value: value.to_vec(),
            },
        }
    }

    async fn apply(conn: &mut SqliteConnection, index: u64, time_ms: u64, p: Proposal) -> Answer {
        let command = Command {
            time_ms,
            proposals: vec![p],
        };
        let mut answers = command.apply(conn, index).await.expect("applies");
        answers.pop().expect("one answer")
    }

    #[tokio::test]
    async fn retries_get_the_first_answer_until_the_retention_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut conn, _readers) = store::open_state(&dir.path().join("state.db"))
            .await
            .expect("db");
        let first = apply(&mut conn, 10, 1_000, put("r1", b"a")).await;
        assert_eq!(
            first,
            Answer {
                index: 10,
                outcome: Outcome::Put { revision: 1 }
            }
        );
        // The same request later, even in the same batch: the first answer.
        assert_eq!(apply(&mut conn, 11, 2_000, put("r1", b"a")).await, first);
        // The same id with another body: refused, nothing applied.
        let reused = apply(&mut conn, 12, 3_000, put("r1", b"b")).await;
        assert!(matches!(
            reused.outcome,
            Outcome::Rejected(Rejection::RequestIdReused(_))
        ));
        assert_eq!(
            apply(&mut conn, 13, 4_000, put("r2", b"c")).await.outcome,
            Outcome::Put { revision: 2 }
        );
        // Past the retention, a prune (on an index multiple of PRUNE_EVERY)
        // forgets r1: the same id is then a new request.
        let later = 1_000 + REQUEST_RETENTION_MS + 1;
        apply(&mut conn, PRUNE_EVERY, later, put("r3", b"d")).await;
        let again = apply(&mut conn, PRUNE_EVERY + 1, later, put("r1", b"a")).await;
        assert_eq!(again.outcome, Outcome::Put { revision: 4 });
    }

    /// Found by the command_decode fuzz target: an `InitCluster` (from a
    /// peer or the log) with 2^29 Argon2 lanes or more panicked in
    /// validation (an overflow inside argon2) instead of being refused.
    #[test]
    fn validate_refuses_a_cluster_init_with_too_many_lanes() {
        let op = Op::InitCluster {
            server_setup: Vec::new(),
            token_seed: [0; 32],
            ksf: KsfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1 << 29,
            },
        };
        assert!(matches!(op.validate(), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn validate_refuses_bad_puts() {
        let empty = Op::Put {
            key: String::new(),
            value: vec![],
        };
        assert!(matches!(empty.validate(), Err(Rejection::Invalid(_))));
        let ok = Op::Put {
            key: "a".into(),
            value: vec![1],
        };
        assert!(ok.validate().is_ok());
    }
}
