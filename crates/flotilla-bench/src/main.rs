//! `flotilla-bench`: the foundation benchmark of flotilla.
//!
//! Five figures, each with a baseline measured in the same run:
//! (a) `turn`: orchestration cost of one agent turn (zero-latency scripted
//! model, no-op tool, no fsync) vs the bare store floor;
//! (b) `throughput`: aggregate turns/s of many concurrent sessions with
//! fsynced commits vs one session alone;
//! (c) `idle-rss`: the daemon's RSS holding many idle sessions vs holding none;
//! (d) `recover`: time to resume every session after `kill -9` vs a cold start;
//! (e) `sandbox`: a command in a warm session sandbox vs bare fork/exec and
//! vs bubblewrap, srt and codex; time to create a session sandbox;
//! (f) `policy`: p99 policy decision with 1,000 rules vs evaluating every
//! Cedar policy (no slicing);
//! (g) `gguf`: reading a 70B-shaped GGUF file's header vs a plain read of
//! the same bytes;
//! (h) `audit`: queries, verify and export of a million-record audit log
//! vs an unfiltered page, an unchecked read, and a small export.
//!
//! (a) and (b) run in this process; (c) and (d) drive the real `flotilla`
//! binary. Figures go to stdout as a table, or as JSON with `--json`. Build
//! with `--release`: debug figures are meaningless.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod audit;
mod daemon;
mod fleet;
mod gguf;
mod idle_rss;
mod peers;
mod policy;
mod recover;
mod report;
mod sandbox;
mod scripted;
mod throughput;
mod turn;

use report::{Environment, Figure};

/// Default shell turns of the `turn` benchmark's session.
const DEFAULT_TURN_TURNS: u32 = 500;
/// Default sessions of the `throughput` benchmark.
const DEFAULT_THROUGHPUT_SESSIONS: u32 = 100;
/// Default shell turns per session of the `throughput` benchmark.
const DEFAULT_THROUGHPUT_TURNS: u32 = 50;
/// Default idle sessions of the `idle-rss` and `recover` benchmarks.
const DEFAULT_IDLE_SESSIONS: u32 = 1000;
/// Default audit records of the `audit` benchmark.
const DEFAULT_AUDIT_RECORDS: u64 = 1_000_000;
/// Default workers of the `fleet` benchmark.
const DEFAULT_FLEET_WORKERS: u32 = 1000;

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    version,
    about = "Benchmarks of flotilla: turn overhead, throughput, idle memory, recovery, sandbox cost, policy decisions, GGUF reading, the audit log."
)]
struct Cli {
    /// Which benchmark (default: all).
    #[command(subcommand)]
    command: Option<Bench>,
    /// Print JSON instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Sessions: concurrent sessions for `throughput` (default 100), idle
    /// sessions for `idle-rss` and `recover` (default 1000).
    #[arg(long, global = true)]
    sessions: Option<u32>,
    /// Shell turns: of the measured session for `turn` (default 500), per
    /// session for `throughput` (default 50).
    #[arg(long, global = true)]
    turns: Option<u32>,
    /// The `flotilla` binary for `idle-rss` and `recover` (default: the one
    /// next to this executable).
    #[arg(long, global = true)]
    flotilla: Option<PathBuf>,
    /// Workers the planner of `fleet` starts (default 1,000).
    #[arg(long, global = true)]
    workers: Option<u32>,
    /// Audit records to fill for `audit` (default 1,000,000).
    #[arg(long, global = true)]
    records: Option<u64>,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Bench {
    /// (a) Orchestration overhead per agent turn.
    Turn,
    /// (b) Turns per second across concurrent sessions with durable commits.
    Throughput,
    /// (c) Daemon RSS with many idle sessions.
    IdleRss,
    /// (d) Time to recover many sessions after kill -9 of the daemon.
    Recover,
    /// (e) Cost of a command in a warm session sandbox vs bare fork/exec,
    /// bwrap, srt and codex; time to create a sandbox. Run
    /// scripts/install-sandbox-peers.sh first for the peers.
    Sandbox,
    /// (f) Policy decision latency with 1,000 rules loaded.
    Policy,
    /// (g) Reading a large model file's GGUF header.
    Gguf,
    /// (h) Audit log: filtered pages, verify, export (1,000,000 records).
    Audit,
    /// (i) A planner fans out to 1,000 workers: spawn-to-first-request
    /// latency and memory per live worker.
    Fleet,
    /// All of the above (the default).
    All,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let bench = cli.command.unwrap_or(Bench::All);
    let wants = |b: Bench| bench == b || bench == Bench::All;
    let needs_daemon = wants(Bench::IdleRss)
        || wants(Bench::Recover)
        || wants(Bench::Sandbox)
        || wants(Bench::Audit);
    let binary = if needs_daemon {
        Some(daemon::find_flotilla(cli.flotilla.as_deref())?)
    } else {
        None
    };
    let env = Environment::detect(binary.as_ref().map(|b| b.display().to_string()));
    if !cli.json {
        if let Some(b) = &binary {
            eprintln!("using daemon binary {}", b.display());
        }
        if !env.optimized {
            eprintln!("warning: this is a debug build; build with --release for real figures");
        }
    }
    let progress = |what: &str| {
        if !cli.json {
            eprintln!("running {what}...");
        }
    };

    let mut figures: Vec<Figure> = Vec::new();
    if wants(Bench::Turn) {
        progress("(a) turn");
        figures.push(
            turn::run(turn::TurnOptions {
                turns: cli.turns.unwrap_or(DEFAULT_TURN_TURNS),
            })
            .await?,
        );
    }
    if wants(Bench::Policy) {
        progress("(f) policy");
        figures.push(tokio::task::spawn_blocking(policy::run).await??);
    }
    if wants(Bench::Gguf) {
        progress("(g) gguf");
        figures.push(tokio::task::spawn_blocking(gguf::run).await??);
    }
    if wants(Bench::Fleet) {
        progress("(i) fleet");
        figures.extend(
            fleet::run(
                fleet::FleetOptions {
                    workers: cli.workers.unwrap_or(DEFAULT_FLEET_WORKERS),
                },
                &progress,
            )
            .await?,
        );
    }
    if wants(Bench::Audit) {
        figures.extend(
            audit::run(
                audit::AuditOptions {
                    records: cli.records.unwrap_or(DEFAULT_AUDIT_RECORDS),
                    binary: binary.clone(),
                },
                &progress,
            )
            .await?,
        );
    }
    if wants(Bench::Throughput) {
        progress("(b) throughput");
        figures.push(
            throughput::run(throughput::ThroughputOptions {
                sessions: cli.sessions.unwrap_or(DEFAULT_THROUGHPUT_SESSIONS),
                turns: cli.turns.unwrap_or(DEFAULT_THROUGHPUT_TURNS),
            })
            .await?,
        );
    }
    if let (true, Some(binary)) = (wants(Bench::Sandbox), &binary) {
        progress("(e) sandbox");
        let root = std::env::current_dir()?;
        figures.extend(sandbox::run(binary, &root).await?);
    }
    if let (true, Some(binary)) = (wants(Bench::IdleRss) || wants(Bench::Recover), &binary) {
        let limits = daemon::raise_nofile_limit()?;
        let count = cli.sessions.unwrap_or(DEFAULT_IDLE_SESSIONS);
        progress(&format!(
            "(c)/(d) filling a daemon with {count} idle sessions"
        ));
        let mut fleet = daemon::idle_fleet(binary, count).await?;
        if wants(Bench::IdleRss) {
            let mut fig = idle_rss::measure(&mut fleet).await?;
            fig.detail(
                "bench_nofile_limit",
                format!("{} soft / {} hard", limits.0, limits.1),
            );
            figures.push(fig);
        }
        if wants(Bench::Recover) {
            progress("(d) kill -9 and recover");
            figures.push(recover::measure(&mut fleet, binary).await?);
        }
    }

    if cli.json {
        println!("{}", report::render_json(&env, &figures)?);
    } else {
        print!("{}", report::render_table(&env, &figures));
    }
    Ok(())
}
