//! [`Sandbox`]: the daemon's (async) handle on one sandbox.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::cgroup::{self, Cgroup};
use crate::control::{self, Reply, Request, MAX_MESSAGE};
use crate::init::{CONTROL_FD, HELPER_ARG};
use crate::spec::{SandboxReport, SandboxSpec};

/// How long a sandbox may take to report ready before creation fails.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the sandbox handle.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec is unusable (a missing workspace, a relative path).
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// The helper refused or failed to build the sandbox.
    #[error("the sandbox could not be created: {0}")]
    Refused(String),
    /// The helper could not be started.
    #[error("starting the sandbox helper {program}: {source}")]
    Helper {
        /// The helper program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox's init is gone (killed, or it crashed).
    #[error("the sandbox is gone: {0}")]
    Gone(String),
    /// A command could not be started inside the sandbox.
    #[error("{0}")]
    Spawn(String),
    /// An I/O error on the control channel.
    #[error("sandbox control channel: {0}")]
    Io(#[from] std::io::Error),
}

/// How to start the sandbox helper: normally the running `flotilla` binary
/// with [`HELPER_ARG`].
#[derive(Clone, Debug)]
pub struct HelperCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl HelperCommand {
    /// `program __sandbox-init`.
    pub fn new(program: impl Into<PathBuf>) -> HelperCommand {
        HelperCommand {
            program: program.into(),
            args: vec![HELPER_ARG.into()],
        }
    }

    /// The running executable as the helper (it must dispatch
    /// [`HELPER_ARG`] to [`crate::helper_main`]). Through `/proc/self/exe`,
    /// which names the very file this process runs even after an upgrade
    /// replaced it on disk: a long-running daemon keeps building sandboxes
    /// with its own code.
    pub fn current_exe() -> std::io::Result<HelperCommand> {
        let link = PathBuf::from("/proc/self/exe");
        if link.exists() {
            return Ok(HelperCommand::new(link));
        }
        Ok(HelperCommand::new(std::env::current_exe()?))
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when it was killed.
    pub signal: Option<i32>,
}

/// A command to start in a sandbox.
#[derive(Debug)]
pub struct SpawnRequest {
    /// Program and arguments (the program is looked up on `PATH` from `env`).
    pub argv: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// The command's whole environment: nothing is inherited from the daemon.
    pub env: Vec<(String, String)>,
    /// Standard input; `/dev/null` when `None`.
    pub stdin: Option<OwnedFd>,
    /// Standard output (e.g. the write end of a pipe).
    pub stdout: OwnedFd,
    /// Standard error.
    pub stderr: OwnedFd,
}

#[derive(Default)]
struct Waiters {
    exited: HashMap<u64, oneshot::Sender<Result<ExitStatus, String>>>,
    gone: Option<String>,
}

/// What the reply reader shares with the handle. The reader holds only
/// this, never [`Inner`], so dropping the last [`Sandbox`] drops `Inner`,
/// whose `Drop` stops the reader and with it the last reference to the
/// socket.
struct Shared {
    sock: AsyncFd<OwnedFd>,
    waiters: Mutex<Waiters>,
}

struct Inner {
    shared: Arc<Shared>,
    send_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    report: SandboxReport,
    helper_pid: u32,
    helper: Mutex<Option<tokio::process::Child>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The sandbox's cgroup, recycled or removed once it is empty.
    cgroup: Mutex<Option<Cgroup>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut reader) = self.reader.lock() {
            if let Some(task) = reader.take() {
                task.abort();
            }
        }
        // Dropping the socket closes the channel: init kills everything in
        // the sandbox and exits. The helper Child is kill_on_drop as well.
        // The cgroup is released once the kernel has emptied it, off this
        // thread (Drop may run on an async worker).
        if let Some(cg) = self.cgroup.lock().ok().and_then(|mut c| c.take()) {
            let _ = std::thread::Builder::new()
                .name("sandbox-cgroup".into())
                .spawn(move || cgroup::release(cg));
        }
    }
}

/// One live sandbox. Cheap to clone; the sandbox (with every process in it)
/// ends when the last clone is dropped or [`Sandbox::shutdown`] is called.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("helper_pid", &self.inner.helper_pid)
            .field("report", &self.inner.report)
            .finish()
    }
}

impl Sandbox {
    /// Starts the helper, sends it `spec`, and waits until the sandbox is
    /// built. Must be called from a long-lived thread (a tokio worker, never
    /// `spawn_blocking`): the helper dies when the thread that spawned it
    /// exits (`PR_SET_PDEATHSIG`).
    pub async fn create(
        spec: SandboxSpec,
        helper: &HelperCommand,
    ) -> Result<Sandbox, SandboxError> {
        let spec = validate(spec)?;
        let limits = spec.limits.clone();
        let prepared = match take_prepared(helper, &limits) {
            Some(p) => p,
            None => prepare(helper, &limits).await?,
        };
        let Prepared {
            mut child,
            sock,
            helper_pid,
            cgroup,
            ..
        } = prepared;
        let setup = control::encode(&Request::Setup {
            spec: Box::new(spec),
        })?;
        send_on(&sock, &setup, &[]).await?;
        let handshake = handshake(&sock, &mut child, helper);
        let mut report = match tokio::time::timeout(CREATE_TIMEOUT, handshake).await {
            Ok(Ok(report)) => report,
            Ok(Err(err)) => {
                release_after_kill(child, cgroup.ok()).await;
                return Err(err);
            }
            Err(_) => {
                release_after_kill(child, cgroup.ok()).await;
                return Err(SandboxError::Refused(format!(
                    "the sandbox helper did not report ready within {} s",
                    CREATE_TIMEOUT.as_secs()
                )));
            }
        };
        report.init_pid = helper_pid;
        let cgroup = match cgroup {
            Ok(cg) => {
                report.cgroup = Some(cg.describe());
                Some(cg)
            }
            Err(reason) => {
                report.degraded.push(format!(
                    "no cgroup limits ({reason}); the process and file limits still hold, memory is not capped"
                ));
                None
            }
        };
        // Prepare the next sandbox's helper now, off its critical path.
        refill_prepared(helper, &limits);
        let shared = Arc::new(Shared {
            sock,
            waiters: Mutex::new(Waiters::default()),
        });
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            send_lock: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            report,
            helper_pid,
            helper: Mutex::new(Some(child)),
            reader: Mutex::new(None),
            cgroup: Mutex::new(cgroup),
        });
        let task = tokio::spawn(read_replies(shared));
        if let Ok(mut reader) = inner.reader.lock() {
            *reader = Some(task);
        }
        Ok(Sandbox { inner })
    }

    /// What holds in this sandbox.
    pub fn report(&self) -> &SandboxReport {
        &self.inner.report
    }

    /// The helper's pid on the host (the init is its only child).
    pub fn helper_pid(&self) -> u32 {
        self.inner.helper_pid
    }

    /// Whether the sandbox's init is gone.
    pub fn is_gone(&self) -> bool {
        self.inner
            .shared
            .waiters
            .lock()
            .map(|w| w.gone.is_some())
            .unwrap_or(true)
    }

    /// Starts a command in the sandbox. Returns once the request is sent:
    /// a command that cannot be started (not found, not executable) is
    /// reported by [`Process::wait`]. (Not waiting for a "started" reply
    /// keeps a wake-up of the daemon off the command's critical path.)
    pub async fn spawn(&self, req: SpawnRequest) -> Result<Process, SandboxError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (exited_tx, exited_rx) = oneshot::channel();
        {
            let mut waiters = self
                .inner
                .shared
                .waiters
                .lock()
                .map_err(|_| SandboxError::Gone("poisoned".into()))?;
            if let Some(why) = &waiters.gone {
                return Err(SandboxError::Gone(why.clone()));
            }
            waiters.exited.insert(id, exited_tx);
        }
        let stdin = match req.stdin {
            Some(fd) => fd,
            None => OwnedFd::from(std::fs::File::open("/dev/null")?),
        };
        let bytes = control::encode(&Request::Spawn {
            id,
            argv: req.argv,
            cwd: req.cwd,
            env: req.env,
        });
        let sent = match bytes {
            Ok(bytes) => {
                let fds = [
                    stdin.as_raw_fd(),
                    req.stdout.as_raw_fd(),
                    req.stderr.as_raw_fd(),
                ];
                self.send(&bytes, &fds).await
            }
            Err(err) => Err(err),
        };
        // Our copies of the descriptors close here; the command holds its own.
        drop((stdin, req.stdout, req.stderr));
        if let Err(err) = sent {
            self.forget(id);
            if self.is_gone() {
                return Err(SandboxError::Gone(self.gone_reason()));
            }
            return Err(err.into());
        }
        Ok(Process {
            id,
            exited: Some(exited_rx),
            status: None,
            sandbox: self.clone(),
        })
    }

    fn forget(&self, id: u64) {
        if let Ok(mut waiters) = self.inner.shared.waiters.lock() {
            waiters.exited.remove(&id);
        }
    }

    fn gone_reason(&self) -> String {
        self.inner
            .shared
            .waiters
            .lock()
            .ok()
            .and_then(|w| w.gone.clone())
            .unwrap_or_else(|| "the sandbox init exited".into())
    }

    async fn send(&self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let _guard = self.inner.send_lock.lock().await;
        send_on(&self.inner.shared.sock, bytes, fds).await
    }

    async fn signal(&self, id: u64, signal: i32) -> Result<(), SandboxError> {
        let bytes = control::encode(&Request::Signal { id, signal })?;
        self.send(&bytes, &[]).await?;
        Ok(())
    }

    /// Kills every process in the sandbox and waits for the helper to exit.
    pub async fn shutdown(self) {
        if let Ok(bytes) = control::encode(&Request::Shutdown) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.send(&bytes, &[])).await;
        }
        let child = self.inner.helper.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        if let Some(cg) = self.inner.cgroup.lock().ok().and_then(|mut c| c.take()) {
            let _ = tokio::task::spawn_blocking(move || cgroup::release(cg)).await;
        }
    }
}

/// Reads the init's first message: `ready` or `failed`.
async fn handshake(
    sock: &AsyncFd<OwnedFd>,
    child: &mut tokio::process::Child,
    helper: &HelperCommand,
) -> Result<SandboxReport, SandboxError> {
    let msg = recv_on(sock).await?;
    if msg.bytes.is_empty() {
        let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        return Err(SandboxError::Refused(format!(
            "the sandbox helper {} exited before reporting ({}); is it a flotilla binary that understands {HELPER_ARG}?",
            helper.program.display(),
            match status {
                Ok(Ok(status)) => status.to_string(),
                _ => "still running".into(),
            }
        )));
    }
    match serde_json::from_slice::<Reply>(&msg.bytes) {
        Ok(Reply::Ready { report }) => Ok(*report),
        Ok(Reply::Failed { error }) => Err(SandboxError::Refused(error)),
        Ok(other) => Err(SandboxError::Refused(format!(
            "unexpected message from the sandbox helper: {other:?}"
        ))),
        Err(err) => Err(SandboxError::Refused(format!(
            "unreadable message from the sandbox helper: {err}"
        ))),
    }
}

/// A helper started ahead of time: exec'd, in its cgroup, waiting for its
/// spec. Starting one costs an exec of the binary and, on some kernels, a
/// cgroup migration that waits for an RCU grace period (up to tens of
/// milliseconds on an idle machine); a daemon keeps one ready so that a
/// session's sandbox costs only the namespace and filesystem setup.
struct Prepared {
    child: tokio::process::Child,
    sock: AsyncFd<OwnedFd>,
    helper_pid: u32,
    cgroup: Result<Cgroup, String>,
    limits: crate::SandboxLimits,
    program: PathBuf,
}

/// How many prepared helpers to keep (0: none, the default).
static PREPARED_SPARES: AtomicUsize = AtomicUsize::new(0);
static PREPARED: Mutex<Vec<Prepared>> = Mutex::new(Vec::new());

/// Keeps `spares` sandbox helpers (and cgroups) ready ahead of time, for a
/// long-lived process that creates sandboxes now and then (the daemon).
/// Also removes cgroups left behind by a flotilla process that died.
/// Blocking (call it from a blocking context).
pub fn enable_prewarm(spares: usize) {
    PREPARED_SPARES.store(spares, Ordering::Relaxed);
    cgroup::enable_pool(spares);
}

/// Stops the prepared helpers and removes spare cgroups (at daemon exit).
pub async fn drain_prewarmed() {
    PREPARED_SPARES.store(0, Ordering::Relaxed);
    let prepared: Vec<Prepared> = PREPARED
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for p in prepared {
        release_after_kill(p.child, p.cgroup.ok()).await;
    }
    let _ = tokio::task::spawn_blocking(cgroup::drain_pool).await;
}

fn take_prepared(helper: &HelperCommand, limits: &crate::SandboxLimits) -> Option<Prepared> {
    let mut pool = PREPARED.lock().ok()?;
    let at = pool
        .iter()
        .position(|p| &p.limits == limits && p.program == helper.program)?;
    Some(pool.swap_remove(at))
}

fn refill_prepared(helper: &HelperCommand, limits: &crate::SandboxLimits) {
    let spares = PREPARED_SPARES.load(Ordering::Relaxed);
    let have = PREPARED.lock().map(|p| p.len()).unwrap_or(usize::MAX);
    if have >= spares {
        return;
    }
    let helper = helper.clone();
    let limits = limits.clone();
    // A task on a runtime worker, not spawn_blocking: the helper dies when
    // the thread that spawned it exits (PR_SET_PDEATHSIG).
    tokio::spawn(async move {
        match prepare(&helper, &limits).await {
            Ok(p) => {
                let extra = match PREPARED.lock() {
                    Ok(mut pool) if pool.len() < PREPARED_SPARES.load(Ordering::Relaxed) => {
                        pool.push(p);
                        None
                    }
                    _ => Some(p),
                };
                if let Some(p) = extra {
                    release_after_kill(p.child, p.cgroup.ok()).await;
                }
            }
            Err(err) => tracing::warn!(%err, "preparing a sandbox helper failed"),
        }
    });
}

/// Starts the helper and moves it into a cgroup with `limits`.
async fn prepare(
    helper: &HelperCommand,
    limits: &crate::SandboxLimits,
) -> Result<Prepared, SandboxError> {
    let (ours, theirs) = control::pair().map_err(std::io::Error::from)?;
    set_nonblocking(&ours)?;
    let mut cmd = tokio::process::Command::new(&helper.program);
    cmd.args(&helper.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let theirs_raw = theirs.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and makes raw,
    // async-signal-safe syscalls only (dup2, fcntl, setsid, prctl).
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == CONTROL_FD {
                if libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, CONTROL_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SandboxError::Helper {
        program: helper.program.display().to_string(),
        source,
    })?;
    drop(theirs);
    let helper_pid = child.id().unwrap_or(0);
    // SAFETY: `ours` is an OwnedFd moved into the AsyncFd, which owns it
    // until it is dropped; nothing else closes or replaces it.
    let sock = unsafe { AsyncFd::register(ours) }.map_err(std::io::Error::from)?;
    // While the helper execs, it joins its cgroup: everything it forks
    // later (the init, every command) is in it.
    let cg_limits = limits.clone();
    let cgroup = tokio::task::spawn_blocking(move || {
        let cg = cgroup::acquire(&cg_limits)?;
        match cg.add(helper_pid) {
            Ok(()) => Ok(cg),
            Err(err) => {
                cgroup::release(cg);
                Err(err)
            }
        }
    })
    .await
    .unwrap_or_else(|err| Err(err.to_string()));
    Ok(Prepared {
        child,
        sock,
        helper_pid,
        cgroup,
        limits: limits.clone(),
        program: helper.program.clone(),
    })
}

/// Kills a helper, waits for it, then recycles or removes its cgroup.
async fn release_after_kill(mut child: tokio::process::Child, cgroup: Option<Cgroup>) {
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(cg) = cgroup {
        let _ = tokio::task::spawn_blocking(move || cgroup::release(cg)).await;
    }
}

/// A command running in a sandbox.
#[derive(Debug)]
pub struct Process {
    id: u64,
    exited: Option<oneshot::Receiver<Result<ExitStatus, String>>>,
    status: Option<ExitStatus>,
    sandbox: Sandbox,
}

impl Process {
    /// Waits for the command's process to exit (its background jobs may
    /// live on). `Err` when it could not be started; if the sandbox dies
    /// first, reports a SIGKILL.
    pub async fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let killed = ExitStatus {
            code: None,
            signal: Some(libc::SIGKILL),
        };
        let status = match self.exited.take() {
            Some(rx) => match rx.await {
                Ok(Ok(status)) => status,
                Ok(Err(error)) => return Err(SandboxError::Spawn(error)),
                Err(_) => killed,
            },
            None => killed,
        };
        self.status = Some(status);
        Ok(status)
    }

    /// Sends `signal` to the command's whole process group.
    pub async fn signal_group(&self, signal: i32) -> Result<(), SandboxError> {
        self.sandbox.signal(self.id, signal).await
    }
}

async fn read_replies(shared: Arc<Shared>) {
    let reason = loop {
        match recv_on(&shared.sock).await {
            Ok(msg) if msg.bytes.is_empty() => break "the sandbox init exited".to_string(),
            Ok(msg) => dispatch(&shared, &msg.bytes),
            Err(err) => break format!("reading the control channel: {err}"),
        }
    };
    if let Ok(mut waiters) = shared.waiters.lock() {
        waiters.gone = Some(reason);
        // Dropping the senders wakes every waiter with an error.
        waiters.exited.clear();
    }
}

fn dispatch(inner: &Shared, bytes: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<Reply>(bytes) else {
        tracing::warn!("unreadable message from a sandbox init");
        return;
    };
    let Ok(mut waiters) = inner.waiters.lock() else {
        return;
    };
    match reply {
        Reply::SpawnFailed { id, error } => {
            if let Some(tx) = waiters.exited.remove(&id) {
                let _ = tx.send(Err(error));
            }
        }
        Reply::Exited { id, code, signal } => {
            if let Some(tx) = waiters.exited.remove(&id) {
                let _ = tx.send(Ok(ExitStatus { code, signal }));
            }
        }
        Reply::Ready { .. } | Reply::Failed { .. } => {}
    }
}

async fn send_on(sock: &AsyncFd<OwnedFd>, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    loop {
        let mut guard = sock.writable().await?;
        match guard.try_io(|fd| {
            control::send_raw(fd.get_ref().as_raw_fd(), bytes, fds).map_err(std::io::Error::from)
        }) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn recv_on(sock: &AsyncFd<OwnedFd>) -> std::io::Result<control::Received> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let mut guard = sock.readable().await?;
        match guard.try_io(|fd| {
            control::recv_raw(fd.get_ref().as_raw_fd(), &mut buf).map_err(std::io::Error::from)
        }) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Absolute, existing, canonical paths: the helper trusts what it gets.
fn validate(mut spec: SandboxSpec) -> Result<SandboxSpec, SandboxError> {
    let canonical_dir = |p: &PathBuf, what: &str| -> Result<PathBuf, SandboxError> {
        let c = std::fs::canonicalize(p)
            .map_err(|err| SandboxError::InvalidSpec(format!("{what} {}: {err}", p.display())))?;
        if !c.is_dir() {
            return Err(SandboxError::InvalidSpec(format!(
                "{what} {} is not a directory",
                p.display()
            )));
        }
        if c == std::path::Path::new("/") {
            return Err(SandboxError::InvalidSpec(format!(
                "{what} cannot be the root directory"
            )));
        }
        Ok(c)
    };
    spec.workspace = canonical_dir(&spec.workspace, "workspace")?;
    spec.extra_write = spec
        .extra_write
        .iter()
        .map(|p| canonical_dir(p, "--write directory"))
        .collect::<Result<_, _>>()?;
    // Hidden paths: absolute; resolved here, on the host, when they exist (a
    // symlinked ~/.ssh hides its target; inside the helper, symlinks would
    // resolve against the staging root), kept as given otherwise.
    let mut hidden = Vec::new();
    for p in spec.hidden_paths() {
        if !p.is_absolute() {
            return Err(SandboxError::InvalidSpec(format!(
                "deny-read path {} must be absolute",
                p.display()
            )));
        }
        hidden.push(std::fs::canonicalize(&p).unwrap_or(p));
    }
    spec.deny_read = hidden;
    spec.home = None;
    for rel in &spec.protected {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(SandboxError::InvalidSpec(format!(
                "protected path {} must be relative to the workspace, without ..",
                rel.display()
            )));
        }
    }
    if let crate::spec::NetworkMode::Proxy { socket, ca_bundle } = &mut spec.network {
        *socket = std::fs::canonicalize(&*socket).map_err(|err| {
            SandboxError::InvalidSpec(format!("proxy socket {}: {err}", socket.display()))
        })?;
        if let Some(bundle) = ca_bundle {
            let resolved = std::fs::canonicalize(&*bundle).map_err(|err| {
                SandboxError::InvalidSpec(format!(
                    "proxy CA bundle {}: {err}; write it first with CertAuthority::write_bundle",
                    bundle.display()
                ))
            })?;
            if !resolved.is_file() {
                return Err(SandboxError::InvalidSpec(format!(
                    "proxy CA bundle {} is not a regular file",
                    bundle.display()
                )));
            }
            *bundle = resolved;
        }
    }
    Ok(spec)
}
