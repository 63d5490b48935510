//! Registration, login, who-am-I and logout against fake nodes that run
//! the server half of OPAQUE with `opaque-ke`, over TLS.
//!
//! The fake nodes share one "cluster" (server setup, accounts, applied
//! request ids) and keep each login's in-between state per node, as the
//! real ones do, so a LoginFinish sent to the wrong node fails. They also
//! record every request they receive, to check that none carries the
//! password and that session calls carry the bearer token.

mod common;

use common::{pki, Pki};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agora_peer::account::{login, logout, register, whoami};
use agora_peer::{ClientError, ClientTls, ClusterClient, AUTHORIZATION};
use agora_proto::auth::{AgoraOpaque, KsfParams, Role};
use agora_proto::market::account_service_server::{AccountService, AccountServiceServer};
use agora_proto::market::{
    KsfParams as WireKsf, LoginFinishReply, LoginFinishRequest, LoginStartReply, LoginStartRequest,
    LogoutReply, LogoutRequest, RegisterFinishReply, RegisterFinishRequest, RegisterStartReply,
    RegisterStartRequest, WhoAmIReply, WhoAmIRequest,
};
use anyhow::Context as _;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginStartParameters, ServerRegistration, ServerSetup,
};
use prost::Message as _;
use rand::rngs::OsRng;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

const PASSWORD: &[u8] = b"correct horse battery";
const TOKEN: &str = "session-token.signature";

/// One stored account.
#[derive(Clone)]
struct Stored {
    user_id: u64,
    password_file: ServerRegistration<AgoraOpaque>,
    public_key: Vec<u8>,
    sealed_key: Vec<u8>,
}

/// A login between its rounds: the name and the server's state.
type PendingLogin = (String, ServerLogin<AgoraOpaque>);

/// What every fake node shares.
struct World {
    setup: ServerSetup<AgoraOpaque>,
    accounts: Mutex<HashMap<String, Stored>>,
    /// Request ids already applied, with their user id.
    applied: Mutex<HashMap<String, u64>>,
    /// Logins between rounds, by (node, login id).
    pending: Mutex<HashMap<(u64, String), PendingLogin>>,
    /// Every request body as received, for the password check.
    seen: Mutex<Vec<Vec<u8>>>,
    /// `(node, rpc)` in arrival order.
    calls: Mutex<Vec<(u64, &'static str)>>,
    /// Authorization headers of session calls.
    bearers: Mutex<Vec<Option<String>>>,
    /// Fail the next LoginFinish as if the node had crashed.
    crash_next_login_finish: AtomicBool,
    /// Answer the next RegisterFinish with UNAVAILABLE *after* applying it
    /// (the reply was lost).
    lose_next_register_reply: AtomicBool,
    /// Failed logins the nodes saw.
    failures: AtomicU32,
}

impl World {
    fn new() -> Self {
        Self {
            setup: ServerSetup::new(&mut OsRng),
            accounts: Mutex::default(),
            applied: Mutex::default(),
            pending: Mutex::default(),
            seen: Mutex::default(),
            calls: Mutex::default(),
            bearers: Mutex::default(),
            crash_next_login_finish: AtomicBool::new(false),
            lose_next_register_reply: AtomicBool::new(false),
            failures: AtomicU32::new(0),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, Status> {
    mutex.lock().map_err(|_| Status::internal("poisoned"))
}

fn ksf() -> Option<WireKsf> {
    let k = KsfParams::LOAD_TEST;
    Some(WireKsf {
        memory_kib: k.memory_kib,
        iterations: k.iterations,
        parallelism: k.parallelism,
    })
}

struct FakeNode {
    id: u64,
    world: Arc<World>,
}

impl FakeNode {
    fn note(&self, rpc: &'static str, body: Vec<u8>) -> Result<(), Status> {
        lock(&self.world.calls)?.push((self.id, rpc));
        lock(&self.world.seen)?.push(body);
        Ok(())
    }

    fn bearer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ok = header.as_deref() == Some(&format!("Bearer {TOKEN}"));
        lock(&self.world.bearers)?.push(header);
        if ok {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "this call needs a session; log in first",
            ))
        }
    }
}

#[tonic::async_trait]
impl AccountService for FakeNode {
    async fn register_start(
        &self,
        request: Request<RegisterStartRequest>,
    ) -> Result<Response<RegisterStartReply>, Status> {
        let req = request.into_inner();
        self.note("RegisterStart", req.encode_to_vec())?;
        if lock(&self.world.accounts)?.contains_key(&req.username) {
            return Err(Status::already_exists(
                "the username is taken; pick another",
            ));
        }
        let message = RegistrationRequest::deserialize(&req.registration_request)
            .map_err(|_| Status::invalid_argument("bad registration_request"))?;
        let start = ServerRegistration::start(&self.world.setup, message, req.username.as_bytes())
            .map_err(|_| Status::invalid_argument("refused"))?;
        Ok(Response::new(RegisterStartReply {
            registration_response: start.message.serialize().to_vec(),
            ksf: ksf(),
        }))
    }

    async fn register_finish(
        &self,
        request: Request<RegisterFinishRequest>,
    ) -> Result<Response<RegisterFinishReply>, Status> {
        let req = request.into_inner();
        self.note("RegisterFinish", req.encode_to_vec())?;
        let id = req
            .request_id
            .ok_or_else(|| Status::invalid_argument("request_id is missing"))?
            .id;
        let user_id = {
            let mut applied = lock(&self.world.applied)?;
            if let Some(user_id) = applied.get(&id) {
                *user_id
            } else {
                let upload = RegistrationUpload::deserialize(&req.registration_upload)
                    .map_err(|_| Status::invalid_argument("bad registration_upload"))?;
                let mut accounts = lock(&self.world.accounts)?;
                let user_id = u64::try_from(accounts.len()).unwrap_or(0) + 1;
                accounts.insert(
                    req.username.clone(),
                    Stored {
                        user_id,
                        password_file: ServerRegistration::finish(upload),
                        public_key: req.identity_public_key,
                        sealed_key: req.encrypted_identity_key,
                    },
                );
                applied.insert(id, user_id);
                user_id
            }
        };
        if self
            .world
            .lose_next_register_reply
            .swap(false, Ordering::SeqCst)
        {
            return Err(Status::unavailable("the leader crashed"));
        }
        Ok(Response::new(RegisterFinishReply { user_id, index: 41 }))
    }

    async fn login_start(
        &self,
        request: Request<LoginStartRequest>,
    ) -> Result<Response<LoginStartReply>, Status> {
        let req = request.into_inner();
        self.note("LoginStart", req.encode_to_vec())?;
        let message = CredentialRequest::deserialize(&req.credential_request)
            .map_err(|_| Status::invalid_argument("bad credential_request"))?;
        let file = lock(&self.world.accounts)?
            .get(&req.username)
            .map(|s| s.password_file.clone());
        let start = ServerLogin::start(
            &mut OsRng,
            &self.world.setup,
            file,
            message,
            req.username.as_bytes(),
            ServerLoginStartParameters::default(),
        )
        .map_err(|_| Status::unauthenticated("wrong username or password"))?;
        let login_id = agora_peer::new_request_id();
        lock(&self.world.pending)?.insert((self.id, login_id.clone()), (req.username, start.state));
        Ok(Response::new(LoginStartReply {
            login_id,
            credential_response: start.message.serialize().to_vec(),
            ksf: ksf(),
        }))
    }

    async fn login_finish(
        &self,
        request: Request<LoginFinishRequest>,
    ) -> Result<Response<LoginFinishReply>, Status> {
        let req = request.into_inner();
        self.note("LoginFinish", req.encode_to_vec())?;
        if self
            .world
            .crash_next_login_finish
            .swap(false, Ordering::SeqCst)
        {
            return Err(Status::unavailable("the node crashed"));
        }
        let (username, state) = lock(&self.world.pending)?
            .remove(&(self.id, req.login_id))
            .ok_or_else(|| Status::failed_precondition("this login is unknown on this node"))?;
        let message = CredentialFinalization::deserialize(&req.credential_finalization)
            .map_err(|_| Status::invalid_argument("bad credential_finalization"))?;
        let stored = lock(&self.world.accounts)?.get(&username).cloned();
        let (Ok(_), Some(stored)) = (state.finish(message), stored) else {
            self.world.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Status::unauthenticated("wrong username or password"));
        };
        Ok(Response::new(LoginFinishReply {
            token: TOKEN.to_owned(),
            user_id: stored.user_id,
            username,
            role: "user".to_owned(),
            expires_at_ms: agora_peer::account::now_ms() + 3_600_000,
            identity_public_key: stored.public_key,
            encrypted_identity_key: stored.sealed_key,
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        self.bearer(&request)?;
        self.note("Logout", request.into_inner().encode_to_vec())?;
        Ok(Response::new(LogoutReply { index: 57 }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        self.bearer(&request)?;
        self.note("WhoAmI", Vec::new())?;
        let stored = lock(&self.world.accounts)?
            .get("alice")
            .cloned()
            .ok_or_else(|| Status::not_found("no alice"))?;
        Ok(Response::new(WhoAmIReply {
            user_id: stored.user_id,
            username: "alice".to_owned(),
            role: "user".to_owned(),
            session_id: "s1".to_owned(),
            expires_at_ms: 1,
            identity_public_key: stored.public_key,
        }))
    }
}

async fn spawn_node(id: u64, world: Arc<World>, pki: &Pki) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        &pki.server_cert_pem,
        &pki.server_key_pem,
    ));
    let router = Server::builder()
        .tls_config(tls)?
        .add_service(AccountServiceServer::new(FakeNode { id, world }));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(addr)
}

async fn cluster(world: &Arc<World>, nodes: u64) -> anyhow::Result<ClusterClient> {
    let pki = pki()?;
    let mut addrs = Vec::new();
    for id in 1..=nodes {
        addrs.push((id, spawn_node(id, world.clone(), &pki).await?.to_string()));
    }
    let tls = ClientTls {
        ca_pem: pki.ca_pem.into_bytes(),
        identity: None,
        server_name: "agora-node".to_owned(),
    };
    Ok(ClusterClient::from_parts(&tls, addrs)?)
}

fn calls(world: &World) -> anyhow::Result<Vec<(u64, &'static str)>> {
    Ok(world
        .calls
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone())
}

#[tokio::test]
async fn register_login_whoami_logout() -> anyhow::Result<()> {
    let world = Arc::new(World::new());
    let client = cluster(&world, 3).await?;

    // The registration's reply is lost once: the retry carries the same
    // request id and gets the first answer, so one account exists.
    world.lose_next_register_reply.store(true, Ordering::SeqCst);
    let account = register(&client, "Alice", PASSWORD, false).await?;
    assert_eq!(account.username, "alice");
    assert_eq!(account.user_id, 1);
    assert_eq!(account.index, 41);
    assert_eq!(
        world
            .accounts
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .len(),
        1
    );

    // The node running the login crashes between the two rounds: the login
    // starts over, and each attempt finishes where it started.
    world.crash_next_login_finish.store(true, Ordering::SeqCst);
    let session = login(&client, "alice", PASSWORD).await?;
    assert_eq!(
        session.identity.verifying_key(),
        account.identity_public_key
    );
    assert_eq!(session.role, Role::User);
    assert_eq!(session.token, TOKEN);
    let logins: Vec<_> = calls(&world)?
        .into_iter()
        .filter(|(_, rpc)| rpc.starts_with("Login"))
        .collect();
    assert_eq!(logins.len(), 4, "{logins:?}");
    assert_eq!(logins[0].0, logins[1].0, "{logins:?}");
    assert_eq!(logins[2].0, logins[3].0, "{logins:?}");
    assert_ne!(logins[0].0, logins[2].0, "{logins:?}");

    let info = whoami(&client, &session.token).await?;
    assert_eq!(info.username, "alice");
    assert_eq!(info.identity_public_key, account.identity_public_key);
    assert_eq!(logout(&client, &session.token).await?, 57);
    let bearers = world
        .bearers
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(bearers.len(), 2);
    assert!(bearers
        .iter()
        .all(|b| b.as_deref() == Some("Bearer session-token.signature")));

    // No request carried the password.
    let seen = world
        .seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert!(seen.len() >= 8);
    for body in &seen {
        assert!(
            !body.windows(PASSWORD.len()).any(|w| w == PASSWORD),
            "a request carried the password"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_reported() -> anyhow::Result<()> {
    let world = Arc::new(World::new());
    let client = cluster(&world, 2).await?;
    register(&client, "bob", PASSWORD, false).await?;

    let err = login(&client, "bob", b"not the password")
        .await
        .err()
        .context("a wrong password must not log in")?;
    assert!(matches!(err, ClientError::WrongPassword), "{err:?}");
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert_eq!(
        err.to_string(),
        "not authenticated: wrong username or password"
    );
    // The client told the node, which counts it towards its slowdown.
    assert_eq!(world.failures.load(Ordering::SeqCst), 1);

    let unknown = login(&client, "nobody", PASSWORD)
        .await
        .err()
        .context("an unknown name must not log in")?;
    assert!(matches!(unknown, ClientError::WrongPassword), "{unknown:?}");
    Ok(())
}

#[tokio::test]
async fn refusals_keep_their_codes() -> anyhow::Result<()> {
    let world = Arc::new(World::new());
    let client = cluster(&world, 1).await?;
    register(&client, "carol", PASSWORD, false).await?;
    let taken = register(&client, "CAROL", PASSWORD, false)
        .await
        .err()
        .context("a taken name must be refused")?;
    assert_eq!(taken.code(), Some(Code::AlreadyExists));
    assert!(
        taken.to_string().starts_with("it already exists"),
        "{taken}"
    );

    // A bad name is refused before any call.
    let before = calls(&world)?.len();
    let bad = register(&client, "no spaces", PASSWORD, false)
        .await
        .err()
        .context("a bad name must be refused")?;
    assert_eq!(bad.code(), Some(Code::InvalidArgument));
    assert_eq!(calls(&world)?.len(), before);

    // Session calls without a valid session.
    let expired = whoami(&client, "other.token")
        .await
        .err()
        .context("a foreign token must be refused")?;
    assert_eq!(expired.code(), Some(Code::Unauthenticated));
    let seen: HashSet<_> = calls(&world)?.into_iter().map(|(_, rpc)| rpc).collect();
    assert!(!seen.contains("WhoAmI"));
    Ok(())
}
