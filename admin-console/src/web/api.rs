//! The dashboard's HTTP API: JSON in, JSON out, every route but sign-in
//! behind a browser session (401 without one), every call to the cluster
//! made with the signed-in admin's own session.
//!
//! Cross-site requests: the session cookie is `SameSite=Strict`, and every
//! POST must also carry the [`CSRF_HEADER`] and a JSON body. A page on
//! another site can send neither without a CORS preflight, which this
//! server never grants, so a forged form post or image load changes
//! nothing.

use std::sync::Arc;

use agora_peer::{account, describe_status, ledger, new_request_id, operator, ClientError};
use agora_proto::admin::{Event, LogTailRequest, Member, NodeStatus, Settings, UserDetail};
use agora_proto::amount::{format_amount, format_signed};
use agora_proto::auth::{canonical_username, Role};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::{Code, Status};

use super::history::{ObservedEvent, Point, SAMPLE_INTERVAL};
use super::sessions::{self, WebSession};
use super::AppState;
use crate::fleet;
use crate::table::uptime;
use crate::views::{MemberView, MembershipView};

/// The header every POST must carry (any value). Browsers let a page set
/// it only on requests to its own origin.
pub const CSRF_HEADER: &str = "x-agora-console";
/// A node further behind than this many entries is flagged as lagging.
pub const LAGGING_ENTRIES: u64 = 50;
/// Cluster events the page shows (the newest).
pub const SHOWN_EVENTS: usize = 100;
/// Events asked for per call when catching up with the log.
const EVENTS_PAGE: u32 = 500;
/// Pages read per request at most: an old cluster's log is caught up over
/// a few polls instead of one long request.
const EVENTS_PAGES_PER_CALL: usize = 4;
/// Log lines the page shows.
const LOG_LINES: u32 = 200;
/// Users the search shows at most.
const FOUND_USERS: u32 = 25;

/// The whole app: the page, its assets and the API.
pub fn router(state: Arc<AppState>) -> Router {
    let signed_in = Router::new()
        .route("/api/session", get(session_info))
        .route("/api/logout", post(logout))
        .route("/api/overview", get(overview))
        .route("/api/history", get(history))
        .route("/api/events", get(events))
        .route("/api/audit", get(audit))
        .route("/api/members/learner", post(add_learner))
        .route("/api/members/promote", post(promote))
        .route("/api/members/remove", post(remove))
        .route("/api/users", get(find_users))
        .route("/api/users/:name", get(show_user))
        .route("/api/suspension", post(set_suspension))
        .route("/api/users/delete", post(delete_user))
        .route("/api/nodes/:id/log", get(node_log))
        .route("/api/settings", get(settings).post(set_setting))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route(
            "/",
            get(|| asset("text/html; charset=utf-8", super::INDEX_HTML)),
        )
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", super::APP_JS)),
        )
        .route(
            "/app.css",
            get(|| asset("text/css; charset=utf-8", super::APP_CSS)),
        )
        .route("/api/login", post(login))
        .merge(signed_in)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "there is no such page") })
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// A failed API call: an HTTP status and a sentence for the operator.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        Self::new(http_status(status.code()), describe_status(&status))
    }
}

impl From<ClientError> for ApiError {
    fn from(err: ClientError) -> Self {
        let code = match &err {
            ClientError::WrongPassword => {
                return Self::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong name or password: check both and sign in again",
                )
            }
            ClientError::Rpc(status) => return status.clone().into(),
            other => other.code().unwrap_or(Code::Internal),
        };
        Self::new(http_status(code), err.to_string())
    }
}

/// The HTTP status a gRPC code amounts to for the browser.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_GATEWAY,
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Headers every answer gets, and the CSRF check on every POST.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !request.headers().contains_key(CSRF_HEADER) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("a POST to the dashboard needs the {CSRF_HEADER} header (the page sends it)"),
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Lets a request through only with a live browser session, which it
/// hands to the handler.
async fn require_session(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = request
        .headers()
        .get(header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(sessions::session_id_from_cookies)
        .and_then(|id| state.sessions.get(id));
    match session {
        Some(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sign in first: the dashboard needs an admin session",
        )
        .into_response(),
    }
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The sign-in form.
#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// Runs the OPAQUE login against the cluster (the password goes no
/// further than this process), checks the account is an admin, and hands
/// the browser a session cookie.
async fn login(
    State(state): State<Arc<AppState>>,
    Json(body): Json<LoginBody>,
) -> Result<Response, ApiError> {
    let name = canonical_username(&body.username)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let session = account::login(&state.client, &name, body.password.as_bytes()).await?;
    if session.role != Role::Admin {
        // Of no use here; do not leave it valid.
        let _ = account::logout(&state.client, &session.token).await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{name} is not an admin: the dashboard signs in admin accounts only (peers use the `agora` command)"),
        ));
    }
    let client = state.client.clone().with_token(&session.token)?;
    let now = account::now_ms();
    let max_age = session.expires_at_ms.saturating_sub(now) / 1000;
    let reply = json!({
        "username": session.username,
        "expires_at_ms": session.expires_at_ms,
    });
    let id = state.sessions.insert(WebSession::new(
        session.username.clone(),
        session.token.clone(),
        session.expires_at_ms,
        client,
    ));
    Ok((
        [(header::SET_COOKIE, sessions::session_cookie(&id, max_age))],
        Json(reply),
    )
        .into_response())
}

async fn session_info(Extension(session): Extension<Arc<WebSession>>) -> Json<serde_json::Value> {
    Json(json!({
        "username": session.username,
        "expires_at_ms": session.expires_at_ms,
    }))
}

/// Ends the cluster session and forgets the browser's.
async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Extension(session): Extension<Arc<WebSession>>,
) -> Response {
    if let Some(id) = headers
        .get(header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(sessions::session_id_from_cookies)
    {
        state.sessions.remove(id);
    }
    // Already ended on the cluster (expired, revoked) is as good.
    let _ = account::logout(&state.client, &session.token).await;
    (
        [(header::SET_COOKIE, sessions::cleared_cookie())],
        Json(json!({ "signed_out": session.username })),
    )
        .into_response()
}

/// The node table, as the page draws it.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The leader, if any node knows one.
    pub leader_id: Option<u64>,
    /// The leader's term (the newest any node reports).
    pub term: u64,
    /// Every node the console knows, by id.
    pub nodes: Vec<NodeRow>,
    /// The membership as the leader (else any node) knows it.
    pub members: Vec<MemberView>,
    /// Who is signed in.
    pub signed_in_as: String,
    /// Which entries count as lagging.
    pub lagging_entries: u64,
}

/// One node's row.
#[derive(Debug, Serialize, Default)]
pub struct NodeRow {
    /// Raft node id.
    pub id: u64,
    /// Public gRPC address.
    pub addr: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// "leader", "follower", "candidate", "learner", "unreachable".
    pub role: String,
    /// Whether it leads (the row is highlighted).
    pub leader: bool,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Highest committed index it knows.
    pub committed_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// Latest snapshot's index.
    pub snapshot_index: u64,
    /// Entries behind the leader, from the leader's view (None when no
    /// leader answered or it does not track this node).
    pub lag: Option<u64>,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// The same, as an operator reads it.
    pub uptime: String,
    /// agora-server version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Whether it is flagged as lagging.
    pub lagging: bool,
    /// Whether it votes (None when unknown).
    pub voter: Option<bool>,
    /// gRPC requests per second it served lately.
    pub requests_per_sec: f64,
    /// Its state and log databases on disk, in bytes.
    pub db_bytes: u64,
}

/// Builds the table from every node's answer (pure: unit-tested).
pub fn overview_of(
    answers: &[(u64, String, Result<NodeStatus, Status>)],
    signed_in_as: String,
) -> Overview {
    let statuses: Vec<&NodeStatus> = answers
        .iter()
        .filter_map(|(_, _, result)| result.as_ref().ok())
        .collect();
    let leader_id = fleet::leader_of(statuses.iter().copied());
    let leader = statuses
        .iter()
        .find(|status| Some(status.id) == leader_id && status.role == "leader");
    let term = statuses.iter().map(|s| s.term).max().unwrap_or(0);
    let members: Vec<Member> = leader
        .map(|s| s.members.clone())
        .or_else(|| {
            statuses
                .iter()
                .max_by_key(|s| s.term)
                .map(|s| s.members.clone())
        })
        .unwrap_or_default();
    let leader_committed = leader.map(|s| s.committed_index);
    let nodes = answers
        .iter()
        .map(|(id, addr, result)| match result {
            Ok(status) => {
                let lag =
                    leader.and_then(|l| l.replication.iter().find(|r| r.id == *id).map(|r| r.lag));
                let behind = leader_committed.map_or(0, |committed| {
                    committed.saturating_sub(status.applied_index)
                });
                NodeRow {
                    id: *id,
                    addr: addr.clone(),
                    reachable: true,
                    error: None,
                    role: status.role.clone(),
                    leader: Some(*id) == leader_id,
                    term: status.term,
                    last_log_index: status.last_log_index,
                    committed_index: status.committed_index,
                    applied_index: status.applied_index,
                    snapshot_index: status.snapshot_index,
                    lag,
                    uptime_secs: status.uptime_secs,
                    uptime: uptime(status.uptime_secs),
                    version: status.version.clone(),
                    pid: status.pid,
                    lagging: lag.is_some_and(|l| l > LAGGING_ENTRIES) || behind > LAGGING_ENTRIES,
                    voter: members.iter().find(|m| m.id == *id).map(|m| m.voter),
                    requests_per_sec: status.requests_per_sec,
                    db_bytes: status.state_db_bytes.saturating_add(status.log_db_bytes),
                }
            }
            Err(status) => NodeRow {
                id: *id,
                addr: addr.clone(),
                reachable: false,
                error: Some(describe_status(status)),
                role: "unreachable".to_owned(),
                lag: leader.and_then(|l| l.replication.iter().find(|r| r.id == *id).map(|r| r.lag)),
                voter: members.iter().find(|m| m.id == *id).map(|m| m.voter),
                ..NodeRow::default()
            },
        })
        .collect();
    Overview {
        leader_id,
        term,
        nodes,
        members: members.iter().map(MemberView::from).collect(),
        signed_in_as,
        lagging_entries: LAGGING_ENTRIES,
    }
}

async fn overview(Extension(session): Extension<Arc<WebSession>>) -> ApiResult<Overview> {
    let answers = fleet::statuses(&session.client).await;
    // Every node refusing the session means it ended (revoked, expired
    // early): say so, so the page asks for a sign-in.
    if !answers.is_empty()
        && answers.iter().all(|(_, result)| {
            matches!(result, Err(s) if s.code() == Code::Unauthenticated || s.code() == Code::PermissionDenied)
        })
    {
        if let Some((_, Err(status))) = answers.into_iter().next() {
            return Err(status.into());
        }
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in again"));
    }
    let rows: Vec<_> = answers
        .into_iter()
        .map(|(id, result)| (id, session.client.node_addr(id).unwrap_or_default(), result))
        .collect();
    Ok(Json(overview_of(&rows, session.username.clone())))
}

/// The charts' points.
#[derive(Serialize)]
struct HistoryReply {
    interval_ms: u64,
    points: Vec<Point>,
}

async fn history(State(state): State<Arc<AppState>>) -> Json<HistoryReply> {
    Json(HistoryReply {
        interval_ms: u64::try_from(SAMPLE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
        points: state.history.points(),
    })
}

/// The event panel: the cluster's replicated event log, and what the
/// console itself saw change.
#[derive(Serialize)]
struct EventsReply {
    /// The newest cluster events, newest first.
    cluster: Vec<serde_json::Value>,
    /// Why the cluster's log could not be read, if it could not.
    cluster_error: Option<String>,
    /// The console's own observations, newest first.
    observed: Vec<ObservedEvent>,
}

/// The cluster's event log as far as the console has read it, so each
/// poll asks only for what is new.
#[derive(Debug, Default)]
pub struct EventCache {
    /// Held across the calls that extend it: one reader at a time.
    inner: tokio::sync::Mutex<EventCacheInner>,
}

#[derive(Debug, Default)]
struct EventCacheInner {
    /// The newest id read.
    last_id: u64,
    /// The newest [`SHOWN_EVENTS`] events, oldest first.
    events: std::collections::VecDeque<Event>,
}

impl EventCache {
    /// Reads what is new (with the browser's session) and answers the
    /// newest events, newest first.
    async fn refresh(&self, client: &agora_peer::ClusterClient) -> Result<Vec<Event>, ClientError> {
        let mut inner = self.inner.lock().await;
        for _ in 0..EVENTS_PAGES_PER_CALL {
            let since_id = inner.last_id;
            let page = agora_peer::operator::events(client, since_id, EVENTS_PAGE).await?;
            let full = page.events.len() >= EVENTS_PAGE as usize;
            for event in page.events {
                inner.last_id = inner.last_id.max(event.id);
                inner.events.push_back(event);
                if inner.events.len() > SHOWN_EVENTS {
                    inner.events.pop_front();
                }
            }
            if !full {
                break;
            }
        }
        Ok(inner.events.iter().rev().cloned().collect())
    }
}

fn event_view(event: &Event) -> serde_json::Value {
    json!({
        "id": event.id,
        "time_ms": event.time_ms,
        "node_id": event.node_id,
        "kind": event.kind,
        "subject_node_id": (event.subject_node_id != 0).then_some(event.subject_node_id),
        "term": event.term,
        "message": event.message,
    })
}

async fn events(
    State(state): State<Arc<AppState>>,
    Extension(session): Extension<Arc<WebSession>>,
) -> ApiResult<EventsReply> {
    let (cluster, cluster_error) = match state.events.refresh(&session.client).await {
        Ok(events) => (events.iter().map(event_view).collect(), None),
        Err(e) if e.code() == Some(Code::Unauthenticated) => return Err(e.into()),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(Json(EventsReply {
        cluster,
        cluster_error,
        observed: state.history.events(),
    }))
}

/// The ledger audit, as the page shows it.
#[derive(Serialize)]
struct AuditView {
    clean: bool,
    applied_index: Option<u64>,
    ledger_digest: Option<String>,
    problems: Vec<String>,
    totals: Option<serde_json::Value>,
    nodes: Vec<serde_json::Value>,
}

async fn audit(Extension(session): Extension<Arc<WebSession>>) -> ApiResult<AuditView> {
    let audit =
        ledger::audit_cluster(&session.client, ledger::AUDIT_ROUNDS, ledger::AUDIT_PAUSE).await;
    // Refused everywhere for want of a session: the page must sign in.
    if let Some(refused) = audit.nodes.iter().find_map(|node| match &node.result {
        Err(s) if s.code() == Code::Unauthenticated => Some(s.clone()),
        _ => None,
    }) {
        if audit.nodes.iter().all(|node| node.result.is_err()) {
            return Err(refused.into());
        }
    }
    let agreed = audit.agreed();
    let totals = audit
        .nodes
        .iter()
        .find_map(|node| node.result.as_ref().ok())
        .map(|figures| {
            json!({
                "accounts": figures.accounts,
                "journal_entries": figures.journal_entries,
                "open_holds": figures.open_holds,
                "user_money": format_amount(figures.user_money),
                "operator_balance": format_signed(figures.operator_balance),
                "balance_sum_cents": figures.balance_sum,
                "commission_bps": figures.commission_bps,
            })
        });
    Ok(Json(AuditView {
        clean: audit.is_clean(),
        applied_index: agreed.as_ref().map(|(index, _)| *index),
        ledger_digest: agreed.map(|(_, digest)| digest),
        problems: audit.problems(),
        totals,
        nodes: audit
            .nodes
            .iter()
            .map(|node| match &node.result {
                Ok(reply) => json!({ "id": node.id, "clean": reply.clean, "applied_index": reply.applied_index }),
                Err(status) => json!({ "id": node.id, "clean": false, "error": describe_status(status) }),
            })
            .collect(),
    }))
}

/// A node to add as a learner.
#[derive(Deserialize)]
struct LearnerBody {
    id: u64,
    api_addr: String,
    raft_addr: String,
}

/// A node, by id.
#[derive(Deserialize)]
struct NodeBody {
    id: u64,
    #[serde(default)]
    force: bool,
}

async fn add_learner(
    Extension(session): Extension<Arc<WebSession>>,
    Json(body): Json<LearnerBody>,
) -> ApiResult<MembershipView> {
    let client = crate::commands::membership_client_of(&session.client).await;
    let reply = operator::add_learner(&client, body.id, &body.api_addr, &body.raft_addr).await?;
    Ok(Json(MembershipView::from(&reply)))
}

async fn promote(
    Extension(session): Extension<Arc<WebSession>>,
    Json(body): Json<NodeBody>,
) -> ApiResult<MembershipView> {
    let client = crate::commands::membership_client_of(&session.client).await;
    let reply = operator::promote(&client, body.id).await?;
    Ok(Json(MembershipView::from(&reply)))
}

async fn remove(
    Extension(session): Extension<Arc<WebSession>>,
    Json(body): Json<NodeBody>,
) -> ApiResult<MembershipView> {
    let client = crate::commands::membership_client_of(&session.client).await;
    let reply = operator::remove(&client, body.id, body.force).await?;
    Ok(Json(MembershipView::from(&reply)))
}

/// A user, as the page shows it.
fn user_view(u: &UserDetail) -> serde_json::Value {
    json!({
        "user_id": u.user_id,
        "username": u.username,
        "role": u.role,
        "created_at_ms": u.created_at_ms,
        "balance": format_signed(u.balance),
        "held": format_amount(u.held),
        "suspended": u.suspended,
        "sales": u.sales,
        "strikes": u.strikes,
        "active_listings": u.active_listings,
        "open_holds": u.open_holds,
        "pending_proceeds": format_amount(u.pending_proceeds),
        "last_login_ms": u.last_login_ms,
        "delete_blocker": u.delete_blocker,
    })
}

/// The user search's text.
#[derive(Deserialize)]
struct FindQuery {
    #[serde(default)]
    q: String,
}

async fn find_users(
    Extension(session): Extension<Arc<WebSession>>,
    Query(query): Query<FindQuery>,
) -> ApiResult<serde_json::Value> {
    let page = operator::find_users(&session.client, &query.q, 0, FOUND_USERS).await?;
    let users: Vec<_> = page
        .users
        .iter()
        .map(|u| {
            json!({
                "user_id": u.user_id,
                "username": u.username,
                "role": u.role,
                "balance": format_signed(u.balance),
                "suspended": u.suspended,
            })
        })
        .collect();
    Ok(Json(
        json!({ "users": users, "more": page.next_after_id != 0 }),
    ))
}

async fn show_user(
    Extension(session): Extension<Arc<WebSession>>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let name = canonical_username(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let detail = user_detail(&session.client, &name).await?;
    Ok(Json(user_view(&detail)))
}

async fn user_detail(
    client: &agora_peer::ClusterClient,
    name: &str,
) -> Result<UserDetail, ApiError> {
    Ok(operator::show_user(client, name).await?)
}

/// Suspend or unsuspend.
#[derive(Deserialize)]
struct SuspensionBody {
    username: String,
    suspended: bool,
}

/// Suspends or reinstates the user; answers the user as it is after.
async fn set_suspension(
    Extension(session): Extension<Arc<WebSession>>,
    Json(body): Json<SuspensionBody>,
) -> ApiResult<serde_json::Value> {
    let name = canonical_username(&body.username)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let standing =
        ledger::set_suspended(&session.client, &name, body.suspended, &new_request_id()).await?;
    let mut detail = user_detail(&session.client, &name).await?;
    // The read may land on a node a moment behind the write.
    detail.suspended = standing.suspended;
    Ok(Json(user_view(&detail)))
}

/// A user to delete.
#[derive(Deserialize)]
struct UserBody {
    username: String,
}

/// Deletes an inactive account (the cluster says why not otherwise).
async fn delete_user(
    Extension(session): Extension<Arc<WebSession>>,
    Json(body): Json<UserBody>,
) -> ApiResult<serde_json::Value> {
    let name = canonical_username(&body.username)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let reply = operator::delete_user(&session.client, &name, &new_request_id()).await?;
    Ok(Json(json!({
        "user_id": reply.user_id,
        "username": reply.username,
        "index": reply.index,
    })))
}

/// The end of one node's own log file (asked of that node: each node
/// knows only its own).
async fn node_log(
    Extension(session): Extension<Arc<WebSession>>,
    Path(id): Path<u64>,
) -> ApiResult<serde_json::Value> {
    let mut admin = session.client.admin(id).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("there is no node {id} in the cluster file"),
        )
    })?;
    let reply = tokio::time::timeout(
        fleet::NODE_TIMEOUT,
        admin.log_tail(LogTailRequest { lines: LOG_LINES }),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node {id} did not answer within {} s",
                fleet::NODE_TIMEOUT.as_secs()
            ),
        )
    })??
    .into_inner();
    Ok(Json(json!({
        "node_id": reply.node_id,
        "path": reply.path,
        "file_bytes": reply.file_bytes,
        "lines": reply.lines,
    })))
}

fn settings_view(s: &Settings) -> serde_json::Value {
    json!({
        "commission_bps": s.commission_bps,
        "hold_ttl_ms": s.hold_ttl_ms,
        "dispute_window_ms": s.dispute_window_ms,
        "argon2_memory_kib": s.argon2_memory_kib,
        "argon2_iterations": s.argon2_iterations,
        "argon2_parallelism": s.argon2_parallelism,
        "index": s.index,
    })
}

async fn settings(Extension(session): Extension<Arc<WebSession>>) -> ApiResult<serde_json::Value> {
    let settings = operator::settings(&session.client).await?;
    Ok(Json(settings_view(&settings)))
}

/// One setting to change; the cluster checks the name and the range.
#[derive(Deserialize)]
struct SettingBody {
    name: String,
    value: String,
}

async fn set_setting(
    Extension(session): Extension<Arc<WebSession>>,
    Json(body): Json<SettingBody>,
) -> ApiResult<serde_json::Value> {
    let settings =
        operator::set_setting(&session.client, &body.name, &body.value, &new_request_id()).await?;
    Ok(Json(settings_view(&settings)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::admin::ReplicationLag;

    fn status(id: u64, role: &str, applied: u64) -> NodeStatus {
        NodeStatus {
            id,
            role: role.to_owned(),
            term: 4,
            leader_id: 1,
            last_log_index: 200,
            committed_index: 200,
            applied_index: applied,
            uptime_secs: 65,
            version: "0.1.0".into(),
            members: (1..=3)
                .map(|id| Member {
                    id,
                    api_addr: format!("127.0.0.1:710{id}"),
                    raft_addr: String::new(),
                    voter: true,
                })
                .collect(),
            replication: if role == "leader" {
                vec![
                    ReplicationLag {
                        id: 1,
                        matched_index: 200,
                        lag: 0,
                        ..ReplicationLag::default()
                    },
                    ReplicationLag {
                        id: 2,
                        matched_index: 120,
                        lag: 80,
                        ..ReplicationLag::default()
                    },
                    ReplicationLag {
                        id: 3,
                        matched_index: 150,
                        lag: 50,
                        ..ReplicationLag::default()
                    },
                ]
            } else {
                Vec::new()
            },
            ..NodeStatus::default()
        }
    }

    #[test]
    fn flags_the_leader_the_laggard_and_the_unreachable() {
        let overview = overview_of(
            &[
                (1, "a1".into(), Ok(status(1, "leader", 200))),
                (2, "a2".into(), Ok(status(2, "follower", 120))),
                (
                    3,
                    "a3".into(),
                    Err(Status::unavailable("connection refused")),
                ),
            ],
            "admin".into(),
        );
        assert_eq!(overview.leader_id, Some(1));
        assert_eq!(overview.term, 4);
        let [one, two, three] = &overview.nodes[..] else {
            panic!("three rows: {overview:?}")
        };
        assert!(one.leader && !one.lagging && one.reachable);
        assert_eq!(one.uptime, "1m05s");
        assert!(two.lagging && !two.leader);
        assert_eq!(two.lag, Some(80));
        assert!(!three.reachable && !three.leader);
        assert_eq!(three.role, "unreachable");
        assert_eq!(three.lag, Some(50), "the leader's view of a dead node");
        assert!(three
            .error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused")));
        assert_eq!(overview.members.len(), 3);
    }

    #[test]
    fn grpc_refusals_become_the_right_http_status() {
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let wrong = ApiError::from(ClientError::WrongPassword);
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
}
