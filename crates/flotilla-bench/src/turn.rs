//! (a) Orchestration overhead of one agent turn.
//!
//! One session runs `turns` scripted turns (each proposing one `shell` call
//! that the no-op executor answers at once) against a store with
//! [`Durability::Off`]. The model records when each request arrives; the time
//! between two requests is one whole turn of the loop: the reply recorded,
//! the call proposed and started, the tool run, its result recorded, the
//! next request built. The median of those is the figure.
//!
//! The baseline is the bare store floor: the same appends (same events, same
//! grouping into commits) issued back to back on a fresh store with
//! [`Durability::Off`], with no model and no tools.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_protocol::{EventKind, ToolCall};
use flotilla_store::{Durability, Store, StoreOptions};

use crate::report::{Figure, Goal, Summary, Target};
use crate::scripted::{create_session, run_session, scripted_reply, ScriptedModel};

/// Appends (commits) the agent loop makes per tool turn, as read in
/// `flotilla-agent/src/agent.rs`: `[ToolFinished (of the previous turn),
/// ModelRequested]`, then `[ModelResponded, ToolProposed, ToolStarted]`
/// before the tool runs.
pub const APPENDS_PER_TURN: u32 = 2;
/// Events the loop records per tool turn.
pub const EVENTS_PER_TURN: u32 = 5;

/// Knobs of the turn benchmark.
#[derive(Clone, Copy, Debug)]
pub struct TurnOptions {
    /// Shell turns in the measured session.
    pub turns: u32,
}

/// The per-turn times of one scripted session on a fresh store.
async fn session_turn_times(durability: Durability, turns: u32) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let store = Store::open(dir.path().join("bench.db"), StoreOptions { durability })?;
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace)?;
    let session = create_session(&store, &workspace, turns).await?;
    let model = ScriptedModel::new(turns);
    run_session(store.clone(), session, model.clone()).await?;
    store.close();
    Ok(model.turn_times())
}

/// The same appends as one loop turn, with nothing else, per turn.
async fn store_floor(turns: u32) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let store = Store::open(
        dir.path().join("floor.db"),
        StoreOptions {
            durability: Durability::Off,
        },
    )?;
    let session = create_session(&store, dir.path(), turns).await?;
    let mut times = Vec::with_capacity(turns as usize);
    let mut previous_call: Option<String> = None;
    for n in 0..turns {
        let turn = n + 1;
        let reply = scripted_reply(n, turns);
        let call: ToolCall = reply.tool_calls[0].clone();
        let started = Instant::now();
        let mut first = Vec::with_capacity(2);
        if let Some(call_id) = previous_call.take() {
            first.push(tool_finished(call_id));
        }
        first.push(EventKind::ModelRequested {
            turn,
            messages: 2 + 2 * n,
            estimated_tokens: 400 + 40 * u64::from(n),
        });
        store.append(&session, first).await?;
        store
            .append(
                &session,
                vec![
                    EventKind::ModelResponded {
                        turn,
                        text: reply.text,
                        tool_calls: reply.tool_calls.clone(),
                        usage: reply.usage,
                        finish_reason: reply.finish_reason,
                        latency_ms: 0,
                        model: None,
                        cost_usd: None,
                    },
                    EventKind::ToolProposed { call: call.clone() },
                    EventKind::ToolStarted {
                        call_id: call.id.clone(),
                    },
                ],
            )
            .await?;
        previous_call = Some(call.id);
        times.push(started.elapsed());
    }
    if let Some(call_id) = previous_call {
        store.append(&session, vec![tool_finished(call_id)]).await?;
    }
    store.close();
    Ok(times)
}

fn tool_finished(call_id: String) -> EventKind {
    EventKind::ToolFinished {
        call_id,
        output: "exit code: 0\nstdout:\nok\n".to_owned(),
        is_error: false,
        duration_ms: 0,
    }
}

/// Median of the first and of the last `k` turns, in microseconds: shows how
/// the turn cost grows with the history the loop carries.
fn ends(times: &[Duration], k: usize) -> (f64, f64) {
    let k = k.min(times.len());
    let first = Summary::of(&times[..k]).p50_us;
    let last = Summary::of(&times[times.len() - k..]).p50_us;
    (first, last)
}

/// Runs the benchmark.
pub async fn run(opts: TurnOptions) -> Result<Figure> {
    let turns = opts.turns.max(2);
    // Warm-up: page in code, size allocator arenas.
    session_turn_times(Durability::Off, 20.min(turns)).await?;
    let floor = Summary::of(&store_floor(turns).await?);
    let off_times = session_turn_times(Durability::Off, turns).await?;
    let off = Summary::of(&off_times);
    let full = Summary::of(&session_turn_times(Durability::Full, turns).await?);
    let (first, last) = ends(&off_times, 50);

    let mut fig = Figure::new(
        "turn",
        "(a) agent turn, median (Durability::Off)",
        Target {
            goal: Goal::Below,
            value: 1000.0,
            unit: "us",
        },
        off.p50_us,
        format!("bare store floor: {APPENDS_PER_TURN} appends, Off"),
        floor.p50_us,
    );
    fig.detail("turns", turns)
        .detail("appends_per_turn", APPENDS_PER_TURN)
        .detail("events_per_turn", EVENTS_PER_TURN)
        .detail("loop_over_floor_us", off.p50_us - floor.p50_us)
        .detail("turn_off", off.to_value())
        .detail("store_floor_off", floor.to_value())
        .detail("turn_full_fsync_reference", full.to_value())
        .detail("median_first_50_turns_us", first)
        .detail("median_last_50_turns_us", last);
    Ok(fig)
}
