//! (e) `sandbox`: what confinement costs per command, against a bare
//! fork/exec and against other sandboxes, all measured in this run.
//!
//! - (a) bare: `/bin/true` spawned and waited for by this process;
//! - (b) warm: `/bin/true` spawned in an already built flotilla session
//!   sandbox (the control round trip included), stdout/stderr to /dev/null;
//! - (c) `bwrap --unshare-all`, (d) `srt`, (e) `codex sandbox linux`, each a
//!   fresh process per command, as their users run them;
//! - creating a session sandbox as the daemon does (a helper prepared ahead:
//!   exec'd and in its cgroup; then namespaces, mounts, Landlock, seccomp,
//!   ready report), back to back and after idle pauses, against exec'ing the
//!   same binary with `--version`; and one-shot creation with nothing
//!   prepared (as `flotilla sandbox` does) as a detail.
//!
//! Targets: (b) within 1.5x of (a); (b) at least 5x faster than (c);
//! creation under 15 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_sandbox::{HelperCommand, Sandbox, SandboxSpec, SpawnRequest};

use crate::peers::{discover, time_command};
use crate::report::{Figure, Goal, Summary, Target};

/// Runs of each per-command measurement (after the warm-up).
pub const COMMAND_RUNS: usize = 300;
/// Runs of each (slow) peer.
pub const PEER_RUNS: usize = 40;
/// Sandboxes created for the creation figure.
pub const CREATE_RUNS: usize = 40;
/// Sandboxes created after an idle pause each.
pub const IDLE_CREATE_RUNS: usize = 10;
const WARMUP: usize = 20;
/// One bwrap run every this many rounds of (a) and (b).
const BWRAP_EVERY: usize = 4;

fn devnull() -> Result<std::os::fd::OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")?
        .into())
}

/// `runs` timed spawns of `/bin/true` in `sandbox`.
async fn warm_runs_exact(sandbox: &Sandbox, cwd: &Path, runs: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(one_warm_run(sandbox, cwd).await?);
    }
    Ok(times)
}

async fn one_warm_run(sandbox: &Sandbox, cwd: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut process = sandbox
        .spawn(SpawnRequest {
            argv: vec!["/bin/true".into()],
            cwd: cwd.to_path_buf(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: None,
            stdout: devnull()?,
            stderr: devnull()?,
        })
        .await?;
    let status = process.wait().await?;
    let took = start.elapsed();
    anyhow::ensure!(
        status.code == Some(0),
        "/bin/true in the sandbox: {status:?}"
    );
    Ok(took)
}

/// Warm-up: `runs` untimed spawns.
async fn warm_runs(sandbox: &Sandbox, cwd: &Path, runs: usize) -> Result<()> {
    for _ in 0..runs {
        one_warm_run(sandbox, cwd).await?;
    }
    Ok(())
}

fn spec(ws: &Path) -> SandboxSpec {
    let mut spec = SandboxSpec::new(ws);
    spec.home = None;
    spec
}

/// Measures every figure of the sandbox benchmark.
pub async fn run(flotilla: &Path, repo_root: &Path) -> Result<Vec<Figure>> {
    let helper = HelperCommand::new(flotilla);
    let ws = tempfile::tempdir()?;
    // One-shot creation, as `flotilla sandbox` does it: helper exec and
    // cgroup creation and migration on the critical path.
    let mut create_cold = Vec::new();
    for _ in 0..IDLE_CREATE_RUNS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let sandbox = Sandbox::create(spec(ws.path()), &helper).await?;
        create_cold.push(start.elapsed());
        sandbox.shutdown().await;
    }
    // As in the daemon: a helper (and its cgroup) prepared ahead of time.
    tokio::task::spawn_blocking(|| flotilla_sandbox::enable_prewarm(1)).await?;

    // Creation, against exec'ing the same binary.
    let mut create = Vec::with_capacity(CREATE_RUNS);
    let mut report = None;
    for i in 0..CREATE_RUNS + 3 {
        // Sessions start now and then; give the spare time to be prepared.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let start = Instant::now();
        let sandbox = Sandbox::create(spec(ws.path()), &helper)
            .await
            .context("creating a sandbox (does this machine allow user namespaces?)")?;
        let took = start.elapsed();
        if i >= 3 {
            create.push(took);
        }
        report.get_or_insert_with(|| sandbox.report().clone());
        sandbox.shutdown().await;
    }
    // The same after an idle pause (the daemon's usual case: a session
    // starts now and then): kernel work that waits for RCU grace periods is
    // slower on an idle machine.
    let mut create_idle = Vec::new();
    for _ in 0..IDLE_CREATE_RUNS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let sandbox = Sandbox::create(spec(ws.path()), &helper).await?;
        create_idle.push(start.elapsed());
        sandbox.shutdown().await;
    }
    let exec_same = time_command(
        &[flotilla.display().to_string(), "--version".into()],
        3,
        CREATE_RUNS,
    )?;

    // (a), (b) and (c) interleaved, round by round, so that the machine's
    // noise (this is a shared VM) falls on all three alike.
    let (peers, missing) = discover(repo_root);
    let bwrap_argv = peers
        .iter()
        .find(|p| p.name == "bwrap")
        .map(|p| p.argv(&["/bin/true"]));
    let sandbox = Sandbox::create(spec(ws.path()), &helper).await?;
    warm_runs(&sandbox, ws.path(), WARMUP).await?;
    let true_argv = vec!["/bin/true".to_string()];
    let mut bare = Vec::with_capacity(COMMAND_RUNS);
    let mut warm = Vec::with_capacity(COMMAND_RUNS);
    let mut bwrap_times = Vec::new();
    let mut bwrap_error = None;
    for round in 0..COMMAND_RUNS {
        bare.extend(time_command(&true_argv, 0, 1)?);
        warm.extend(warm_runs_exact(&sandbox, ws.path(), 1).await?);
        if round % BWRAP_EVERY == 0 && bwrap_error.is_none() {
            if let Some(argv) = &bwrap_argv {
                match time_command(argv, 0, 1) {
                    Ok(t) => bwrap_times.extend(t),
                    Err(err) => bwrap_error = Some(format!("{err:#}")),
                }
            }
        }
    }
    sandbox.shutdown().await;
    flotilla_sandbox::drain_prewarmed().await;

    let mut peer_stats = serde_json::Map::new();
    let mut bwrap = None;
    if let Some(argv) = &bwrap_argv {
        match bwrap_error {
            None => {
                let s = Summary::of(&bwrap_times);
                bwrap = Some(s);
                peer_stats.insert(
                    "bwrap".into(),
                    serde_json::json!({"argv": argv, "summary": s.to_value()}),
                );
            }
            Some(err) => {
                peer_stats.insert("bwrap".into(), serde_json::json!({"error": err}));
            }
        }
    }
    for peer in peers
        .iter()
        .filter(|p| p.name != "bare" && p.name != "bwrap")
    {
        match time_command(&peer.argv(&["/bin/true"]), 3, PEER_RUNS) {
            Ok(times) => {
                let s = Summary::of(&times);
                peer_stats.insert(
                    peer.name.to_string(),
                    serde_json::json!({"argv": peer.argv(&["/bin/true"]), "summary": s.to_value()}),
                );
            }
            Err(err) => {
                peer_stats.insert(
                    peer.name.to_string(),
                    serde_json::json!({"error": format!("{err:#}")}),
                );
            }
        }
    }
    for (name, why) in &missing {
        peer_stats.insert((*name).to_string(), serde_json::json!({"missing": why}));
    }

    let bare_s = Summary::of(&bare);
    let warm_s = Summary::of(&warm);
    let create_s = Summary::of(&create);
    let exec_s = Summary::of(&exec_same);
    let mut figures = Vec::new();

    let mut overhead = Figure::new(
        "sandbox_exec",
        "median /bin/true in a warm session sandbox",
        Target {
            goal: Goal::Below,
            value: 1.5 * bare_s.p50_us,
            unit: "us",
        },
        warm_s.p50_us,
        "bare fork/exec of /bin/true (target: 1.5x)",
        bare_s.p50_us,
    );
    overhead.detail("warm", warm_s.to_value());
    overhead.detail("bare", bare_s.to_value());
    figures.push(overhead);

    let mut vs = match bwrap {
        Some(b) => {
            let mut f = Figure::new(
                "sandbox_vs_bwrap",
                "median /bin/true in a warm session sandbox",
                Target {
                    goal: Goal::Below,
                    value: b.p50_us / 5.0,
                    unit: "us",
                },
                warm_s.p50_us,
                "bwrap --unshare-all (target: 5x faster)",
                b.p50_us,
            );
            f.detail("speedup_vs_bwrap", b.p50_us / warm_s.p50_us.max(1e-9));
            f
        }
        None => {
            let mut f = Figure::new(
                "sandbox_vs_bwrap",
                "median /bin/true in a warm session sandbox",
                Target {
                    goal: Goal::Below,
                    value: 0.0,
                    unit: "us",
                },
                warm_s.p50_us,
                "bwrap --unshare-all (not measured)",
                0.0,
            );
            f.fail_because("bwrap could not be measured; run scripts/install-sandbox-peers.sh");
            f
        }
    };
    for (name, stats) in &peer_stats {
        if let Some(p50) = stats
            .get("summary")
            .and_then(|s| s.get("p50_us"))
            .and_then(|v| v.as_f64())
        {
            vs.detail(&format!("{name}_speedup"), p50 / warm_s.p50_us.max(1e-9));
        }
    }
    vs.detail("peers", serde_json::Value::Object(peer_stats));
    figures.push(vs);

    let mut creation = Figure::new(
        "sandbox_create",
        "median time to create a session sandbox",
        Target {
            goal: Goal::Below,
            value: 15_000.0,
            unit: "us",
        },
        create_s.p50_us,
        "exec of the same binary (flotilla --version)",
        exec_s.p50_us,
    );
    creation.detail("create", create_s.to_value());
    creation.detail(
        "create_after_300ms_idle",
        Summary::of(&create_idle).to_value(),
    );
    creation.detail(
        "create_one_shot_no_prepared_helper",
        Summary::of(&create_cold).to_value(),
    );
    creation.detail("exec_same_binary", exec_s.to_value());
    if let Some(r) = report {
        creation.detail("helper_setup_us", r.setup_us);
        creation.detail("layers", r.summary());
    }
    figures.push(creation);
    Ok(figures)
}
