//! (i) `fleet`: a planner fans out to a thousand workers.
//!
//! In process: the real store (a SQLite file, fsynced commits), the real
//! supervisor and fleet tools, and one zero-latency scripted model for
//! every agent. The planner's first reply asks for every worker at once
//! (`spawn_agent` calls, read-only workers sharing its workspace: git
//! worktrees are a separate cost); each worker's first request is held
//! until all of them have arrived, so that every worker is alive at once,
//! and then answered with `finish`; the planner then waits for them all
//! and finishes.
//!
//! - **spawn latency**: from the planner's `spawn_agent` call being
//!   recorded as started (seen on the store's live feed) to that worker's
//!   first model request. Baseline: the same for plain sessions, from the
//!   call to `Supervisor::create` to their first request, one at a time.
//! - **memory**: the process's resident memory with every worker alive,
//!   less before the fleet, per worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use flotilla_agent::tools::HostExecutor;
use flotilla_fleet::{ClientFactory, FleetConfig, Supervisor};
use flotilla_models::{ChatRequest, ChatResponse, ModelClient, ModelError};
use flotilla_protocol::{
    CreateSessionRequest, EventKind, FleetSpec, SessionLimits, SessionState, ToolCall, Usage,
};
use flotilla_store::{Store, StoreOptions};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::Notify;

use crate::daemon::proc_status_number;
use crate::report::{Figure, Goal, Target};

/// What to run.
pub struct FleetOptions {
    /// Workers.
    pub workers: u32,
}

/// The model of every agent: the planner's script, the workers' hold and
/// finish, and when each worker first asked.
struct FleetModel {
    workers: u32,
    first_request: Mutex<HashMap<String, Instant>>,
    all_arrived: Notify,
    released: std::sync::atomic::AtomicBool,
}

fn reply(calls: Vec<ToolCall>) -> ChatResponse {
    ChatResponse {
        text: String::new(),
        tool_calls: calls,
        usage: Usage {
            prompt_tokens: 100,
            completion_tokens: 10,
        },
        finish_reason: Some("tool_calls".into()),
        model: None,
    }
}

fn call(id: String, name: &str, args: serde_json::Value) -> ToolCall {
    ToolCall {
        id,
        name: name.into(),
        arguments: args.to_string(),
    }
}

impl FleetModel {
    fn who(request: &ChatRequest) -> String {
        request
            .messages
            .iter()
            .find(|m| m.role == flotilla_models::Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default()
    }
}

impl ModelClient for FleetModel {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let now = Instant::now();
            let who = Self::who(request);
            let turn = request
                .messages
                .iter()
                .filter(|m| m.role == flotilla_models::Role::Assistant)
                .count();
            if who.starts_with("[planner]") {
                return Ok(match turn {
                    0 => reply(
                        (1..=self.workers)
                            .map(|i| {
                                call(
                                    format!("spawn-w{i}"),
                                    "spawn_agent",
                                    json!({"name": format!("w{i}"), "task": format!("[worker] w{i}"), "workspace": "shared"}),
                                )
                            })
                            .collect(),
                    ),
                    1 => reply(vec![call(
                        "wait".into(),
                        "wait_agents",
                        json!({"timeout_secs": 600}),
                    )]),
                    _ => reply(vec![call("end".into(), "finish", json!({"answer": "done"}))]),
                });
            }
            if let Some(name) = who.strip_prefix("[worker] ") {
                let arrived = {
                    let mut first = self
                        .first_request
                        .lock()
                        .map_err(|_| ModelError::Protocol("poisoned".into()))?;
                    first.entry(name.to_owned()).or_insert(now);
                    first.len() as u32
                };
                if arrived >= self.workers {
                    self.released
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.all_arrived.notify_waiters();
                }
                // Hold until every worker is alive (or a minute passed).
                while !self.released.load(std::sync::atomic::Ordering::SeqCst) {
                    let notified = self.all_arrived.notified();
                    if self.released.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    if tokio::time::timeout(Duration::from_secs(60), notified)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            } else if let Some(name) = who.strip_prefix("[plain] ") {
                if let Ok(mut first) = self.first_request.lock() {
                    first.entry(format!("plain-{name}")).or_insert(now);
                }
            }
            Ok(reply(vec![call(
                format!("finish-{turn}"),
                "finish",
                json!({"answer": "done"}),
            )]))
        })
    }
}

/// A session on the daemon's defaults: a planner with `fleet`, else plain.
fn request(task: String, ws: &std::path::Path, fleet: Option<FleetSpec>) -> CreateSessionRequest {
    CreateSessionRequest {
        task,
        workspace: ws.to_string_lossy().into_owned(),
        model: None,
        base_url: None,
        max_turns: None,
        wall_time_secs: None,
        context_window: None,
        permissions: None,
        role: None,
        grants: Vec::new(),
        fleet,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib() -> u64 {
    proc_status_number(std::process::id(), "VmRSS").unwrap_or(0)
}

/// Runs the fan-out and the plain baseline; two figures.
pub async fn run(opts: FleetOptions, progress: &dyn Fn(&str)) -> Result<Vec<Figure>> {
    let n = opts.workers.max(1);
    let dir = tempfile::Builder::new().prefix("flb-fleet").tempdir()?;
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws)?;
    let store = Store::open(dir.path().join("fleet.db"), StoreOptions::default())?;
    let model = Arc::new(FleetModel {
        workers: n,
        first_request: Mutex::new(HashMap::new()),
        all_arrived: Notify::new(),
        released: std::sync::atomic::AtomicBool::new(false),
    });
    let m = model.clone();
    let factory: ClientFactory = Arc::new(move |_spec, _url| Ok(m.clone() as Arc<dyn ModelClient>));
    let config = FleetConfig {
        default_model: Some("openai:bench".into()),
        // A local endpoint (never reached: the factory answers in process),
        // so workers may use the model.
        openai_base_url: Some("http://127.0.0.1:9/v1".into()),
        default_limits: SessionLimits {
            max_turns: 10,
            wall_time_secs: 3600,
            context_window: 1_000_000,
        },
        ..FleetConfig::default()
    };
    let sup = Supervisor::new(store.clone(), config, Arc::new(HostExecutor), Some(factory));

    // When each spawn_agent call started, from the store's live feed.
    let mut feed = store.subscribe();
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let s2 = started.clone();
    let watcher = tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(e) => {
                    if let EventKind::ToolStarted { call_id } = &e.event {
                        if let Some(name) = call_id.strip_prefix("spawn-") {
                            if let Ok(mut s) = s2.lock() {
                                s.insert(name.to_owned(), Instant::now());
                            }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    tracing_lag(k);
                }
                Err(_) => break,
            }
        }
    });
    // Memory with every worker alive: sampled when the last one arrives.
    let rss_before = rss_kib();
    progress(&format!("(i) fleet: {n} workers"));
    let t0 = Instant::now();
    let planner = sup
        .create(
            request(
                "[planner] fan out".into(),
                &ws,
                Some(FleetSpec {
                    max_workers: n,
                    max_total: n,
                    ..FleetSpec::default()
                }),
            ),
            "bench",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rss_full = 0u64;
    let mut peak = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rss = rss_kib();
        peak = peak.max(rss);
        if rss_full == 0 && model.released.load(std::sync::atomic::Ordering::SeqCst) {
            rss_full = rss;
        }
        let info = sup
            .get(&planner.id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if info.state.is_terminal() {
            if info.state != SessionState::Completed {
                bail!("the planner ended {}: {:?}", info.state, info.reason);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the fleet did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fleet_wall = t0.elapsed();
    let tree = store.fleet_tree(&planner.id).await?;
    let done = tree
        .iter()
        .filter(|s| s.id != planner.id && s.state == SessionState::Completed)
        .count();
    let latencies = {
        let started = started.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let first = model
            .first_request
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut l: Vec<f64> = (1..=n)
            .filter_map(|i| {
                let name = format!("w{i}");
                Some(
                    first
                        .get(&name)?
                        .duration_since(*started.get(&name)?)
                        .as_secs_f64()
                        * 1e3,
                )
            })
            .collect();
        l.sort_by(|a, b| a.total_cmp(b));
        l
    };
    watcher.abort();

    // Baseline: plain sessions, one at a time, create call to first request.
    progress(&format!("(i) fleet: {n} plain sessions (baseline)"));
    let mut plain = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let t = Instant::now();
        let info = sup
            .create(request(format!("[plain] {i}"), &ws, None), "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Its first request, then on to the next.
        let key = format!("plain-{i}");
        let wait_until = Instant::now() + Duration::from_secs(30);
        loop {
            let got = model
                .first_request
                .lock()
                .ok()
                .and_then(|f| f.get(&key).copied());
            if let Some(at) = got {
                plain.push(at.duration_since(t).as_secs_f64() * 1e3);
                break;
            }
            if Instant::now() > wait_until {
                bail!("plain session {} never asked its model", info.id);
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    plain.sort_by(|a, b| a.total_cmp(b));
    sup.shutdown().await;

    let p99 = percentile(&latencies, 0.99);
    let mut latency = Figure::new(
        "fleet_spawn",
        format!("(i) fleet: spawn_agent to the worker's first model request, p99 of {n}"),
        Target {
            goal: Goal::Below,
            value: 20.0,
            unit: "ms",
        },
        p99,
        "p99 create-to-first-request of plain sessions, one at a time",
        percentile(&plain, 0.99),
    );
    latency
        .detail("p50_ms", percentile(&latencies, 0.5))
        .detail("p90_ms", percentile(&latencies, 0.9))
        .detail("max_ms", latencies.last().copied().unwrap_or(f64::NAN))
        .detail("baseline_p50_ms", percentile(&plain, 0.5))
        .detail("measured", latencies.len())
        .detail("workers_completed", done)
        .detail("fleet_wall_s", fleet_wall.as_secs_f64())
        .detail(
            "orchestration_ms_per_worker",
            fleet_wall.as_secs_f64() * 1e3 / f64::from(n),
        );
    if latencies.len() != n as usize || done != n as usize {
        latency.fail_because(format!(
            "{} of {n} workers measured, {done} completed",
            latencies.len()
        ));
    }
    let per_worker_mib = (rss_full.saturating_sub(rss_before)) as f64 / 1024.0 / f64::from(n);
    let mut memory = Figure::new(
        "fleet_rss",
        format!("(i) fleet: resident memory per live worker, {n} alive at once"),
        Target {
            goal: Goal::Below,
            value: 2.0,
            unit: "MiB",
        },
        per_worker_mib,
        "process RSS before the fleet (MiB)",
        rss_before as f64 / 1024.0,
    );
    memory
        .detail("rss_before_mib", rss_before as f64 / 1024.0)
        .detail("rss_all_alive_mib", rss_full as f64 / 1024.0)
        .detail("rss_peak_mib", peak as f64 / 1024.0);
    if rss_full == 0 {
        memory.fail_because("the workers were never all alive at once");
    }
    drop(dir);
    Ok(vec![latency, memory])
}

fn tracing_lag(skipped: u64) {
    eprintln!(
        "warning: the bench's event feed lagged by {skipped} events; some spawn times are missing"
    );
}
