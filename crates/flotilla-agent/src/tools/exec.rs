//! The command executor seam: how a `shell` tool call becomes a process.
//!
//! [`CommandExecutor`] is the seam the sandbox slots into: the sandbox crate
//! will provide an executor that spawns the command inside the session's
//! namespaces. [`HostExecutor`] runs commands directly on the host, unconfined,
//! and is the default until then.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

/// After the shell exits, how long to keep reading its pipes. Background jobs
/// (`server &`) inherit the pipes and may hold them open for hours; the tool
/// returns after this grace with what was read, and leaves those jobs running.
pub const PIPE_EOF_GRACE: Duration = Duration::from_secs(1);

/// After SIGTERM to the process group (timeout or cancel), how long the group
/// gets to exit before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Size of one read from a pipe.
const READ_CHUNK: usize = 64 * 1024;

/// One command to run.
#[derive(Clone, Debug)]
pub struct CommandRequest {
    /// Shell text, run by `/bin/sh -c`.
    pub command: String,
    /// Working directory (absolute, already checked to be inside the workspace).
    pub cwd: PathBuf,
    /// Wall-clock limit; on expiry the whole process group is killed.
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr (head and tail); the rest is
    /// read and counted, never buffered.
    pub output_cap_bytes: usize,
    /// Variables added to (or overriding) the inherited environment.
    pub env: Vec<(String, String)>,
    /// Cancelling it kills the whole process group.
    pub cancel: CancellationToken,
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResult {
    /// Exit code of the shell, when it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed the shell, when it was killed.
    pub signal: Option<i32>,
    /// Captured stdout and stderr.
    pub output: CapturedOutput,
    /// The timeout expired and the process group was killed.
    pub timed_out: bool,
    /// The cancel token fired and the process group was killed.
    pub cancelled: bool,
    /// Wall time from spawn to return.
    pub duration: Duration,
    /// What the executor knows about why the command failed (e.g. which
    /// sandbox rule refused it and how the user can allow it).
    pub notes: Vec<String>,
}

impl CommandResult {
    /// Exited normally with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled
    }
}

/// The captured stdout and stderr of a command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// Standard output.
    pub stdout: CapturedStream,
    /// Standard error.
    pub stderr: CapturedStream,
}

/// One output stream, capped: the first bytes and the last bytes are kept,
/// the middle is only counted.
///
/// When nothing was dropped (`!self.truncated()`), `head` followed by `tail`
/// is the whole stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapturedStream {
    /// The first bytes, up to half the cap.
    pub head: Vec<u8>,
    /// The last bytes, up to the other half of the cap.
    pub tail: Vec<u8>,
    /// Bytes the stream produced in total.
    pub total_bytes: u64,
}

impl CapturedStream {
    /// Bytes dropped from the middle.
    pub fn omitted_bytes(&self) -> u64 {
        self.total_bytes
            .saturating_sub((self.head.len() + self.tail.len()) as u64)
    }

    /// Whether some of the stream was dropped.
    pub fn truncated(&self) -> bool {
        self.omitted_bytes() > 0
    }

    /// Bytes kept in memory.
    pub fn captured_len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// The stream as text within `budget` bytes (plus a one-line notice):
    /// everything when it fits, else its head and tail around a notice such as
    /// `[output truncated: 1234567 bytes total, showing the first 15000 and last 15000]`.
    pub fn render(&self, budget: usize) -> String {
        let head_budget = budget / 2;
        let tail_budget = budget - head_budget;
        let (head, tail): (&[u8], &[u8]) = if !self.truncated() {
            if self.captured_len() <= budget {
                let mut all = self.head.clone();
                all.extend_from_slice(&self.tail);
                return String::from_utf8_lossy(&all).into_owned();
            }
            // Complete but over budget: cut the contiguous content.
            let mut all = self.head.clone();
            all.extend_from_slice(&self.tail);
            let head = char_floor(&all, head_budget.min(all.len()));
            let tail = char_ceil(&all, all.len().saturating_sub(tail_budget));
            return format_cut(&all[..head], &all[tail..], self.total_bytes);
        } else {
            (&self.head, &self.tail)
        };
        let head_end = char_floor(head, head_budget.min(head.len()));
        let tail_start = char_ceil(tail, tail.len().saturating_sub(tail_budget));
        format_cut(&head[..head_end], &tail[tail_start..], self.total_bytes)
    }
}

fn format_cut(head: &[u8], tail: &[u8], total: u64) -> String {
    let mut text = String::from_utf8_lossy(head).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "[output truncated: {total} bytes total, showing the first {} and last {}]\n",
        head.len(),
        tail.len()
    ));
    text.push_str(&String::from_utf8_lossy(tail));
    text
}

/// Largest index `<= at` that does not split a UTF-8 sequence.
pub(crate) fn char_floor(bytes: &[u8], at: usize) -> usize {
    let mut at = at.min(bytes.len());
    let mut steps = 0;
    while at > 0 && at < bytes.len() && is_continuation(bytes[at]) && steps < 3 {
        at -= 1;
        steps += 1;
    }
    at
}

/// Smallest index `>= at` that does not split a UTF-8 sequence.
pub(crate) fn char_ceil(bytes: &[u8], at: usize) -> usize {
    let mut at = at.min(bytes.len());
    let mut steps = 0;
    while at < bytes.len() && is_continuation(bytes[at]) && steps < 3 {
        at += 1;
        steps += 1;
    }
    at
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// Accumulates a stream into a [`CapturedStream`] with bounded memory.
struct Capture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        Capture {
            head_cap,
            tail_cap: cap - head_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    fn push(&mut self, mut chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.head.len() < self.head_cap {
            let take = (self.head_cap - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
        }
        if self.tail_cap == 0 || chunk.is_empty() {
            return;
        }
        if chunk.len() >= self.tail_cap {
            self.tail.clear();
            self.tail
                .extend(chunk[chunk.len() - self.tail_cap..].iter().copied());
        } else {
            let overflow = (self.tail.len() + chunk.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(chunk.iter().copied());
        }
    }

    fn finish(self) -> CapturedStream {
        CapturedStream {
            head: self.head,
            tail: self.tail.into_iter().collect(),
            total_bytes: self.total,
        }
    }
}

/// Reads `pipe` to EOF (or until `stop` fires), keeping head and tail.
pub(crate) async fn drain<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
    stop: CancellationToken,
) -> CapturedStream {
    let mut capture = Capture::new(cap);
    let Some(mut pipe) = pipe else {
        return capture.finish();
    };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            biased;
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => capture.push(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::debug!(%err, "reading command output failed");
                    break;
                }
            },
            _ = stop.cancelled() => break,
        }
    }
    capture.finish()
}

/// After the command's shell exited: waits up to [`PIPE_EOF_GRACE`] for the
/// two pipe readers to see end-of-file (background jobs may hold the pipes
/// open for hours), then stops them and returns what they captured.
pub(crate) async fn collect_output(
    stdout: tokio::task::JoinHandle<CapturedStream>,
    stderr: tokio::task::JoinHandle<CapturedStream>,
    stop: &CancellationToken,
) -> CapturedOutput {
    let mut readers = futures::future::join(stdout, stderr);
    let (stdout, stderr) = match tokio::time::timeout(PIPE_EOF_GRACE, &mut readers).await {
        Ok(both) => both,
        Err(_) => {
            stop.cancel();
            readers.await
        }
    };
    CapturedOutput {
        stdout: stdout.unwrap_or_default(),
        stderr: stderr.unwrap_or_default(),
    }
}

/// Runs commands. Implementations decide where (on the host, in a sandbox).
pub trait CommandExecutor: Send + Sync {
    /// Runs `req.command` with `/bin/sh -c` and reports what happened.
    ///
    /// `Err` means the command could not be started at all; a command that
    /// ran and failed is an `Ok` with its exit status.
    fn run<'a>(&'a self, req: CommandRequest) -> BoxFuture<'a, io::Result<CommandResult>>;

    /// Whether it can still run commands (a sandbox whose init died cannot;
    /// the session then gets a new one).
    fn is_usable(&self) -> bool {
        true
    }
}

/// Runs commands directly on the host, unconfined: the default until the
/// sandbox lands.
///
/// Each command gets its own session and process group (`setsid`), a nice
/// value 10 above the daemon's, `PR_SET_PDEATHSIG(SIGKILL)`, stdin from
/// `/dev/null`, and the daemon's environment plus [`CommandRequest::env`] and
/// `FLOTILLA=1`. On timeout or cancel the whole group gets SIGTERM, then
/// SIGKILL after [`TERM_GRACE`]. When the shell exits on its own, its
/// background jobs are left running (a dev server started with `&` is
/// legitimate) and the pipes are read for at most [`PIPE_EOF_GRACE`] more.
///
/// The command must be run from a long-lived thread (a tokio worker, never
/// `spawn_blocking`): see the note on `PR_SET_PDEATHSIG` in the source.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostExecutor;

impl CommandExecutor for HostExecutor {
    fn run<'a>(&'a self, req: CommandRequest) -> BoxFuture<'a, io::Result<CommandResult>> {
        Box::pin(run_on_host(req))
    }
}

/// Kills the process group with SIGKILL when dropped while armed, so that a
/// dropped `run` future (its caller gave up) leaves no processes behind.
struct GroupGuard {
    pgid: Option<i32>,
    stop: CancellationToken,
}

impl GroupGuard {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGKILL);
        }
        self.stop.cancel();
    }
}

fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group, which is the command's own (pgid is the
    // pid of the shell we spawned as a session leader).
    unsafe { libc::kill(-pgid, signal) == 0 }
}

fn group_exists(pgid: i32) -> bool {
    signal_group(pgid, 0)
}

enum Stop {
    Exited(io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

async fn run_on_host(req: CommandRequest) -> io::Result<CommandResult> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&req.command)
        .current_dir(&req.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLOTILLA", "1")
        .kill_on_drop(true);
    let parent_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes only raw syscalls
    // through libc (setsid, prctl, getppid, getpriority, setpriority), touches
    // no locks, allocates nothing, and builds its error from errno alone.
    unsafe {
        cmd.pre_exec(move || {
            // Own session, hence own process group (pgid = pid): the whole
            // tree can be signalled at once, and the command has no
            // controlling terminal, so nothing can block reading /dev/tty.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            // Die with the daemon, even on kill -9. PDEATHSIG fires when the
            // *thread* that forked us exits, not the process: spawning must
            // happen on a long-lived thread (a tokio worker), never on a
            // spawn_blocking thread that is reaped after being idle. It is not
            // inherited by the command's own children; the sandbox's pid
            // namespace covers those.
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The daemon may have died between fork and prctl.
                if libc::getppid() != parent_pid {
                    // No allocation here: an errno-style error only.
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            // Be nicer than the daemon so a CPU-bound command cannot starve
            // its API. Failure (an odd rlimit) is not a reason to refuse.
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            let _ = libc::setpriority(libc::PRIO_PROCESS, 0, (current + 10).min(19));
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent_pid;

    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|pid| pid as i32);
    let stop = CancellationToken::new();
    let mut guard = GroupGuard {
        pgid,
        stop: stop.clone(),
    };
    let cap = req.output_cap_bytes;
    let stdout = tokio::spawn(drain(child.stdout.take(), cap, stop.clone()));
    let stderr = tokio::spawn(drain(child.stderr.take(), cap, stop.clone()));

    let outcome = tokio::select! {
        status = child.wait() => Stop::Exited(status),
        _ = tokio::time::sleep(req.timeout) => Stop::TimedOut,
        _ = req.cancel.cancelled() => Stop::Cancelled,
    };
    let (status, timed_out, cancelled) = match outcome {
        Stop::Exited(status) => (status?, false, false),
        Stop::TimedOut => (terminate(&mut child, pgid).await?, true, false),
        Stop::Cancelled => (terminate(&mut child, pgid).await?, false, true),
    };
    // The shell is gone. Its background jobs, if any, are left alone.
    guard.disarm();

    let output = collect_output(stdout, stderr, &stop).await;
    Ok(CommandResult {
        exit_code: status.code(),
        signal: status.signal(),
        output,
        timed_out,
        cancelled,
        duration: started.elapsed(),
        notes: Vec::new(),
    })
}

/// SIGTERM to the group, up to [`TERM_GRACE`] for it to empty, then SIGKILL.
/// Returns the shell's exit status.
async fn terminate(child: &mut Child, pgid: Option<i32>) -> io::Result<ExitStatus> {
    let Some(pgid) = pgid else {
        child.start_kill()?;
        return child.wait().await;
    };
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + TERM_GRACE;
    let mut status = tokio::time::timeout_at(deadline, child.wait()).await.ok();
    // The shell is reaped (or still running); wait for the rest of the group.
    // While any member lives, the kernel keeps the pgid from being reused.
    while status.is_some() && group_exists(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if status.is_none() || group_exists(pgid) {
        signal_group(pgid, libc::SIGKILL);
    }
    match status.take() {
        Some(status) => status,
        None => child.wait().await,
    }
}
