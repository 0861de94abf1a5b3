//! Harness for end-to-end tests: the real `flotilla` binary, a real daemon
//! in a temporary FLOTILLA_HOME, and the scripted model server on loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_testkit::{MockModelServer, Script};
use serde_json::Value;

pub struct Env {
    pub home: tempfile::TempDir,
    pub ws: tempfile::TempDir,
    pub mock: MockModelServer,
}

impl Env {
    pub fn new(script: Script) -> Env {
        let home = tempfile::Builder::new().prefix("fh").tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        // Fast retries keep error tests short; Retry-After is still honoured.
        // Sessions run in `auto` mode unless a test sets up its own policy:
        // the policy tests (policy_e2e.rs) cover the modes that ask.
        std::fs::write(
            home.path().join("config.toml"),
            "[retry]\nbase_delay_ms = 10\nmax_delay_ms = 100\n[permissions]\nmode = \"auto\"\n",
        )
        .unwrap();
        let mock = MockModelServer::start_blocking(script).unwrap();
        Env { home, ws, mock }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        c.args(args)
            .env("FLOTILLA_HOME", self.home.path())
            .env("OPENAI_BASE_URL", self.mock.base_url())
            .env_remove("OPENAI_API_KEY")
            .env_remove("FLOTILLA_MODEL")
            .stdin(Stdio::null());
        c
    }

    /// Runs a command to completion, failing the test if it takes longer than `secs`.
    pub fn run_for(&self, args: &[&str], secs: u64) -> Output {
        run_with_timeout(self.cmd(args), Duration::from_secs(secs))
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_for(args, 60)
    }

    /// `flotilla secrets add ARGS`, the value on stdin (as a person types it).
    pub fn add_secret(&self, args: &[&str], value: &str) -> Output {
        let mut cmd = self.cmd(&[&["secrets", "add"], args].concat());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{value}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn ws(&self) -> &Path {
        self.ws.path()
    }

    pub fn ws_str(&self) -> String {
        self.ws.path().to_string_lossy().into_owned()
    }

    /// `flotilla run --detach --json` and the new session's id.
    pub fn start(&self, task: &str) -> String {
        self.start_with(task, &[])
    }

    /// [`Env::start`] with more `run` flags (`--mode auto`, `--deny RULE`...).
    pub fn start_with(&self, task: &str, extra: &[&str]) -> String {
        let ws = self.ws_str();
        let mut args = vec!["run", "--detach", "--json", "-w", &ws, "-m", "openai:mock"];
        args.extend_from_slice(extra);
        args.push(task);
        let out = self.run(&args);
        assert!(out.status.success(), "run failed: {}", stderr(&out));
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        info["id"].as_str().unwrap().to_string()
    }

    pub fn events(&self, id: &str) -> Vec<Value> {
        let out = self.run(&["logs", "--json", id]);
        assert!(out.status.success(), "logs failed: {}", stderr(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn session(&self, id: &str) -> Value {
        let out = self.run(&["ps", "--json"]);
        assert!(out.status.success(), "ps failed: {}", stderr(&out));
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.into_iter().find(|s| s["id"] == id).unwrap()
    }

    /// Polls until the session reaches a terminal state.
    pub fn wait_state(&self, id: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.session(id);
            let state = s["state"].as_str().unwrap().to_string();
            if ["completed", "failed", "cancelled"].contains(&state.as_str()) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "session {id} still {state} after {secs}s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the log until an event of `kind` shows up.
    pub fn wait_event(&self, id: &str, kind: &str, secs: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let evs = self.events(id);
            if evs.iter().any(|e| e["event"]["type"] == kind) {
                return evs;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} in session {id} after {secs}s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        let out = self.run(&["daemon", "status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["daemon"]["pid"].as_i64().map(|p| p as i32)
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("run/flotilla.sock")
    }

    pub fn database(&self) -> PathBuf {
        self.home.path().join("data/flotilla.db")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            kill9(pid);
        }
    }
}

pub fn kill9(pid: i32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a pid is a live process (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .map(|(_, r)| r.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            kill9(pid);
            panic!("command {cmd:?} did not finish within {timeout:?}");
        }
    }
}

pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap().to_string())
        .collect()
}

/// Sequence numbers are 1..=n with no gaps and no repeats.
pub fn assert_gapless(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64().unwrap(),
            i as u64 + 1,
            "gap or repeat at index {i}: {e}"
        );
    }
}

/// Tool-result messages the agent sent back in a model request.
pub fn tool_messages(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Host pids of live (not zombie) processes with `arg` among their arguments.
pub fn host_pids_with_arg(arg: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        if !zombie && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// One raw HTTP/1.1 exchange over TCP; returns (status, JSON body).
pub fn tcp(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = body.map(|b| b.to_string());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: flotilla\r\nConnection: close\r\n");
    if let Some(token) = auth {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(b) = &body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.as_deref().unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status: u16 = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {body}"));
    (status, json)
}

pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `flotilla serve --listen 127.0.0.1:0` and returns its TCP address.
pub fn serve_tcp(env: &Env) -> (Daemon, String) {
    let mut cmd = env.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let daemon = Daemon(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = env.run(&["daemon", "status", "--json"]);
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            if let Some(a) = v["daemon"]["tcp"].as_str() {
                return (daemon, a.to_string());
            }
        }
        assert!(
            Instant::now() < deadline,
            "daemon with --listen did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
