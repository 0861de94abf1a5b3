//! The HTTP/JSON API (documented in `docs/api.md`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_fleet::{FleetError, Supervisor};
use flotilla_protocol::{
    ApiError, CreateSessionRequest, DaemonStatus, Event, EventKind, EventPage, SessionId,
    SessionList, SessionState,
};
use flotilla_store::StoreError;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

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

/// The router. Every request but `GET /v1/health` is authenticated
/// (`principals::authenticate`): serve it with
/// `into_make_service_with_connect_info::<principals::Peer>()`.
pub fn router(state: AppState) -> Router {
    let principals = state.principals.clone();
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/daemon", get(daemon_status))
        .route("/v1/daemon/stop", post(daemon_stop))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session))
        .route("/v1/sessions/{id}/cancel", post(cancel_session))
        .route("/v1/sessions/{id}/events", get(list_events))
        .route("/v1/sessions/{id}/stream", get(stream_events))
        .merge(crate::principals::routes())
        .merge(crate::approvals::routes())
        .merge(crate::secrets::routes())
        .merge(crate::compliance::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

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

async fn daemon_stop(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::principals::Caller>,
) -> (StatusCode, Json<serde_json::Value>) {
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
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"stopping": true})),
    )
}

async fn create_session(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::principals::Caller>,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> Result<(StatusCode, Json<flotilla_protocol::SessionInfo>), ApiFailure> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
}

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

async fn get_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<flotilla_protocol::SessionInfo>, ApiFailure> {
    Ok(Json(st.fleet.get(&parse_id(&id)?).await?))
}

async fn cancel_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<flotilla_protocol::SessionInfo>, ApiFailure> {
    Ok(Json(st.fleet.cancel(&parse_id(&id)?, "api").await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    after: Option<u64>,
}

fn is_end(e: &Event) -> bool {
    matches!(&e.event, EventKind::StateChanged { state, .. } if state.is_terminal())
}

/// History after the cursor, then live events, until the session ends.
///
/// It subscribes to the live feed before reading history, so nothing falls
/// between the two; duplicates are dropped by sequence number, and a gap
/// (a lagging subscriber) is filled from the database.
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
