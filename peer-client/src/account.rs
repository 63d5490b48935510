//! Accounts: registration and login with OPAQUE, logout, who-am-I.
//!
//! No call carries the password. Registration sends the cluster an OPAQUE
//! password file and the account's ed25519 identity key, the private half
//! sealed under a key derived from OPAQUE's `export_key`, which only the
//! right password reproduces. A login therefore recovers the same identity
//! on any machine: the cluster hands the sealed key back and the client
//! opens it with the login's `export_key`.
//!
//! The password is stretched with Argon2id on the client, with parameters
//! the cluster hands out (a replicated setting). That work runs on Tokio's
//! blocking pool so that many logins at once (a load test) do not stall the
//! runtime.
//!
//! A login is two round trips to the *same* node (the node keeps the state
//! in between). If that node fails half-way, the whole login starts over on
//! another node; registration's second step is a replicated write with a
//! request id, retried like any other.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_proto::auth::{
    canonical_username, open_identity_key, seal_identity_key, AgoraOpaque, KsfParams, Role,
};
use agora_proto::market::account_service_client::AccountServiceClient;
use agora_proto::market::{
    KsfParams as WireKsfParams, LoginFinishReply, LoginFinishRequest, LoginStartRequest,
    LogoutRequest, RegisterFinishRequest, RegisterStartRequest, WhoAmIRequest,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use opaque_ke::errors::ProtocolError;
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rand::RngCore;
use tonic::{Code, Response, Status};
use zeroize::Zeroizing;

use crate::bearer::BearerToken;
use crate::retry::{backoff, gave_up, is_retryable, leader_hint_of};
use crate::{request_id, ClientError, ClusterClient};

/// Most memory the client lets the cluster ask for when stretching a
/// password (1 GiB). Far above any sane setting; it only stops a
/// misconfigured or hostile node from exhausting this machine.
pub const MAX_KSF_MEMORY_KIB: u32 = 1 << 20;
/// Most Argon2 iterations the client lets the cluster ask for.
pub const MAX_KSF_ITERATIONS: u32 = 64;

/// A newly registered account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's id.
    pub user_id: u64,
    /// Its canonical (lower-case) name.
    pub username: String,
    /// Log index of the registration (for read-your-writes).
    pub index: u64,
    /// The identity public key registered with it.
    pub identity_public_key: VerifyingKey,
}

impl Account {
    /// The identity public key, hex.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        hex(self.identity_public_key.as_bytes())
    }
}

/// A signed-in account: what a login returns and the peer stores.
#[derive(Clone)]
pub struct Session {
    /// Bearer token signed by the cluster key; a credential.
    pub token: String,
    /// The account's id.
    pub user_id: u64,
    /// Its canonical name.
    pub username: String,
    /// Its role when the session was issued.
    pub role: Role,
    /// When the cluster stops accepting the token (Unix ms).
    pub expires_at_ms: u64,
    /// The account's ed25519 identity, recovered from the cluster's sealed
    /// copy; a credential.
    pub identity: SigningKey,
}

impl Session {
    /// The token, ready to put on requests.
    ///
    /// # Errors
    /// [`ClientError::InvalidToken`] when it cannot be sent as metadata.
    pub fn bearer(&self) -> Result<BearerToken, ClientError> {
        BearerToken::new(&self.token)
    }

    /// Whether the session has ended by the local clock (the cluster has the
    /// last word; this only saves a round trip that would fail).
    #[must_use]
    pub fn is_expired(&self) -> bool {
        self.expires_at_ms <= now_ms()
    }

    /// The identity public key, hex.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        hex(self.identity.verifying_key().as_bytes())
    }
}

impl std::fmt::Debug for Session {
    // The token and the identity key are credentials: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &"<redacted>")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("identity", &self.public_key_hex())
            .finish()
    }
}

/// What the cluster says about a session ([`whoami`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The account's id.
    pub user_id: u64,
    /// Its canonical name.
    pub username: String,
    /// Its role in this session.
    pub role: Role,
    /// The session's id (the handle for revocation).
    pub session_id: String,
    /// When the session ends (Unix ms).
    pub expires_at_ms: u64,
    /// The identity public key registered with the account.
    pub identity_public_key: VerifyingKey,
}

impl SessionInfo {
    /// The identity public key, hex.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        hex(self.identity_public_key.as_bytes())
    }
}

/// The OPAQUE identities both sides bind into the protocol: OPAQUE's
/// defaults, the two sides' public keys. The server passes the same
/// (`ServerLoginStartParameters::default()`); a mismatch would make every
/// login fail as a wrong password. The account name is bound all the same:
/// the server derives the account's OPRF key from it (the credential
/// identifier), so one account's password file is useless under another
/// name.
#[must_use]
pub fn opaque_identifiers() -> Identifiers<'static> {
    Identifiers::default()
}

/// Length of an OPAQUE `CredentialFinalization` for [`AgoraOpaque`]: one
/// HMAC-SHA-512 tag.
const FINALIZATION_LEN: usize = 64;

/// Registers `username` with `password`: OPAQUE registration plus a fresh
/// identity key pair. `admin` asks for the admin role, which the cluster
/// grants only to a client presenting the operator certificate (how
/// `agora-server dev` makes the first admin). Does not log in.
///
/// # Errors
/// [`ClientError::Auth`] for a name that breaks the rules (checked before
/// any call), [`ClientError::Rpc`] with `ALREADY_EXISTS` for a taken name
/// or the cluster's other refusals, and [`ClientError::KsfTooCostly`] when
/// the cluster's Argon2 setting is beyond what the client accepts.
pub async fn register(
    client: &ClusterClient,
    username: &str,
    password: &[u8],
    admin: bool,
) -> Result<Account, ClientError> {
    let username = canonical_username(username)?;
    let password = Zeroizing::new(password.to_vec());
    let (state, registration_request) = start_registration(&password)?;

    // Stateless on the server: any node, the usual failover.
    let start = RegisterStartRequest {
        username: username.clone(),
        registration_request,
    };
    let reply = client
        .call_any(|channel| {
            let request = client.authorize(start.clone());
            async move {
                AccountServiceClient::new(channel)
                    .register_start(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?;
    let ksf = ksf_of(reply.ksf.as_ref())?;

    let (registration_upload, export_key) = {
        let response = reply.registration_response;
        blocking(move || finish_registration(state, &password, &response, ksf)).await?
    };
    let identity = SigningKey::generate(&mut OsRng);
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let encrypted_identity_key = seal_identity_key(&export_key, &identity.to_bytes(), nonce)?;

    // A replicated write: the same request id on every attempt, so a retry
    // after a leader crash returns the first answer.
    let finish = RegisterFinishRequest {
        request_id: Some(request_id(username.clone())),
        username: username.clone(),
        registration_upload,
        identity_public_key: identity.verifying_key().to_bytes().to_vec(),
        encrypted_identity_key,
        admin,
    };
    let reply = client
        .call_leader(|channel| {
            let request = client.authorize(finish.clone());
            async move {
                AccountServiceClient::new(channel)
                    .register_finish(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?;
    Ok(Account {
        user_id: reply.user_id,
        username,
        index: reply.index,
        identity_public_key: identity.verifying_key(),
    })
}

/// Logs in as `username`: OPAQUE login on one node (chosen at random; a
/// login that node cannot finish starts over on the next), then opens the
/// account's sealed identity key with the login's `export_key`.
///
/// # Errors
/// [`ClientError::WrongPassword`] when the password does not open the
/// cluster's answer (an unknown name looks the same), [`ClientError::Rpc`]
/// for the cluster's refusals (`RESOURCE_EXHAUSTED` after too many failed
/// logins, with when to retry) or when no node could finish a login within
/// the client's retry policy.
pub async fn login(
    client: &ClusterClient,
    username: &str,
    password: &[u8],
) -> Result<Session, ClientError> {
    login_after(client, username, password, 0).await
}

/// [`login`] on a node that has applied at least `min_index` (for example
/// the index of the registration that made the account, so a login right
/// after registering never lands on a follower that has not seen it yet).
///
/// # Errors
/// As [`login`].
pub async fn login_after(
    client: &ClusterClient,
    username: &str,
    password: &[u8],
    min_index: u64,
) -> Result<Session, ClientError> {
    let username = canonical_username(username)?;
    let password = Zeroizing::new(password.to_vec());
    let policy = client.retry_policy();
    let started = Instant::now();
    let mut nodes = client.node_ids();
    nodes.shuffle(&mut rand::thread_rng());
    let mut target = *nodes.first().ok_or(ClientError::NoNodes)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let status = match login_on(client, target, &username, &password, min_index).await {
            Err(ClientError::Rpc(status)) if is_retryable(&status) => status,
            done => return done,
        };
        let pause = backoff(attempt);
        if attempt >= policy.max_attempts || started.elapsed() + pause > policy.budget {
            return Err(ClientError::Rpc(gave_up(
                target,
                &status,
                attempt,
                started.elapsed(),
            )));
        }
        // Any node can run a login; a node that names a leader is sent
        // there only because it is evidently alive and current.
        let next = leader_hint_of(&status)
            .and_then(|(id, addr)| client.learn(id, addr))
            .filter(|id| *id != target)
            .unwrap_or_else(|| client.next_after(target));
        tracing::debug!(
            node = target,
            next,
            attempt,
            code = ?status.code(),
            message = status.message(),
            "starting the login over on another node"
        );
        tokio::time::sleep(pause).await;
        target = next;
    }
}

/// One complete login attempt on node `node`.
///
/// When the password does not open the server's answer, the client still
/// finishes the round with a finalization that cannot verify: the node then
/// drops the login's state at once and counts the failure towards its
/// failed-login slowdown, which it could not do for a login that simply
/// never came back. (A hostile client would not, so the node must not rely
/// on it; an honest one should.)
async fn login_on(
    client: &ClusterClient,
    node: u64,
    username: &str,
    password: &Zeroizing<Vec<u8>>,
    min_index: u64,
) -> Result<Session, ClientError> {
    let attempt_timeout = client.retry_policy().attempt_timeout;
    // No session token: a stale one must not get in the way of a new login.
    let mut account = AccountServiceClient::new(client.channel(node)?);
    let (state, credential_request) = start_login(password)?;
    let start = LoginStartRequest {
        username: username.to_owned(),
        credential_request,
        min_index,
    };
    let reply = bounded(node, attempt_timeout, account.login_start(start)).await?;
    let ksf = ksf_of(reply.ksf.as_ref())?;

    let finished = {
        let password = password.clone();
        let response = reply.credential_response;
        blocking(move || finish_login(state, &password, &response, ksf)).await
    };
    let (credential_finalization, export_key) = match finished {
        Ok(finished) => finished,
        Err(ClientError::WrongPassword) => {
            let report = LoginFinishRequest {
                login_id: reply.login_id,
                credential_finalization: vec![0; FINALIZATION_LEN],
            };
            // Its answer adds nothing to what the client already knows.
            let _ = bounded(node, attempt_timeout, account.login_finish(report)).await;
            return Err(ClientError::WrongPassword);
        }
        Err(err) => return Err(err),
    };
    let finish = LoginFinishRequest {
        login_id: reply.login_id,
        credential_finalization,
    };
    let reply = match bounded(node, attempt_timeout, account.login_finish(finish)).await {
        // The node lost the login's state (it restarted, or the password
        // hashing took longer than it waits): start over, as after a crash.
        Err(ClientError::Rpc(status)) if status.code() == Code::FailedPrecondition => {
            return Err(ClientError::Rpc(Status::unavailable(format!(
                "node {node} lost the login half-way ({})",
                status.message()
            ))));
        }
        other => other?,
    };
    session_from(reply, &export_key)
}

/// Ends the session `token` on every node (a replicated revocation).
/// Returns the log index of the revocation.
///
/// # Errors
/// [`ClientError::Rpc`] with `UNAUTHENTICATED` when the session had already
/// ended or was never valid, or when the cluster could not be reached.
pub async fn logout(client: &ClusterClient, token: &str) -> Result<u64, ClientError> {
    let bearer = BearerToken::new(token)?;
    let request = LogoutRequest {
        request_id: Some(request_id("logout")),
    };
    let reply = client
        .call_leader(|channel| {
            let request = bearer.request(request.clone());
            async move {
                AccountServiceClient::new(channel)
                    .logout(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?;
    Ok(reply.index)
}

/// Asks any node whose session `token` is.
///
/// # Errors
/// [`ClientError::Rpc`] with `UNAUTHENTICATED` when the session has expired
/// or was revoked, or when no node answered.
pub async fn whoami(client: &ClusterClient, token: &str) -> Result<SessionInfo, ClientError> {
    let bearer = BearerToken::new(token)?;
    let reply = client
        .call_any(|channel| {
            let request = bearer.request(WhoAmIRequest {});
            async move {
                AccountServiceClient::new(channel)
                    .who_am_i(request)
                    .await
                    .map(Response::into_inner)
            }
        })
        .await?;
    Ok(SessionInfo {
        user_id: reply.user_id,
        username: reply.username,
        role: role_of(&reply.role)?,
        session_id: reply.session_id,
        expires_at_ms: reply.expires_at_ms,
        identity_public_key: public_key_of(&reply.identity_public_key)?,
    })
}

/// The current time, Unix ms.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long until `expires_at_ms`, for people: `"in 23h 59m"`, or
/// `"expired"`.
#[must_use]
pub fn describe_expiry(expires_at_ms: u64) -> String {
    let left = expires_at_ms.saturating_sub(now_ms()) / 1000;
    match left {
        0 => "expired".to_owned(),
        1..=59 => format!("in {left}s"),
        60..=3599 => format!("in {}m", left / 60),
        3600..=86_399 => format!("in {}h {}m", left / 3600, left % 3600 / 60),
        _ => format!("in {}d {}h", left / 86_400, left % 86_400 / 3600),
    }
}

/// The role a reply names.
///
/// # Errors
/// [`ClientError::Protocol`] for a role this client does not know.
pub fn role_of(text: &str) -> Result<Role, ClientError> {
    match text {
        "user" => Ok(Role::User),
        "admin" => Ok(Role::Admin),
        other => Err(ClientError::Protocol(format!("unknown role {other:?}"))),
    }
}

/// `future` (an RPC to `node`), failing with `DEADLINE_EXCEEDED` after
/// `limit`.
async fn bounded<T>(
    node: u64,
    limit: Duration,
    future: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => Ok(result?.into_inner()),
        Err(_) => Err(ClientError::Rpc(Status::deadline_exceeded(format!(
            "node {node} did not answer within {:.1}s",
            limit.as_secs_f64()
        )))),
    }
}

/// Runs CPU-heavy password work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ClientError::Interrupted)?
}

/// The Argon2 parameters of a reply, checked against the client's bounds.
fn ksf_of(wire: Option<&WireKsfParams>) -> Result<KsfParams, ClientError> {
    let wire = wire.ok_or_else(|| {
        ClientError::Protocol("no password-hashing parameters in the answer".into())
    })?;
    if wire.memory_kib > MAX_KSF_MEMORY_KIB || wire.iterations > MAX_KSF_ITERATIONS {
        return Err(ClientError::KsfTooCostly {
            memory_kib: wire.memory_kib,
            iterations: wire.iterations,
        });
    }
    let params = KsfParams {
        memory_kib: wire.memory_kib,
        iterations: wire.iterations,
        parallelism: wire.parallelism,
    };
    // Refuse values argon2 rejects now, not half-way through the protocol.
    params.argon2()?;
    Ok(params)
}

/// A protocol failure as a client error: a wrong password reads as one.
fn opaque_error(err: ProtocolError) -> ClientError {
    match err {
        ProtocolError::InvalidLoginError => ClientError::WrongPassword,
        other => ClientError::Protocol(format!("OPAQUE: {other:?}")),
    }
}

/// Registration, client side, first step: the blinded password.
fn start_registration(
    password: &[u8],
) -> Result<(ClientRegistration<AgoraOpaque>, Vec<u8>), ClientError> {
    let start =
        ClientRegistration::<AgoraOpaque>::start(&mut OsRng, password).map_err(opaque_error)?;
    Ok((start.state, start.message.serialize().to_vec()))
}

/// Registration, client side, second step: the password file to upload and
/// the `export_key`. Runs Argon2.
fn finish_registration(
    state: ClientRegistration<AgoraOpaque>,
    password: &[u8],
    response: &[u8],
    ksf: KsfParams,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), ClientError> {
    let response =
        RegistrationResponse::<AgoraOpaque>::deserialize(response).map_err(opaque_error)?;
    let argon2 = ksf.argon2()?;
    let params = ClientRegistrationFinishParameters::new(opaque_identifiers(), Some(&argon2));
    let finish = state
        .finish(&mut OsRng, password, response, params)
        .map_err(opaque_error)?;
    Ok((
        finish.message.serialize().to_vec(),
        Zeroizing::new(finish.export_key.to_vec()),
    ))
}

/// Login, client side, first step: the credential request.
fn start_login(password: &[u8]) -> Result<(ClientLogin<AgoraOpaque>, Vec<u8>), ClientError> {
    let start = ClientLogin::<AgoraOpaque>::start(&mut OsRng, password).map_err(opaque_error)?;
    Ok((start.state, start.message.serialize().to_vec()))
}

/// Login, client side, second step: the finalization that proves the
/// password to the server, and the `export_key`. Runs Argon2.
fn finish_login(
    state: ClientLogin<AgoraOpaque>,
    password: &[u8],
    response: &[u8],
    ksf: KsfParams,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), ClientError> {
    let response =
        CredentialResponse::<AgoraOpaque>::deserialize(response).map_err(opaque_error)?;
    let argon2 = ksf.argon2()?;
    let params = ClientLoginFinishParameters::new(None, opaque_identifiers(), Some(&argon2));
    let finish = state
        .finish(password, response, params)
        .map_err(opaque_error)?;
    Ok((
        finish.message.serialize().to_vec(),
        Zeroizing::new(finish.export_key.to_vec()),
    ))
}

/// The session a successful login reply describes, with the identity key
/// opened and checked against the registered public key.
fn session_from(reply: LoginFinishReply, export_key: &[u8]) -> Result<Session, ClientError> {
    if reply.token.is_empty() {
        return Err(ClientError::Protocol(
            "the login answer has no token".into(),
        ));
    }
    BearerToken::new(&reply.token)?;
    let identity = open_identity(
        export_key,
        &reply.identity_public_key,
        &reply.encrypted_identity_key,
    )?;
    Ok(Session {
        token: reply.token,
        user_id: reply.user_id,
        username: reply.username,
        role: role_of(&reply.role)?,
        expires_at_ms: reply.expires_at_ms,
        identity,
    })
}

/// Opens a sealed identity key and checks it belongs to `public_key`.
fn open_identity(
    export_key: &[u8],
    public_key: &[u8],
    sealed: &[u8],
) -> Result<SigningKey, ClientError> {
    let public_key = public_key_of(public_key)?;
    let secret = Zeroizing::new(open_identity_key(export_key, sealed)?);
    let identity = SigningKey::from_bytes(&secret);
    if identity.verifying_key() != public_key {
        return Err(ClientError::IdentityMismatch);
    }
    Ok(identity)
}

/// An ed25519 public key from its 32 bytes.
fn public_key_of(bytes: &[u8]) -> Result<VerifyingKey, ClientError> {
    let bytes: &[u8; 32] = bytes.try_into().map_err(|_| {
        ClientError::Protocol(format!(
            "an identity public key has 32 bytes, not {}",
            bytes.len()
        ))
    })?;
    VerifyingKey::from_bytes(bytes)
        .map_err(|_| ClientError::Protocol("the identity public key is not a valid key".into()))
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    //! The client half of OPAQUE against an in-test server half, with the
    //! same identifiers the cluster uses. Cheap Argon2 settings keep it fast.

    use agora_proto::auth::AuthError;
    use opaque_ke::{ServerLogin, ServerLoginStartParameters, ServerRegistration, ServerSetup};

    use super::*;

    const KSF: KsfParams = KsfParams::LOAD_TEST;

    /// What the cluster stores for an account.
    struct Stored {
        password_file: ServerRegistration<AgoraOpaque>,
        public_key: Vec<u8>,
        sealed_key: Vec<u8>,
    }

    fn register_with(setup: &ServerSetup<AgoraOpaque>, name: &str, password: &[u8]) -> Stored {
        let (state, request) = start_registration(password).expect("registration starts");
        let request = opaque_ke::RegistrationRequest::deserialize(&request).expect("request");
        let response = ServerRegistration::start(setup, request, name.as_bytes())
            .expect("server answers")
            .message
            .serialize()
            .to_vec();
        let (upload, export_key) =
            finish_registration(state, password, &response, KSF).expect("registration");
        let upload = opaque_ke::RegistrationUpload::deserialize(&upload).expect("upload");
        let identity = SigningKey::generate(&mut OsRng);
        let sealed_key =
            seal_identity_key(&export_key, &identity.to_bytes(), [9; 12]).expect("seal");
        Stored {
            password_file: ServerRegistration::finish(upload),
            public_key: identity.verifying_key().to_bytes().to_vec(),
            sealed_key,
        }
    }

    /// A login as the cluster runs it; `None` for an unknown name.
    fn login_with(
        setup: &ServerSetup<AgoraOpaque>,
        stored: Option<&Stored>,
        name: &str,
        password: &[u8],
    ) -> Result<Session, ClientError> {
        let (state, request) = start_login(password)?;
        let request = opaque_ke::CredentialRequest::deserialize(&request).expect("request");
        let server = ServerLogin::start(
            &mut OsRng,
            setup,
            stored.map(|s| s.password_file.clone()),
            request,
            name.as_bytes(),
            // What the cluster passes (see `opaque_identifiers`).
            ServerLoginStartParameters::default(),
        )
        .expect("server starts the login");
        let response = server.message.serialize().to_vec();
        let (finalization, export_key) = finish_login(state, password, &response, KSF)?;
        assert_eq!(finalization.len(), FINALIZATION_LEN);
        let finalization =
            opaque_ke::CredentialFinalization::deserialize(&finalization).expect("finalization");
        server.state.finish(finalization).expect("server accepts");
        let stored = stored.expect("a login that finishes has an account");
        session_from(
            LoginFinishReply {
                token: "body.sig".into(),
                user_id: 7,
                username: name.into(),
                role: "user".into(),
                expires_at_ms: 1,
                identity_public_key: stored.public_key.clone(),
                encrypted_identity_key: stored.sealed_key.clone(),
            },
            &export_key,
        )
    }

    #[test]
    fn login_recovers_the_registered_identity() {
        let setup = ServerSetup::<AgoraOpaque>::new(&mut OsRng);
        let stored = register_with(&setup, "alice", b"correct horse");
        let session = login_with(&setup, Some(&stored), "alice", b"correct horse")
            .expect("the right password logs in");
        assert_eq!(
            session.identity.verifying_key().to_bytes().as_slice(),
            stored.public_key.as_slice()
        );
        assert_eq!(session.role, Role::User);
        assert!(!format!("{session:?}").contains("body.sig"));
        // A second login (another machine) recovers the very same key.
        let again =
            login_with(&setup, Some(&stored), "alice", b"correct horse").expect("logs in again");
        assert_eq!(again.identity.to_bytes(), session.identity.to_bytes());
    }

    #[test]
    fn a_wrong_password_or_unknown_name_is_refused_alike() {
        let setup = ServerSetup::<AgoraOpaque>::new(&mut OsRng);
        let stored = register_with(&setup, "alice", b"correct horse");
        let wrong = login_with(&setup, Some(&stored), "alice", b"battery staple");
        assert!(
            matches!(wrong, Err(ClientError::WrongPassword)),
            "{wrong:?}"
        );
        let unknown = login_with(&setup, None, "mallory", b"battery staple");
        assert!(
            matches!(unknown, Err(ClientError::WrongPassword)),
            "{unknown:?}"
        );
        // Another account's password file under this name does not work
        // either: the name is bound into the protocol (the credential
        // identifier).
        let swapped = login_with(&setup, Some(&stored), "bob", b"correct horse");
        assert!(
            matches!(swapped, Err(ClientError::WrongPassword)),
            "{swapped:?}"
        );
    }

    #[test]
    fn the_failure_report_reaches_the_server_as_a_failed_login() {
        let setup = ServerSetup::<AgoraOpaque>::new(&mut OsRng);
        let stored = register_with(&setup, "alice", b"correct horse");
        let (_, request) = start_login(b"battery staple").expect("starts");
        let request = opaque_ke::CredentialRequest::deserialize(&request).expect("request");
        let server = ServerLogin::start(
            &mut OsRng,
            &setup,
            Some(stored.password_file),
            request,
            b"alice",
            ServerLoginStartParameters::default(),
        )
        .expect("server starts the login");
        // Well-formed (the server gets past decoding and counts a failure),
        // and never valid.
        let report =
            opaque_ke::CredentialFinalization::<AgoraOpaque>::deserialize(&[0; FINALIZATION_LEN])
                .expect("the report decodes");
        assert!(server.state.finish(report).is_err());
    }

    #[test]
    fn a_sealed_key_must_match_the_public_key() {
        let export_key = [5u8; 64];
        let identity = SigningKey::generate(&mut OsRng);
        let sealed = seal_identity_key(&export_key, &identity.to_bytes(), [1; 12]).expect("seal");
        let public = identity.verifying_key().to_bytes();
        let opened = open_identity(&export_key, &public, &sealed).expect("opens");
        assert_eq!(opened.to_bytes(), identity.to_bytes());

        let other = SigningKey::generate(&mut OsRng).verifying_key().to_bytes();
        assert!(matches!(
            open_identity(&export_key, &other, &sealed),
            Err(ClientError::IdentityMismatch)
        ));
        assert!(matches!(
            open_identity(&[6u8; 64], &public, &sealed),
            Err(ClientError::Auth(AuthError::Seal))
        ));
        assert!(matches!(
            open_identity(&export_key, &public[..31], &sealed),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn ksf_parameters_are_bounded() {
        let wire = |memory_kib, iterations| WireKsfParams {
            memory_kib,
            iterations,
            parallelism: 1,
        };
        assert_eq!(
            ksf_of(Some(&wire(19 * 1024, 2))).ok(),
            Some(KsfParams::OWASP)
        );
        assert!(matches!(
            ksf_of(Some(&wire(MAX_KSF_MEMORY_KIB + 1, 2))),
            Err(ClientError::KsfTooCostly { .. })
        ));
        assert!(matches!(
            ksf_of(Some(&wire(64, MAX_KSF_ITERATIONS + 1))),
            Err(ClientError::KsfTooCostly { .. })
        ));
        assert!(matches!(
            ksf_of(Some(&wire(0, 0))),
            Err(ClientError::Auth(AuthError::Ksf(_)))
        ));
        assert!(matches!(ksf_of(None), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn expiry_reads_as_a_duration() {
        assert_eq!(describe_expiry(0), "expired");
        let in_a_day = now_ms() + 86_400_000 + 3_600_000 + 30_000;
        assert_eq!(describe_expiry(in_a_day), "in 1d 1h");
        let soon = now_ms() + 90 * 60 * 1000 + 30_000;
        assert_eq!(describe_expiry(soon), "in 1h 30m");
    }

    #[test]
    fn roles_and_hex() {
        assert_eq!(role_of("admin").ok(), Some(Role::Admin));
        assert!(role_of("root").is_err());
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
