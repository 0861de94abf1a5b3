//! The embedded model server, end to end: the real `flotilla model serve`
//! on loopback with the Gemma 3 270M GGUF (scripts/test-models.sh), driven
//! by the official `openai` Python client (scripts/test-python.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One engine at a time: llama.cpp's threads spin while they wait for each
/// other, and two engines on two cores starve each other many times over.
static ONE_ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_engine() -> std::sync::MutexGuard<'static, ()> {
    ONE_ENGINE.lock().unwrap_or_else(|p| p.into_inner())
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn gemma() -> PathBuf {
    let path = std::env::var_os("FLOTILLA_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_file("target/test-models/gemma-3-270m-q4_k_m.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-models.sh",
        path.display()
    );
    path
}

fn python_path() -> PathBuf {
    let dir = std::env::var_os("FLOTILLA_TEST_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_file("target/test-py"));
    assert!(
        dir.join("openai").exists(),
        "the openai client is missing from {}: run scripts/test-python.sh",
        dir.display()
    );
    dir
}

/// A running `flotilla model serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    _home: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &Path, extra: &[&str]) -> Result<Server, String> {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["model", "serve", "--listen", "127.0.0.1:0", "--ctx", "2048"])
        .arg("--model")
        .arg(model)
        .args(extra)
        .env("FLOTILLA_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_default();
    match line.trim().strip_prefix("listening ") {
        Some(addr) => Ok(Server {
            child,
            base: format!("http://{addr}/v1"),
            _home: home,
        }),
        None => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// Runs one check of client.py; returns what it printed.
fn check(server: &Server, name: &str) -> Value {
    let out = Command::new("python3")
        .arg(repo_file("crates/flotilla-cli/tests/local_model/client.py"))
        .arg(&server.base)
        .arg(name)
        .env("PYTHONPATH", python_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_openai_client_chats_streams_and_calls_tools() {
    let _one = one_engine();
    let server = serve(&gemma(), &["--parallel", "2"]).unwrap();
    let plain = check(&server, "plain");
    assert_eq!(plain["model"], "gemma-3-270m-q4_k_m");
    let stream = check(&server, "stream");
    assert!(stream["chunks"].as_u64().unwrap() >= 3, "{stream}");
    let tool = check(&server, "tool");
    assert_eq!(tool["call"]["name"], "get_weather");
    assert_eq!(tool["streamed"]["name"], "get_weather");
    // Twenty in a row, each a schema-valid call of an offered tool (the
    // script checks every argument against its schema).
    let twenty = check(&server, "twenty");
    assert_eq!(twenty["calls"].as_array().unwrap().len(), 20);
    // Two at once are both served, side by side.
    let both = check(&server, "concurrent");
    assert!(both["overlap_s"].as_f64().unwrap() > 0.0, "{both}");
}

#[test]
fn a_killed_engine_is_started_again_and_serves_the_next_request() {
    let _one = one_engine();
    let server = serve(&gemma(), &["--parallel", "1"]).unwrap();
    let seen = check(&server, "kill");
    assert!(seen["chunks_before_kill"].as_u64().unwrap() >= 3, "{seen}");
    assert!(!seen["error"].is_null(), "the cut request failed: {seen}");
    assert_ne!(seen["old_pid"], seen["new_pid"]);
    assert_eq!(seen["restarts"], 1);
    assert!(seen["after"].is_string(), "{seen}");
    // The engine is a child of the front, which lives on.
    let pid = seen["new_pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, server.child.id());
}

#[test]
fn a_corrupt_or_truncated_gguf_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Not GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let err = serve(&junk, &[]).err().expect("a junk file was served");
    assert!(err.contains("is not a usable GGUF model"), "{err}");
    // A real model cut short: its header is fine, its tensors are not all there.
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gemma()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = serve(&cut, &[]).err().expect("a truncated file was served");
    assert!(err.contains("cut short"), "{err}");
    // A header whose counts are garbage.
    let mut bad = bytes[..4096].to_vec();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, &bad).unwrap();
    let err = serve(&garbage, &[])
        .err()
        .expect("a garbage header was served");
    assert!(err.contains("is not a usable GGUF model"), "{err}");
}

#[test]
fn with_nothing_configured_run_uses_the_embedded_model() {
    let _one = one_engine();
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    // The catalogue's file name for gemma-3-270m, pointing at the tests' copy.
    std::os::unix::fs::symlink(gemma(), models.path().join("gemma-3-270m-Q4_K_M.gguf")).unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        "[permissions]\nmode = \"auto\"\n[local]\nparallel = 1\nctx = 2048\nidle_exit_secs = 60\n",
    )
    .unwrap();
    let flotilla = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        c.args(args)
            .env("FLOTILLA_HOME", home.path())
            .env("FLOTILLA_MODELS_DIR", models.path())
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("FLOTILLA_MODEL")
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    // The daemon (and with it its model server) stops however the test ends.
    struct StopDaemon<F: Fn(&[&str]) -> std::process::Output>(F);
    impl<F: Fn(&[&str]) -> std::process::Output> Drop for StopDaemon<F> {
        fn drop(&mut self) {
            let _ = (self.0)(&["daemon", "stop"]);
        }
    }
    let flotilla = StopDaemon(flotilla);
    let flotilla = |args: &[&str]| (flotilla.0)(args);
    let ws_arg = ws.path().to_string_lossy().into_owned();
    let out = flotilla(&[
        "run",
        "-w",
        &ws_arg,
        "--max-turns",
        "2",
        "--json",
        "Write hello.txt containing hi, then finish.",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("running on the embedded model local:gemma-3-270m"),
        "{stderr}"
    );
    // A real session on the real model: it asked the model and got answers,
    // and it ended.
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let answered: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["type"] == "model_responded")
        .collect();
    assert!(!answered.is_empty(), "{stderr}\n{events:?}");
    assert!(
        answered[0]["event"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let end = events
        .iter()
        .rev()
        .find(|e| e["event"]["type"] == "state_changed")
        .unwrap();
    assert!(
        ["completed", "failed"].contains(&end["event"]["state"].as_str().unwrap()),
        "{end}"
    );
    let ps = flotilla(&["ps", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(list[0]["model"], "local:gemma-3-270m");
    // A session names a model; it cannot point the daemon at a file.
    let out = flotilla(&[
        "run",
        "-w",
        &ws_arg,
        "--json",
        "-m",
        "local:/etc/passwd",
        "x",
    ]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("not a path"), "{log}");
}

/// A stand-in for the Hugging Face hub on loopback, shaped like the real
/// one: `/{repo}/resolve/main/{file}` answers a redirect carrying the
/// file's SHA-256 in `X-Linked-Etag`, and the storage it points to
/// (`/cdn/...`) serves the bytes, with ranges, under an ETag of its own
/// that is not the file's hash. The first transfer can be cut off halfway.
/// Records the Range of each request for the bytes.
struct Hub {
    addr: std::net::SocketAddr,
    ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

fn hub(path: &str, bytes: std::sync::Arc<Vec<u8>>, etag: String, cut_first: bool) -> Hub {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let path = path.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let range = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(str::to_owned)
                })
                .map(|r| r.trim_end_matches('-').to_owned());
            if target == path {
                let _ = write!(
                    conn,
                    "HTTP/1.1 302 Found\r\nlocation: /cdn{path}\r\nx-linked-etag: \"{etag}\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                continue;
            }
            if target != format!("/cdn{path}") {
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
            let first = {
                let mut s = seen.lock().unwrap();
                s.push(range.clone());
                s.len() == 1
            };
            let from: usize = range.and_then(|r| r.parse().ok()).unwrap_or(0);
            let body = &bytes[from..];
            let status = if from > 0 {
                format!(
                    "206 Partial Content\r\ncontent-range: bytes {from}-{}/{}",
                    bytes.len() - 1,
                    bytes.len()
                )
            } else {
                "200 OK".to_owned()
            };
            // The storage's own ETag: not the file's hash.
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: \"{}\"\r\nconnection: close\r\n\r\n",
                body.len(),
                "f".repeat(64)
            );
            let send = if cut_first && first {
                &body[..body.len() / 2]
            } else {
                body
            };
            let _ = conn.write_all(send);
        }
    });
    Hub { addr, ranges }
}

#[test]
fn pull_resumes_checks_the_sha256_and_list_shows_the_model() {
    let bytes = std::sync::Arc::new(std::fs::read(gemma()).unwrap());
    let sha = {
        let out = Command::new("sha256sum").arg(gemma()).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let path = "/ggml-org/gemma-3-270m-GGUF/resolve/main/gemma-3-270m-Q4_K_M.gguf";
    let home = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let run = |hub: &Hub, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_HOME", home.path())
            .env("FLOTILLA_MODELS_DIR", models.path())
            .env("HF_ENDPOINT", format!("http://{}", hub.addr))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let h = hub(path, bytes.clone(), sha.clone(), true);
    // Cut off halfway: it says so, and keeps what it has.
    let out = run(&h, &["model", "pull", "gemma-3-270m"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run the same command again to resume"),
        "{err}"
    );
    let part = models.path().join("gemma-3-270m-Q4_K_M.gguf.part");
    let had = std::fs::metadata(&part).unwrap().len();
    assert_eq!(had as usize, bytes.len() / 2);
    // Again: it asks for the rest only, checks the SHA-256, puts it in place.
    let out = run(&h, &["model", "pull", "gemma-3-270m", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.ranges.lock().unwrap().as_slice(),
        &[None, Some(had.to_string())]
    );
    let done = models.path().join("gemma-3-270m-Q4_K_M.gguf");
    assert_eq!(std::fs::read(&done).unwrap().len(), bytes.len());
    assert!(!part.exists());
    // `model list` shows it, its quantization and where it fits.
    let out = run(&h, &["model", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &listed["models"][0];
    assert_eq!(m["name"], "gemma-3-270m");
    assert_eq!(m["quant"], "Q4_K_M");
    assert_eq!(m["bytes"].as_u64().unwrap() as usize, bytes.len());
    assert!(!m["fits_on"].as_array().unwrap().is_empty(), "{m}");
    // A download whose bytes do not match the hub's SHA-256 is refused and
    // removed.
    std::fs::remove_file(&done).unwrap();
    let bad = hub(path, bytes.clone(), "0".repeat(64), false);
    let out = run(&bad, &["model", "pull", "gemma-3-270m"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains(&sha), "{err}");
    assert!(!done.exists() && !part.exists());
}

#[test]
fn an_idle_server_exits_on_its_own() {
    let _one = one_engine();
    let mut server = serve(&gemma(), &["--idle-exit", "2"]).unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the idle server did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert!(started.elapsed() >= Duration::from_secs(2));
}
