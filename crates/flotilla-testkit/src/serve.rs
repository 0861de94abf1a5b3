//! What both mock servers share: serving an axum router with hyper on
//! loopback (connections that can be reset on purpose), picking the
//! scripted step of a request, SSE responses.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, Uri};
use axum::response::Response;
use axum::{Extension, Router};
use bytes::Bytes;
use futures::StreamExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::script::{Script, Step};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets a handler drop its connection: reset it without answering
/// (`Failure::Reset`), or close it in the middle of a response body.
#[derive(Clone)]
pub(crate) struct ConnectionAbort {
    reset: Arc<Notify>,
    close: Arc<Notify>,
}

impl ConnectionAbort {
    /// Closes the connection (FIN) as it is: a response body being sent
    /// ends there, without its end marker.
    pub(crate) fn close(&self) {
        self.close.notify_one();
    }
}

/// Resets the handler's connection (RST, no response) and never returns.
pub(crate) async fn reset_connection(abort: Option<Extension<ConnectionAbort>>) -> Response {
    if let Some(Extension(abort)) = abort {
        abort.reset.notify_one();
    }
    std::future::pending().await
}

/// A router served on `127.0.0.1`, on the current runtime or on its own
/// thread. Dropping it stops the server and closes every connection,
/// hanging ones included.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Serves `router` on `127.0.0.1:port` (0: any free port), on the
    /// current tokio runtime.
    pub(crate) async fn start(router: Router, port: u16, what: &str) -> anyhow::Result<Running> {
        let (addr, cancel) = launch(router, port, what).await?;
        Ok(Running {
            addr,
            cancel,
            thread: None,
        })
    }

    /// Serves `router` on a free port, on its own runtime in a background
    /// thread, for synchronous tests.
    pub(crate) fn start_blocking(router: Router, what: &'static str) -> anyhow::Result<Running> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(what)
            .enable_all()
            .build()
            .with_context(|| format!("building the {what} server's runtime"))?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(what.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let launched = launch(router, 0, what).await;
                    let cancel = launched.as_ref().ok().map(|(_, cancel)| cancel.clone());
                    if sender.send(launched).is_ok() {
                        if let Some(cancel) = cancel {
                            cancel.cancelled().await;
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .with_context(|| format!("spawning the {what} server's thread"))?;
        let (addr, cancel) = receiver
            .recv()
            .with_context(|| format!("the {what} server's thread stopped before it started"))??;
        Ok(Running {
            addr,
            cancel,
            thread: Some(thread),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds and spawns the accept loop on the current runtime.
async fn launch(
    router: Router,
    port: u16,
    what: &str,
) -> anyhow::Result<(SocketAddr, CancellationToken)> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the {what} server to 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    tokio::spawn(accept_loop(listener, router, cancel.clone()));
    Ok((addr, cancel))
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
                tracing::warn!(%error, "mock server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router, cancel: CancellationToken) {
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, so an abort can turn the close into a reset.
    let keeper: Option<OwnedFd> = stream.as_fd().try_clone_to_owned().ok();
    let handle = ConnectionAbort {
        reset: Arc::new(Notify::new()),
        close: Arc::new(Notify::new()),
    };
    let (reset, close) = (handle.reset.clone(), handle.close.clone());
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
        // Dropping the connection closes the socket (and its second handle).
        _ = close.notified() => {}
        _ = reset.notified() => {
            if let Some(fd) = &keeper {
                let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
            }
        }
    }
}

/// The scripts, and how many requests reached each (script, step), for
/// [`Step::fail_first`].
pub(crate) struct Steps {
    pub(crate) script: Script,
    hits: Mutex<HashMap<(String, usize), usize>>,
}

impl Steps {
    pub(crate) fn new(script: Script) -> Self {
        Steps {
            script,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// The step that answers, and how many requests reached it before this
    /// one; or why there is none (the message of an HTTP 400).
    pub(crate) fn pick(&self, script: &str, step: usize) -> Result<(&Step, usize), String> {
        let Some(steps) = self.script.scripts.get(script) else {
            let known: Vec<&str> = self.script.scripts.keys().map(String::as_str).collect();
            return Err(format!(
                "mock script '{script}' not found (known scripts: {})",
                known.join(", ")
            ));
        };
        let Some(found) = steps.get(step) else {
            return Err(format!(
                "mock script '{script}' exhausted at step {step} (it has {} steps)",
                steps.len()
            ));
        };
        let mut hits = lock(&self.hits);
        let count = hits.entry((script.to_owned(), step)).or_insert(0);
        *count += 1;
        Ok((found, *count - 1))
    }
}

/// A `text/event-stream` response with these events.
pub(crate) fn sse_response(events: futures::stream::BoxStream<'static, Bytes>) -> Response {
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

/// One request as a mock received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    /// The request path, percent-encoded as it was sent (e.g.
    /// `/v1/messages`, `/model/anthropic.claude-v2%3A1/converse-stream`).
    pub path: String,
    /// Headers by (lowercase) name; the values of a repeated header are
    /// joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body; one that is not JSON is kept as a JSON string.
    pub body: Value,
}

impl RecordedRequest {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// The record of a request with this URI, headers and (parsed or raw) body.
pub(crate) fn recorded_request(
    uri: &Uri,
    headers: &HeaderMap,
    body: &Result<Value, String>,
) -> RecordedRequest {
    let mut recorded = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        recorded
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    RecordedRequest {
        path: uri.path().to_owned(),
        headers: recorded,
        body: match body {
            Ok(value) => value.clone(),
            Err(raw) => Value::String(raw.clone()),
        },
    }
}

/// What a recording mock's handlers share: the script's steps and every
/// request received.
pub(crate) struct Shared {
    pub(crate) steps: Steps,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
}

impl Shared {
    pub(crate) fn new(script: Script) -> Arc<Shared> {
        Arc::new(Shared {
            steps: Steps::new(script),
            requests: Mutex::new(Vec::new()),
        })
    }
}

/// The public API every recording mock has (`MockAnthropicServer`,
/// `MockBedrockServer`): start (async, on a port, or on its own runtime),
/// its address, the requests recorded, shutdown. `$router` builds the
/// protocol's routes over the shared state; `$name` names its threads.
macro_rules! recording_mock_api {
    ($mock:ident, $name:literal, $router:path) => {
        impl std::fmt::Debug for $mock {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($mock))
                    .field("addr", &self.running.addr)
                    .finish_non_exhaustive()
            }
        }

        impl $mock {
            /// Starts the server on a free port, on the current tokio runtime.
            pub async fn start(script: Script) -> anyhow::Result<$mock> {
                $mock::start_on_port(script, 0).await
            }

            /// Starts the server on `127.0.0.1:port` (0: any free port), on the
            /// current tokio runtime.
            pub async fn start_on_port(script: Script, port: u16) -> anyhow::Result<$mock> {
                let shared = $crate::serve::Shared::new(script);
                let running =
                    $crate::serve::Running::start($router(shared.clone()), port, $name).await?;
                Ok($mock { shared, running })
            }

            /// Starts the server on its own runtime in a background thread, for
            /// synchronous tests (e.g. ones that drive the CLI binary).
            pub fn start_blocking(script: Script) -> anyhow::Result<$mock> {
                let shared = $crate::serve::Shared::new(script);
                let running =
                    $crate::serve::Running::start_blocking($router(shared.clone()), $name)?;
                Ok($mock { shared, running })
            }

            /// The address it listens on.
            pub fn addr(&self) -> std::net::SocketAddr {
                self.running.addr
            }

            /// Every request received so far (path, headers and body), in
            /// arrival order.
            pub fn requests(&self) -> Vec<$crate::serve::RecordedRequest> {
                $crate::serve::lock(&self.shared.requests).clone()
            }

            /// The bodies of every request received so far, in arrival order.
            pub fn bodies(&self) -> Vec<serde_json::Value> {
                $crate::serve::lock(&self.shared.requests)
                    .iter()
                    .map(|request| request.body.clone())
                    .collect()
            }

            /// How many requests were received.
            pub fn request_count(&self) -> usize {
                $crate::serve::lock(&self.shared.requests).len()
            }

            /// Stops the server and closes every connection.
            pub fn shutdown(self) {
                drop(self);
            }
        }
    };
}
pub(crate) use recording_mock_api;

/// The answer to a scripted HTTP failure: the scripted body as given (JSON
/// or text), or the protocol's own error answer (`empty`) when there is
/// none; with `Retry-After` when the script sets it.
pub(crate) fn scripted_status(
    status: u16,
    retry_after_secs: Option<u64>,
    body: &str,
    empty: impl FnOnce(axum::http::StatusCode) -> Response,
) -> Response {
    use axum::response::IntoResponse as _;
    let code = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if body.is_empty() {
        empty(code)
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
