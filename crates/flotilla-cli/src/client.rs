//! A small HTTP client for the daemon's Unix socket, and the auto-start.
//!
//! Written on hyper directly because the usual clients (reqwest, ureq) do
//! not speak HTTP over a Unix socket; it is one request per connection,
//! which on a local socket costs microseconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use flotilla_protocol::ApiError;
use flotilla_server::Paths;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// A client of one daemon.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

/// A non-2xx answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// Error code.
    pub code: String,
    /// Message.
    pub message: String,
}

impl Client {
    /// A client for the socket (does not connect yet).
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!("cannot connect to the daemon at {}", self.socket.display())
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon failed")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "flotilla");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        sender
            .send_request(req)
            .await
            .context("the daemon closed the connection")
    }

    /// Sends a request and decodes a JSON answer, turning API errors into [`ApiFailure`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer")?
            .to_bytes();
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => (e.error.code, e.error.message),
                Err(_) => (
                    "unknown".into(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
            };
            return Err(ApiFailure {
                status,
                code,
                message,
            }
            .into());
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!("the daemon's answer to {path} is not what this client expects")
        })
    }

    /// Opens an SSE stream.
    pub async fn stream(&self, path: &str) -> Result<SseReader> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            bail!(ApiFailure {
                status,
                code: "stream".into(),
                message
            });
        }
        Ok(SseReader {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// Whether a daemon answers on the socket.
    pub async fn ping(&self) -> bool {
        let fut = self.call::<serde_json::Value>(Method::GET, "/v1/health", None);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), fut).await,
            Ok(Ok(_))
        )
    }
}

/// One server-sent event.
#[derive(Debug, Default)]
pub struct SseMessage {
    /// `event:` field.
    pub event: String,
    /// `data:` lines joined.
    pub data: String,
}

/// Reads server-sent events from a response body.
pub struct SseReader {
    body: Incoming,
    buf: Vec<u8>,
}

impl SseReader {
    /// The next message, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<SseMessage>> {
        loop {
            if let Some(msg) = self.take_message() {
                return Ok(Some(msg));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(anyhow!("the event stream broke: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn take_message(&mut self) -> Option<SseMessage> {
        loop {
            let end = find_blank_line(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..end.0).collect();
            self.buf.drain(..end.1);
            let text = String::from_utf8_lossy(&block);
            let mut msg = SseMessage::default();
            let mut any = false;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    msg.event = v.trim_start().to_string();
                    any = true;
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !msg.data.is_empty() {
                        msg.data.push('\n');
                    }
                    msg.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    any = true;
                }
            }
            if any {
                return Some(msg);
            }
            // A keep-alive comment: look further.
        }
    }
}

/// Position of the end of the first event block and the length of its separator.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Connects to the daemon of `paths`, starting one in the background when
/// none answers. A stale socket from a crashed daemon is handled by the new
/// daemon, which holds the lock before it replaces the socket.
pub async fn connect_or_start(paths: &Paths) -> Result<Client> {
    let client = Client::new(&paths.socket);
    if client.ping().await {
        return Ok(client);
    }
    std::fs::create_dir_all(&paths.data_dir)
        .with_context(|| format!("cannot create {}", paths.data_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log_file)
        .with_context(|| format!("cannot open the daemon log {}", paths.log_file.display()))?;
    let exe = std::env::current_exe().context("cannot find the flotilla executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // The daemon inherits this environment, so it derives the same paths.
    let mut child = cmd.spawn().context("cannot start the flotilla daemon")?;
    let started = Instant::now();
    let deadline = Duration::from_secs(20);
    loop {
        if client.ping().await {
            return Ok(client);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // It may have lost a start race to another daemon that now answers.
            if client.ping().await {
                return Ok(client);
            }
            let tail = std::fs::read_to_string(&paths.log_file)
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            bail!(
                "the flotilla daemon exited at start ({status}); its log {} ends with:\n{tail}",
                paths.log_file.display()
            );
        }
        if started.elapsed() > deadline {
            bail!(
                "the flotilla daemon did not answer on {} within {}s; see its log {}",
                paths.socket.display(),
                deadline.as_secs(),
                paths.log_file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
