//! `flotilla policy check|test`, `flotilla approvals`, `approve`, `deny`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use flotilla_fleet::PolicyConfig;
use flotilla_policy::{config::run_examples, request, Engine, LayerPaths, Layers, Principal};
use flotilla_protocol::{
    ApprovalInfo, ApprovalList, ApproveRequest, DenyRequest, SessionPermissions,
};
use flotilla_server::Paths;
use hyper::Method;

use crate::client::connect_or_start;

/// Help shown after `flotilla policy --help`.
pub const POLICY_HELP: &str = "\
Rules are written as in Claude Code: `Tool` or `Tool(specifier)`.
  Shell(npm run test:*)   commands starting with `npm run test` (Bash(...) works too)
  Shell(git push *)       `git push` with or without arguments
  Read(./.env)            a path, relative to the workspace; /abs, ~/home paths work
  Edit(src/**)            * stays within a folder, ** crosses folders
  Fetch(domain:github.com)
Order: deny, then ask, then allow; then the mode decides.
Layers: admin (managed.toml) > command line > project (.flotilla/config.toml) > user (config.toml).

Examples:
  flotilla policy check --tool Shell --input 'git push --force' --mode auto
  flotilla policy check --tool Edit --input .bashrc --json
  flotilla policy test";

/// `flotilla policy`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Decide one call against the layers, and say which rule and layer decided.
    Check(CheckArgs),
    /// Run the `match` / `not_match` examples of every [[permissions.rules]].
    Test(TestArgs),
}

/// `flotilla policy check`
#[derive(Args)]
pub struct CheckArgs {
    /// The tool: Shell, Read, Edit, Write, Grep, Glob, List, Fetch, mcp__SERVER__TOOL.
    #[arg(long)]
    tool: String,
    /// The command (Shell), path (Read, Edit...) or domain (Fetch).
    #[arg(long)]
    input: Option<String>,
    /// Same as --input, for path tools.
    #[arg(long)]
    path: Option<String>,
    /// The command-line layer, as `flotilla run` would set it.
    #[command(flatten)]
    permissions: PermissionArgs,
    /// The workspace (default: the current folder).
    #[arg(long, short = 'w')]
    workspace: Option<PathBuf>,
    /// Tiers to assume the principal is vetted for (with a fresh MFA login).
    #[arg(long)]
    vetted: Vec<String>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// The command-line policy layer: `--mode`, `--allow`, `--ask`, `--deny`
/// (of `flotilla run` and `flotilla policy check`).
#[derive(Args)]
pub struct PermissionArgs {
    /// Permission mode: plan, ask (default), accept-edits, auto, bypass
    /// (bypass only where the admin permits it).
    #[arg(long)]
    mode: Option<String>,
    /// Allow rule, e.g. 'Shell(npm run test:*)' (repeatable).
    #[arg(long)]
    allow: Vec<String>,
    /// Ask rule (repeatable).
    #[arg(long)]
    ask: Vec<String>,
    /// Deny rule, e.g. 'Shell(git push *)' (repeatable).
    #[arg(long)]
    deny: Vec<String>,
}

impl PermissionArgs {
    /// The layer as the daemon records it.
    pub fn into_permissions(self) -> SessionPermissions {
        SessionPermissions {
            mode: self.mode,
            allow: self.allow,
            ask: self.ask,
            deny: self.deny,
        }
    }
}

/// `flotilla policy test`
#[derive(Args)]
pub struct TestArgs {
    /// The workspace (default: the current folder).
    #[arg(long, short = 'w')]
    workspace: Option<PathBuf>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// The policy layers of this flotilla home.
pub fn policy_config(paths: &Paths) -> PolicyConfig {
    let mut layer_paths = LayerPaths::standard(&paths.home);
    layer_paths.user = paths.config_file.clone();
    PolicyConfig {
        paths: layer_paths,
        home: std::env::var_os("HOME").map(PathBuf::from),
    }
}

fn workspace(w: Option<PathBuf>) -> Result<PathBuf> {
    let w = match w {
        Some(w) => w,
        None => std::env::current_dir().context("cannot read the current folder")?,
    };
    w.canonicalize()
        .with_context(|| format!("workspace {}", w.display()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `flotilla policy ...`
pub fn policy(paths: &Paths, command: PolicyCommand) -> Result<ExitCode> {
    let config = policy_config(paths);
    match command {
        PolicyCommand::Check(args) => {
            let ws = workspace(args.workspace)?;
            let cli = args.permissions.into_permissions();
            let layers = Layers::load(&config.paths, &ws, &cli, &[])?;
            let spec = layers.spec(&ws, config.home.as_deref())?;
            let inactive = spec.inactive.clone();
            let engine = Engine::new(spec)?;
            let input = args
                .input
                .or(args.path)
                .context("say what to check: --input COMMAND|PATH|DOMAIN")?;
            let check = request::check_dialect(&args.tool, &input, &ws, config.home.as_deref())
                .map_err(anyhow::Error::msg)?;
            let principal = Principal {
                name: "policy-check".into(),
                vetted: args.vetted,
                mfa_verified_ms: Some(now_ms()),
            };
            let d = engine.decide(&check, &principal, now_ms());
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "decision": d.verdict.as_str(),
                        "reason": d.reason,
                        "rule": d.rule,
                        "layer": d.layer,
                        "item": d.item,
                        "mode": engine.mode().as_str(),
                        "parts": check.items.iter().filter(|i| !i.implied).map(|i| if i.command.is_empty() { i.path.clone() } else { i.command.clone() }).collect::<Vec<_>>(),
                        "inactive": inactive,
                    })
                );
            } else {
                println!("{}: {}", d.verdict.as_str().to_uppercase(), d.reason);
                match (&d.rule, &d.layer) {
                    (Some(r), Some(l)) => println!("  decided by: {r} ({l} layer)"),
                    (None, Some(l)) => println!("  decided by: {l}"),
                    _ => {}
                }
                println!("  mode: {}", engine.mode());
                if check.items.iter().filter(|i| !i.implied).count() > 1 {
                    println!("  parts checked:");
                    for i in check.items.iter().filter(|i| !i.implied) {
                        let what = if i.command.is_empty() {
                            &i.path
                        } else {
                            &i.command
                        };
                        println!("    {} {what}", i.action);
                    }
                }
                for note in inactive {
                    println!("  note: {note}");
                }
            }
            Ok(match d.verdict {
                flotilla_protocol::PolicyVerdict::Allow => ExitCode::SUCCESS,
                flotilla_protocol::PolicyVerdict::Ask => ExitCode::from(2),
                flotilla_protocol::PolicyVerdict::Deny => ExitCode::from(3),
            })
        }
        PolicyCommand::Test(args) => {
            let ws = workspace(args.workspace)?;
            let layers = Layers::load(&config.paths, &ws, &SessionPermissions::default(), &[])?;
            // Loading the engine checks every rule and raw Cedar policy too.
            Engine::new(layers.spec(&ws, config.home.as_deref())?)?;
            let (ran, failures) = run_examples(&layers, &ws, config.home.as_deref())?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "examples": ran,
                        "failures": failures.iter().map(|f| serde_json::json!({
                            "location": f.location, "rule": f.rule, "input": f.input,
                            "expected": if f.expected_match { "match" } else { "not_match" },
                        })).collect::<Vec<_>>(),
                    })
                );
            } else {
                for f in &failures {
                    let want = if f.expected_match {
                        "should match"
                    } else {
                        "should not match"
                    };
                    println!(
                        "FAIL {}: rule `{}` {want} {:?}",
                        f.location, f.rule, f.input
                    );
                }
                println!("{ran} example(s), {} failure(s)", failures.len());
            }
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `flotilla approvals`
#[derive(Args)]
pub struct ApprovalsArgs {
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// `flotilla approve`
#[derive(Args)]
pub struct ApproveArgs {
    /// The approval id (`flotilla approvals` lists them).
    id: String,
    /// Also allow such calls from now on, in this layer: session (this
    /// session only), project (.flotilla/config.toml) or user (config.toml).
    #[arg(long, value_parser = ["session", "project", "user"])]
    always: Option<String>,
    /// The rule --always adds (default: the approval's suggested rule).
    #[arg(long, requires = "always")]
    rule: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `flotilla deny`
#[derive(Args)]
pub struct DenyArgs {
    /// The approval id.
    id: String,
    /// Why; the agent is told, so it can try something else.
    #[arg(long)]
    reason: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

fn age(ms: i64) -> String {
    let s = ((now_ms() - ms) / 1000).max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// `flotilla approvals`
pub async fn approvals(paths: &Paths, args: ApprovalsArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let list: ApprovalList = client.call(Method::GET, "/v1/approvals", None).await?;
    if args.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.approvals.is_empty() {
        println!("no calls are waiting for approval");
    }
    for a in &list.approvals {
        // A fleet worker's approval names the worker and its planner, and
        // when the fleet's escalation will deny it.
        let who = match (&a.agent, &a.fleet) {
            (Some(agent), Some(fleet)) => format!("{}  worker {agent} of fleet {fleet}", a.session),
            _ => a.session.to_string(),
        };
        println!(
            "{}  {}  {} ago  {}\n    why: {}\n    flotilla approve {} [--always session|project|user]   (adds {})\n    flotilla deny {} --reason TEXT",
            a.approval_id, who, age(a.requested_ms), a.summary, a.reason, a.approval_id, a.suggested_rule, a.approval_id
        );
        if let Some(at) = a.escalates_ms {
            println!(
                "    denied by the fleet's escalation in {} unless answered",
                age(now_ms() - (at - now_ms()))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla approve`
pub async fn approve(paths: &Paths, args: ApproveArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let req = ApproveRequest {
        always: args.always.clone(),
        rule: args.rule,
    };
    let info: ApprovalInfo = client
        .call(
            Method::POST,
            &format!("/v1/approvals/{}/approve", args.id),
            Some(&serde_json::to_value(&req)?),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        println!("approved {}: {}", info.approval_id, info.summary);
        if let Some(layer) = args.always {
            println!(
                "  and from now on ({layer} layer): {}",
                req.rule.unwrap_or(info.suggested_rule)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla deny`
pub async fn deny(paths: &Paths, args: DenyArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let req = DenyRequest {
        reason: args.reason,
    };
    let info: ApprovalInfo = client
        .call(
            Method::POST,
            &format!("/v1/approvals/{}/deny", args.id),
            Some(&serde_json::to_value(&req)?),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        println!("denied {}: {}", info.approval_id, info.summary);
    }
    Ok(ExitCode::SUCCESS)
}
