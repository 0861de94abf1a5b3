//! The HTTP/JSON API (documented in `docs/api.md`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use flotilla_fleet::{FleetError, Supervisor};
use flotilla_protocol::{
    ApiError, CreateSessionRequest, DaemonStatus, Event, EventKind, EventPage, Health, SessionId,
    SessionInfo, SessionList, SessionState, StopAccepted,
};
use flotilla_store::StoreError;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, OpenApi as OpenApiDocument, Ref, RefOr, Response as ResponseDoc, ResponseBuilder,
};
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most events one page returns.
pub const MAX_PAGE: u32 = 1000;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The sessions.
    pub fleet: Arc<Supervisor>,
    /// Static facts for `GET /v1/daemon`.
    pub status: Arc<DaemonStatus>,
    /// Fires when the daemon stops: ends SSE streams so shutdown completes.
    pub shutdown: CancellationToken,
    /// Who may use the daemon; authenticates every request.
    pub principals: crate::principals::Principals,
}

/// An error response: status plus JSON body.
pub struct ApiFailure(StatusCode, ApiError);

impl ApiFailure {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiFailure(status, ApiError::new(code, message))
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.1.error.message, self.0.as_u16())
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<FleetError> for ApiFailure {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::BadRequest(m) => ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m),
            FleetError::NotFound(_) => {
                ApiFailure::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            FleetError::NoApproval(_) => {
                ApiFailure::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            FleetError::Forbidden(m) => ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", m),
            FleetError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error in API");
        ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        )
    }
}

/// `Json<T>` whose rejections are JSON errors that say what is wrong.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiFailure::new(
                rej.status(),
                "bad_request",
                format!("invalid JSON body: {}", rej.body_text()),
            )),
        }
    }
}

/// `Query<T>` whose rejections are JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid query string: {}", rej.body_text()),
            )),
        }
    }
}

fn parse_id(raw: &str) -> Result<SessionId, ApiFailure> {
    SessionId::parse(raw)
        .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

/// Where the API's own description is served.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// Name of the bearer-token security scheme in the description.
pub const BEARER_SCHEME: &str = "bearer";

/// The fixed part of the description; the paths and their schemas come
/// from the handlers' `#[utoipa::path]` through [`api_routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flotilla daemon API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The flotilla daemon's HTTP/JSON API, on its Unix socket (the caller is the peer's uid) and, with `flotilla serve --listen`, on TCP (a bearer token). Generated from the code; `docs/api.md` explains it in words."
    ),
    tags(
        (name = "daemon", description = "Health, status, stop, and this description"),
        (name = "sessions", description = "Agent sessions and their event logs"),
        (name = "approvals", description = "Calls waiting for a person"),
        (name = "principals", description = "Who may use the daemon (admin)"),
        (name = "auth", description = "The caller itself: who it is, TOTP login"),
        (name = "secrets", description = "The vault's admin surface (admin)"),
        (name = "compliance", description = "The audit log: records, verify, checkpoints, retention")
    )
)]
struct ApiDoc;

/// Every route of the API, each with its description: the one list of
/// routes. A route is registered only here and in the `routes()` of
/// `principals`, `approvals` and `secrets`, and only through
/// `routes!(handler)` of a `#[utoipa::path]` handler, so none can exist
/// without its description (a test checks the sources for any other kind of
/// registration).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(daemon_status))
        .routes(routes!(daemon_stop))
        .routes(routes!(openapi_json))
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session))
        .routes(routes!(cancel_session))
        .routes(routes!(list_events))
        .routes(routes!(stream_events))
        .merge(crate::principals::routes())
        .merge(crate::approvals::routes())
        .merge(crate::secrets::routes())
        .merge(crate::compliance::routes())
}

/// The API's OpenAPI description, as `GET /v1/openapi.json` serves it.
pub fn openapi() -> OpenApiDocument {
    finish(api_routes().into_openapi())
}

/// Adds to the collected description what the shared machinery does, not
/// the handlers: the bearer scheme, required by every operation but those
/// that declare `security(())`; the authentication middleware's 401 and 403
/// on every authenticated operation; and the JSON body extractor's
/// rejections on every operation that takes a body.
fn finish(mut doc: OpenApiDocument) -> OpenApiDocument {
    doc.security = Some(vec![SecurityRequirement::new(
        BEARER_SCHEME,
        Vec::<String>::new(),
    )]);
    let error = |description: &str| -> RefOr<ResponseDoc> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ApiError"))),
            )
            .build()
            .into()
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "TCP only: the daemon's token (file `run/token`) or a principal's token (`flt_` + 64 hex digits). On the Unix socket no token is sent: the caller is the peer's uid (SO_PEERCRED).",
                ))
                .build(),
        ),
    );
    const UNAUTHORIZED: (&str, &str, &str) = (
        "401",
        "Unauthorized",
        "`unauthorized`: TCP without the right bearer token",
    );
    const FORBIDDEN: (&str, &str, &str) = (
        "403",
        "Forbidden",
        "`forbidden`: a socket peer whose uid is no principal",
    );
    const BAD_JSON: (&str, &str, &str) =
        ("400", "BadJson", "`bad_request`: the body is no valid JSON");
    const NOT_JSON: (&str, &str, &str) = (
        "415",
        "UnsupportedMediaType",
        "`bad_request`: the body has no `Content-Type: application/json`",
    );
    const WRONG_SHAPE: (&str, &str, &str) = (
        "422",
        "UnprocessableBody",
        "`bad_request`: JSON of the wrong shape (a missing or unknown field)",
    );
    for (_, name, description) in [UNAUTHORIZED, FORBIDDEN, BAD_JSON, NOT_JSON, WRONG_SHAPE] {
        components
            .responses
            .insert(name.to_owned(), error(description));
    }
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            let public = op
                .security
                .as_ref()
                .is_some_and(|s| s.iter().all(|r| *r == Default::default()));
            let mut shared = Vec::new();
            if !public {
                shared.extend([UNAUTHORIZED, FORBIDDEN]);
            }
            if op.request_body.is_some() {
                shared.extend([BAD_JSON, NOT_JSON, WRONG_SHAPE]);
            }
            for (status, name, description) in shared {
                match op.responses.responses.get_mut(status) {
                    // The handler answers this status too: one entry says both.
                    Some(RefOr::T(own)) => {
                        own.description = format!("{}; or {description}", own.description)
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        op.responses
                            .responses
                            .insert(status.to_owned(), Ref::from_response_name(name).into());
                    }
                }
            }
        }
    }
    doc
}

/// The operations of a path item, whatever their method.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
        &mut item.query,
    ]
    .into_iter()
    .flatten()
    .chain(item.additional_operations.values_mut())
}

/// The description, shared by the handler of `GET /v1/openapi.json`.
#[derive(Clone)]
struct Description(Arc<OpenApiDocument>);

/// The router. Every request but `GET /v1/health` is authenticated
/// (`principals::authenticate`): serve it with
/// `into_make_service_with_connect_info::<principals::Peer>()`.
pub fn router(state: AppState) -> Router {
    let principals = state.principals.clone();
    let (routes, doc) = api_routes().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(Extension(Description(Arc::new(finish(doc)))))
        .layer(axum::middleware::from_fn_with_state(
            principals,
            crate::principals::authenticate,
        ))
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/api.md",
    )
}

async fn method_not_allowed() -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see docs/api.md",
    )
}

/// Whether the daemon answers; the one route without authentication.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "daemon",
    security(()),
    responses((status = 200, description = "The daemon answers", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health { ok: true })
}

/// This description of the API (OpenAPI 3.1), generated from the code.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "daemon",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 500, description = "`internal`: the document could not be written", body = ApiError)
    )
)]
async fn openapi_json(Extension(doc): Extension<Description>) -> Response {
    match serde_json::to_vec(&*doc.0) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the OpenAPI document cannot be written: {e}"),
        )
        .into_response(),
    }
}

/// The daemon's status: process, paths, session counts, memory.
#[utoipa::path(
    get,
    path = "/v1/daemon",
    tag = "daemon",
    responses(
        (status = 200, description = "The daemon's status", body = DaemonStatus),
        (status = 500, description = "`store_error`: the event store failed", body = ApiError)
    )
)]
async fn daemon_status(State(st): State<AppState>) -> Result<Json<DaemonStatus>, ApiFailure> {
    let mut status = (*st.status).clone();
    status.sessions_total = st.fleet.store().session_count().await?;
    status.sessions_active = st.fleet.active_count() as u64;
    status.rss_bytes = rss_bytes();
    Ok(Json(status))
}

/// Resident memory of this process, from /proc.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Stops the daemon. Live sessions stop without a cancel and resume at the
/// next start.
#[utoipa::path(
    post,
    path = "/v1/daemon/stop",
    tag = "daemon",
    responses((status = 202, description = "The daemon is stopping", body = StopAccepted))
)]
async fn daemon_stop(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::principals::Caller>,
) -> (StatusCode, Json<StopAccepted>) {
    crate::compliance::record_admin(
        st.fleet.store(),
        &caller,
        "daemon.stop",
        "daemon",
        None,
        &Ok::<(), String>(()),
    )
    .await;
    st.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(StopAccepted { stopping: true }))
}

/// Starts a session; its agent starts at once. Granting secrets needs the
/// admin role.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    request_body = CreateSessionRequest,
    responses(
        (status = 201, description = "The new session", body = SessionInfo),
        (status = 400, description = "`bad_request`: invalid values (workspace, model, budgets, grants...)", body = ApiError),
        (status = 403, description = "`forbidden`: granting secrets needs the admin role", body = ApiError),
        (status = 500, description = "`store_error`: the event store failed", body = ApiError)
    )
)]
async fn create_session(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::principals::Caller>,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> Result<(StatusCode, Json<SessionInfo>), ApiFailure> {
    if !req.grants.is_empty() && !caller.has_role("admin") {
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "granting secrets (--grant) needs the admin role; {} has {}",
                caller.name,
                caller.roles.join(", ")
            ),
        ));
    }
    let info = st.fleet.create(req, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Query of `GET /v1/sessions`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only sessions in these states, comma-separated: `running`,
    /// `waiting_approval`, `completed`, `failed`, `cancelled`.
    state: Option<String>,
}

/// The sessions, newest first.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "The sessions", body = SessionList),
        (status = 400, description = "`bad_request`: an unknown state or query parameter", body = ApiError),
        (status = 500, description = "`store_error`: the event store failed", body = ApiError)
    )
)]
async fn list_sessions(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SessionList>, ApiFailure> {
    let states = match q.state {
        None => None,
        Some(s) => Some(
            s.split(',')
                .map(|x| {
                    SessionState::parse(x).ok_or_else(|| {
                        ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", format!("unknown state {x:?}; states: running, waiting_approval, completed, failed, cancelled"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let sessions = st.fleet.store().sessions(states).await?;
    Ok(Json(SessionList { sessions }))
}

/// One session.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = SessionInfo),
        (status = 400, description = "`bad_request`: an invalid id", body = ApiError),
        (status = 404, description = "`not_found`: no such session", body = ApiError)
    )
)]
async fn get_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, ApiFailure> {
    Ok(Json(st.fleet.get(&parse_id(&id)?).await?))
}

/// Cancels a session: records `cancel_requested`, stops its loop (a running
/// tool's process group is killed) and answers once `cancelled` is
/// recorded. An ended session is returned unchanged.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/cancel",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session, cancelled or already ended", body = SessionInfo),
        (status = 400, description = "`bad_request`: an invalid id", body = ApiError),
        (status = 404, description = "`not_found`: no such session", body = ApiError)
    )
)]
async fn cancel_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, ApiFailure> {
    Ok(Json(st.fleet.cancel(&parse_id(&id)?, "api").await?))
}

/// Query of `GET /v1/sessions/{id}/events`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Events with a greater sequence number (default 0): the previous
    /// page's `next_after`.
    after: Option<u64>,
    /// Most events in the page (default 500, at most 1000).
    limit: Option<u32>,
}

/// A page of a session's event log.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/events",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id"), EventsQuery),
    responses(
        (status = 200, description = "Events after the cursor, in order", body = EventPage),
        (status = 400, description = "`bad_request`: an invalid id or query", body = ApiError),
        (status = 404, description = "`not_found`: no such session", body = ApiError),
        (status = 500, description = "`store_error`: the event store failed", body = ApiError)
    )
)]
async fn list_events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiFailure> {
    let id = parse_id(&id)?;
    let info = st.fleet.get(&id).await?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(500).clamp(1, MAX_PAGE);
    let events = st.fleet.store().events(&id, after, limit).await?;
    let next_after = events.last().map(|e| e.seq).unwrap_or(after);
    let end = info.state.is_terminal() && next_after >= info.last_seq;
    Ok(Json(EventPage {
        events,
        next_after,
        end,
    }))
}

/// Query of `GET /v1/sessions/{id}/stream`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Start after this sequence number (default 0): a reconnecting client
    /// passes the last `id` it saw.
    after: Option<u64>,
}

fn is_end(e: &Event) -> bool {
    matches!(&e.event, EventKind::StateChanged { state, .. } if state.is_terminal())
}

/// A session's events as server-sent events: the history after the cursor,
/// then live events, until the session ends.
//
// It subscribes to the live feed before reading history, so nothing falls
// between the two; duplicates are dropped by sequence number, and a gap
// (a lagging subscriber) is filled from the database.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/stream",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id"), StreamQuery),
    responses(
        (
            status = 200,
            description = "Server-sent events: `event: event` with `id: SEQ` and an `Event` as JSON `data`, in order, each once; `event: end` with the last sequence number when the session has ended; keep-alive comments every 15 s",
            content_type = "text/event-stream",
            body = String
        ),
        (status = 400, description = "`bad_request`: an invalid id or query", body = ApiError),
        (status = 404, description = "`not_found`: no such session", body = ApiError)
    )
)]
async fn stream_events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiFailure> {
    let id = parse_id(&id)?;
    st.fleet.get(&id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(256);
    let store = st.fleet.store().clone();
    let shutdown = st.shutdown.clone();
    let mut live = store.subscribe();
    let mut last = q.after.unwrap_or(0);
    tokio::spawn(async move {
        let send = |e: &Event| {
            let data = serde_json::to_string(e).unwrap_or_default();
            SseEvent::default()
                .event("event")
                .id(e.seq.to_string())
                .data(data)
        };
        // Sends events from the database after `last`; returns whether the session ended.
        macro_rules! catch_up {
            () => {{
                let mut ended = false;
                loop {
                    let page = match store.events(&id, last, MAX_PAGE).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx
                                .send(Ok(SseEvent::default().event("error").data(e.to_string())))
                                .await;
                            return;
                        }
                    };
                    if page.is_empty() {
                        break;
                    }
                    for e in &page {
                        if tx.send(Ok(send(e))).await.is_err() {
                            return;
                        }
                        last = e.seq;
                        ended |= is_end(e);
                    }
                }
                ended
            }};
        }
        let mut ended = catch_up!();
        if !ended {
            if let Ok(Some(info)) = store.session(&id).await {
                ended = info.state.is_terminal() && last >= info.last_seq;
            }
        }
        while !ended {
            let next = tokio::select! {
                r = live.recv() => r,
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => return,
            };
            match next {
                Ok(e) if e.session == id => {
                    if e.seq <= last {
                        continue;
                    }
                    if e.seq > last + 1 {
                        ended = catch_up!();
                        continue;
                    }
                    if tx.send(Ok(send(&e))).await.is_err() {
                        return;
                    }
                    last = e.seq;
                    ended = is_end(&e);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => ended = catch_up!(),
                Err(RecvError::Closed) => break,
            }
        }
        if ended {
            let _ = tx
                .send(Ok(SseEvent::default().event("end").data(last.to_string())))
                .await;
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path as FsPath;

    use flotilla_agent::tools::HostExecutor;
    use flotilla_fleet::FleetConfig;
    use flotilla_store::{Store, StoreOptions};
    use serde_json::Value;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, UnixListener};

    use super::*;
    use crate::principals::{Peer, Principals};

    const METHODS: [&str; 9] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace", "query",
    ];

    /// A daemon's router on a Unix socket (this process is its owner, an
    /// admin) and on TCP; with the daemon token of the TCP side.
    struct Served {
        _dir: tempfile::TempDir,
        sock: std::path::PathBuf,
        tcp: std::net::SocketAddr,
        token: String,
    }

    async fn serve() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("events.sqlite"), StoreOptions::default()).unwrap();
        let fleet = Supervisor::new(store, FleetConfig::default(), Arc::new(HostExecutor), None);
        let me = nix::unistd::geteuid().as_raw();
        let principals =
            Principals::open(&dir.path().join("principals.sqlite"), me, Some("owner")).unwrap();
        let token = "the-daemon-token-0123456789abcdef0123".to_string();
        principals.set_daemon_token(&token);
        let state = AppState {
            fleet,
            status: Arc::new(DaemonStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_ms: 0,
                home: dir.path().display().to_string(),
                socket: String::new(),
                tcp: None,
                database: String::new(),
                sessions_total: 0,
                sessions_active: 0,
                rss_bytes: None,
            }),
            shutdown: CancellationToken::new(),
            principals,
        };
        let sock = dir.path().join("s.sock");
        let unix = UnixListener::bind(&sock).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = router(state);
        let a = app.clone();
        tokio::spawn(async move {
            axum::serve(unix, a.into_make_service_with_connect_info::<Peer>()).await
        });
        tokio::spawn(async move {
            axum::serve(tcp, app.into_make_service_with_connect_info::<Peer>()).await
        });
        Served {
            _dir: dir,
            sock,
            tcp: addr,
            token,
        }
    }

    /// One HTTP/1.1 request; returns the status and the (de-chunked) body.
    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: f\r\nConnection: close\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or(""));
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no complete answer in 20 s"))
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (headers, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = headers[9..12].parse().unwrap();
        let chunked = headers
            .lines()
            .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
        if !chunked {
            return (status, body.to_string());
        }
        let (mut rest, mut out) = (body, String::new());
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return (status, out);
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
    }

    impl Served {
        async fn unix(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
            let s = tokio::net::UnixStream::connect(&self.sock).await.unwrap();
            send(s, method, path, None, body).await
        }

        async fn tcp(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
            let s = tokio::net::TcpStream::connect(self.tcp).await.unwrap();
            send(s, method, path, token, None).await
        }

        async fn spec(&self) -> Value {
            let (status, body) = self.unix("GET", OPENAPI_PATH, None).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str(&body).expect("/v1/openapi.json is JSON")
        }
    }

    /// Every (path, method) of a description, methods in upper case.
    fn operations(spec: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method).is_some() {
                    out.insert((path.clone(), method.to_uppercase()));
                }
            }
        }
        out
    }

    fn operation_ids(spec: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for item in spec["paths"].as_object().unwrap().values() {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    out.push(op["operationId"].as_str().unwrap().to_string());
                }
            }
        }
        out
    }

    /// The server crate's sources, without their `#[cfg(test)] mod tests`
    /// (always the end of a file) and without `//` comments.
    fn sources() -> BTreeMap<String, String> {
        fn walk(dir: &FsPath, out: &mut BTreeMap<String, String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = match text.find("#[cfg(test)]\nmod tests") {
                        Some(at) => &text[..at],
                        None => &text[..],
                    };
                    let code: String = code
                        .lines()
                        .map(|l| match l.trim_start().starts_with("//") {
                            true => "",
                            false => l,
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    out.insert(path.display().to_string(), code);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(
            &FsPath::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut out,
        );
        assert!(out.len() >= 5, "sources not found: {out:?}");
        out
    }

    /// Handlers named in `routes!(...)`, in the order of the sources.
    fn routed_handlers(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(at) = rest.find("routes!(") {
            rest = &rest[at + "routes!(".len()..];
            let end = rest.find(')').unwrap();
            out.extend(
                rest[..end]
                    .split(',')
                    .map(|h| h.trim().rsplit("::").next().unwrap_or("").to_string())
                    .filter(|h| !h.is_empty()),
            );
            rest = &rest[end..];
        }
        out
    }

    /// No route can be registered but through `routes!` of a described
    /// handler: the sources hold no other kind of registration, and the
    /// handlers in `routes!` are exactly the operations of the description.
    #[test]
    fn every_route_is_registered_with_its_description() {
        const FORBIDDEN: [&str; 10] = [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".fallback_service(",
            "Router::new(",
            "Router::<",
            "routing::",
            "MethodRouter",
            "OpenApiRouter::from(",
        ];
        let mut handlers = Vec::new();
        for (file, code) in sources() {
            for pattern in FORBIDDEN {
                for (n, line) in code.lines().enumerate() {
                    assert!(
                        !line.contains(pattern),
                        "{file}:{}: `{pattern}` registers a route outside utoipa-axum's `routes!`; annotate the handler with #[utoipa::path] and add it with .routes(routes!(handler)): {line}",
                        n + 1
                    );
                }
            }
            handlers.extend(routed_handlers(&code));
        }
        let spec = serde_json::to_value(openapi()).unwrap();
        let mut ids = operation_ids(&spec);
        let mut handlers_sorted = handlers.clone();
        handlers_sorted.sort();
        ids.sort();
        assert_eq!(
            handlers_sorted, ids,
            "the handlers in routes!(...) must be exactly the operations of the description"
        );
        // No handler is routed twice, and operation ids are unique.
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate operation ids: {ids:?}");
        // The scan does see the routes (and so would see a `.route(`).
        for h in [
            "health",
            "openapi_json",
            "create_session",
            "whoami",
            "approve",
            "add_secret",
        ] {
            assert!(
                handlers.iter().any(|x| x == h),
                "{h} not found in {handlers:?}"
            );
        }
        assert!(ids.len() >= 23, "{ids:?}");
    }

    #[tokio::test]
    async fn served_description_lists_every_route_with_its_method() {
        let d = serve().await;
        let served = d.spec().await;
        let built = serde_json::to_value(openapi()).unwrap();
        assert_eq!(served, built, "the served description is the router's");
        let ops = operations(&served);
        for (path, method) in [
            ("/v1/health", "GET"),
            ("/v1/daemon", "GET"),
            ("/v1/daemon/stop", "POST"),
            ("/v1/openapi.json", "GET"),
            ("/v1/sessions", "GET"),
            ("/v1/sessions", "POST"),
            ("/v1/sessions/{id}", "GET"),
            ("/v1/sessions/{id}/cancel", "POST"),
            ("/v1/sessions/{id}/events", "GET"),
            ("/v1/sessions/{id}/stream", "GET"),
            ("/v1/whoami", "GET"),
            ("/v1/principals", "GET"),
            ("/v1/principals", "POST"),
            ("/v1/principals/{name}/vet", "POST"),
            ("/v1/principals/{name}/tokens", "POST"),
            ("/v1/principals/{name}/mfa", "POST"),
            ("/v1/auth/totp", "POST"),
            ("/v1/approvals", "GET"),
            ("/v1/approvals/{id}/approve", "POST"),
            ("/v1/approvals/{id}/deny", "POST"),
            ("/v1/secrets", "GET"),
            ("/v1/secrets", "POST"),
            ("/v1/secrets/{name}", "DELETE"),
        ] {
            assert!(
                ops.contains(&(path.to_string(), method.to_string())),
                "{method} {path} is missing from the description: {ops:?}"
            );
        }
        // Path parameters are described where the path has them.
        for (path, item) in served["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let params: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                let in_path: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(params, in_path, "{method} {path}");
            }
        }
    }

    fn router_miss(status: u16, body: &str) -> bool {
        if status == 405 {
            return true;
        }
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        status == 404
            && v["error"]["code"] == "not_found"
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no such route"))
    }

    /// Each documented (path, method) is a real route: the router itself never
    /// answers it with its 404 "no such route" or its 405 (a handler's own
    /// 400, 403, 404, 422 or 503 is fine: the route exists).
    #[tokio::test]
    async fn every_documented_route_exists() {
        let d = serve().await;
        // The discrimination works: the router's own answers are recognised.
        let (status, body) = d.unix("GET", "/v1/no-such-route", None).await;
        assert!(router_miss(status, &body), "{status} {body}");
        let (status, body) = d.unix("DELETE", "/v1/health", None).await;
        assert_eq!(status, 405, "{body}");
        assert!(body.contains("method_not_allowed"), "{body}");
        let (status, body) = d.unix("GET", "/v1/sessions/s0dummy0000", None).await;
        assert!(!router_miss(status, &body), "{status} {body}");
        assert_eq!(status, 404, "{body}");

        let spec = d.spec().await;
        let mut ops: Vec<_> = operations(&spec).into_iter().collect();
        // Stopping the daemon last (it only cancels the state's token here).
        ops.sort_by_key(|(path, _)| path == "/v1/daemon/stop");
        assert!(ops.len() >= 23, "{ops:?}");
        for (path, method) in ops {
            let concrete: String = path
                .split('/')
                .map(|s| match s.starts_with('{') {
                    true => "s0dummy0000",
                    false => s,
                })
                .collect::<Vec<_>>()
                .join("/");
            let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH").then_some("{}");
            let (status, answer) = d.unix(&method, &concrete, body).await;
            assert!(
                !router_miss(status, &answer),
                "{method} {path} is documented but not routed: {status} {answer}"
            );
            assert!(
                status < 500 || status == 503,
                "{method} {concrete}: {status} {answer}"
            );
        }
    }

    #[tokio::test]
    async fn the_description_is_authenticated_like_the_rest() {
        let d = serve().await;
        let (status, body) = d.tcp("GET", OPENAPI_PATH, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"unauthorized\""), "{body}");
        let (status, body) = d.tcp("GET", OPENAPI_PATH, Some(&d.token)).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["info"]["title"], "flotilla daemon API");
        assert_eq!(d.tcp("GET", "/v1/health", None).await.0, 200);
    }

    #[test]
    fn description_is_openapi_3_with_the_main_types() {
        let spec = serde_json::to_value(openapi()).unwrap();
        // It survives a round trip through text.
        let text = serde_json::to_string_pretty(&spec).unwrap();
        let spec: Value = serde_json::from_str(&text).unwrap();
        assert!(
            spec["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            spec["openapi"]
        );
        assert_eq!(spec["info"]["title"], "flotilla daemon API");
        assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemas = spec["components"]["schemas"].as_object().unwrap();
        for name in [
            "ApiError",
            "ApiErrorBody",
            "CreateSessionRequest",
            "SessionInfo",
            "SessionList",
            "SessionState",
            "SessionLimits",
            "SessionPermissions",
            "Event",
            "EventKind",
            "EventPage",
            "DaemonStatus",
            "ApprovalInfo",
            "ApprovalList",
            "ApproveRequest",
            "DenyRequest",
            "PrincipalView",
            "PrincipalList",
            "CreatePrincipalRequest",
            "VetRequest",
            "TokenIssued",
            "MfaEnrollment",
            "TotpLoginRequest",
            "TotpVerified",
            "AddSecretRequest",
            "SecretInfo",
            "SecretList",
            "SecretRemoved",
            "SecretGrant",
            "SecretUse",
            "Health",
            "StopAccepted",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        // Every `$ref` points at something that exists.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&spec, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').unwrap();
            assert!(spec.pointer(pointer).is_some(), "dangling $ref {r}");
        }
        // serde attributes render faithfully.
        let create = &schemas["CreateSessionRequest"];
        assert_eq!(create["required"], serde_json::json!(["task", "workspace"]));
        assert_eq!(create["additionalProperties"], false);
        let kinds = schemas["EventKind"]["oneOf"].as_array().unwrap();
        let tag = |k: &Value| {
            k["properties"]["type"]["enum"][0]
                .as_str()
                .unwrap()
                .to_string()
        };
        let names: BTreeSet<String> = kinds.iter().map(tag).collect();
        assert_eq!(names.len(), kinds.len());
        for k in kinds {
            assert!(
                k["required"]
                    .as_array()
                    .unwrap()
                    .contains(&Value::from("type")),
                "{k}"
            );
        }
        for name in [
            "session_created",
            "state_changed",
            "tool_started",
            "policy_decided",
            "secrets_granted",
            "secret_used",
        ] {
            assert!(names.contains(name), "no event kind {name}: {names:?}");
        }
        let used = kinds.iter().find(|k| tag(k) == "secret_used").unwrap();
        assert!(used["properties"].get("use").is_some(), "{used}");
        let created = kinds.iter().find(|k| tag(k) == "session_created").unwrap();
        let required = created["required"].as_array().unwrap();
        assert!(required.contains(&Value::from("limits")), "{created}");
        assert!(!required.contains(&Value::from("base_url")), "{created}");
        assert_eq!(
            schemas["SessionState"]["enum"],
            serde_json::json!([
                "running",
                "waiting_approval",
                "completed",
                "failed",
                "cancelled"
            ])
        );
        // Bearer authentication is a security scheme, required everywhere but
        // /v1/health (as the middleware does), with its 401.
        let bearer = &spec["components"]["securitySchemes"][BEARER_SCHEME];
        assert_eq!(bearer["type"], "http");
        assert_eq!(bearer["scheme"], "bearer");
        assert_eq!(spec["security"], serde_json::json!([{ BEARER_SCHEME: [] }]));
        let tags = [
            "daemon",
            "sessions",
            "approvals",
            "principals",
            "auth",
            "secrets",
            "compliance",
        ];
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let public = op["security"] == serde_json::json!([{}]);
                assert_eq!(public, path == "/v1/health", "{method} {path}");
                assert_eq!(
                    op["responses"].get("401").is_some(),
                    !public,
                    "{method} {path}"
                );
                let op_tags = op["tags"].as_array().unwrap();
                assert_eq!(op_tags.len(), 1, "{method} {path}");
                assert!(
                    tags.contains(&op_tags[0].as_str().unwrap()),
                    "{method} {path}"
                );
                if op.get("requestBody").is_some() {
                    for status in ["400", "415", "422"] {
                        assert!(op["responses"].get(status).is_some(), "{method} {path}");
                    }
                }
                let has_error = op["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .any(|(s, _)| s.starts_with('4') || s.starts_with('5'));
                assert!(has_error || public, "{method} {path} documents no error");
            }
        }
    }
}
