//! `flotilla sandbox`: one command, confined like an agent's, in the
//! foreground; and `--check`, what this machine supports.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_agent::tools::sandbox_base_env;
use flotilla_sandbox::proxy::{DomainPolicy, EgressObserver, EgressProxy};
use flotilla_sandbox::{
    proxy_env, HelperCommand, NetworkMode, Sandbox, SandboxError, SandboxReport, SpawnRequest,
};
use serde::Serialize;

use crate::config::{self, expand_home};

/// Exit code when the sandbox itself could not be built.
const EXIT_SANDBOX_FAILED: u8 = 125;
/// Exit code when the command could not be started (not found, not executable).
const EXIT_SPAWN_FAILED: u8 = 127;

pub const SANDBOX_HELP: &str = "\
The command runs with the host root read-only, the workspace (the current
folder, or --workspace) and every --write DIR read-write, a private /tmp, a
fresh /proc, a minimal /dev, ~/.ssh, ~/.aws, ~/.gnupg, ~/.config/gh, ~/.netrc,
~/.docker, ~/.kube and flotilla's own data hidden, .git/hooks, .git/config and
.flotilla/ read-only, no network (or only the egress proxy), a seccomp filter,
no capabilities, and process, file and memory limits. Only PATH, HOME, USER,
LANG, TERM and a few such variables pass in; add others with --env.
The [sandbox] section of config.toml applies too.

Exit status: the command's own; 128+N if killed by signal N; 125 if the
sandbox could not be built; 127 if the command could not be started.

Examples:
  flotilla sandbox -- make test
  flotilla sandbox --write ~/.cache/pip -- pip install -r requirements.txt
  flotilla sandbox --network proxy --allow-domain pypi.org --allow-domain '*.pythonhosted.org' -- pip download six
  flotilla sandbox --check";

#[derive(Args)]
pub struct SandboxArgs {
    /// Make DIR writable too (repeatable).
    #[arg(long = "write", value_name = "DIR")]
    write: Vec<PathBuf>,
    /// Hide PATH from the command: a folder appears empty, a file empty (repeatable).
    #[arg(long = "deny-read", value_name = "PATH")]
    deny_read: Vec<PathBuf>,
    /// none: loopback only. proxy: only through flotilla's HTTP(S) proxy,
    /// which lets through the --allow-domain domains.
    #[arg(long, value_parser = ["none", "proxy"])]
    network: Option<String>,
    /// With --network proxy: a domain to let through (`github.com`,
    /// `*.github.com` for subdomains, `*` for all); repeatable.
    #[arg(long = "allow-domain", value_name = "DOMAIN")]
    allow_domain: Vec<String>,
    /// With --network proxy: a domain always refused (deny wins); repeatable.
    #[arg(long = "deny-domain", value_name = "DOMAIN")]
    deny_domain: Vec<String>,
    /// The read-write workspace and working directory (default: the current folder).
    #[arg(long, short = 'w')]
    workspace: Option<PathBuf>,
    /// Pass an environment variable: NAME (its current value) or NAME=VALUE; repeatable.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// After the command, print a JSON report (layers, exit, timings) on stderr.
    #[arg(long)]
    json_report: bool,
    /// Report which layers this machine supports and what the fallback is, then exit.
    #[arg(long)]
    check: bool,
    /// With --check: JSON output.
    #[arg(long)]
    json: bool,
    /// Do not use namespaces: the degraded mode (Landlock + seccomp + rlimits).
    #[arg(long)]
    no_namespaces: bool,
    /// Refuse to run rather than degrade.
    #[arg(long)]
    required: bool,
    /// Processes and threads in the sandbox.
    #[arg(long, value_name = "N")]
    max_processes: Option<u64>,
    /// Memory of the sandbox in MiB (cgroup; 0 for none).
    #[arg(long, value_name = "MIB")]
    memory_mb: Option<u64>,
    /// Largest file the command may write, in MiB.
    #[arg(long, value_name = "MIB")]
    max_file_size_mb: Option<u64>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Serialize)]
struct RunReport<'a> {
    sandbox: &'a SandboxReport,
    exit_code: Option<i32>,
    signal: Option<i32>,
    create_ms: f64,
    run_ms: f64,
}

pub async fn sandbox(paths: &flotilla_server::Paths, args: SandboxArgs) -> Result<ExitCode> {
    let cfg = config::load(&paths.config_file)?;
    let section = &cfg.sandbox;
    let mut spec = section.template_hiding(paths);
    let workspace = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("cannot read the current folder")?,
    };
    spec.workspace = workspace.clone();
    spec.extra_write.extend(args.write.iter().cloned());
    spec.deny_read.extend(args.deny_read.iter().map(|p| {
        let p = expand_home(&p.to_string_lossy());
        std::path::absolute(&p).unwrap_or(p)
    }));
    if args.no_namespaces {
        spec.namespaces = false;
    }
    if args.required {
        spec.required = true;
    }
    if let Some(n) = args.max_processes {
        spec.limits.max_processes = n;
    }
    if let Some(mb) = args.memory_mb {
        spec.limits.memory_bytes = (mb > 0).then_some(mb << 20);
    }
    if let Some(mb) = args.max_file_size_mb {
        spec.limits.max_file_size_bytes = mb << 20;
    }
    let helper = HelperCommand::current_exe().context("cannot find the flotilla executable")?;

    if args.check {
        return check(spec, &helper, args.json).await;
    }
    if args.command.is_empty() {
        bail!("no command given: put it after `--`, e.g. `flotilla sandbox -- make test`");
    }

    let proxy_mode = match args.network.as_deref() {
        Some(mode) => mode == "proxy",
        None => section.proxy_enabled(),
    };
    let mut env = sandbox_base_env();
    for item in &args.env {
        match item.split_once('=') {
            Some((name, value)) => env.push((name.to_string(), value.to_string())),
            None => match std::env::var(item) {
                Ok(value) => env.push((item.clone(), value)),
                Err(_) => bail!("--env {item}: no such variable in this environment"),
            },
        }
    }
    let mut _proxy_dir = None;
    let mut proxy = None;
    if proxy_mode {
        let mut allow = section.network.allow.clone();
        allow.extend(args.allow_domain.iter().cloned());
        let mut deny = section.network.deny.clone();
        deny.extend(args.deny_domain.iter().cloned());
        let policy = DomainPolicy::new(&allow, &deny)?;
        let dir = tempfile::Builder::new()
            .prefix("flotilla-egress-")
            .tempdir()
            .context("cannot create a folder for the proxy socket")?;
        let socket = dir.path().join("proxy.sock");
        let observer: EgressObserver = Arc::new(|record| {
            let verdict = if record.allowed { "allowed" } else { "DENIED" };
            eprintln!(
                "flotilla sandbox: egress {} {} {verdict} ({})",
                record.method, record.target, record.reason
            );
        });
        proxy = Some(EgressProxy::bind_unix(&socket, policy, Some(observer)).await?);
        spec.network = NetworkMode::Proxy {
            socket,
            ca_bundle: None,
        };
        env.extend(proxy_env());
        _proxy_dir = Some(dir);
    } else if !args.allow_domain.is_empty() || !args.deny_domain.is_empty() {
        bail!("--allow-domain and --deny-domain need --network proxy");
    }

    let created = Instant::now();
    let sandbox = match Sandbox::create(spec, &helper).await {
        Ok(s) => s,
        Err(err) => {
            eprintln!("flotilla sandbox: {err}");
            if let SandboxError::InvalidSpec(_) = err {
                eprintln!("flotilla sandbox: check --workspace, --write and --deny-read");
            }
            return Ok(ExitCode::from(EXIT_SANDBOX_FAILED));
        }
    };
    let create_ms = created.elapsed().as_secs_f64() * 1e3;
    for line in &sandbox.report().degraded {
        eprintln!("flotilla sandbox: warning: {line}");
    }
    let started = Instant::now();
    let cwd = std::fs::canonicalize(&workspace).unwrap_or(workspace);
    let spawn = sandbox
        .spawn(SpawnRequest {
            argv: args.command.clone(),
            cwd,
            env,
            stdin: Some(dup_std(0)?),
            stdout: dup_std(1)?,
            stderr: dup_std(2)?,
        })
        .await;
    let mut process = match spawn {
        Ok(p) => p,
        Err(err) => {
            eprintln!("flotilla sandbox: {err}");
            sandbox.shutdown().await;
            return Ok(ExitCode::from(EXIT_SPAWN_FAILED));
        }
    };
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let status = loop {
        tokio::select! {
            status = process.wait() => match status {
                Ok(status) => break status,
                Err(err) => {
                    eprintln!("flotilla sandbox: {err}");
                    sandbox.shutdown().await;
                    return Ok(ExitCode::from(EXIT_SPAWN_FAILED));
                }
            },
            _ = sigint.recv() => { let _ = process.signal_group(libc::SIGINT).await; }
            _ = sigterm.recv() => { let _ = process.signal_group(libc::SIGTERM).await; }
            _ = sighup.recv() => { let _ = process.signal_group(libc::SIGHUP).await; }
        }
    };
    let run_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json_report {
        let report = RunReport {
            sandbox: sandbox.report(),
            exit_code: status.code,
            signal: status.signal,
            create_ms,
            run_ms,
        };
        eprintln!("{}", serde_json::to_string(&report)?);
    }
    sandbox.shutdown().await;
    if let Some(proxy) = proxy {
        proxy.shutdown().await;
    }
    Ok(match (status.code, status.signal) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    })
}

fn dup_std(fd: i32) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on one of the standard descriptors;
    // the result is a new descriptor we own.
    let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("duplicating fd {fd}"));
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

#[derive(Serialize)]
struct CheckReport {
    user_namespaces: bool,
    landlock_abi: u32,
    seccomp: bool,
    cgroup: Option<String>,
    sandbox: Option<SandboxReport>,
    error: Option<String>,
    fallback: String,
    create_ms: f64,
}

async fn check(
    mut spec: flotilla_sandbox::SandboxSpec,
    helper: &HelperCommand,
    json: bool,
) -> Result<ExitCode> {
    // A scratch workspace: --check must work anywhere, even in /.
    let scratch = tempfile::Builder::new()
        .prefix("flotilla-check-")
        .tempdir()
        .context("cannot create a scratch folder")?;
    spec.workspace = scratch.path().to_path_buf();
    let landlock_abi = flotilla_sandbox::landlock_rules::abi_version();
    let created = Instant::now();
    let result = Sandbox::create(spec, helper).await;
    let create_ms = created.elapsed().as_secs_f64() * 1e3;
    let (sandbox, error) = match result {
        Ok(s) => {
            let report = s.report().clone();
            s.shutdown().await;
            (Some(report), None)
        }
        Err(err) => (None, Some(err.to_string())),
    };
    let user_namespaces = sandbox.as_ref().is_some_and(|r| r.namespaces);
    let seccomp = sandbox.as_ref().is_some_and(|r| r.seccomp);
    let fallback = if user_namespaces {
        format!(
            "none needed; without user namespaces flotilla would fall back to {} + seccomp + rlimits{}",
            if landlock_abi > 0 { format!("Landlock ABI {landlock_abi}") } else { "no Landlock (refused)".into() },
            " (host network, shared /tmp); sandbox.required = true refuses that instead"
        )
    } else if landlock_abi > 0 {
        format!("Landlock ABI {landlock_abi} + seccomp + rlimits, host network, shared /tmp (set sandbox.required = true to refuse instead)")
    } else {
        "none: this machine cannot confine commands".into()
    };
    let report = CheckReport {
        user_namespaces,
        landlock_abi,
        seccomp,
        cgroup: sandbox.as_ref().and_then(|r| r.cgroup.clone()),
        sandbox,
        error,
        fallback,
        create_ms,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let yes_no = |b: bool| if b { "yes" } else { "NO" };
        println!("user namespaces   {}", yes_no(report.user_namespaces));
        println!(
            "landlock          {}",
            match (&report.sandbox, report.landlock_abi) {
                (_, 0) => "NO".to_string(),
                (Some(r), abi) => format!(
                    "ABI {abi} ({})",
                    r.landlock
                        .as_ref()
                        .map(|l| l.enforcement.as_str())
                        .unwrap_or("not applied")
                ),
                (None, abi) => format!("ABI {abi}"),
            }
        );
        println!(
            "seccomp           {}",
            if report.seccomp {
                format!(
                    "yes ({} rules)",
                    flotilla_sandbox::seccomp::denied_rules().len()
                )
            } else {
                "NO".into()
            }
        );
        println!(
            "cgroups           {}",
            report
                .cgroup
                .as_deref()
                .unwrap_or("NO (no memory or pids limit)")
        );
        if let Some(r) = &report.sandbox {
            println!("rlimits           {}", r.rlimits);
            println!("network           {}", r.network);
            println!("no_new_privs      {}", yes_no(r.no_new_privs));
            println!(
                "capabilities      {}",
                if r.capabilities_dropped {
                    "all dropped"
                } else {
                    "SOME KEPT"
                }
            );
            for line in &r.degraded {
                println!("degraded          {line}");
            }
        }
        if let Some(e) = &report.error {
            println!("error             {e}");
        }
        println!("fallback          {}", report.fallback);
        println!("created in        {:.1} ms", report.create_ms);
    }
    Ok(if report.error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
