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

use crate::domain::{accounts, kv};
use crate::store;

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
    /// A `Put` was applied: the key's revision after it.
    Put {
        /// Number of writes to the key so far.
        revision: u64,
    },
    /// The command was refused; nothing changed (except that the refusal is
    /// remembered for its request id).
    Rejected(Rejection),
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
                        Some(user_id) => Outcome::Registered { user_id },
                        None => Outcome::Rejected(Rejection::AlreadyExists(format!(
                            "the username {username:?} is taken; pick another"
                        ))),
                    },
                )
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
    ) -> Result<Vec<Outcome>, sqlx::Error> {
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
                outcomes.push(proposal.op.apply(conn, ctx).await?);
                continue;
            };
            let hash = body_hash(&proposal.op);
            let outcome = match seen.get(request) {
                Some(earlier) if earlier.body_hash[..] == hash[..] => earlier.outcome.clone(),
                Some(_) => Outcome::Rejected(Rejection::RequestIdReused(request.id.clone())),
                None => {
                    let outcome = proposal.op.apply(conn, ctx).await?;
                    seen.insert(
                        request.clone(),
                        store::requests::SeenRequest {
                            body_hash: hash.to_vec(),
                            outcome: outcome.clone(),
                        },
                    );
                    fresh.push((request, hash, outcome.clone()));
                    outcome
                }
            };
            outcomes.push(outcome);
        }
        store::requests::insert_many(conn, &fresh, ctx).await?;
        Ok(outcomes)
    }
}

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
