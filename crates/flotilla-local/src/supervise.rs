//! `flotilla model serve`: the server clients talk to, in front of an
//! engine that runs in a child process. A crash of llama.cpp (a bad file,
//! an abort in C++, the OOM killer) ends the child, never the front: the
//! front starts the engine again with backoff, and requests that arrive
//! meanwhile wait for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

/// How long a starting engine may take to load its model.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a request waits for a (re)starting engine.
const WAIT_FOR_ENGINE: Duration = Duration::from_secs(120);
/// Backoff between restarts: doubled after each quick death, up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An engine that ran this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Starts in a row that fail before the front gives up.
const MAX_FAILED_STARTS: u32 = 5;

/// How to run the engine child.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The GGUF file.
    pub model: PathBuf,
    /// Context per slot.
    pub ctx: u32,
    /// Slots.
    pub parallel: u32,
    /// CPU threads of the engine.
    pub threads: Option<i32>,
    /// The program and arguments that run an engine (`flotilla model
    /// engine ...`); it prints `listening ADDR` once its model is loaded.
    pub engine_cmd: Vec<String>,
    /// Exit after this long without a request (the daemon starts it again
    /// when needed); `None`: never.
    pub idle_exit: Option<Duration>,
}

/// Where the engine is.
#[derive(Clone, Debug, PartialEq)]
enum EngineState {
    Starting,
    Up {
        addr: SocketAddr,
        pid: u32,
    },
    /// It could not start at all (a bad model file): requests get this.
    Broken(String),
}

struct Front {
    state: watch::Receiver<EngineState>,
    http: reqwest::Client,
    restarts: AtomicU32,
    in_flight: AtomicU32,
    last_request_ms: AtomicU64,
    started: Instant,
}

/// Runs the front until it is told to stop (or idles out). `bound` gets the
/// address it listens on, once the first engine is up.
pub async fn serve(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), String> {
    let (tx, rx) = watch::channel(EngineState::Starting);
    let front = Arc::new(Front {
        state: rx.clone(),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?,
        restarts: AtomicU32::new(0),
        in_flight: AtomicU32::new(0),
        last_request_ms: AtomicU64::new(0),
        started: Instant::now(),
    });
    let keeper = tokio::spawn(keep_engine(config.clone(), tx, front.clone()));
    // The first engine must come up (or say why not) before we accept.
    let mut first = rx.clone();
    loop {
        match first.borrow_and_update().clone() {
            EngineState::Up { .. } => break,
            EngineState::Broken(why) => {
                keeper.abort();
                return Err(why);
            }
            EngineState::Starting => {}
        }
        if first.changed().await.is_err() {
            return Err("the engine keeper stopped".into());
        }
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    ready(addr);
    let app = Router::new()
        .route("/health", get(health))
        .fallback(proxy)
        .with_state(front.clone());
    let idle = config.idle_exit;
    let idle_front = front.clone();
    let mut watch_broken = rx.clone();
    let broken = async move {
        loop {
            if matches!(*watch_broken.borrow_and_update(), EngineState::Broken(_)) {
                break;
            }
            if watch_broken.changed().await.is_err() {
                break;
            }
        }
    };
    let stop = async move {
        let shutdown = async move {
            tokio::select! { _ = shutdown => {}, _ = broken => {} }
        };
        match idle {
            Some(limit) => {
                let idled = async {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let last = idle_front.last_request_ms.load(Ordering::SeqCst);
                        let since = idle_front.started.elapsed().as_millis() as u64 - last;
                        if idle_front.in_flight.load(Ordering::SeqCst) == 0
                            && since >= limit.as_millis() as u64
                        {
                            break;
                        }
                    }
                };
                tokio::select! { _ = shutdown => {}, _ = idled => {} }
            }
            None => shutdown.await,
        }
    };
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| e.to_string());
    keeper.abort();
    if let EngineState::Broken(why) = rx.borrow().clone() {
        return Err(why);
    }
    result
}

/// Starts the engine, and again whenever it dies, with backoff.
async fn keep_engine(config: ServeConfig, tx: watch::Sender<EngineState>, front: Arc<Front>) {
    let mut backoff = BACKOFF_START;
    let mut ever_up = false;
    let mut failed = 0u32;
    loop {
        let _ = tx.send(EngineState::Starting);
        let began = Instant::now();
        match start_engine(&config).await {
            Ok((mut child, addr)) => {
                ever_up = true;
                failed = 0;
                let pid = child.id().unwrap_or(0);
                tracing::info!(%addr, pid, "engine up");
                let _ = tx.send(EngineState::Up { addr, pid });
                let status = child.wait().await;
                tracing::warn!(?status, pid, "engine exited; starting it again");
                front.restarts.fetch_add(1, Ordering::SeqCst);
                if began.elapsed() > HEALTHY_AFTER {
                    backoff = BACKOFF_START;
                }
            }
            Err(e) if !ever_up => {
                // It never came up: the model or the machine is the problem,
                // and restarting will not help.
                let _ = tx.send(EngineState::Broken(e));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "engine did not start again");
                failed += 1;
                // The file went bad or the machine cannot run it any more:
                // stop, saying why (the daemon starts a front again later).
                if failed >= MAX_FAILED_STARTS {
                    let _ = tx.send(EngineState::Broken(e));
                    return;
                }
            }
        }
        let _ = tx.send(EngineState::Starting);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one engine child and waits for its `listening ADDR` line.
async fn start_engine(config: &ServeConfig) -> Result<(tokio::process::Child, SocketAddr), String> {
    let (program, args) = config.engine_cmd.split_first().ok_or("no engine command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg("--model")
        .arg(&config.model)
        .arg("--ctx")
        .arg(config.ctx.to_string())
        .arg("--parallel")
        .arg(config.parallel.to_string());
    if let Some(t) = config.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    crate::child::spawn_listening(cmd, LOAD_TIMEOUT, "the engine").await
}

async fn health(State(front): State<Arc<Front>>) -> Response {
    let state = front.state.borrow().clone();
    let restarts = front.restarts.load(Ordering::SeqCst);
    match state {
        EngineState::Up { addr, pid } => {
            let engine: serde_json::Value = match front
                .http
                .get(format!("http://{addr}/health"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            Json(json!({
                "status": "ok",
                "engine_pid": pid,
                "restarts": restarts,
                "model": engine["model"],
                "slots": engine["slots"],
                "ctx": engine["ctx"],
            }))
            .into_response()
        }
        EngineState::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting", "restarts": restarts})),
        )
            .into_response(),
        EngineState::Broken(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "broken", "error": why})),
        )
            .into_response(),
    }
}

/// Waits (a while) for an engine that is up.
async fn engine_addr(front: &Front) -> Result<SocketAddr, String> {
    let mut rx = front.state.clone();
    let deadline = tokio::time::Instant::now() + WAIT_FOR_ENGINE;
    loop {
        match rx.borrow_and_update().clone() {
            EngineState::Up { addr, .. } => return Ok(addr),
            EngineState::Broken(why) => return Err(why),
            EngineState::Starting => {}
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Err("the engine keeper stopped".into()) },
            _ = tokio::time::sleep_until(deadline) => return Err("the engine is not up".into()),
        }
    }
}

/// A request being answered, until its whole body is passed on or its
/// client goes away (both drop it).
struct InFlight(Arc<Front>);

impl InFlight {
    fn new(front: &Arc<Front>) -> InFlight {
        front.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(front.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let f = &self.0;
        f.last_request_ms
            .store(f.started.elapsed().as_millis() as u64, Ordering::SeqCst);
        f.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Passes a request to the engine and its answer back, streamed.
async fn proxy(State(front): State<Arc<Front>>, req: Request) -> Response {
    let guard = InFlight::new(&front);
    let addr = match engine_addr(&front).await {
        Ok(a) => a,
        Err(e) => return unavailable(&e),
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return unavailable(&format!("cannot read the request: {e}")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut out = front
        .http
        .request(parts.method, format!("http://{addr}{path}"))
        .body(body);
    if let Some(ct) = parts.headers.get("content-type") {
        out = out.header("content-type", ct);
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return unavailable(&format!(
                "the engine did not answer (it may have crashed; it is being restarted): {e}"
            ))
        }
    };
    let status = resp.status();
    let ct = resp.headers().get("content-type").cloned();
    // The guard lives with the body until it is all passed on.
    let stream = resp.bytes_stream();
    let guarded = futures::stream::unfold((stream, guard), |(mut s, g)| async move {
        use futures::StreamExt;
        s.next().await.map(|chunk| (chunk, (s, g)))
    });
    let mut r = Response::new(Body::from_stream(guarded));
    *r.status_mut() = status;
    if let Some(ct) = ct {
        r.headers_mut().insert("content-type", ct);
    }
    r
}

fn unavailable(message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"message": message, "type": "server_error", "code": null}})),
    )
        .into_response()
}
