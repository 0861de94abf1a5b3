//! (h) `audit`: the audit log at a million records.
//!
//! A store is filled through the real write path (sessions of tool calls,
//! each call an audited policy decision and tool result, plus daemon-chain
//! authentication and admin records), then three figures are taken:
//!
//! - **query**: p99 of a page of 100 under each filter the compliance API
//!   offers (kind, session, principal, action, time window, what a normal
//!   principal may see, combinations, deep cursors), common and rare values
//!   alike. Baseline: the unfiltered first page.
//! - **verify**: records per second of a full `verify` (both audit chains,
//!   every record's link to its event, every session's event chain).
//!   Baseline: reading the same rows without checking anything.
//! - **export**: `flotilla audit export --format jsonl` of everything
//!   through a real daemon, with the CLI's resident memory sampled while it
//!   runs, against the same export of about 1% of the records: streaming
//!   means the two peaks stay close. Needs the `flotilla` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_protocol::audit::{AuditDraft, AuditKind, AuditQuery};
use flotilla_protocol::{
    EventKind, PolicyVerdict, SessionId, SessionLimits, SessionState, ToolCall,
};
use flotilla_store::{Durability, Store, StoreOptions, VerifyOptions};

use crate::daemon::{proc_status_number, Daemon};
use crate::report::{Figure, Goal, Summary, Target};

/// Principals owning sessions.
const PRINCIPALS: usize = 50;
/// Tool calls per append (one transaction).
const CALLS_PER_APPEND: usize = 25;
/// Timed repetitions of each query.
const REPS: usize = 200;
/// Page size of every timed query.
const PAGE: u32 = 100;
/// Full verifies timed (the median is the figure).
const VERIFY_RUNS: usize = 3;
/// The principal with one small session at the very end of the log.
const RARE: &str = "rare-principal";
/// An admin action that occurs ten times in the whole log.
const RARE_ACTION: &str = "principal.vet";

/// What to build.
pub struct AuditOptions {
    /// Audit records to aim for (the fill lands within a few of it).
    pub records: u64,
    /// The `flotilla` binary, for the export figure.
    pub binary: Option<PathBuf>,
}

fn created(principal: &str) -> EventKind {
    EventKind::SessionCreated {
        task: "benchmark session".into(),
        model: "openai:bench".into(),
        workspace: "/work/bench".into(),
        base_url: None,
        limits: SessionLimits::default(),
        principal: Some(principal.into()),
        permissions: None,
        role: Some("worker".into()),
        fallbacks: Vec::new(),
        machine: None,
        fleet: None,
    }
}

fn completed() -> EventKind {
    EventKind::StateChanged {
        state: SessionState::Completed,
        reason: None,
    }
}

/// One tool call: allowed calls make two records (decision, result),
/// denied ones one.
fn call(events: &mut Vec<EventKind>, id: u64, deny: bool) {
    let call_id = format!("call-{id}");
    events.push(EventKind::ToolProposed {
        call: ToolCall {
            id: call_id.clone(),
            name: "shell".into(),
            arguments: serde_json::json!({ "command": format!("cargo test -p crate{}", id % 97) })
                .to_string(),
        },
    });
    events.push(EventKind::PolicyDecided {
        call_id: call_id.clone(),
        decision: if deny {
            PolicyVerdict::Deny
        } else {
            PolicyVerdict::Allow
        },
        reason: "matched a rule".into(),
        rule: Some("Shell(cargo test *)".into()),
        layer: Some("user".into()),
    });
    if !deny {
        events.push(EventKind::ToolStarted {
            call_id: call_id.clone(),
        });
        events.push(EventKind::ToolFinished {
            call_id,
            output: "test result: ok. 12 passed; 0 failed".into(),
            is_error: false,
            duration_ms: 1200,
        });
    }
}

fn principal(i: usize) -> String {
    format!("user-{:02}", i % PRINCIPALS)
}

/// The filled log and what the queries pick from.
struct Filled {
    sessions: Vec<SessionId>,
    rare_session: SessionId,
    records: u64,
    events: u64,
    fill: Duration,
    first_ts: i64,
    last_ts: i64,
    max_id: u64,
}

async fn fill(store: &Store, target: u64) -> Result<Filled> {
    // Per session: 1 start record + ~1.9 records per call; plus 5% daemon records.
    let sessions_n = (target / 1000).clamp(10, 1000) as usize;
    let daemon_records = target / 20;
    let per_call = 1.9;
    let calls_per_session =
        (((target - daemon_records) as f64 / sessions_n as f64 - 1.0) / per_call).max(1.0) as u64;
    let rounds = calls_per_session.div_ceil(CALLS_PER_APPEND as u64);
    let daemon_per_round = daemon_records / rounds.max(1);
    let started = Instant::now();
    let mut sessions = Vec::with_capacity(sessions_n);
    for i in 0..sessions_n {
        let id = SessionId::generate();
        store.append(&id, vec![created(&principal(i))]).await?;
        sessions.push(id);
    }
    let mut next_call = 0u64;
    let mut vets = 0;
    for round in 0..rounds {
        let calls =
            CALLS_PER_APPEND.min((calls_per_session - round * CALLS_PER_APPEND as u64) as usize);
        for s in &sessions {
            let mut events = Vec::with_capacity(calls * 4);
            for _ in 0..calls {
                call(&mut events, next_call, next_call % 10 == 9);
                next_call += 1;
            }
            store.append(s, events).await?;
        }
        let mut drafts = Vec::with_capacity(daemon_per_round as usize);
        for j in 0..daemon_per_round {
            let who = principal(j as usize * 7 + round as usize);
            let draft = if vets < 10 && j == 0 && round % (rounds / 10).max(1) == 0 {
                vets += 1;
                AuditDraft::new(AuditKind::Admin, RARE_ACTION, "ok")
                    .by("admin")
                    .on(who)
            } else {
                AuditDraft::new(AuditKind::Auth, "auth.token", "ok")
                    .by(who)
                    .on("tcp 127.0.0.1")
            };
            drafts.push(draft);
        }
        if !drafts.is_empty() {
            store.append_audit(drafts).await?;
        }
    }
    // Every session ends (a daemon started on this log must not resume a
    // thousand sessions while the export runs).
    for s in &sessions {
        store.append(s, vec![completed()]).await?;
    }
    let rare_session = SessionId::generate();
    store.append(&rare_session, vec![created(RARE)]).await?;
    let mut events = Vec::new();
    for _ in 0..5 {
        call(&mut events, next_call, false);
        next_call += 1;
    }
    events.push(completed());
    store.append(&rare_session, events).await?;
    let fill = started.elapsed();

    let db = store.path().to_path_buf();
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let (records, first_ts, last_ts, max_id): (i64, i64, i64, i64) = conn.query_row(
        "SELECT count(*), min(ts_ms), max(ts_ms), max(id) FROM audit",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    Ok(Filled {
        sessions,
        rare_session,
        records: records as u64,
        events: events as u64,
        fill,
        first_ts,
        last_ts,
        max_id: max_id as u64,
    })
}

/// A tiny deterministic generator (xorshift), so runs pick the same values.
struct Pick(u64);

impl Pick {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn page() -> AuditQuery {
    AuditQuery {
        limit: PAGE,
        ..AuditQuery::default()
    }
}

/// Each filter: a name and how to build its query from a random pick.
type Make<'a> = Box<dyn Fn(&mut Pick) -> AuditQuery + 'a>;

fn filters(f: &Filled) -> Vec<(&'static str, Make<'_>)> {
    let span = (f.last_ts - f.first_ts).max(1) as u64;
    vec![
        (
            "kind=policy",
            Box::new(|_: &mut Pick| AuditQuery {
                kinds: vec![AuditKind::Policy],
                ..page()
            }),
        ),
        (
            "kind=admin (rare)",
            Box::new(|_: &mut Pick| AuditQuery {
                kinds: vec![AuditKind::Admin],
                ..page()
            }),
        ),
        (
            "session=random",
            Box::new(move |p: &mut Pick| AuditQuery {
                session: Some(f.sessions[p.next(f.sessions.len() as u64) as usize].to_string()),
                ..page()
            }),
        ),
        (
            "session=rare (last)",
            Box::new(move |_: &mut Pick| AuditQuery {
                session: Some(f.rare_session.to_string()),
                ..page()
            }),
        ),
        (
            "principal=random",
            Box::new(|p: &mut Pick| AuditQuery {
                principal: Some(principal(p.next(PRINCIPALS as u64) as usize)),
                ..page()
            }),
        ),
        (
            "principal=rare",
            Box::new(|_: &mut Pick| AuditQuery {
                principal: Some(RARE.into()),
                ..page()
            }),
        ),
        (
            "action=principal.vet (rare)",
            Box::new(|_: &mut Pick| AuditQuery {
                action: Some(RARE_ACTION.into()),
                ..page()
            }),
        ),
        (
            "since..until (1% window)",
            Box::new(move |p: &mut Pick| {
                let from = f.first_ts + p.next(span) as i64;
                AuditQuery {
                    since_ms: Some(from),
                    until_ms: Some(from + (span / 100).max(1) as i64),
                    ..page()
                }
            }),
        ),
        (
            "visible_to=random",
            Box::new(|p: &mut Pick| AuditQuery {
                visible_to: Some(principal(p.next(PRINCIPALS as u64) as usize)),
                ..page()
            }),
        ),
        (
            "visible_to=rare",
            Box::new(|_: &mut Pick| AuditQuery {
                visible_to: Some(RARE.into()),
                ..page()
            }),
        ),
        (
            "kind=tool+principal+since",
            Box::new(move |p: &mut Pick| AuditQuery {
                kinds: vec![AuditKind::Tool],
                principal: Some(principal(p.next(PRINCIPALS as u64) as usize)),
                since_ms: Some(f.first_ts + p.next(span) as i64),
                ..page()
            }),
        ),
        (
            "cursor=random",
            Box::new(move |p: &mut Pick| AuditQuery {
                cursor: Some(p.next(f.max_id)),
                ..page()
            }),
        ),
        (
            "visible_to=random, cursor=random",
            Box::new(move |p: &mut Pick| AuditQuery {
                visible_to: Some(principal(p.next(PRINCIPALS as u64) as usize)),
                cursor: Some(p.next(f.max_id)),
                ..page()
            }),
        ),
        (
            "kind=auth newest first",
            Box::new(|_: &mut Pick| AuditQuery {
                kinds: vec![AuditKind::Auth],
                descending: true,
                ..page()
            }),
        ),
    ]
}

async fn time_query(
    store: &Store,
    make: &dyn Fn(&mut Pick) -> AuditQuery,
    pick: &mut Pick,
) -> Result<(Summary, usize)> {
    let mut sample = Vec::with_capacity(REPS);
    let mut rows = 0;
    for _ in 0..REPS {
        let q = make(pick);
        let t = Instant::now();
        let page = store.audit_query(q).await?;
        sample.push(t.elapsed());
        rows += page.activities.len();
    }
    Ok((Summary::of(&sample), rows / REPS))
}

async fn query_figure(store: &Store, f: &Filled) -> Result<Figure> {
    let mut pick = Pick(0x9e37_79b9_7f4a_7c15);
    // Warm the page cache and the statement cache first.
    let unfiltered = |_: &mut Pick| page();
    time_query(store, &unfiltered, &mut pick).await?;
    let (base, _) = time_query(store, &unfiltered, &mut pick).await?;
    let mut worst = (0.0f64, "");
    let mut by_filter = serde_json::Map::new();
    for (name, make) in filters(f) {
        time_query(store, make.as_ref(), &mut pick).await?;
        let (s, rows) = time_query(store, make.as_ref(), &mut pick).await?;
        if s.p99_us > worst.0 {
            worst = (s.p99_us, name);
        }
        by_filter.insert(
            name.to_owned(),
            serde_json::json!({
                "p50_ms": s.p50_us / 1e3,
                "p99_ms": s.p99_us / 1e3,
                "ratio_p99": s.p99_us / base.p99_us,
                "rows_per_page": rows,
            }),
        );
    }
    let mut fig = Figure::new(
        "audit_query",
        format!(
            "(h) audit query, worst p99 of a page of {PAGE} among {} filters, {} records",
            by_filter.len(),
            f.records
        ),
        Target {
            goal: Goal::Below,
            value: 50.0,
            unit: "ms",
        },
        worst.0 / 1e3,
        "p99 of the unfiltered first page",
        base.p99_us / 1e3,
    );
    fig.detail("worst_filter", worst.1)
        .detail("records", f.records)
        .detail("events", f.events)
        .detail("sessions", f.sessions.len() as u64 + 1)
        .detail("fill_s", f.fill.as_secs_f64())
        .detail("reps_per_filter", REPS as u64)
        .detail("by_filter", serde_json::Value::Object(by_filter));
    Ok(fig)
}

/// Reads every audit row and every event row without checking anything:
/// the floor a verify cannot beat.
fn read_floor(db: &Path) -> Result<Duration> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let t = Instant::now();
    let mut bytes = 0usize;
    for sql in [
        "SELECT id, chain, seq, ts_ms, principal, session_id, agent, kind, action, target, outcome, reason, detail, event_seq, event_hash, prev_hash, hash FROM audit ORDER BY chain, seq",
        "SELECT seq, hash, body FROM events ORDER BY session_id, seq",
    ] {
        let mut stmt = conn.prepare(sql)?;
        let cols = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..cols {
                bytes += match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.len()
                    }
                    _ => 8,
                };
            }
        }
    }
    std::hint::black_box(bytes);
    Ok(t.elapsed())
}

async fn verify_figure(store: &Store, f: &Filled) -> Result<Figure> {
    let floor = {
        let db = store.path().to_path_buf();
        tokio::task::spawn_blocking(move || read_floor(&db)).await??
    };
    let mut times = Vec::with_capacity(VERIFY_RUNS);
    let mut report = None;
    for _ in 0..VERIFY_RUNS {
        let t = Instant::now();
        let r = store.audit_verify(VerifyOptions::default()).await?;
        times.push(t.elapsed());
        report = Some(r);
    }
    times.sort();
    let median = times[times.len() / 2];
    let rate = |d: Duration| f.records as f64 / d.as_secs_f64().max(1e-9);
    let mut fig = Figure::new(
        "audit_verify",
        format!(
            "(h) audit verify of {} records and {} events",
            f.records, f.events
        ),
        Target {
            goal: Goal::AtLeast,
            value: 200_000.0,
            unit: "records/s",
        },
        rate(median),
        "reading the same rows unchecked",
        rate(floor),
    );
    fig.detail(
        "verify_s_samples",
        serde_json::json!(times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()),
    )
    .detail(
        "events_per_s",
        f.events as f64 / median.as_secs_f64().max(1e-9),
    )
    .detail("read_floor_s", floor.as_secs_f64());
    if let Some(r) = report {
        fig.detail("links", r.links).detail("sessions", r.sessions);
        if !r.ok {
            fig.fail_because(format!(
                "verify found breaks in an untouched log: {:?}",
                r.broken
            ));
        }
        if r.events != f.events {
            fig.fail_because(format!("verify saw {} events of {}", r.events, f.events));
        }
    }
    Ok(fig)
}

/// Runs `flotilla audit export` and samples its resident memory; returns
/// (records written, wall time, peak RSS KiB).
fn export_once(
    binary: &Path,
    home: &Path,
    out: &Path,
    until: Option<i64>,
) -> Result<(u64, Duration, u64)> {
    let mut cmd = Command::new(binary);
    cmd.args(["audit", "export", "--format", "jsonl", "--out"])
        .arg(out)
        .env("FLOTILLA_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(u) = until {
        cmd.arg("--until").arg(u.to_string());
    }
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting flotilla audit export")?;
    let pid = child.id();
    let mut peak = 0u64;
    let status = loop {
        if let Ok(rss) = proc_status_number(pid, "VmRSS") {
            peak = peak.max(rss);
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = t.elapsed();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("flotilla audit export failed ({status}): {err}");
    }
    let text = std::fs::read(out)?;
    let lines = text.iter().filter(|b| **b == b'\n').count() as u64;
    Ok((lines, wall, peak))
}

async fn export_figure(binary: &Path, home: &Path, f: &Filled) -> Result<Figure> {
    let mut daemon = Daemon::spawn(binary, home, "http://127.0.0.1:9/v1")?;
    daemon.wait_healthy(Duration::from_secs(60)).await?;
    let rss_before = daemon.rss_kib()?;
    let until = f.first_ts + (f.last_ts - f.first_ts) / 100;
    let (small_n, small_wall, small_peak) = {
        let (b, h, o) = (
            binary.to_path_buf(),
            home.to_path_buf(),
            home.join("small.jsonl"),
        );
        tokio::task::spawn_blocking(move || export_once(&b, &h, &o, Some(until))).await??
    };
    let (n, wall, peak) = {
        let (b, h, o) = (
            binary.to_path_buf(),
            home.to_path_buf(),
            home.join("all.jsonl"),
        );
        tokio::task::spawn_blocking(move || export_once(&b, &h, &o, None)).await??
    };
    let rss_after = daemon.rss_kib()?;
    daemon.stop(Duration::from_secs(30)).await?;
    let mib = |k: u64| k as f64 / 1024.0;
    // Streaming: the full export may not need much more than the small one.
    let allowed = mib(small_peak) * 1.25 + 4.0;
    let mut fig = Figure::new(
        "audit_export",
        format!("(h) audit export of {n} records: CLI peak RSS"),
        Target {
            goal: Goal::Below,
            value: allowed,
            unit: "MiB",
        },
        mib(peak),
        format!("peak RSS exporting {small_n} records"),
        mib(small_peak),
    );
    fig.detail("records_per_s", n as f64 / wall.as_secs_f64().max(1e-9))
        .detail("export_s", wall.as_secs_f64())
        .detail("small_export_s", small_wall.as_secs_f64())
        .detail("daemon_rss_before_mib", mib(rss_before))
        .detail("daemon_rss_after_mib", mib(rss_after))
        .detail(
            "target_rule",
            "peak RSS of the full export below 1.25 x the small export's + 4 MiB",
        );
    // Records appended while the daemon ran (its own start, auth) come after.
    if n < f.records {
        fig.fail_because(format!("exported {n} records of {}", f.records));
    }
    Ok(fig)
}

/// Fills a log and takes the figures.
pub async fn run(opts: AuditOptions, progress: &dyn Fn(&str)) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new()
        .prefix("flb-audit")
        .tempdir_in("/tmp")?;
    let home = dir.path().join("home");
    let db = home.join("data/flotilla.db");
    std::fs::create_dir_all(home.join("data"))?;
    let store = Store::open(
        &db,
        StoreOptions {
            durability: Durability::Off,
        },
    )?;
    progress(&format!("(h) audit: filling {} records", opts.records));
    let filled = fill(&store, opts.records).await?;
    progress(&format!(
        "(h) audit: {} records and {} events in {:.1} s; querying",
        filled.records,
        filled.events,
        filled.fill.as_secs_f64()
    ));
    let mut figures = vec![query_figure(&store, &filled).await?];
    progress("(h) audit: verify");
    figures.push(verify_figure(&store, &filled).await?);
    store.close();
    drop(store);
    if let Some(binary) = &opts.binary {
        progress("(h) audit: export through the daemon");
        figures.push(export_figure(binary, &home, &filled).await?);
    }
    Ok(figures)
}
