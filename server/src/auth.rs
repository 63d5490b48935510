//! Who is calling: session tokens checked locally on every node, and the
//! cluster secrets (OPAQUE server setup, token-signing key) they rest on.
//!
//! The secrets are replicated at bootstrap and never change, so each node
//! loads them from its state database once and keeps them in memory.
//! Revocation is replicated too; a token is checked against the revoked
//! sessions of this node's state.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agora_proto::auth::{verify_token, AgoraOpaque, AuthError, Role, SessionClaims};
use ed25519_dalek::SigningKey;
use opaque_ke::ServerSetup;
use sqlx::SqlitePool;
use tokio::sync::OnceCell;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::store;

/// The replicated bootstrap secrets, decoded.
pub struct ClusterKeys {
    /// OPAQUE server setup (OPRF seed and server key pair).
    pub server_setup: ServerSetup<AgoraOpaque>,
    /// Signs session tokens.
    pub signing: SigningKey,
    /// Signs purchase tickets (derived from the token seed, so a ticket
    /// signature never verifies as a token or the other way round).
    pub tickets: SigningKey,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's claims.
    pub claims: SessionClaims,
}

impl Session {
    /// The account id.
    #[must_use]
    pub fn user_id(&self) -> u64 {
        self.claims.user_id
    }
}

/// Loads and caches the cluster secrets, and checks tokens.
pub struct Authenticator {
    readers: SqlitePool,
    /// Filled once the bootstrap command has been applied here.
    keys: OnceCell<Arc<ClusterKeys>>,
    /// The token-verifying key alone, for the rate limiter (set with
    /// `keys`, readable without waiting).
    token_key: crate::grpc::rate_limit::TokenKey,
}

/// Current Unix time in milliseconds.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Authenticator {
    /// Reads secrets and revocations through `readers`.
    #[must_use]
    pub fn new(readers: SqlitePool) -> Self {
        Self {
            readers,
            keys: OnceCell::new(),
            token_key: crate::grpc::rate_limit::TokenKey::default(),
        }
    }

    /// The cluster secrets.
    ///
    /// # Errors
    /// `UNAVAILABLE` until the bootstrap command has been applied on this
    /// node; `INTERNAL` if the stored secrets do not decode.
    pub async fn keys(&self) -> Result<Arc<ClusterKeys>, Status> {
        self.keys
            .get_or_try_init(|| async {
                let (setup, seed) = store::accounts::secrets(&self.readers)
                    .await
                    .map_err(|e| Status::internal(format!("reading the cluster secrets failed: {e}")))?
                    .ok_or_else(|| {
                        Status::unavailable(
                            "this node has no cluster secrets yet (the cluster is still bootstrapping); retry in a moment",
                        )
                    })?;
                let server_setup = ServerSetup::<AgoraOpaque>::deserialize(&setup)
                    .map_err(|_| Status::internal("the stored OPAQUE server setup does not decode"))?;
                let seed: [u8; 32] = seed
                    .try_into()
                    .map_err(|_| Status::internal("the stored token key does not decode"))?;
                let signing = SigningKey::from_bytes(&seed);
                let _ = self.token_key.set(signing.verifying_key());
                Ok(Arc::new(ClusterKeys {
                    server_setup,
                    signing,
                    tickets: agora_proto::ticket::ticket_signing_key(&seed),
                }))
            })
            .await
            .cloned()
    }

    /// The token-verifying key, once [`keys`](Self::keys) has read it.
    #[must_use]
    pub fn token_key(&self) -> crate::grpc::rate_limit::TokenKey {
        self.token_key.clone()
    }

    /// Checks the bearer token in `metadata`, if there is one.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for a malformed, foreign, expired or revoked token.
    pub async fn session(&self, metadata: &MetadataMap) -> Result<Option<Session>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        let keys = self.keys().await?;
        let claims =
            verify_token(token, &keys.signing.verifying_key(), now_ms()).map_err(|e| match e {
                AuthError::Expired => {
                    Status::unauthenticated("your session has expired; log in again")
                }
                other => Status::unauthenticated(other.to_string()),
            })?;
        let revoked =
            store::accounts::is_revoked(&self.readers, &claims.session_id, claims.user_id)
                .await
                .map_err(|e| Status::internal(format!("checking the session failed: {e}")))?;
        if revoked {
            return Err(Status::unauthenticated(
                "this session was ended (logged out, revoked, or its account deleted); log in again",
            ));
        }
        Ok(Some(Session { claims }))
    }

    /// The caller's session; one is required.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` without a valid session.
    pub async fn require_session(&self, metadata: &MetadataMap) -> Result<Session, Status> {
        self.session(metadata)
            .await?
            .ok_or_else(|| Status::unauthenticated("this call needs a session; log in first"))
    }

    /// Admits an operator: an admin session, or the cluster's operator
    /// certificate (verified by TLS against the cluster CA).
    ///
    /// # Errors
    /// `PERMISSION_DENIED` for a user session, `UNAUTHENTICATED` for none.
    pub async fn require_admin<T>(&self, request: &Request<T>) -> Result<Option<Session>, Status> {
        if let Some(session) = self.session(request.metadata()).await? {
            if session.claims.role == Role::Admin {
                return Ok(Some(session));
            }
            return Err(Status::permission_denied(
                "this call is for operators; your account is not an admin",
            ));
        }
        if has_operator_certificate(request) {
            return Ok(None);
        }
        Err(Status::unauthenticated(
            "this call needs an admin session (agora-admin login) or the cluster's operator certificate",
        ))
    }
}

/// Whether the caller presented a client certificate (TLS already checked
/// that it chains to the cluster CA).
#[must_use]
pub fn has_operator_certificate<T>(request: &Request<T>) -> bool {
    request.peer_certs().is_some_and(|c| !c.is_empty())
}
