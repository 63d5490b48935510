//! `agora.market.v1.AccountService`: OPAQUE registration and login, logout,
//! and who-am-i.
//!
//! - Registration is stateless on the server: RegisterStart may run on any
//!   node; RegisterFinish becomes a replicated `Register` command.
//! - Login keeps OPAQUE's in-between state on the node that ran LoginStart
//!   (for [`LOGIN_STATE_TTL`]); LoginFinish must reach the same node. Any
//!   node can run a login, because the server setup and the token key are
//!   replicated.
//! - An unknown name runs against a dummy password file, so the answers for
//!   "no such user" and "wrong password" are the same.
//! - **Failed-login slowdown**, per name and per node: every LoginStart
//!   counts as a failure until its LoginFinish succeeds (OPAQUE lets a
//!   client detect a wrong password by itself and never finish). After
//!   [`FREE_FAILURES`] consecutive failures the name is locked for 2 s, then
//!   4 s, 8 s, ... up to [`MAX_LOCKOUT`]; a successful login clears it.
//!   Unknown names are counted the same way, so the lockout does not reveal
//!   which names exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_proto::auth::{
    canonical_username, sign_token, AgoraOpaque, KsfParams, Role, SessionClaims,
};
use agora_proto::market::account_service_server::AccountService;
use agora_proto::market::{
    self, LoginFinishReply, LoginFinishRequest, LoginStartReply, LoginStartRequest, LogoutReply,
    LogoutRequest, RegisterFinishReply, RegisterFinishRequest, RegisterStartReply,
    RegisterStartRequest, WhoAmIReply, WhoAmIRequest,
};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginStartParameters, ServerRegistration,
};
use rand::rngs::OsRng;
use rand::RngCore;
use tonic::{Request, Response, Status};

use super::request_key;
use crate::auth::{has_operator_certificate, now_ms};
use crate::node::Node;
use crate::raft::command::{Op, Outcome, Proposal, RequestKey};
use crate::store;

/// How long a node keeps a login's in-between state.
const LOGIN_STATE_TTL: Duration = Duration::from_secs(60);
/// Most logins in progress on one node (older ones are dropped beyond).
const MAX_PENDING_LOGINS: usize = 100_000;
/// Failures allowed before a name is slowed down.
const FREE_FAILURES: u32 = 5;
/// Longest lockout.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// The one answer to a failed login, whatever the cause.
const LOGIN_FAILED: &str = "wrong username or password";

struct PendingLogin {
    state: ServerLogin<AgoraOpaque>,
    username: String,
    user_id: Option<u64>,
    started: Instant,
}

#[derive(Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// The service, over a running node.
pub struct AccountApi {
    node: Arc<Node>,
    /// How long a session lasts (a node setting).
    session_ttl: Duration,
    /// Logins between their two rounds. A std mutex: held only for map
    /// operations.
    pending: Mutex<HashMap<String, PendingLogin>>,
    /// Consecutive failed logins per canonical name.
    failures: Mutex<HashMap<String, Failures>>,
}

impl AccountApi {
    /// Serves `node`; sessions last `session_ttl`.
    #[must_use]
    pub fn new(node: Arc<Node>, session_ttl: Duration) -> Self {
        Self {
            node,
            session_ttl,
            pending: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    async fn ksf(&self) -> Result<KsfParams, Status> {
        store::accounts::ksf(self.node.state.readers())
            .await
            .map_err(|e| Status::internal(format!("reading the password settings failed: {e}")))
    }

    fn check_lockout(&self, username: &str) -> Result<(), Status> {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = failures.get(username).and_then(|f| f.locked_until) {
            let now = Instant::now();
            if until > now {
                return Err(Status::resource_exhausted(format!(
                    "too many failed logins for this name; try again in {} s",
                    (until - now).as_secs() + 1
                )));
            }
        }
        Ok(())
    }

    fn record_failure(&self, username: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= MAX_PENDING_LOGINS {
            // Bounded memory under a flood of made-up names: keep the locks.
            let now = Instant::now();
            failures.retain(|_, f| f.locked_until.is_some_and(|u| u > now));
        }
        let entry = failures.entry(username.to_owned()).or_default();
        entry.count += 1;
        if entry.count >= FREE_FAILURES {
            let exp = (entry.count - FREE_FAILURES + 1).min(16);
            let lock = Duration::from_secs(1u64 << exp).min(MAX_LOCKOUT);
            entry.locked_until = Some(Instant::now() + lock);
        }
        metrics::counter!("agora_login_attempts_total").increment(1);
    }

    fn clear_failures(&self, username: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(username);
    }

    fn take_pending(&self, login_id: &str) -> Option<PendingLogin> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.retain(|_, p| p.started.elapsed() < LOGIN_STATE_TTL);
        pending.remove(login_id)
    }

    fn put_pending(&self, login_id: String, login: PendingLogin) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.len() >= MAX_PENDING_LOGINS {
            pending.retain(|_, p| p.started.elapsed() < LOGIN_STATE_TTL);
        }
        if pending.len() < MAX_PENDING_LOGINS {
            pending.insert(login_id, login);
        }
    }
}

fn username(name: &str) -> Result<String, Status> {
    canonical_username(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn ksf_reply(k: KsfParams) -> market::KsfParams {
    market::KsfParams {
        memory_kib: k.memory_kib,
        iterations: k.iterations,
        parallelism: k.parallelism,
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    async fn register_start(
        &self,
        request: Request<RegisterStartRequest>,
    ) -> Result<Response<RegisterStartReply>, Status> {
        let req = request.into_inner();
        let name = username(&req.username)?;
        let keys = self.node.auth.keys().await?;
        let message = RegistrationRequest::<AgoraOpaque>::deserialize(&req.registration_request)
            .map_err(|_| {
                Status::invalid_argument("registration_request is not a valid OPAQUE message")
            })?;
        // Saves the client its password hashing when the name is taken.
        if store::accounts::user_by_name(self.node.state.readers(), &name)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "the username {name:?} is taken; pick another"
            )));
        }
        let start =
            ServerRegistration::<AgoraOpaque>::start(&keys.server_setup, message, name.as_bytes())
                .map_err(|e| {
                    Status::invalid_argument(format!("the registration request was refused: {e}"))
                })?;
        Ok(Response::new(RegisterStartReply {
            registration_response: start.message.serialize().to_vec(),
            ksf: Some(ksf_reply(self.ksf().await?)),
        }))
    }

    async fn register_finish(
        &self,
        request: Request<RegisterFinishRequest>,
    ) -> Result<Response<RegisterFinishReply>, Status> {
        let operator = has_operator_certificate(&request);
        let req = request.into_inner();
        let name = username(&req.username)?;
        if req.admin && !operator {
            return Err(Status::permission_denied(
                "only the cluster operator (with the operator certificate) can create an admin account",
            ));
        }
        let upload = RegistrationUpload::<AgoraOpaque>::deserialize(&req.registration_upload)
            .map_err(|_| {
                Status::invalid_argument("registration_upload is not a valid OPAQUE message")
            })?;
        let password_file = ServerRegistration::<AgoraOpaque>::finish(upload)
            .serialize()
            .to_vec();
        let mut key = request_key(req.request_id)?;
        // Before an account exists, requests are keyed by the name they register.
        key.client = format!("register:{name}:{}", key.client);
        let proposal = Proposal {
            request: Some(key),
            op: Op::Register {
                username: name,
                role: if req.admin { Role::Admin } else { Role::User },
                password_file,
                identity_public_key: req.identity_public_key,
                encrypted_identity_key: req.encrypted_identity_key,
            },
        };
        let applied = self.node.write(proposal).await?;
        match applied.outcome {
            Outcome::Registered { user_id } => Ok(Response::new(RegisterFinishReply {
                user_id,
                index: applied.index,
            })),
            other => Err(Status::internal(format!(
                "unexpected outcome {other:?} for a registration"
            ))),
        }
    }

    async fn login_start(
        &self,
        request: Request<LoginStartRequest>,
    ) -> Result<Response<LoginStartReply>, Status> {
        let req = request.into_inner();
        let name = username(&req.username)?;
        self.check_lockout(&name)?;
        // Counted as a failure until LoginFinish proves the password: a
        // client that never finishes (it can tell a wrong password by
        // itself) is slowed down all the same.
        self.record_failure(&name);
        self.node.wait_applied(req.min_index).await?;
        let keys = self.node.auth.keys().await?;
        let message = CredentialRequest::<AgoraOpaque>::deserialize(&req.credential_request)
            .map_err(|_| {
                Status::invalid_argument("credential_request is not a valid OPAQUE message")
            })?;
        let user = store::accounts::user_by_name(self.node.state.readers(), &name)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let password_file = match &user {
            Some(u) => Some(
                ServerRegistration::<AgoraOpaque>::deserialize(&u.password_file)
                    .map_err(|_| Status::internal("a stored password file does not decode"))?,
            ),
            None => None,
        };
        let start = ServerLogin::start(
            &mut OsRng,
            &keys.server_setup,
            password_file,
            message,
            name.as_bytes(),
            ServerLoginStartParameters::default(),
        )
        .map_err(|_| Status::unauthenticated(LOGIN_FAILED))?;
        // An account logs in with the parameters it registered with (a
        // later change applies to new registrations only); an unknown name
        // gets the current ones, like a new account would.
        let ksf = match store::users::ksf_of(self.node.state.readers(), &name)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
        {
            Some(ksf) => ksf,
            None => self.ksf().await?,
        };
        let login_id = random_hex(16);
        self.put_pending(
            login_id.clone(),
            PendingLogin {
                state: start.state,
                username: name,
                user_id: user.map(|u| u.id),
                started: Instant::now(),
            },
        );
        Ok(Response::new(LoginStartReply {
            login_id,
            credential_response: start.message.serialize().to_vec(),
            ksf: Some(ksf_reply(ksf)),
        }))
    }

    async fn login_finish(
        &self,
        request: Request<LoginFinishRequest>,
    ) -> Result<Response<LoginFinishReply>, Status> {
        let req = request.into_inner();
        if req.login_id.is_empty() {
            return Err(Status::invalid_argument(
                "login_id is missing; send the one LoginStart answered, to the same node",
            ));
        }
        let pending = self.take_pending(&req.login_id).ok_or_else(|| {
            Status::failed_precondition(
                "this login is unknown or took too long on this node; start the login again",
            )
        })?;
        let message =
            CredentialFinalization::<AgoraOpaque>::deserialize(&req.credential_finalization)
                .map_err(|_| {
                    Status::invalid_argument(
                        "credential_finalization is not a valid OPAQUE message",
                    )
                })?;
        let finished = pending.state.finish(message);
        let user = match (finished, pending.user_id) {
            (Ok(_), Some(user_id)) => {
                store::accounts::user_by_id(self.node.state.readers(), user_id)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            }
            _ => None,
        };
        let Some(user) = user else {
            return Err(Status::unauthenticated(LOGIN_FAILED));
        };
        if user.suspended {
            return Err(Status::permission_denied(
                "this account is suspended; contact an operator",
            ));
        }
        self.clear_failures(&pending.username);
        let keys = self.node.auth.keys().await?;
        let now = now_ms();
        let claims = SessionClaims {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            session_id: random_hex(16),
            issued_at_ms: now,
            expires_at_ms: now
                .saturating_add(u64::try_from(self.session_ttl.as_millis()).unwrap_or(u64::MAX)),
        };
        metrics::counter!("agora_logins_total").increment(1);
        self.node.logins.record(user.id, now);
        Ok(Response::new(LoginFinishReply {
            token: sign_token(&claims, &keys.signing),
            user_id: user.id,
            username: user.username,
            role: user.role.as_str().to_owned(),
            expires_at_ms: claims.expires_at_ms,
            identity_public_key: user.identity_public_key,
            encrypted_identity_key: user.encrypted_identity_key,
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let req = request.into_inner();
        let mut key: RequestKey = request_key(req.request_id)?;
        key.client = format!("user:{}", session.user_id());
        let proposal = Proposal {
            request: Some(key),
            op: Op::RevokeSession {
                session_id: session.claims.session_id.clone(),
                user_id: session.user_id(),
                expires_at_ms: session.claims.expires_at_ms,
            },
        };
        let applied = self.node.write(proposal).await?;
        Ok(Response::new(LogoutReply {
            index: applied.index,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        let session = self.node.auth.require_session(request.metadata()).await?;
        let user = store::accounts::user_by_id(self.node.state.readers(), session.user_id())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found("this account no longer exists"))?;
        Ok(Response::new(WhoAmIReply {
            user_id: user.id,
            username: user.username,
            role: session.claims.role.as_str().to_owned(),
            session_id: session.claims.session_id,
            expires_at_ms: session.claims.expires_at_ms,
            identity_public_key: user.identity_public_key,
        }))
    }
}
