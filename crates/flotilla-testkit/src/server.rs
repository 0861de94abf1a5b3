//! The HTTP side of the mock: axum routes served by hyper on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::script::{Failure, Reply, Script};
use crate::serve::{
    lock, reset_connection, scripted_status, sse_response, ConnectionAbort, Running, Steps,
};
use crate::wire::{self, Answer, RequestInfo};

/// A scripted model server speaking the OpenAI Chat Completions protocol on
/// `127.0.0.1`.
///
/// Serves `POST /v1/chat/completions` (streaming and not) and
/// `GET /v1/models`. Every request body is recorded, in arrival order.
/// Dropping the server (or [`MockModelServer::shutdown`]) stops it and closes
/// every connection, hanging ones included.
pub struct MockModelServer {
    shared: Arc<Shared>,
    running: Running,
}

impl std::fmt::Debug for MockModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockModelServer")
            .field("addr", &self.running.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    steps: Steps,
    requests: Mutex<Vec<Value>>,
    /// Chat requests being answered now, and the most there ever were.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn new(script: Script) -> Arc<Shared> {
        Arc::new(Shared {
            steps: Steps::new(script),
            requests: Mutex::new(Vec::new()),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        })
    }
}

/// Counts a chat request as in flight until its handler returns or is
/// dropped (a client that hung up).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MockModelServer {
    /// Starts the server on a free port, on the current tokio runtime.
    pub async fn start(script: Script) -> anyhow::Result<MockModelServer> {
        MockModelServer::start_on_port(script, 0).await
    }

    /// Starts the server on `127.0.0.1:port` (0: any free port), on the
    /// current tokio runtime.
    pub async fn start_on_port(script: Script, port: u16) -> anyhow::Result<MockModelServer> {
        let shared = Shared::new(script);
        let running = Running::start(router(shared.clone()), port, "mock-model").await?;
        Ok(MockModelServer { shared, running })
    }

    /// Starts the server on its own runtime in a background thread, for
    /// synchronous tests (e.g. ones that drive the CLI binary).
    pub fn start_blocking(script: Script) -> anyhow::Result<MockModelServer> {
        let shared = Shared::new(script);
        let running = Running::start_blocking(router(shared.clone()), "mock-model")?;
        Ok(MockModelServer { shared, running })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the value for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.running.addr)
    }

    /// Every chat request body received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// How many chat requests were received.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The most chat requests that were being answered at the same time
    /// (a scripted delay or hang keeps a request in flight).
    pub fn max_in_flight(&self) -> usize {
        self.shared
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the server and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .with_state(shared)
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": "mock-model", "object": "model", "created": 0, "owned_by": "flotilla-testkit" }],
    }))
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(wire::error_body(message, "invalid_request_error")),
    )
        .into_response()
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    abort: Option<Extension<ConnectionAbort>>,
    body: Bytes,
) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("mock model server: request body is not JSON: {error}"),
            )
        }
    };
    let info = RequestInfo::of(&request);
    lock(&shared.requests).push(request);
    let _in_flight = InFlight::new(&shared);

    if !info.has_tools {
        // A summarisation request: answer without consuming a step, and leave
        // a marker so later requests still land on the right step.
        let summary = format!("Summary of earlier work. {}", wire::turns_marker(info.step));
        return answer(&info, &Answer::Text(&summary));
    }

    let (step, hit) = match shared.steps.pick(&info.script, info.step) {
        Ok(picked) => picked,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    if let Some(failure) = step.fail_first.get(hit) {
        return match failure {
            Failure::Status {
                status,
                retry_after_secs,
                body,
            } => status_response(*status, *retry_after_secs, body),
            Failure::Reset => reset_connection(abort).await,
            Failure::Truncate => {
                sse_response(futures::stream::iter(wire::partial_events(&info)).boxed())
            }
            Failure::StreamError {
                error_type,
                message,
            } => sse_response(
                futures::stream::iter(wire::error_events(&info, error_type, message)).boxed(),
            ),
            Failure::Stall => sse_response(
                futures::stream::iter(wire::partial_events(&info))
                    .chain(futures::stream::pending())
                    .boxed(),
            ),
        };
    }
    match &step.reply {
        Reply::Text(text) => answer(&info, &Answer::Text(text)),
        Reply::ToolCalls(calls) => answer(&info, &Answer::Calls(calls)),
        Reply::Hang => std::future::pending().await,
        Reply::Status {
            status,
            retry_after_secs,
            body,
        } => status_response(*status, *retry_after_secs, body),
    }
}

fn answer(info: &RequestInfo, answer: &Answer<'_>) -> Response {
    if info.stream {
        sse_response(futures::stream::iter(wire::stream_events(info, answer)).boxed())
    } else {
        Json(wire::completion_json(info, answer)).into_response()
    }
}

fn status_response(status: u16, retry_after_secs: Option<u64>, body: &str) -> Response {
    scripted_status(status, retry_after_secs, body, |code| {
        let message = format!("mock failure: HTTP {status}");
        (code, Json(wire::error_body(&message, "mock_error"))).into_response()
    })
}
