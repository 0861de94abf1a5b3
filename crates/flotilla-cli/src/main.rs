//! `flotilla`: run fleets of coding agents under a durable daemon.

mod audit_cmd;
mod client;
mod config;
mod fit_cmd;
mod model_cmd;
mod policy_cmd;
mod principal_cmd;
mod render;
mod sandbox_cmd;
mod secrets_cmd;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use client::{connect_or_start, Client};
use flotilla_agent::tools::{sandbox_base_env, ProxySettings, SandboxFactory};
use flotilla_fleet::FleetConfig;
use flotilla_protocol::{
    CreateSessionRequest, DaemonStatus, Event, EventPage, ModelSpec, SessionId, SessionInfo,
    SessionList, SessionState,
};
use flotilla_server::{Paths, ServeOptions};
use flotilla_store::Durability;
use hyper::Method;

const AFTER_HELP: &str = "\
Every client command starts the daemon in the background if none is running.
FLOTILLA_HOME puts config, data and socket under one folder; otherwise the XDG
folders are used. Models: `openai:MODEL` talks to any OpenAI-compatible server
at OPENAI_BASE_URL (default https://api.openai.com/v1) with OPENAI_API_KEY;
`anthropic:MODEL` talks to the Anthropic Messages API at ANTHROPIC_BASE_URL
(default https://api.anthropic.com) with ANTHROPIC_API_KEY.

Examples:
  flotilla run --workspace . --model openai:gpt-4o-mini \"add a --verbose flag\"
  flotilla run --detach --workspace ~/src/app \"fix the failing test\"
  flotilla ps
  flotilla attach s3k9x2m1q0ab";

/// Run fleets of coding agents under a durable daemon.
#[derive(Parser)]
#[command(name = "flotilla", version, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (client commands start it for you).
    Serve(ServeArgs),
    /// Start an agent session on a task, and follow it unless --detach.
    #[command(after_help = WORKFLOW_HELP)]
    Run(RunArgs),
    /// List sessions: id, state, model, age, turns, tokens, workspace.
    Ps(PsArgs),
    /// Show a session's whole history, then its live events until it ends.
    /// Ctrl-C detaches; the session goes on.
    Attach(AttachArgs),
    /// Print a session's event log.
    Logs(LogsArgs),
    /// Cancel a session.
    Cancel(CancelArgs),
    /// Run one command confined like an agent's commands (`-- CMD ARGS...`),
    /// or check which sandbox layers this machine supports (`--check`).
    #[command(after_help = sandbox_cmd::SANDBOX_HELP)]
    Sandbox(sandbox_cmd::SandboxArgs),
    /// Check and test permission rules (`policy check`, `policy test`).
    #[command(after_help = policy_cmd::POLICY_HELP)]
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// List the tool calls waiting for a person's approval.
    Approvals(policy_cmd::ApprovalsArgs),
    /// Approve a waiting call (`--always LAYER` also allows such calls from now on).
    Approve(policy_cmd::ApproveArgs),
    /// Deny a waiting call; the agent is told the reason.
    Deny(policy_cmd::DenyArgs),
    /// Manage principals: who may use the daemon, their roles, vetted
    /// tiers, API tokens and TOTP MFA.
    #[command(after_help = principal_cmd::PRINCIPAL_HELP)]
    Principal {
        #[command(subcommand)]
        command: principal_cmd::PrincipalCommand,
    },
    /// Prove your second factor: the current code of your authenticator app
    /// (enroll first with `flotilla principal mfa-enroll`).
    Login(principal_cmd::LoginArgs),
    /// Who the daemon takes you for: name, uid, roles, vetted tiers, MFA.
    Whoami(principal_cmd::JsonArgs),
    /// Will a local model fit this machine and the configured ones, and how
    /// fast will it decode? Reads a GGUF file's header, or a shape.
    #[command(after_help = fit_cmd::FIT_HELP)]
    Fit(fit_cmd::FitArgs),
    /// This machine (GPUs detected, else RAM) and the [[machines]] of the config.
    Machines(fit_cmd::MachinesArgs),
    /// Local models: `pull` from the hub, `list`, `serve` over OpenAI's API.
    #[command(after_help = model_cmd::MODEL_HELP)]
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Manage secrets that sessions use without seeing them (`add`, `list`, `rm`).
    #[command(after_help = secrets_cmd::SECRETS_HELP)]
    Secrets {
        #[command(subcommand)]
        command: secrets_cmd::SecretsCommand,
    },
    /// The tamper-evident activity log: list and filter records, `verify`
    /// the hash chains, `export`, `checkpoint`, `prune`.
    #[command(after_help = audit_cmd::AUDIT_HELP)]
    Audit(audit_cmd::AuditArgs),
    /// Manage the daemon.
    Daemon {
        #[command(subcommand)]
        command: DaemonCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Also listen on TCP at this address (e.g. 127.0.0.1:7777); clients
    /// must send `Authorization: Bearer TOKEN` (the token file is in the run folder).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Commit durability: full (fsync, survives power loss), normal (survives
    /// a daemon crash), off (benchmarks only).
    #[arg(long, default_value = "full", value_parser = ["full", "normal", "off"])]
    durability: String,
}

const WORKFLOW_HELP: &str = "\
Fleets:
  flotilla run --planner anthropic:MODEL --workers openai:LOCAL --max-workers 8 \\
      --workspace REPO \"task\"
  flotilla run --workflow docs.toml --workspace REPO

A workflow file (TOML) is a declarative fleet: steps run in order, each by
workers on their own git branches (merged when the step ends) or read-only
(workspace = \"shared\"), the outputs of one feeding the next:

  name = \"document the crate\"
  model = \"openai:qwen3\"                    # the workers' model
  [budget]
  max_tokens = 200000                       # also max_cost_usd, wall_time_secs, max_workers
  [[steps]]
  name = \"plan\"
  agent = \"List the files that need docs, one per line, nothing else.\"
  workspace = \"shared\"
  [[steps]]
  name = \"docs\"
  parallel = { over = { lines = \"{{steps.plan.output}}\" }, agent = \"Document {{item}}.\" }
  [[steps]]
  name = \"notes\"
  pipeline = [\"Summarise: {{input}}\", \"Write release notes from: {{input}}\"]

over is one of list = [..], glob = \"src/**/*.rs\", command = \"git ls-files\" (run in
the sandbox; policy must allow it outright) or lines = \"TEXT\". See docs/fleet.md.";

#[derive(Args)]
#[command(group(clap::ArgGroup::new("fleet").args(["planner", "workflow"]).multiple(false)))]
struct RunArgs {
    /// What the agent should do (a workflow's default: its name).
    #[arg(required_unless_present = "workflow")]
    task: Option<String>,
    /// Run a declarative fleet from this TOML file (see below).
    #[arg(long, value_name = "FILE.toml", conflicts_with = "model")]
    workflow: Option<PathBuf>,
    /// The folder the agent works in (default: the current folder).
    #[arg(long, short = 'w')]
    workspace: Option<PathBuf>,
    /// Model spec PROVIDER:MODEL, e.g. openai:gpt-4o-mini (default: the
    /// role's model, else `model` in config.toml or FLOTILLA_MODEL).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// Run as a role of the daemon's config ([roles.NAME]): its model,
    /// endpoint and fallbacks; only `planner` may use frontier endpoints
    /// unless the role says `frontier = true`.
    #[arg(long)]
    role: Option<String>,
    /// Let the session use a secret of the vault:
    /// NAME[:ttl=2h][:host=H][:method=GET,POST][:path=/prefix]. Its sandbox
    /// sees a placeholder; the proxy sends the value to the granted hosts
    /// only. Repeat for several.
    #[arg(long = "grant", value_name = "SPEC")]
    grants: Vec<String>,
    /// Print the session id and return at once.
    #[arg(long, short = 'd')]
    detach: bool,
    /// JSON output: the session with --detach, else one event per line.
    #[arg(long)]
    json: bool,
    /// Model turns before the session gives up.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Seconds of (awake) wall time before the session gives up.
    #[arg(long)]
    wall_time: Option<u64>,
    #[command(flatten)]
    permissions: policy_cmd::PermissionArgs,
    /// The model's context window in tokens (compaction starts at 75%).
    #[arg(long)]
    context_window: Option<u64>,
    /// Run a fleet: the session is a planner on this model (PROVIDER:MODEL)
    /// with the tools spawn_agent, wait_agents, list_agents, cancel_agent and
    /// merge_worker; each worker gets a git worktree of the workspace.
    #[arg(long, value_name = "MODEL", conflicts_with = "model")]
    planner: Option<String>,
    /// The workers' model (PROVIDER:MODEL; a local endpoint unless
    /// [roles.worker] allows frontier ones). Default: the planner's.
    #[arg(long, value_name = "MODEL", requires = "fleet")]
    workers: Option<String>,
    /// Workers running at once in the fleet.
    #[arg(long, default_value_t = 16, requires = "fleet")]
    max_workers: u32,
    /// Levels of workers below the planner (workers of workers...).
    #[arg(long, default_value_t = 2, requires = "planner")]
    max_depth: u32,
    /// Workers the fleet may start over the whole run.
    #[arg(long, default_value_t = 1000, requires = "planner")]
    max_total: u32,
    /// Seconds a worker's approval waits for a person (`flotilla
    /// approvals`) before it is denied, so no worker hangs silently.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "fleet")]
    approval_timeout: u64,
    /// Tokens the whole fleet may use; past it every agent is cancelled.
    #[arg(long, value_name = "N", requires = "fleet")]
    max_tokens: Option<u64>,
    /// US dollars the whole fleet may spend (models priced in [prices]).
    #[arg(long, value_name = "USD", requires = "fleet")]
    max_cost: Option<f64>,
}

#[derive(Args)]
struct PsArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Fleets as trees: each planner with its workers indented below it.
    #[arg(long)]
    tree: bool,
    /// Only sessions in these states (comma-separated: running, completed, failed, cancelled).
    #[arg(long)]
    state: Option<String>,
}

#[derive(Args)]
struct AttachArgs {
    /// Session id, or PLANNER_ID/WORKER for a worker of a fleet (its name,
    /// as `ps --tree` shows it).
    id: String,
    /// One JSON event per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LogsArgs {
    /// Session id.
    id: String,
    /// One JSON event per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CancelArgs {
    /// Session id.
    id: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Whether the daemon runs, its pid, socket and session counts (exit 1 when not running).
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon; running sessions resume at its next start.
    Stop {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // The sandbox helper must run before any thread exists (it forks).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(flotilla_sandbox::HELPER_ARG))
    {
        let code = flotilla_sandbox::helper_main();
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flotilla: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let paths = Paths::from_env();
    match cli.command {
        Command::Serve(args) => serve(paths, args).await,
        Command::Run(args) => run(paths, args).await,
        Command::Ps(args) => ps(paths, args).await,
        Command::Attach(args) => {
            let client = connect_or_start(&paths).await?;
            let id = resolve_agent(&client, &args.id).await?;
            follow(&client, &id, args.json).await
        }
        Command::Logs(args) => logs(paths, args).await,
        Command::Cancel(args) => {
            let client = connect_or_start(&paths).await?;
            let id = parse_id(&args.id)?;
            let info: SessionInfo = client
                .call(Method::POST, &format!("/v1/sessions/{id}/cancel"), None)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("{} {}", info.id, info.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(args) => sandbox_cmd::sandbox(&paths, args).await,
        Command::Daemon { command } => daemon(paths, command).await,
        Command::Principal { command } => principal_cmd::principal(&paths, command).await,
        Command::Login(args) => principal_cmd::login(&paths, args).await,
        Command::Whoami(args) => principal_cmd::whoami(&paths, args).await,
        Command::Policy { command } => policy_cmd::policy(&paths, command),
        Command::Fit(args) => fit_cmd::fit(&paths, args),
        Command::Machines(args) => fit_cmd::list(&paths, args),
        Command::Model { command } => model_cmd::model(&paths, command).await,
        Command::Secrets { command } => secrets_cmd::secrets(&paths, command).await,
        Command::Audit(args) => audit_cmd::audit(&paths, args).await,
        Command::Approvals(args) => policy_cmd::approvals(&paths, args).await,
        Command::Approve(args) => policy_cmd::approve(&paths, args).await,
        Command::Deny(args) => policy_cmd::deny(&paths, args).await,
    }
}

fn parse_id(raw: &str) -> Result<SessionId> {
    Ok(SessionId::parse(raw)?)
}

/// A session id, or `PLANNER/WORKER`: the worker of that fleet with that
/// name.
async fn resolve_agent(client: &client::Client, raw: &str) -> Result<SessionId> {
    let Some((root, name)) = raw.split_once('/') else {
        return parse_id(raw);
    };
    let root = parse_id(root)?;
    let list: SessionList = client.call(Method::GET, "/v1/sessions", None).await?;
    let fleet: Vec<&SessionInfo> = list
        .sessions
        .iter()
        .filter(|s| s.root.as_ref() == Some(&root) && s.id != root)
        .collect();
    if let Some(s) = fleet.iter().find(|s| s.name.as_deref() == Some(name)) {
        return Ok(s.id.clone());
    }
    let names: Vec<&str> = fleet.iter().filter_map(|s| s.name.as_deref()).collect();
    anyhow::bail!(
        "fleet {root} has no worker {name:?} (its workers: {})",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )
}

async fn serve(paths: Paths, args: ServeArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = config::load(&paths.config_file)?;
    let durability = match args.durability.as_str() {
        "normal" => Durability::Normal,
        "off" => Durability::Off,
        _ => Durability::Full,
    };
    let executor = Arc::new(session_sandboxes(&paths, &cfg)?);
    // A session's sandbox gets a helper (and cgroup) prepared ahead of time.
    tokio::task::spawn_blocking(|| flotilla_sandbox::enable_prewarm(1)).await?;
    let policy = policy_cmd::policy_config(&paths);
    let audit = cfg.audit.settings(&policy.paths)?;
    let worktrees = paths.worktrees.clone();
    // `local:` models: `flotilla model serve` children, started on demand.
    let local_models =
        flotilla_local::manager::LocalServers::new(flotilla_local::manager::LocalConfig {
            exe: std::env::current_exe().context("cannot find the flotilla executable")?,
            models_dir: flotilla_local::catalogue::models_dir(&paths.data_dir),
            ctx: cfg.local.ctx.unwrap_or(4096),
            parallel: cfg.local.parallel.unwrap_or(4),
            idle_exit: std::time::Duration::from_secs(cfg.local.idle_exit_secs.unwrap_or(600)),
        });
    let served = flotilla_server::serve(ServeOptions {
        paths,
        listen: args.listen,
        fleet: FleetConfig {
            policy: Some(policy),
            worktrees_dir: Some(worktrees),
            local_models: Some(local_models),
            ..cfg.fleet_config()
        },
        durability,
        executor,
        factory: None,
        audit,
    })
    .await;
    flotilla_sandbox::drain_prewarmed().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Every session's commands run in a sandbox of their own, built from the
/// `[sandbox]` config; the daemon's own files are hidden from all of them.
fn session_sandboxes(paths: &Paths, cfg: &config::ConfigFile) -> Result<SandboxFactory> {
    let template = cfg.sandbox.template_hiding(paths);
    let proxy = if cfg.sandbox.proxy_enabled() {
        let socket_dir = paths.run_dir.join("egress");
        std::fs::create_dir_all(&socket_dir)
            .with_context(|| format!("cannot create {}", socket_dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))?;
        // The daemon's CA: sessions with granted secrets have their TLS
        // intercepted with it (and trust it through SSL_CERT_FILE & co.).
        let (ca, ca_bundle) = match flotilla_sandbox::ca::CertAuthority::load_or_create(
            &paths.data_dir.join("ca"),
        ) {
            Ok(ca) => {
                let bundle = socket_dir.join("ca-bundle.pem");
                match ca.write_bundle(&bundle) {
                    Ok(()) => (Some(Arc::new(ca)), Some(bundle)),
                    Err(e) => {
                        tracing::error!(path = %bundle.display(), error = %e, "cannot write the CA bundle; granted secrets cannot be used");
                        (None, None)
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "no CA for the egress proxy; granted secrets cannot be used");
                (None, None)
            }
        };
        Some(ProxySettings {
            policy: flotilla_sandbox::proxy::DomainPolicy::new(
                &cfg.sandbox.network.allow,
                &cfg.sandbox.network.deny,
            )?,
            upstream_tls: match &ca {
                Some(_) => Some(
                    flotilla_sandbox::proxy::upstream_client_config(&cfg.sandbox.network.ca_files)
                        .context("invalid [sandbox.network] ca_files")?,
                ),
                None => None,
            },
            socket_dir,
            ca,
            ca_bundle,
        })
    } else {
        None
    };
    Ok(SandboxFactory::new(
        template,
        flotilla_sandbox::HelperCommand::current_exe()
            .context("cannot find the flotilla executable for the sandbox helper")?,
        sandbox_base_env(),
        proxy,
    ))
}

/// The environment variable naming the endpoint of a session's provider
/// (the `--model` given, else the config's default model); none for
/// Bedrock, whose endpoint the daemon's AWS configuration decides.
fn base_url_var(paths: &Paths, model: Option<&str>) -> Option<&'static str> {
    let model = model
        .map(str::to_owned)
        .or_else(|| config::load(&paths.config_file).ok().and_then(|c| c.model));
    match model.as_deref().and_then(|m| ModelSpec::parse(m).ok()) {
        Some(spec) if spec.provider == "anthropic" => Some("ANTHROPIC_BASE_URL"),
        Some(spec) if spec.provider == "bedrock" => None,
        _ => Some("OPENAI_BASE_URL"),
    }
}

async fn run(paths: Paths, args: RunArgs) -> Result<ExitCode> {
    let workspace = match args.workspace {
        Some(w) => w,
        None => std::env::current_dir().context("cannot read the current folder")?,
    };
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("workspace {}", workspace.display()))?;
    let workflow = match &args.workflow {
        Some(file) => Some(load_workflow(file)?),
        None => None,
    };
    let budget = workflow
        .as_ref()
        .and_then(|w| w.budget.clone())
        .unwrap_or_default();
    let task = match (&args.task, &workflow) {
        (Some(t), _) => t.clone(),
        (None, Some(w)) => w.name.clone().unwrap_or_else(|| {
            format!(
                "workflow {} ({} steps)",
                args.workflow.as_deref().unwrap_or(Path::new("?")).display(),
                w.steps.len()
            )
        }),
        (None, None) => anyhow::bail!("say what the agent should do: flotilla run \"TASK\""),
    };
    let workers = args
        .workers
        .clone()
        .or_else(|| workflow.as_ref().and_then(|w| w.model.clone()));
    let root_model = args
        .model
        .clone()
        .or(args.planner.clone())
        .or(workers.clone().filter(|_| workflow.is_some()));
    let wall_time = args.wall_time.or(budget.wall_time_secs);
    let fleet =
        (args.planner.is_some() || workflow.is_some()).then(|| flotilla_protocol::FleetSpec {
            worker_model: workers.clone(),
            // The shell's endpoint serves the workers' provider too.
            worker_base_url: base_url_var(&paths, workers.as_deref())
                .and_then(|v| std::env::var(v).ok())
                .filter(|v| workers.is_some() && !v.is_empty()),
            max_workers: budget.max_workers.unwrap_or(args.max_workers),
            // A workflow's workers do their step; they start no workers.
            max_depth: if workflow.is_some() {
                1
            } else {
                args.max_depth
            },
            max_total: args.max_total,
            approval_timeout_secs: args.approval_timeout,
            max_tokens: args.max_tokens.or(budget.max_tokens),
            max_cost_usd: args.max_cost.or(budget.max_cost_usd),
            repo_config: None,
            workflow: workflow.clone(),
        });
    let base_url_var = base_url_var(&paths, root_model.as_deref());
    // A role names its own endpoint; the shell's applies to an explicit model.
    let shell_endpoint = args.role.is_none() || args.model.is_some();
    let req = CreateSessionRequest {
        task,
        workspace: workspace.to_string_lossy().into_owned(),
        model: root_model.clone(),
        // The endpoint of this shell, for the provider the session uses.
        base_url: base_url_var
            .and_then(|v| std::env::var(v).ok())
            .filter(|v| shell_endpoint && !v.is_empty()),
        max_turns: args.max_turns,
        wall_time_secs: wall_time,
        context_window: args.context_window,
        permissions: Some(args.permissions.into_permissions()),
        role: args.role,
        grants: args.grants,
        fleet,
    };
    let client = connect_or_start(&paths).await?;
    let info: SessionInfo = client
        .call(
            Method::POST,
            "/v1/sessions",
            Some(&serde_json::to_value(&req)?),
        )
        .await?;
    if root_model.is_none() && info.model.starts_with("local:") {
        eprintln!(
            "no model provider configured: running on the embedded model {} (see `flotilla model list`; set `model` in config.toml or OPENAI_BASE_URL to use another)",
            info.model
        );
    }
    if args.detach {
        if args.json {
            println!("{}", serde_json::to_string(&info)?);
        } else {
            println!("{}", info.id);
            eprintln!(
                "session {} started; follow it with `flotilla attach {}`",
                info.id, info.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(&client, &info.id, args.json).await
}

/// Reads and checks a workflow file: TOML errors name the line, and the
/// steps are checked (names, templates) before anything runs.
fn load_workflow(file: &Path) -> Result<flotilla_protocol::Workflow> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the workflow {}", file.display()))?;
    let wf: flotilla_protocol::Workflow =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("workflow {}: {e}", file.display()))?;
    wf.validate()
        .map_err(|e| anyhow::anyhow!("workflow {}: {e}", file.display()))?;
    Ok(wf)
}

fn print_event(e: &Event, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        writeln!(out, "{}", render::event_line(e))?;
    }
    out.flush()?;
    Ok(())
}

fn exit_for(state: SessionState) -> ExitCode {
    match state {
        SessionState::Completed => ExitCode::SUCCESS,
        SessionState::Cancelled => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

/// Streams a session's events until it ends; Ctrl-C detaches.
async fn follow(client: &Client, id: &SessionId, json: bool) -> Result<ExitCode> {
    let mut after = 0u64;
    let mut reconnects = 0u32;
    loop {
        let mut stream = client
            .stream(&format!("/v1/sessions/{id}/stream?after={after}"))
            .await?;
        let ended = loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("\ndetached from {id}; the session goes on. Re-attach with `flotilla attach {id}`");
                    return Ok(ExitCode::SUCCESS);
                }
            };
            match msg {
                Ok(Some(m)) if m.event == "event" => {
                    let e: Event = serde_json::from_str(&m.data)
                        .context("the daemon sent an event this client cannot read")?;
                    after = e.seq;
                    print_event(&e, json)?;
                }
                Ok(Some(m)) if m.event == "end" => break true,
                Ok(Some(m)) if m.event == "error" => bail!("the daemon reported: {}", m.data),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break false,
            }
        };
        if ended {
            let info: SessionInfo = client
                .call(Method::GET, &format!("/v1/sessions/{id}"), None)
                .await?;
            if !json {
                match info.state {
                    SessionState::Completed => {}
                    s => eprintln!(
                        "session {id} {s}{}",
                        info.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                }
            }
            return Ok(exit_for(info.state));
        }
        // The daemon went away (stopped or restarted): wait for it and go on
        // from the last event seen, so nothing is shown twice or skipped.
        reconnects += 1;
        if reconnects > 100 {
            bail!("lost the daemon too many times while following {id}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if !client.ping().await {
            eprintln!("the daemon stopped; waiting for it to come back (Ctrl-C to leave)…");
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
                if client.ping().await {
                    break;
                }
            }
        }
    }
}

async fn ps(paths: Paths, args: PsArgs) -> Result<ExitCode> {
    let client = connect_or_start(&paths).await?;
    let path = match &args.state {
        Some(s) => format!("/v1/sessions?state={s}"),
        None => "/v1/sessions".to_string(),
    };
    let list: SessionList = client.call(Method::GET, &path, None).await?;
    if args.json {
        println!("{}", serde_json::to_string(&list.sessions)?);
    } else if list.sessions.is_empty() {
        println!("no sessions; start one with `flotilla run --workspace DIR \"task\"`");
    } else if args.tree {
        print!("{}", render::session_tree(&list.sessions, now_ms()));
    } else {
        print!("{}", render::session_table(&list.sessions, now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn logs(paths: Paths, args: LogsArgs) -> Result<ExitCode> {
    let client = connect_or_start(&paths).await?;
    let id = parse_id(&args.id)?;
    let mut after = 0;
    loop {
        let page: EventPage = client
            .call(
                Method::GET,
                &format!("/v1/sessions/{id}/events?after={after}&limit=1000"),
                None,
            )
            .await?;
        for e in &page.events {
            print_event(e, args.json)?;
        }
        if page.events.is_empty() {
            break;
        }
        after = page.next_after;
    }
    Ok(ExitCode::SUCCESS)
}

async fn daemon(paths: Paths, command: DaemonCommand) -> Result<ExitCode> {
    let client = Client::new(&paths.socket);
    match command {
        DaemonCommand::Status { json } => {
            let status: Result<DaemonStatus> = client.call(Method::GET, "/v1/daemon", None).await;
            match status {
                Ok(s) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string(
                                &serde_json::json!({"running": true, "daemon": s})
                            )?
                        );
                    } else {
                        println!("running   pid {} (flotilla {})", s.pid, s.version);
                        println!("socket    {}", s.socket);
                        if let Some(t) = &s.tcp {
                            println!("tcp       {t}");
                        }
                        println!("database  {}", s.database);
                        println!(
                            "sessions  {} total, {} active",
                            s.sessions_total, s.sessions_active
                        );
                        if let Some(rss) = s.rss_bytes {
                            println!("memory    {:.1} MiB", rss as f64 / 1048576.0);
                        }
                        println!("uptime    {}", render::age(now_ms(), s.started_ms));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(_) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"running": false, "socket": paths.socket})
                        );
                    } else {
                        println!(
                            "not running (no daemon answers on {})",
                            paths.socket.display()
                        );
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        DaemonCommand::Stop { json } => {
            let pid = client
                .call::<DaemonStatus>(Method::GET, "/v1/daemon", None)
                .await
                .ok()
                .map(|s| s.pid);
            let Some(pid) = pid else {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"stopped": false, "running": false})
                    );
                } else {
                    println!("not running");
                }
                return Ok(ExitCode::SUCCESS);
            };
            let _: serde_json::Value = client.call(Method::POST, "/v1/daemon/stop", None).await?;
            // Wait until the process is gone, so a following start finds the lock free.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while process_alive(pid) {
                if std::time::Instant::now() > deadline {
                    bail!("daemon pid {pid} did not stop within 30s");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if json {
                println!("{}", serde_json::json!({"stopped": true, "pid": pid}));
            } else {
                println!("stopped daemon pid {pid}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_workflows_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let wf = super::load_workflow(&dir.join("workflow.toml")).unwrap();
        assert_eq!(wf.steps.len(), 3);
        let wf = super::load_workflow(&dir.join("demo-workflow.toml")).unwrap();
        assert_eq!(wf.steps.len(), 2);
    }
}
