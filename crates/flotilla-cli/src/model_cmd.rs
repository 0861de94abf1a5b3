//! `flotilla model`: pull, list and serve local models.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use flotilla_fit::estimate::{estimate, FitOptions, KvType, ModelShape, Verdict};
use flotilla_fit::gguf::GgufFile;
use flotilla_local::catalogue::{self, DEFAULT_MODEL};
use serde_json::json;

use crate::Paths;

/// Shown after `flotilla model --help`.
pub const MODEL_HELP: &str = "\
Examples:
  flotilla model pull gemma-3-270m          # from the Hugging Face hub (HF_ENDPOINT)
  flotilla model list                       # files in the models folder, and where they fit
  flotilla model serve                      # the default model on http://127.0.0.1:8088/v1
  flotilla model serve --model ~/m/qwen.gguf --ctx 8192 --parallel 4 --listen 127.0.0.1:9000

Models live in $FLOTILLA_MODELS_DIR, else `models` in the data folder. A model
is a catalogue name (`model list` shows them), a file NAME.gguf there, or any
path to a GGUF file. The server speaks OpenAI's chat API (tools too: calls are
constrained by a grammar built from each tool's JSON schema).";

/// `flotilla model ...`
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Download a model from the Hugging Face hub: resumable, SHA-256 checked.
    Pull(PullArgs),
    /// The GGUF files in the models folder: size, quantization, where they fit.
    List(ListArgs),
    /// Serve a model over OpenAI's chat API (the engine runs in a child
    /// process, restarted if it dies).
    Serve(ServeArgs),
    /// One engine process (run by `serve`).
    #[command(hide = true)]
    Engine(EngineArgs),
}

/// `model pull`
#[derive(Args, Debug)]
pub struct PullArgs {
    /// A catalogue name, or REPO/FILE.gguf on the hub (e.g.
    /// ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q4_K_M.gguf).
    name: String,
    /// Print the result as JSON (no progress bar).
    #[arg(long)]
    json: bool,
}

/// `model list`
#[derive(Args, Debug)]
pub struct ListArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `model serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A catalogue name, NAME (NAME.gguf in the models folder) or a path.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Address to listen on (loopback unless you mean it).
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Context of each parallel slot, in tokens.
    #[arg(long, default_value_t = 4096)]
    ctx: u32,
    /// Requests served at once (continuous batching).
    #[arg(long, default_value_t = 2)]
    parallel: u32,
    /// CPU threads (default: every core).
    #[arg(long)]
    threads: Option<i32>,
    /// Exit after this many seconds without a request.
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<u64>,
}

/// `model engine` (internal)
#[derive(Args, Debug)]
pub struct EngineArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    ctx: u32,
    #[arg(long)]
    parallel: u32,
    #[arg(long)]
    threads: Option<i32>,
}

/// Runs `flotilla model ...`.
pub async fn model(paths: &Paths, command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Pull(a) => pull(paths, a).await,
        ModelCommand::List(a) => list(paths, a),
        ModelCommand::Serve(a) => serve(paths, a).await,
        ModelCommand::Engine(a) => {
            flotilla_local::run_engine(flotilla_local::engine::EngineConfig {
                model: a.model,
                ctx: a.ctx,
                parallel: a.parallel,
                threads: a.threads,
            })
            .await
            .map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn pull(paths: &Paths, args: PullArgs) -> Result<ExitCode> {
    let spec = match catalogue::entry(&args.name) {
        Some(e) => flotilla_local::pull::PullSpec {
            endpoint: flotilla_local::pull::endpoint(),
            repo: e.repo.into(),
            file: e.file.into(),
            sha256: e.sha256.map(str::to_owned),
        },
        None => {
            let (repo, file) = args
                .name
                .rsplit_once('/')
                .filter(|(repo, file)| repo.contains('/') && file.ends_with(".gguf"))
                .with_context(|| {
                    let known: Vec<&str> = catalogue::CATALOGUE.iter().map(|e| e.name).collect();
                    format!(
                        "no model {:?} in the catalogue ({}); or give OWNER/REPO/FILE.gguf",
                        args.name,
                        known.join(", ")
                    )
                })?;
            flotilla_local::pull::PullSpec {
                endpoint: flotilla_local::pull::endpoint(),
                repo: repo.into(),
                file: file.into(),
                sha256: None,
            }
        }
    };
    let dir = catalogue::models_dir(&paths.data_dir);
    let json = args.json;
    let mut last_draw = std::time::Instant::now() - Duration::from_secs(1);
    let mut bar = move |p: flotilla_local::pull::Progress| {
        if json || last_draw.elapsed() < Duration::from_millis(200) {
            return;
        }
        last_draw = std::time::Instant::now();
        let mb = |b: u64| b as f64 / 1e6;
        match p.total {
            Some(t) if t > 0 => {
                let frac = p.done as f64 / t as f64;
                let filled = (frac * 30.0) as usize;
                eprint!(
                    "\r[{}{}] {:5.1}%  {:.1}/{:.1} MB",
                    "#".repeat(filled.min(30)),
                    " ".repeat(30 - filled.min(30)),
                    frac * 100.0,
                    mb(p.done),
                    mb(t)
                );
            }
            _ => eprint!("\r{:.1} MB", mb(p.done)),
        }
    };
    let path = flotilla_local::pull::pull(&spec, &dir, &mut bar)
        .await
        .map_err(anyhow::Error::msg)?;
    if json {
        println!(
            "{}",
            json!({"name": args.name, "path": path, "repo": spec.repo, "file": spec.file})
        );
    } else {
        eprintln!();
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn list(paths: &Paths, args: ListArgs) -> Result<ExitCode> {
    let dir = catalogue::models_dir(&paths.data_dir);
    let machines = crate::fit_cmd::all_machines(paths)?;
    let mut rows = Vec::new();
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    entries.sort();
    for path in entries {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let name = catalogue::CATALOGUE
            .iter()
            .find(|e| path.file_name().is_some_and(|f| f == e.file))
            .map(|e| e.name.to_owned())
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let (quant, fits, problem) = match GgufFile::read(&path) {
            Ok(file) => {
                let quant = file
                    .get_u64("general.file_type")
                    .and_then(|t| flotilla_fit::gguf::file_type_name(t as u32))
                    .unwrap_or("?")
                    .to_owned();
                let fits: Vec<String> = match ModelShape::from_gguf(&file, None) {
                    Ok(shape) => {
                        let opts = FitOptions {
                            ctx: shape.context_length.clamp(1, 4096),
                            kv_type: KvType::F16,
                        };
                        machines
                            .iter()
                            .filter(|m| estimate(&shape, m, &opts).verdict == Verdict::Fits)
                            .map(|m| m.name.clone())
                            .collect()
                    }
                    Err(_) => Vec::new(),
                };
                (quant, fits, None)
            }
            Err(e) => ("?".into(), Vec::new(), Some(e.to_string())),
        };
        rows.push((name, path, size, quant, fits, problem));
    }
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(name, path, size, quant, fits, problem)| {
                json!({"name": name, "path": path, "bytes": size, "quant": quant, "fits_on": fits, "error": problem})
            })
            .collect();
        println!(
            "{}",
            json!({"dir": dir, "models": out, "catalogue": catalogue::CATALOGUE.iter().map(|e| json!({"name": e.name, "repo": e.repo, "file": e.file, "about": e.about})).collect::<Vec<_>>()})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("models in {}:", dir.display());
    if rows.is_empty() {
        println!("  none yet: `flotilla model pull {DEFAULT_MODEL}`");
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|(name, _, size, quant, fits, problem)| {
            [
                name.clone(),
                format!("{:.0} MB", *size as f64 / 1e6),
                quant.clone(),
                match problem {
                    Some(p) => format!("unreadable: {p}"),
                    None if fits.is_empty() => "fits nowhere configured".into(),
                    None => format!("fits on {}", fits.join(", ")),
                },
            ]
        })
        .collect();
    if !table.is_empty() {
        print!(
            "{}",
            crate::render::table(["NAME", "SIZE", "QUANT", "WHERE"], &table)
        );
    }
    println!("\ncatalogue (`flotilla model pull NAME`):");
    for e in catalogue::CATALOGUE {
        println!("  {:<22} {}", e.name, e.about);
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(paths: &Paths, args: ServeArgs) -> Result<ExitCode> {
    let dir = catalogue::models_dir(&paths.data_dir);
    let model = catalogue::resolve(&args.model, &dir).map_err(anyhow::Error::msg)?;
    // A bad file is refused here, with what is wrong, before any engine.
    flotilla_local::engine::check_gguf(&model).map_err(anyhow::Error::msg)?;
    if args.parallel == 0 || args.ctx < 256 {
        anyhow::bail!("--parallel must be at least 1 and --ctx at least 256");
    }
    let exe = std::env::current_exe().context("cannot find the flotilla executable")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = flotilla_local::supervise::ServeConfig {
        model: model.clone(),
        ctx: args.ctx,
        parallel: args.parallel,
        threads: args.threads,
        engine_cmd: vec![
            exe.to_string_lossy().into_owned(),
            "model".into(),
            "engine".into(),
        ],
        idle_exit: args.idle_exit.map(Duration::from_secs),
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    let shown = model.display().to_string();
    flotilla_local::supervise::serve(config, listener, shutdown, move |addr| {
        use std::io::Write;
        eprintln!("serving {shown} on http://{addr}/v1");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {addr}");
        let _ = out.flush();
    })
    .await
    .map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}
