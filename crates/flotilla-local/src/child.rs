//! The child processes of the model server (a front under the daemon, an
//! engine under a front): each dies with its parent, says `listening ADDR`
//! on stdout once it serves, and what it says on stderr is logged and kept
//! for the error when it does not come up.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

/// What of a child's stderr is kept for an error.
const KEPT: usize = 4000;

/// Starts `cmd` and waits (up to `timeout`) for its `listening ADDR`.
/// `what` names it in errors (`the engine`, `the model server for X`).
pub(crate) async fn spawn_listening(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> Result<(tokio::process::Child, SocketAddr), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // It dies with its parent, however the parent ends (kill -9 included):
    // no orphan holds a model's memory.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let said = Arc::new(Mutex::new(String::new()));
    let sink = said.clone();
    let target = what.to_owned();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(child = %target, "{line}");
            if let Ok(mut s) = sink.lock() {
                if s.len() < KEPT {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        }
    });
    let why = |problem: String| {
        let said = said.lock().map(|s| s.trim().to_owned()).unwrap_or_default();
        if said.is_empty() {
            problem
        } else {
            format!("{problem}: {said}")
        }
    };
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = match tokio::time::timeout(timeout, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(_) => {
            let _ = child.wait().await;
            // Its last words may still be in the pipe.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(why(format!("{what} exited before it was ready")));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(why(format!("{what} took too long to start")));
        }
    };
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| why(format!("{what} said {line:?}")))?;
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}
