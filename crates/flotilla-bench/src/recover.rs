//! (d) Recovery of many sessions after `kill -9` of the daemon.
//!
//! Starting from an [`IdleFleet`] (every session waiting on a model that
//! never answers), every committed event row is read from the database, the
//! daemon is killed with SIGKILL, and a new daemon is started on the same
//! home. The figure is the time from spawning the new daemon until every
//! session has a `session_resumed` event committed (polled read-only in the
//! database). Afterwards every row read before the kill must still be there
//! with the same hash, every session's sequence numbers must run from 1
//! without gaps, and every hash chain must verify.
//!
//! The baseline is a cold start of the daemon on an empty home: spawn until
//! the API answers (median of three).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_protocol::{decode_canonical_event, sha256_hex, GENESIS_HASH};
use rusqlite::{Connection, OpenFlags};

use crate::daemon::{Daemon, IdleFleet};
use crate::report::{Figure, Goal, Summary, Target};

/// Cold starts measured for the baseline.
const COLD_STARTS: usize = 3;
/// How often the database is polled for `session_resumed` events.
const POLL: Duration = Duration::from_millis(5);

/// One stored event row.
struct Row {
    hash: String,
    body: Vec<u8>,
}

/// Every event row, by session then sequence number.
type Rows = BTreeMap<String, BTreeMap<i64, Row>>;

fn open_ro(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn read_rows(db: &Path) -> Result<Rows> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT session_id, seq, hash, body FROM events")?;
    let mut rows = stmt.query([])?;
    let mut out: Rows = BTreeMap::new();
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_default().insert(
            r.get(1)?,
            Row {
                hash: r.get(2)?,
                body: r.get(3)?,
            },
        );
    }
    Ok(out)
}

fn resumed_sessions(db: &Path) -> Result<usize> {
    let conn = open_ro(db)?;
    let n: i64 = conn.query_row(
        "SELECT count(DISTINCT session_id) FROM events WHERE kind = 'session_resumed'",
        [],
        |r| r.get(0),
    )?;
    Ok(n as usize)
}

/// What the integrity check found wrong, in words (empty: nothing).
fn check(before: &Rows, after: &Rows, sessions: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut note = |p: String| {
        if problems.len() < 10 {
            problems.push(p);
        }
    };
    for (session, rows) in before {
        let Some(now) = after.get(session) else {
            note(format!("session {session} vanished"));
            continue;
        };
        for (seq, row) in rows {
            match now.get(seq) {
                None => note(format!("{session}#{seq} lost")),
                Some(r) if r.hash != row.hash => note(format!("{session}#{seq} changed hash")),
                Some(_) => {}
            }
        }
    }
    if after.len() < sessions {
        note(format!(
            "{} sessions in the log, {sessions} created",
            after.len()
        ));
    }
    for (session, rows) in after {
        let mut prev = GENESIS_HASH.to_owned();
        for (i, (seq, row)) in rows.iter().enumerate() {
            if *seq != i as i64 + 1 {
                note(format!("{session}: seq {seq} where {} was expected", i + 1));
                break;
            }
            if sha256_hex(&row.body) != row.hash {
                note(format!("{session}#{seq}: hash does not match the body"));
                break;
            }
            match decode_canonical_event(&row.body) {
                Ok(e) if e.prev_hash == prev => {}
                Ok(_) => {
                    note(format!("{session}#{seq}: chain broken"));
                    break;
                }
                Err(e) => {
                    note(format!("{session}#{seq}: body does not decode: {e}"));
                    break;
                }
            }
            prev = row.hash.clone();
        }
    }
    problems
}

/// Median cold start of a daemon on an empty home, to the first API answer.
async fn cold_start(binary: &Path, model_url: &str) -> Result<(Duration, Summary)> {
    let mut times = Vec::with_capacity(COLD_STARTS);
    for _ in 0..COLD_STARTS {
        let home = tempfile::Builder::new().prefix("flb").tempdir_in("/tmp")?;
        let mut daemon = Daemon::spawn(binary, home.path(), model_url)?;
        times.push(daemon.wait_healthy(Duration::from_secs(30)).await?);
        daemon.stop(Duration::from_secs(10)).await?;
    }
    let summary = Summary::of(&times);
    Ok((Duration::from_secs_f64(summary.p50_us / 1e6), summary))
}

/// Kills the fleet's daemon, restarts it and measures the recovery.
pub async fn measure(fleet: &mut IdleFleet, binary: &Path) -> Result<Figure> {
    let n = fleet.sessions.len();
    let model_url = fleet.mock.base_url();
    let (cold, cold_summary) = cold_start(binary, &model_url).await?;

    let home = fleet.home.path().join("home");
    let db = home.join("data/flotilla.db");
    let before = read_rows(&db)?;
    let rows_before: usize = before.values().map(BTreeMap::len).sum();
    let requests_before = fleet.mock.request_count();
    fleet.daemon.kill9()?;

    let mut daemon = Daemon::spawn(binary, &home, &model_url)?;
    let mut healthy_at: Option<Duration> = None;
    let deadline = Duration::from_secs(120);
    let recovered = loop {
        if healthy_at.is_none() && daemon.api.healthy().await {
            healthy_at = Some(daemon.spawned.elapsed());
        }
        // Errors while the new daemon opens the file are "not yet".
        if resumed_sessions(&db).unwrap_or(0) >= n {
            break daemon.spawned.elapsed();
        }
        daemon.check_alive()?;
        if daemon.spawned.elapsed() > deadline {
            bail!(
                "after {deadline:?} only {} of {n} sessions have resumed",
                resumed_sessions(&db).unwrap_or(0)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    // Not part of the figure: until every loop is back in its model request.
    let back_in_model = loop {
        if fleet.mock.request_count() >= requests_before + n {
            break Some(daemon.spawned.elapsed());
        }
        if daemon.spawned.elapsed() > deadline {
            break None;
        }
        tokio::time::sleep(POLL).await;
    };

    let after = read_rows(&db)?;
    let rows_after: usize = after.values().map(BTreeMap::len).sum();
    let problems = check(&before, &after, n);
    let kinds = kind_counts(&db)?;
    let emfile = daemon.emfile_lines();
    let stopped = daemon.stop(Duration::from_secs(30)).await;
    // The fleet's daemon is dead; keep the new one's handle out of the fleet.
    drop(daemon);

    let mut fig = Figure::new(
        "recover",
        format!("(d) recover {n} sessions after kill -9"),
        Target {
            goal: Goal::Below,
            value: 2000.0,
            unit: "ms",
        },
        recovered.as_secs_f64() * 1e3,
        "cold start, 0 sessions",
        cold.as_secs_f64() * 1e3,
    );
    fig.detail("sessions", n)
        .detail(
            "api_answering_after_ms",
            healthy_at.map(|d| d.as_secs_f64() * 1e3),
        )
        .detail(
            "all_back_in_model_request_ms",
            back_in_model.map(|d| d.as_secs_f64() * 1e3),
        )
        .detail("cold_start_ms_samples", cold_summary.to_value())
        .detail("rows_before_kill", rows_before)
        .detail("rows_after_recovery", rows_after)
        .detail("events_by_kind_after", serde_json::to_value(&kinds)?)
        .detail("poll_interval_ms", POLL.as_millis() as u64)
        .detail("integrity_problems", problems.len())
        .detail("daemon_emfile_log_lines", emfile.len());
    for p in problems {
        fig.fail_because(p);
    }
    if let Some(line) = emfile.first() {
        fig.fail_because(format!("the daemon ran out of file descriptors: {line}"));
    }
    if let Err(e) = stopped {
        fig.fail_because(format!("the recovered daemon did not stop cleanly: {e}"));
    }
    Ok(fig)
}

fn kind_counts(db: &Path) -> Result<BTreeMap<String, i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT kind, count(*) FROM events GROUP BY kind")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
