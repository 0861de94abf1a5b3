//! The real daemon, out of process: finding the binary, starting and killing
//! it, talking to its API over the Unix socket, reading its memory, and
//! filling it with idle sessions (shared by the `idle-rss` and `recover`
//! benchmarks).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use flotilla_protocol::{CreateSessionRequest, DaemonStatus, SessionId, SessionInfo};
use flotilla_testkit::{MockModelServer, Script, Step};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// Sessions created at once through the API.
const CREATE_CONCURRENCY: usize = 32;

/// The `flotilla` binary: `--flotilla` if given, else next to this executable.
pub fn find_flotilla(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--flotilla {}: no such file", p.display());
    }
    let exe = std::env::current_exe().context("cannot locate the benchmark executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent folder", exe.display()))?;
    // `cargo run` puts both in target/<profile>/; `deps/` holds test builds.
    for candidate in [dir.join("flotilla"), dir.join("../flotilla")] {
        if candidate.is_file() {
            return Ok(candidate.canonicalize().unwrap_or(candidate));
        }
    }
    bail!(
        "no `flotilla` binary next to {}; build it with `cargo build --release -p flotilla-cli` \
         or pass --flotilla PATH",
        exe.display()
    )
}

/// Raises this process's open-files soft limit to the hard limit: the mock
/// model server holds one connection per idle session.
pub fn raise_nofile_limit() -> Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?)
}

/// A minimal HTTP/1 client for the daemon's Unix socket (one request per
/// connection, like `flotilla-cli`'s).
#[derive(Clone, Debug)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// A client for `socket`.
    pub fn new(socket: PathBuf) -> Self {
        ApiClient { socket }
    }

    /// Sends one request; returns the status and the whole body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
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
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.decode(path, self.send(Method::GET, path, None).await?)
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        self.decode(path, self.send(Method::POST, path, Some(body)).await?)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        (status, bytes): (StatusCode, Bytes),
    ) -> Result<T> {
        if !status.is_success() {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the answer to {path}"))
    }

    /// Whether the daemon answers `GET /v1/health`.
    pub async fn healthy(&self) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                self.send(Method::GET, "/v1/health", None)
            )
            .await,
            Ok(Ok((s, _))) if s.is_success()
        )
    }
}

/// A `flotilla serve` process. Killed (SIGKILL) when dropped while alive.
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    /// When it was spawned.
    pub spawned: Instant,
    /// Its API.
    pub api: ApiClient,
    /// Its stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `flotilla serve` with `FLOTILLA_HOME=home` and the model
    /// endpoint `openai_base_url`; its stderr is appended to `home/daemon-stderr.log`.
    pub fn spawn(binary: &Path, home: &Path, openai_base_url: &str) -> Result<Daemon> {
        std::fs::create_dir_all(home)?;
        // Benchmark sessions run unattended: nothing may wait for approval.
        let config = home.join("config.toml");
        if !config.exists() {
            std::fs::write(&config, "[permissions]\nmode = \"auto\"\n")?;
        }
        let log = home.join("daemon-stderr.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let spawned = Instant::now();
        let child = Command::new(binary)
            .arg("serve")
            .env("FLOTILLA_HOME", home)
            .env("OPENAI_BASE_URL", openai_base_url)
            .env("OPENAI_API_KEY", "bench")
            .env("FLOTILLA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        Ok(Daemon {
            pid: child.id(),
            child: Some(child),
            spawned,
            api: ApiClient::new(home.join("run/flotilla.sock")),
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the API answers; returns the time since spawn.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Result<Duration> {
        loop {
            if self.api.healthy().await {
                return Ok(self.spawned.elapsed());
            }
            self.check_alive()?;
            if self.spawned.elapsed() > limit {
                bail!(
                    "the daemon did not answer within {limit:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "the daemon exited ({status}); its log {}:\n{}",
                    self.log.display(),
                    tail_of(&self.log, 2000)
                );
            }
        }
        Ok(())
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64> {
        proc_status_number(self.pid, "VmRSS")
    }

    /// Its soft open-files limit, from /proc/PID/limits.
    pub fn nofile_soft_limit(&self) -> Option<u64> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    /// Open file descriptors now.
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|d| d.count())
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9 of the daemon")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Asks it to stop through the API; kills it if it has not within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = self.api.send(Method::POST, "/v1/daemon/stop", None).await;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill()?;
        child.wait()?;
        bail!("the daemon did not stop within {grace:?} and was killed")
    }

    /// Lines of its log that report running out of file descriptors.
    pub fn emfile_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Too many open files") || l.contains("EMFILE"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The number of a field of /proc/PID/status (`VmRSS` in kB, `Threads`...).
pub fn proc_status_number(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

fn tail_of(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// A daemon full of sessions that all wait on a model that never answers.
pub struct IdleFleet {
    /// The model server (in this process); hangs every request.
    pub mock: MockModelServer,
    /// The daemon.
    pub daemon: Daemon,
    /// Its home (deleted on drop).
    pub home: tempfile::TempDir,
    /// The sessions created.
    pub sessions: Vec<SessionId>,
    /// RSS (KiB) of the daemon with no session, after start.
    pub empty_rss_kib: u64,
    /// Time to create all sessions through the API.
    pub create_time: Duration,
    /// Time from the first create to all sessions waiting in a model request.
    pub settle_time: Duration,
}

/// Starts a mock model that hangs every request and a daemon on a fresh home,
/// measures the empty daemon's RSS, then creates `count` sessions through
/// the API and waits until each is live and waiting on the model.
pub async fn idle_fleet(binary: &Path, count: u32) -> Result<IdleFleet> {
    let mock = MockModelServer::start(Script::single(vec![Step::hang()]))
        .await
        .context("starting the mock model server")?;
    // A short path: the socket path must fit in 107 bytes.
    let home = tempfile::Builder::new()
        .prefix("flb")
        .tempdir_in("/tmp")
        .context("creating the daemon's home")?;
    let workspace = home.path().join("workspace");
    std::fs::create_dir_all(&workspace)?;
    let mut daemon = Daemon::spawn(binary, &home.path().join("home"), &mock.base_url())?;
    daemon.wait_healthy(Duration::from_secs(30)).await?;
    // Let start-up allocations settle before the empty baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty_rss_kib = daemon.rss_kib()?;

    let api = Arc::new(daemon.api.clone());
    let workspace = workspace.to_string_lossy().into_owned();
    let started = Instant::now();
    let created: Vec<Result<SessionId>> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let req = CreateSessionRequest {
                task: format!("idle benchmark session {i}"),
                workspace: workspace.clone(),
                model: Some("openai:mock".to_owned()),
                ..CreateSessionRequest::default()
            };
            async move {
                let info: SessionInfo = api.post("/v1/sessions", &req).await?;
                Ok(info.id)
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let create_time = started.elapsed();
    let sessions = created.into_iter().collect::<Result<Vec<_>>>()?;

    // Wait until every loop is live and parked in its model request.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        daemon.check_alive()?;
        let status: DaemonStatus = daemon.api.get("/v1/daemon").await?;
        let pending = mock.request_count();
        if status.sessions_active >= u64::from(count) && pending >= count as usize {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after 120 s only {} of {count} sessions are active and {pending} model requests pending",
                status.sessions_active
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let settle_time = started.elapsed();
    Ok(IdleFleet {
        mock,
        daemon,
        home,
        sessions,
        empty_rss_kib,
        create_time,
        settle_time,
    })
}

/// Where a process's resident memory is, in KiB, from /proc/PID/smaps:
/// the brk heap, anonymous mappings (mmap'd malloc arenas, thread stacks,
/// large allocations), and file-backed mappings (code, shared libraries),
/// plus how many anonymous mappings hold more than 1 MiB.
pub fn rss_breakdown(pid: u32) -> Result<serde_json::Value> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let (mut heap, mut anon, mut file, mut stack) = (0u64, 0u64, 0u64, 0u64);
    let mut big_anon = 0u32;
    let mut current = String::new();
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            // A mapping header: address perms offset dev inode [path].
            current = parts.nth(4).unwrap_or("").to_owned();
            continue;
        }
        if first == "Rss:" {
            let kib: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match current.as_str() {
                "[heap]" => heap += kib,
                "" => {
                    anon += kib;
                    if kib > 1024 {
                        big_anon += 1;
                    }
                }
                s if s.starts_with("[stack") => stack += kib,
                _ => file += kib,
            }
        }
    }
    Ok(serde_json::json!({
        "brk_heap_kib": heap,
        "anon_mmap_kib": anon,
        "anon_mappings_over_1mib": big_anon,
        "file_backed_kib": file,
        "main_stack_kib": stack,
    }))
}
