//! The HTTP side of the mock: axum routes served by hyper on loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures::StreamExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::script::{Failure, Reply, Script};
use crate::wire::{self, Answer, RequestInfo};

/// A scripted model server speaking the OpenAI Chat Completions protocol on
/// `127.0.0.1`.
///
/// Serves `POST /v1/chat/completions` (streaming and not) and
/// `GET /v1/models`. Every request body is recorded, in arrival order.
/// Dropping the server (or [`MockModelServer::shutdown`]) stops it and closes
/// every connection, hanging ones included.
pub struct MockModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MockModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockModelServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    script: Script,
    requests: Mutex<Vec<Value>>,
    /// Requests seen so far per (script, step), for `fail_first`.
    hits: Mutex<HashMap<(String, usize), usize>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets a handler drop its connection without answering (`Failure::Reset`).
#[derive(Clone)]
struct ConnectionAbort(Arc<Notify>);

impl MockModelServer {
    /// Starts the server on a free port, on the current tokio runtime.
    pub async fn start(script: Script) -> anyhow::Result<MockModelServer> {
        MockModelServer::start_on_port(script, 0).await
    }

    /// Starts the server on `127.0.0.1:port` (0: any free port), on the
    /// current tokio runtime.
    pub async fn start_on_port(script: Script, port: u16) -> anyhow::Result<MockModelServer> {
        let (addr, shared, cancel) = launch(script, port).await?;
        Ok(MockModelServer {
            addr,
            shared,
            cancel,
            thread: None,
        })
    }

    /// Starts the server on its own runtime in a background thread, for
    /// synchronous tests (e.g. ones that drive the CLI binary).
    pub fn start_blocking(script: Script) -> anyhow::Result<MockModelServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-model")
            .enable_all()
            .build()
            .context("building the mock model server's runtime")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mock-model".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let launched = launch(script, 0).await;
                    let cancel = launched.as_ref().ok().map(|(_, _, cancel)| cancel.clone());
                    if sender.send(launched).is_ok() {
                        if let Some(cancel) = cancel {
                            cancel.cancelled().await;
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the mock model server's thread")?;
        let (addr, shared, cancel) = receiver
            .recv()
            .context("the mock model server's thread stopped before it started")??;
        Ok(MockModelServer {
            addr,
            shared,
            cancel,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the value for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every chat request body received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// How many chat requests were received.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Stops the server and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for MockModelServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds, spawns the accept loop on the current runtime, and returns the handles.
async fn launch(
    script: Script,
    port: u16,
) -> anyhow::Result<(SocketAddr, Arc<Shared>, CancellationToken)> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the mock model server to 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        script,
        requests: Mutex::new(Vec::new()),
        hits: Mutex::new(HashMap::new()),
    });
    let cancel = CancellationToken::new();
    tokio::spawn(accept_loop(
        listener,
        router(shared.clone()),
        cancel.clone(),
    ));
    Ok((addr, shared, cancel))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .with_state(shared)
}

async fn accept_loop(listener: TcpListener, router: Router, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, router.clone(), cancel.clone()));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "mock model server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router, cancel: CancellationToken) {
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, so an abort can turn the close into a reset.
    let keeper: Option<OwnedFd> = stream.as_fd().try_clone_to_owned().ok();
    let abort = Arc::new(Notify::new());
    let handle = ConnectionAbort(abort.clone());
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(handle.clone());
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = cancel.cancelled() => {}
        _ = abort.notified() => {
            if let Some(fd) = &keeper {
                let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
            }
        }
    }
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

    if !info.has_tools {
        // A summarisation request: answer without consuming a step, and leave
        // a marker so later requests still land on the right step.
        let summary = format!("Summary of earlier work. {}", wire::turns_marker(info.step));
        return answer(&info, &Answer::Text(&summary));
    }

    let Some(steps) = shared.script.scripts.get(&info.script) else {
        let known: Vec<&str> = shared.script.scripts.keys().map(String::as_str).collect();
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "mock script '{}' not found (known scripts: {})",
                info.script,
                known.join(", ")
            ),
        );
    };
    let Some(step) = steps.get(info.step) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "mock script '{}' exhausted at step {} (it has {} steps)",
                info.script,
                info.step,
                steps.len()
            ),
        );
    };
    let hit = {
        let mut hits = lock(&shared.hits);
        let count = hits.entry((info.script.clone(), info.step)).or_insert(0);
        *count += 1;
        *count - 1
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
            Failure::Reset => {
                if let Some(Extension(ConnectionAbort(abort))) = abort {
                    abort.notify_one();
                }
                std::future::pending().await
            }
            Failure::Truncate => {
                sse_response(futures::stream::iter(wire::partial_events(&info)).boxed())
            }
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

fn sse_response(events: futures::stream::BoxStream<'static, Bytes>) -> Response {
    let body = Body::from_stream(events.map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn status_response(status: u16, retry_after_secs: Option<u64>, body: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if body.is_empty() {
        let message = format!("mock failure: HTTP {status}");
        (code, Json(wire::error_body(&message, "mock_error"))).into_response()
    } else {
        let content_type = if serde_json::from_str::<Value>(body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        (
            code,
            [(header::CONTENT_TYPE, content_type)],
            body.to_owned(),
        )
            .into_response()
    };
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
