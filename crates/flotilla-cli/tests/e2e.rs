//! End-to-end: the real CLI, the real daemon, real SQLite, the scripted
//! model server on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_testkit::{Failure, Script, ScriptedCall, Step};
use serde_json::{json, Value};

#[test]
fn session_reads_edits_runs_and_finishes() {
    let env = Env::new(Script::single(vec![
        Step::tool("read_file", json!({"path": "notes.txt"})),
        Step::tool(
            "edit_file",
            json!({"path": "notes.txt", "old_string": "world", "new_string": "flotilla"}),
        ),
        Step::tool(
            "shell",
            json!({"command": "cat notes.txt && echo on-stderr >&2 && exit 3"}),
        ),
        Step::finish("edited notes.txt"),
    ]));
    std::fs::write(env.ws().join("notes.txt"), "hello world\n").unwrap();
    let out = env.run(&[
        "run",
        "-w",
        &env.ws_str(),
        "-m",
        "openai:mock",
        "edit the notes",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(printed.contains("answer    edited notes.txt"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(env.ws().join("notes.txt")).unwrap(),
        "hello flotilla\n"
    );

    // What the agent sent back to the model, turn by turn.
    let reqs = env.mock.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0]["messages"][1]["content"], "edit the notes");
    assert!(reqs[0]["tools"].as_array().unwrap().len() >= 7);
    assert!(tool_messages(&reqs[1])[0].contains("hello world"));
    assert!(tool_messages(&reqs[2])[1].contains("replaced 1 occurrence"));
    let shell = &tool_messages(&reqs[3])[2];
    assert!(
        shell.contains("hello flotilla") && shell.contains("on-stderr") && shell.contains('3'),
        "{shell}"
    );

    let id = env.session_id_from_ps();
    let events = env.events(&id);
    assert_gapless(&events);
    let k = kinds(&events);
    assert_eq!(k.first().unwrap(), "session_created");
    assert_eq!(k.last().unwrap(), "state_changed");
    assert_eq!(k.iter().filter(|x| *x == "tool_started").count(), 4);
    assert_eq!(k.iter().filter(|x| *x == "tool_finished").count(), 4);
    assert_eq!(k.iter().filter(|x| *x == "model_responded").count(), 4);
    // Every started tool was durable before its result.
    for e in events
        .iter()
        .filter(|e| e["event"]["type"] == "tool_finished")
    {
        let id = &e["event"]["call_id"];
        let started = events
            .iter()
            .find(|s| s["event"]["type"] == "tool_started" && &s["event"]["call_id"] == id)
            .unwrap();
        assert!(started["seq"].as_u64() < e["seq"].as_u64());
    }
    // Each event points back at the one before.
    for w in events.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    let info = env.session(&id);
    assert_eq!(info["state"], "completed");
    assert_eq!(info["turns"], 4);
    assert!(info["prompt_tokens"].as_u64().unwrap() > 0);
}

impl Env {
    fn session_id_from_ps(&self) -> String {
        let out = self.run(&["ps", "--json"]);
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        all[0]["id"].as_str().unwrap().to_string()
    }
}

#[test]
fn malformed_model_output_is_reported_back_not_crashed() {
    let env = Env::new(Script::single(vec![
        Step::tool_raw("read_file", "{\"path\": \"a.txt\""),
        Step::tool("frobnicate", json!({})),
        Step::tools(vec![
            ScriptedCall::new(
                "edit_file",
                json!({"path": "a.txt", "old_string": "zzz", "new_string": "y"}),
            ),
            ScriptedCall::new("read_file", json!({"path": "../../etc/passwd"})),
        ]),
        Step::finish("done despite errors"),
    ]));
    std::fs::write(env.ws().join("a.txt"), "x x\n").unwrap();
    let out = env.run(&[
        "run",
        "-w",
        &env.ws_str(),
        "-m",
        "openai:mock",
        "try things",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = env.mock.requests();
    assert_eq!(reqs.len(), 4);
    let t = tool_messages(&reqs[3]);
    assert!(t[0].contains("not valid JSON"), "{}", t[0]);
    assert!(
        t[1].contains("unknown tool") && t[1].contains("read_file"),
        "{}",
        t[1]
    );
    assert!(t[2].contains("not found"), "{}", t[2]);
    assert!(t[3].contains("escapes the workspace"), "{}", t[3]);
}

#[test]
fn model_server_errors_are_retried_then_the_session_recovers() {
    let env = Env::new(Script::single(vec![Step::text("all good").failing_first(
        vec![
            Failure::rate_limited(1),
            Failure::status(503),
            Failure::Reset,
            Failure::Truncate,
        ],
    )]));
    let started = Instant::now();
    let out = env.run(&[
        "run",
        "--json",
        "-w",
        &env.ws_str(),
        "-m",
        "openai:mock",
        "say hi",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Retry-After: 1 was honoured.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_gapless(&events);
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["type"] == "model_failed")
        .collect();
    assert_eq!(failures.len(), 4, "{events:?}");
    assert!(failures[0]["event"]["error"]
        .as_str()
        .unwrap()
        .contains("429"));
    assert!(failures[0]["event"]["retry_in_ms"].as_u64().unwrap() >= 1000);
    assert!(failures[3]["event"]["error"]
        .as_str()
        .unwrap()
        .contains("ended early"));
    assert!(events
        .iter()
        .any(|e| e["event"]["type"] == "final_answer" && e["event"]["text"] == "all good"));
    assert_eq!(env.mock.request_count(), 5);
}

#[test]
fn a_model_that_keeps_failing_fails_the_session_with_the_reason() {
    let env = Env::new(Script::single(vec![Step::status(400, "bad model name")]));
    let out = env.run(&["run", "-w", &env.ws_str(), "-m", "openai:mock", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("failed") && err.contains("400"), "{err}");
    assert_eq!(env.mock.request_count(), 1, "a 400 is not retried");
}

#[test]
fn kill_9_during_a_tool_then_restart_completes_with_every_event_once() {
    let env = Env::new(Script::single(vec![
        Step::tool(
            "shell",
            json!({"command": "echo $$ > pid.txt; exec sleep 300.271828"}),
        ),
        Step::finish("recovered"),
    ]));
    let id = env.start("run a long command");
    let before = env.wait_event(&id, "tool_started", 30);
    // Wait for the command itself to be running. The pid it wrote is its pid
    // inside the sandbox's pid namespace; on the host, find it by its
    // unique command line.
    let pid_file = env.ws().join("pid.txt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let host_pids = loop {
        let pids = host_pids_with_arg("300.271828");
        if !pids.is_empty() {
            break pids;
        }
        assert!(
            Instant::now() < deadline,
            "the command is not visible on the host"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let daemon = env.daemon_pid().unwrap();
    kill9(daemon);
    assert!(!alive(daemon));
    // The host: the tool's process died with the daemon, and the socket file is stale.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_pids_with_arg("300.271828").is_empty() {
        assert!(
            Instant::now() < deadline,
            "tool process {host_pids:?} outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        env.socket().exists(),
        "a crashed daemon leaves its socket behind"
    );

    // Any client command brings the daemon back; attach shows the whole history.
    let out = env.run_for(&["attach", "--json", &id], 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_gapless(&events);
    // Nothing committed before the kill was lost or rewritten.
    for (a, b) in before.iter().zip(&events) {
        assert_eq!(a, b);
    }
    let k = kinds(&events);
    let count = |kind: &str| k.iter().filter(|x| *x == kind).count();
    assert_eq!(count("session_created"), 1);
    assert_eq!(
        count("tool_started"),
        2,
        "the shell once, finish once: {k:?}"
    );
    assert_eq!(count("tool_interrupted"), 1);
    assert_eq!(count("session_resumed"), 1);
    let shell_finished = events
        .iter()
        .filter(|e| e["event"]["type"] == "tool_finished" && e["event"]["call_id"] == "call_0_0")
        .count();
    assert_eq!(
        shell_finished, 0,
        "the interrupted shell call must not be re-run"
    );
    assert!(events
        .iter()
        .any(|e| e["event"]["type"] == "final_answer" && e["event"]["text"] == "recovered"));
    // The model was told.
    let last = env.mock.requests().last().unwrap().clone();
    assert!(tool_messages(&last)[0].contains("interrupted"), "{last}");
    assert_eq!(env.session(&id)["state"], "completed");
}

#[test]
fn concurrent_sessions_all_finish_with_gapless_logs() {
    let mut script = Script::new();
    let n = 8;
    for i in 0..n {
        script = script.with(
            format!("s{i}"),
            vec![
                Step::tool(
                    "write_file",
                    json!({"path": format!("out{i}.txt"), "content": format!("{i}")}),
                ),
                Step::tool("shell", json!({"command": format!("cat out{i}.txt")})),
                Step::finish(format!("done {i}")),
            ],
        );
    }
    let env = Env::new(script);
    let ids: Vec<String> = (0..n)
        .map(|i| env.start(&format!("task [script:s{i}]")))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(env.wait_state(id, 60), "completed");
        let events = env.events(id);
        assert_gapless(&events);
        assert!(events
            .iter()
            .any(|e| e["event"]["text"] == format!("done {i}")));
        assert_eq!(
            std::fs::read_to_string(env.ws().join(format!("out{i}.txt"))).unwrap(),
            i.to_string()
        );
    }
}

#[test]
fn cancel_stops_a_session_waiting_on_the_model() {
    let env = Env::new(Script::single(vec![Step::hang()]));
    let id = env.start("wait forever");
    env.wait_event(&id, "model_requested", 30);
    let started = Instant::now();
    let out = env.run(&["cancel", "--json", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["state"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(10));
    let k = kinds(&env.events(&id));
    assert!(k.contains(&"cancel_requested".to_string()));
    assert_eq!(k.last().unwrap(), "state_changed");
    // Attaching to an ended session prints its history and exits with its state.
    let out = env.run(&["attach", &id]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).contains("cancel    requested"));
}

#[test]
fn one_daemon_per_home_and_stop_is_clean() {
    let env = Env::new(Script::single(vec![Step::text("hi")]));
    let out = env.run(&["ps"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no sessions"));
    let second = env.run_for(&["serve"], 20);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already running"),
        "{}",
        stderr(&second)
    );
    let out = env.run(&["daemon", "stop", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.socket().exists(), "a clean stop removes the socket");
    let out = env.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("not running"));
}

#[test]
fn foreign_database_is_refused_and_left_untouched() {
    let env = Env::new(Script::single(vec![Step::text("hi")]));
    std::fs::create_dir_all(env.database().parent().unwrap()).unwrap();
    let junk = b"SQLite format 3\0 but not really; this file belongs to someone else".repeat(20);
    std::fs::write(env.database(), &junk).unwrap();
    let out = env.run_for(&["ps"], 30);
    assert!(!out.status.success());
    let log = std::fs::read_to_string(env.home.path().join("data/daemon.log")).unwrap_or_default();
    let said = stderr(&out) + &log;
    assert!(said.contains("not a flotilla database"), "{said}");
    assert_eq!(std::fs::read(env.database()).unwrap(), junk);
}

#[test]
fn bad_cli_input_gets_clear_errors() {
    let env = Env::new(Script::single(vec![Step::text("hi")]));
    let out = env.run(&[
        "run",
        "-w",
        "/definitely/not/here",
        "-m",
        "openai:mock",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/definitely/not/here"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["run", "-w", &env.ws_str(), "-m", "gpt-4o", "x"]);
    assert!(stderr(&out).contains("PROVIDER:MODEL"), "{}", stderr(&out));
    let out = env.run(&["run", "-w", &env.ws_str(), "x"]);
    assert!(stderr(&out).contains("no model given"), "{}", stderr(&out));
    let out = env.run(&["logs", "NOT-AN-ID"]);
    assert!(
        stderr(&out).contains("invalid session id"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["logs", "szzzzzzzzzzz"]);
    assert!(
        stderr(&out).contains("no session szzzzzzzzzzz"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        env.home.path().join("config.toml"),
        "modle = \"openai:x\"\n",
    )
    .unwrap();
    env.run(&["daemon", "stop"]);
    let out = env.run_for(&["ps"], 30);
    let log = std::fs::read_to_string(env.home.path().join("data/daemon.log")).unwrap_or_default();
    assert!(!out.status.success());
    assert!(
        (stderr(&out) + &log).contains("unknown field `modle`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ps_and_attach_answer_while_sessions_saturate_the_cpu() {
    let mut script = Script::new();
    for i in 0..4 {
        script = script.with(
            format!("b{i}"),
            vec![
                Step::tool("shell", json!({"command": "end=$(($(date +%s)+20)); while [ $(date +%s) -lt $end ]; do :; done", "timeout_secs": 25})),
                Step::finish("burned"),
            ],
        );
    }
    let env = Env::new(script);
    let ids: Vec<String> = (0..4)
        .map(|i| env.start(&format!("burn [script:b{i}]")))
        .collect();
    for id in &ids {
        env.wait_event(id, "tool_started", 30);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let out = env.run(&["ps", "--json"]);
        assert!(out.status.success());
        let out = env.run(&["logs", &ids[0]]);
        assert!(out.status.success());
        worst = worst.max(t.elapsed());
    }
    // Generous: the point is "answers", not "fast"; an unresponsive daemon takes the full 20 s.
    assert!(
        worst < Duration::from_secs(3),
        "ps+logs took {worst:?} under CPU load"
    );
    for id in &ids {
        env.run(&["cancel", id]);
    }
}

/// One raw HTTP/1.1 exchange; returns (status, body).
fn http(
    stream: &mut dyn ReadWrite,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: flotilla\r\nConnection: close\r\n");
    if let Some(token) = auth {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status: u16 = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

fn unix_http(env: &Env, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = std::os::unix::net::UnixStream::connect(env.socket()).unwrap();
    let (status, body) = http(&mut s, method, path, body, None);
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {body}"));
    (status, json)
}

#[test]
fn api_rejects_malformed_requests_with_json_errors() {
    let env = Env::new(Script::single(vec![Step::text("hi")]));
    assert!(env.run(&["ps"]).status.success());
    let ws = env.ws_str();
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("POST", "/v1/sessions".into(), Some("{not json".into()), 400, "invalid JSON"),
        ("POST", "/v1/sessions".into(), Some(format!("{{\"workspace\": \"{ws}\"}}")), 422, "task"),
        ("POST", "/v1/sessions".into(), Some(format!("{{\"task\": \"t\", \"workspace\": \"{ws}\", \"modle\": 1}}")), 422, "unknown field"),
        ("POST", "/v1/sessions".into(), Some("{\"task\": \"t\", \"workspace\": \"relative/dir\", \"model\": \"openai:m\"}".into()), 400, "not an absolute path"),
        ("POST", "/v1/sessions".into(), Some(format!("{{\"task\": \" \", \"workspace\": \"{ws}\", \"model\": \"openai:m\"}}")), 400, "task is empty"),
        ("POST", "/v1/sessions".into(), Some(format!("{{\"task\": \"t\", \"workspace\": \"{ws}\", \"model\": \"openai:m\", \"max_turns\": 0}}")), 400, "max_turns"),
        ("GET", "/v1/sessions/BAD!".into(), None, 400, "invalid session id"),
        ("GET", "/v1/sessions/szzzzzzzzzzz".into(), None, 404, "no session"),
        ("GET", "/v1/sessions/szzzzzzzzzzz/events?after=abc".into(), None, 400, "invalid query"),
        ("GET", "/v1/sessions?state=bogus".into(), None, 400, "unknown state"),
        ("GET", "/v1/nope".into(), None, 404, "no such route"),
        ("DELETE", "/v1/sessions".into(), None, 405, "method"),
    ];
    for (method, path, body, want, needle) in cases {
        let (status, json) = unix_http(&env, method, &path, body.as_deref());
        assert_eq!(status, want, "{method} {path}: {json}");
        let msg = json["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
        assert!(json["error"]["code"].is_string());
    }
    // Nothing was created by the bad requests.
    let (_, list) = unix_http(&env, "GET", "/v1/sessions", None);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 0);
}

#[test]
fn tcp_needs_the_bearer_token() {
    let env = Env::new(Script::single(vec![Step::text("hi")]));
    let mut daemon = env.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    daemon
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = daemon.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let out = env.run(&["daemon", "status", "--json"]);
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            if let Some(a) = v["daemon"]["tcp"].as_str() {
                break a.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "daemon with --listen did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = std::fs::read_to_string(env.home.path().join("run/token")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(env.home.path().join("run/token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the token file must be private");
    let tcp = |auth: Option<&str>| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        http(&mut s, "GET", "/v1/sessions", None, auth)
    };
    let (status, body) = tcp(None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"));
    assert_eq!(tcp(Some("wrong-token")).0, 401);
    let (status, body) = tcp(Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"sessions\""));
    let _ = child.kill();
    let _ = child.wait();
}

/// The event of a given kind, first one.
fn first_of<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"]["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {events:#?}"))
}

#[test]
fn a_sessions_commands_run_confined_in_its_sandbox() {
    let outside = tempfile::Builder::new()
        .prefix("flotilla-e2e-outside-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let target = outside.path().join("escaped.txt");
    let env = Env::new(Script::single(vec![
        Step::tool(
            "shell",
            json!({"command": format!(
                "sleep 307.5 & echo $! > /tmp/bg.pid; echo inside > made.txt; echo x > {} || echo write-refused; cat /proc/1/cmdline | tr '\\0' ' '; echo; env | grep -c OPENAI || true",
                target.display()
            )}),
        ),
        Step::tool(
            "shell",
            json!({"command": "kill -0 $(cat /tmp/bg.pid) && echo bg-alive; echo x > /etc/flotilla-pwned"}),
        ),
        Step::finish("done"),
    ]));
    let id = env.start("try to escape");
    assert_eq!(env.wait_state(&id, 60), "completed");
    let events = env.events(&id);
    let ready = first_of(&events, "sandbox_ready");
    assert_eq!(ready["event"]["confined"], true, "{ready}");
    assert!(
        ready["event"]["degraded"].as_array().unwrap().is_empty(),
        "{ready}"
    );
    assert!(
        ready["event"]["summary"]
            .as_str()
            .unwrap()
            .contains("seccomp"),
        "{ready}"
    );
    // The sandbox is built at the first command: its event comes between
    // that command's start and its result.
    let pos = |k: &str| events.iter().position(|e| e["event"]["type"] == k).unwrap();
    assert!(pos("tool_started") < pos("sandbox_ready"));
    assert!(pos("sandbox_ready") < pos("tool_finished"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"]["type"] == "sandbox_ready")
            .count(),
        1,
        "one sandbox for the whole session"
    );
    let reqs = env.mock.requests();
    let first = &tool_messages(&reqs[1])[0];
    assert!(first.contains("write-refused"), "{first}");
    // pid 1 is the sandbox's init, not the host's; no OPENAI_* variable leaked.
    assert!(first.contains("__sandbox-init"), "{first}");
    assert!(first.lines().any(|l| l.trim() == "0"), "{first}");
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_to_string(env.ws().join("made.txt")).unwrap(),
        "inside\n"
    );
    // The background job lived from one command to the next, and died with
    // the session.
    let second = &tool_messages(&reqs[2])[1];
    assert!(second.contains("bg-alive"), "{second}");
    // The refusal is explained, with how to allow it.
    assert!(
        second.contains("[sandbox: writes outside the workspace are refused")
            && second.contains("[sandbox] in config.toml"),
        "{second}"
    );
    assert!(!std::path::Path::new("/etc/flotilla-pwned").exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_pids_with_arg("307.5").is_empty() {
        assert!(
            Instant::now() < deadline,
            "a background job outlived its session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_degraded_sandbox_is_recorded_and_required_refuses_it() {
    let env = Env::new(Script::single(vec![
        Step::tool("shell", json!({"command": "echo ran > ran.txt"})),
        Step::finish("done"),
    ]));
    let cfg = env.home.path().join("config.toml");
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{base}[sandbox]\nnamespaces = false\n")).unwrap();
    let id = env.start("degraded");
    assert_eq!(env.wait_state(&id, 60), "completed");
    let events = env.events(&id);
    let ready = first_of(&events, "sandbox_ready");
    assert_eq!(ready["event"]["confined"], false, "{ready}");
    assert!(
        ready["event"]["degraded"][0]
            .as_str()
            .unwrap()
            .contains("namespaces disabled"),
        "{ready}"
    );
    let shown = stdout(&env.run(&["logs", &id]));
    assert!(
        shown.contains("NOT fully confined") && shown.contains("DEGRADED"),
        "{shown}"
    );

    // Stop the daemon, require a full sandbox: the next session fails, with
    // the reason and what to do, before running any command.
    assert!(env.run(&["daemon", "stop"]).status.success());
    std::fs::write(
        &cfg,
        format!("{base}[sandbox]\nnamespaces = false\nrequired = true\n"),
    )
    .unwrap();
    std::fs::remove_file(env.ws().join("ran.txt")).unwrap();
    let id = env.start("required");
    assert_eq!(env.wait_state(&id, 60), "failed");
    let info = env.session(&id);
    let reason = info["reason"].as_str().unwrap_or_default().to_string();
    let events = env.events(&id);
    let failed = events
        .iter()
        .rev()
        .find(|e| e["event"]["type"] == "state_changed")
        .unwrap();
    let why = failed["event"]["reason"].as_str().unwrap();
    assert!(why.contains("sandbox.required = true"), "{why} {reason}");
    assert!(!env.ws().join("ran.txt").exists());
}

fn host_ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_sandbox_that_dies_is_rebuilt_for_the_next_command() {
    let env = Env::new(Script::single(vec![
        Step::tool("shell", json!({"command": "exec sleep 309.5"})),
        Step::tool("shell", json!({"command": "echo rebuilt"})),
        Step::finish("done"),
    ]));
    let id = env.start("survive a dead sandbox");
    let deadline = Instant::now() + Duration::from_secs(30);
    let sleeper = loop {
        if let Some(pid) = host_pids_with_arg("309.5").first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The command's parent is the sandbox's init; the init's, the helper.
    let init = host_ppid(sleeper);
    let helper = host_ppid(init);
    let cmdline = std::fs::read(format!("/proc/{helper}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("__sandbox-init"),
        "{helper} is not a sandbox helper"
    );
    kill9(helper);
    assert_eq!(env.wait_state(&id, 60), "completed");
    let events = env.events(&id);
    assert_gapless(&events);
    let ready = events
        .iter()
        .filter(|e| e["event"]["type"] == "sandbox_ready")
        .count();
    assert_eq!(ready, 2, "a new sandbox for the command after the death");
    let reqs = env.mock.requests();
    let first = &tool_messages(&reqs[1])[0];
    assert!(first.contains("SIGKILL"), "{first}");
    let second = &tool_messages(&reqs[2])[1];
    assert!(second.contains("rebuilt"), "{second}");
    assert!(host_pids_with_arg("309.5").is_empty());
}
