//! End-to-end: the audit log through the real CLI and daemon: a session's
//! trail, the compliance API's access rules and pages, tampering with the
//! SQLite file found by `verify`, checkpoints, export, retention, kill -9.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use flotilla_protocol::audit::AuditRecord;
use flotilla_testkit::{Script, Step};
use serde_json::{json, Value};

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

/// `flotilla audit --all --json ARGS...` as records.
fn records(env: &Env, extra: &[&str]) -> Vec<AuditRecord> {
    let mut args = vec!["audit", "--all", "--json"];
    args.extend_from_slice(extra);
    ok(env, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn actions(recs: &[AuditRecord]) -> Vec<(String, String, String)> {
    recs.iter()
        .map(|r| (r.kind.to_string(), r.action.clone(), r.outcome.clone()))
        .collect()
}

fn stop_daemon(env: &Env) {
    ok(env, &["daemon", "stop"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.socket().exists() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sql(env: &Env, statement: &str) -> usize {
    rusqlite::Connection::open(env.database())
        .unwrap()
        .execute(statement, [])
        .unwrap()
}

/// A session that runs one shell command and finishes.
fn env_with_session() -> (Env, String) {
    let env = Env::new(Script::single(vec![
        Step::tool("shell", json!({"command": "echo audited > out.txt"})),
        Step::finish("done"),
    ]));
    let id = env.start("write a file");
    assert_eq!(env.wait_state(&id, 60), "completed");
    (env, id)
}

#[test]
fn a_session_leaves_a_verifiable_trail() {
    let (env, id) = env_with_session();
    let trail = records(&env, &["--session", &id]);
    let got = actions(&trail);
    let want = [
        ("session", "session.start", "ok"),
        ("policy", "shell", "allow"),
        ("tool", "shell", "ok"),
        ("session", "session.completed", "completed"),
    ];
    for w in want {
        assert!(
            got.contains(&(w.0.into(), w.1.into(), w.2.into())),
            "{w:?} missing from {got:?}"
        );
    }
    let tool = trail.iter().find(|r| r.kind.to_string() == "tool").unwrap();
    assert_eq!(tool.target.as_deref(), Some("echo audited > out.txt"));
    let me = ok(&env, &["whoami", "--json"]);
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(tool.principal.as_deref(), me["name"].as_str());
    let policy = trail
        .iter()
        .find(|r| r.kind.to_string() == "policy")
        .unwrap();
    let detail: Value = serde_json::from_str(policy.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["layer"], "mode", "{detail}");
    // Each record hashes to what it says, and the sandbox was recorded.
    assert!(trail.iter().all(|r| r.computed_hash() == r.hash));
    assert!(got.iter().any(|(k, _, _)| k == "sandbox"), "{got:?}");

    // The daemon chain has the start and the owner's authentication.
    let daemon = records(&env, &["--kind", "admin,auth"]);
    let d = actions(&daemon);
    assert!(
        d.contains(&("admin".into(), "daemon.start".into(), "ok".into())),
        "{d:?}"
    );
    assert!(
        d.contains(&("auth".into(), "auth.peer".into(), "success".into())),
        "{d:?}"
    );

    // The table, and verify.
    let table = ok(&env, &["audit", "--kind", "tool"]);
    assert!(
        table.contains("echo audited > out.txt") && table.contains("TIME (UTC)"),
        "{table}"
    );
    let v = env.run(&["audit", "verify"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    assert!(stdout(&v).contains("verified"), "{}", stdout(&v));
    let v = ok(&env, &["audit", "verify", "--session", &id, "--json"]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["sessions"].clone()),
        (json!(true), json!(1))
    );

    // Bad input is refused with the fix.
    let out = env.run(&["audit", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
}

#[test]
fn tampering_with_the_file_is_named_and_a_checkpoint_catches_truncation() {
    let (env, id) = env_with_session();
    let cp_file = env.home.path().join("offsite.jsonl");
    let cp_arg = cp_file.to_string_lossy().into_owned();
    ok(&env, &["audit", "checkpoint", "--out", &cp_arg]);
    stop_daemon(&env);
    let db = env.database().to_string_lossy().into_owned();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--db", &db];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let clean = verify(&["--checkpoint", &cp_arg]);
    assert!(clean.status.success(), "{}", stdout(&clean));

    // A changed record: exit 1, the record named.
    assert_eq!(
        sql(
            &env,
            "UPDATE audit SET outcome = 'deny' WHERE kind = 'tool' AND action = 'shell'"
        ),
        1
    );
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("BROKEN") && text.contains("chain sessions"),
        "{text}"
    );
    assert!(text.contains("was changed"), "{text}");
    sql(
        &env,
        "UPDATE audit SET outcome = 'ok' WHERE kind = 'tool' AND action = 'shell'",
    );
    assert!(verify(&[]).status.success());

    // A changed event: its session's chain and the record's link.
    sql(
        &env,
        &format!(
            "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), 'audited', 'altered') AS BLOB)
             WHERE session_id = '{id}' AND kind = 'tool_proposed'"
        ),
    );
    let out = verify(&["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let places: Vec<&str> = report["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["place"].as_str().unwrap())
        .collect();
    assert!(
        places.contains(&format!("session {id} events").as_str()),
        "{report}"
    );
    sql(
        &env,
        &format!(
            "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), 'altered', 'audited') AS BLOB)
             WHERE session_id = '{id}' AND kind = 'tool_proposed'"
        ),
    );
    assert!(verify(&[]).status.success());

    // A truncated tail: the chains alone still verify; the checkpoint does not.
    sql(&env, "DELETE FROM audit WHERE chain = 'daemon' AND seq > 1");
    assert!(verify(&[]).status.success());
    let out = verify(&["--checkpoint", &cp_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("truncated"), "{}", stdout(&out));

    // The daemon itself reports the same through the API.
    let out = env.run(&["audit", "verify", "--checkpoint", &cp_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

#[test]
fn kill_9_mid_session_leaves_no_audited_event_without_its_record() {
    let env = Env::new(Script::single(vec![
        Step::tool("shell", json!({"command": "exec sleep 311.5"})),
        Step::finish("recovered"),
    ]));
    let id = env.start("run a long command");
    env.wait_event(&id, "tool_started", 30);
    let daemon = env.daemon_pid().unwrap();
    kill9(daemon);
    assert!(!alive(daemon));
    // Any client command brings the daemon back; the session resumes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = env.session(&id)["state"].as_str().unwrap().to_string();
        if state == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "state {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = ok(&env, &["audit", "verify", "--json"]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let trail = actions(&records(&env, &["--session", &id]));
    for w in [
        ("tool", "shell", "interrupted"),
        ("session", "session.resume", "ok"),
        ("session", "session.completed", "completed"),
    ] {
        assert!(
            trail.contains(&(w.0.into(), w.1.into(), w.2.into())),
            "{w:?} missing from {trail:?}"
        );
    }
    // Two daemon starts, and exactly one record per audited event.
    let starts = records(&env, &["--action", "daemon.start"]);
    assert_eq!(starts.len(), 2);
    let mut seqs: Vec<u64> = records(&env, &["--session", &id])
        .iter()
        .map(|r| r.event_seq.unwrap())
        .collect();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n);
}

#[test]
fn compliance_api_access_pages_and_admin_records() {
    let (env, _id) = env_with_session();
    let (_daemon, addr) = {
        stop_daemon(&env);
        serve_tcp(&env)
    };
    let carol = ok(&env, &["principal", "add", "carol", "--token", "--json"]);
    let carol: Value = serde_json::from_str(&carol).unwrap();
    let carol = carol["token"].as_str().unwrap().to_string();
    let aud = ok(
        &env,
        &[
            "principal",
            "add",
            "ann",
            "--role",
            "auditor",
            "--token",
            "--json",
        ],
    );
    let aud: Value = serde_json::from_str(&aud).unwrap();
    let aud = aud["token"].as_str().unwrap().to_string();

    // A failed authentication, and a refused admin act by carol.
    assert_eq!(
        tcp(&addr, "GET", "/v1/sessions", None, Some("flt_wrong")).0,
        401
    );
    let (status, _) = tcp(
        &addr,
        "POST",
        "/v1/principals",
        Some(&json!({"name": "mallory", "roles": ["admin"]})),
        Some(&carol),
    );
    assert_eq!(status, 403);

    // The auditor sees everything.
    let (status, page) = tcp(
        &addr,
        "GET",
        "/v1/compliance/activities?limit=1000",
        None,
        Some(&aud),
    );
    assert_eq!(status, 200, "{page}");
    let all: Vec<AuditRecord> = serde_json::from_value(page["activities"].clone()).unwrap();
    let a = actions(&all);
    assert!(
        a.contains(&("admin".into(), "principal.add".into(), "ok".into())),
        "{a:?}"
    );
    assert!(
        a.contains(&("admin".into(), "principal.add".into(), "refused".into())),
        "{a:?}"
    );
    assert!(
        a.contains(&("auth".into(), "auth.token".into(), "failure".into())),
        "{a:?}"
    );
    assert!(
        a.contains(&("tool".into(), "shell".into(), "ok".into())),
        "{a:?}"
    );
    let refused = all
        .iter()
        .find(|r| r.action == "principal.add" && r.outcome == "refused")
        .unwrap();
    assert_eq!(
        (refused.principal.as_deref(), refused.target.as_deref()),
        (Some("carol"), Some("mallory"))
    );

    // Pages of 3 cover the same records, each once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = tcp(
            &addr,
            "GET",
            &format!("/v1/compliance/activities?limit=3{cursor}"),
            None,
            Some(&aud),
        );
        assert_eq!(status, 200);
        for r in page["activities"].as_array().unwrap() {
            seen.push(r["id"].as_u64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let ids: Vec<u64> = all.iter().map(|r| r.id).collect();
    assert_eq!(&seen[..ids.len()], &ids[..]);

    // Carol, a plain user, sees only her own acts: no tool calls of the
    // owner's session.
    let (status, page) = tcp(
        &addr,
        "GET",
        "/v1/compliance/activities?limit=1000",
        None,
        Some(&carol),
    );
    assert_eq!(status, 200);
    let mine: Vec<AuditRecord> = serde_json::from_value(page["activities"].clone()).unwrap();
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|r| r.principal.as_deref() == Some("carol")),
        "{mine:?}"
    );
    // ... and may not verify, checkpoint or prune.
    for (path, body) in [
        ("/v1/compliance/verify", Some(json!({}))),
        ("/v1/compliance/checkpoint", None),
        ("/v1/compliance/prune", Some(json!({"before": "1d"}))),
    ] {
        let (status, b) = tcp(&addr, "POST", path, body.as_ref(), Some(&carol));
        assert_eq!(status, 403, "{path}: {b}");
    }
    // The auditor may verify and checkpoint, not prune.
    let (status, v) = tcp(
        &addr,
        "POST",
        "/v1/compliance/verify",
        Some(&json!({})),
        Some(&aud),
    );
    assert_eq!((status, v["ok"].clone()), (200, json!(true)), "{v}");
    let (status, _) = tcp(&addr, "POST", "/v1/compliance/checkpoint", None, Some(&aud));
    assert_eq!(status, 200);
    let (status, _) = tcp(
        &addr,
        "POST",
        "/v1/compliance/prune",
        Some(&json!({"before": "1d"})),
        Some(&aud),
    );
    assert_eq!(status, 403);
    let (status, b) = tcp(
        &addr,
        "GET",
        "/v1/compliance/activities?kind=nope",
        None,
        Some(&aud),
    );
    assert_eq!(status, 400, "{b}");
}

#[test]
fn export_streams_re_verifiable_records_and_retention_keeps_the_chain() {
    let (env, _id) = env_with_session();
    let all = records(&env, &[]);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("audit.jsonl");
    let csv = dir.path().join("audit.csv");
    let j = jsonl.to_string_lossy().into_owned();
    let c = csv.to_string_lossy().into_owned();
    ok(&env, &["audit", "export", "--format", "jsonl", "--out", &j]);
    ok(&env, &["audit", "export", "--format", "csv", "--out", &c]);
    let exported: Vec<AuditRecord> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Everything up to the export (the export's own authentication may
    // add a record after `all` was read).
    assert!(exported.len() >= all.len());
    assert_eq!(&exported[..all.len()], &all[..]);
    // Anyone can re-check an export: hashes and links.
    for w in exported.windows(2) {
        assert_eq!(w[1].computed_hash(), w[1].hash);
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("id,chain,seq,time,ts_ms,"));
    assert!(lines.count() >= all.len());
    assert!(!dir.path().join("audit.csv.partial").exists());

    // Cut everything older than a moment from now: only the cut remains,
    // and the chains still verify from it.
    let future = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1;
    std::thread::sleep(Duration::from_millis(5));
    let out = ok(&env, &["audit", "prune", "--before", &future.to_string()]);
    assert!(out.contains("cut the audit log"), "{out}");
    let left = records(&env, &[]);
    assert!(left.len() < exported.len());
    assert_eq!(left[0].action, "audit.prune");
    let v = env.run(&["audit", "verify"]);
    assert!(v.status.success(), "{}", stdout(&v));
}

#[test]
fn a_changed_config_file_is_recorded_at_the_next_start() {
    let (env, _id) = env_with_session();
    stop_daemon(&env);
    let cfg = env.home.path().join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[audit]\nretention = \"400d\"\n");
    std::fs::write(&cfg, text).unwrap();
    let changed = records(&env, &["--action", "config.changed"]);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0]
        .target
        .as_deref()
        .unwrap()
        .ends_with("config.toml"));
    // A bad [audit] value stops the daemon from starting, with the fix.
    stop_daemon(&env);
    std::fs::write(&cfg, "[audit]\nretention = \"forever\"\n").unwrap();
    let out = env.run(&["serve"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("[audit] retention"),
        "{}",
        stderr(&out)
    );
}
