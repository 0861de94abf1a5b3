//! (b) Aggregate turns per second of many concurrent sessions with durable
//! (fsynced) commits.
//!
//! `sessions` loops run at once on the multi-thread runtime against one store
//! with [`Durability::Full`], each doing `turns` scripted shell turns and a
//! finish; a turn is one model reply (so `turns + 1` per session). The clock
//! runs from the moment the loops are spawned (the sessions are recorded
//! before) until the last one has recorded its end.
//!
//! The baseline is one session alone on the same kind of store: its turns per
//! second is what one fsync per commit allows; the ratio shows how much group
//! commit gains.

use std::time::Instant;

use anyhow::{Context, Result};
use flotilla_store::{Durability, Store, StoreOptions};
use rusqlite::{Connection, OpenFlags};

use crate::report::{Figure, Goal, Summary, Target};
use crate::scripted::{create_session, run_session, ScriptedModel};

/// Knobs of the throughput benchmark.
#[derive(Clone, Copy, Debug)]
pub struct ThroughputOptions {
    /// Concurrent sessions.
    pub sessions: u32,
    /// Shell turns per session.
    pub turns: u32,
}

/// What one run measured.
struct Run {
    turns: u64,
    events: u64,
    seconds: f64,
    turn_times: Summary,
}

impl Run {
    fn turns_per_sec(&self) -> f64 {
        self.turns as f64 / self.seconds
    }
}

async fn run_fleet(sessions: u32, turns: u32) -> Result<Run> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let db = dir.path().join("bench.db");
    let store = Store::open(
        &db,
        StoreOptions {
            durability: Durability::Full,
        },
    )?;
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace)?;
    let mut loops = Vec::with_capacity(sessions as usize);
    for _ in 0..sessions {
        let id = create_session(&store, &workspace, turns).await?;
        loops.push((id, ScriptedModel::new(turns)));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (id, model) in &loops {
        tasks.spawn(run_session(store.clone(), id.clone(), model.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a session task panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    store.close();

    let mut all_times = Vec::new();
    let mut replies = 0u64;
    for (_, model) in &loops {
        all_times.extend(model.turn_times());
        replies += u64::from(model.requests());
    }
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    Ok(Run {
        turns: replies,
        // The session_created events were written before the clock started.
        events: (events as u64).saturating_sub(u64::from(sessions)),
        seconds,
        turn_times: Summary::of(&all_times),
    })
}

/// Runs the benchmark.
pub async fn run(opts: ThroughputOptions) -> Result<Figure> {
    let sessions = opts.sessions.max(1);
    let turns = opts.turns.max(1);
    // The single session runs more turns so that its rate is not dominated
    // by the session's start and end.
    let single = run_fleet(1, turns.max(200)).await?;
    let fleet = run_fleet(sessions, turns).await?;

    let mut fig = Figure::new(
        "throughput",
        format!("(b) turns/s, {sessions} sessions, Durability::Full"),
        Target {
            goal: Goal::AtLeast,
            value: 2000.0,
            unit: "turns/s",
        },
        fleet.turns_per_sec(),
        "1 session, Full",
        single.turns_per_sec(),
    );
    fig.detail("sessions", sessions)
        .detail("turns_per_session", turns + 1)
        .detail("total_turns", fleet.turns)
        .detail("wall_s", fleet.seconds)
        .detail("events_per_s", fleet.events as f64 / fleet.seconds)
        .detail("turn_latency_under_load", fleet.turn_times.to_value())
        .detail("single_session_turns", single.turns)
        .detail("single_session_turn_latency", single.turn_times.to_value());
    Ok(fig)
}
