//! Commands inside the session's sandbox, and the factory that gives each
//! session its executor.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use flotilla_sandbox::ca::CertAuthority;
use flotilla_sandbox::hook::EgressHook;
use flotilla_sandbox::proxy::{DomainPolicy, EgressProxy, ProxyOptions};
use flotilla_sandbox::spec::{ca_bundle_path, proxy_env_with_ca};
use flotilla_sandbox::{
    explain_refusal, proxy_env, ExitStatus, HelperCommand, NetworkMode, Sandbox, SandboxSpec,
    SpawnRequest,
};
use futures::future::BoxFuture;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use super::exec::{collect_output, drain, CommandExecutor, CommandRequest, CommandResult};
use super::{HostExecutor, TERM_GRACE};

/// An executor for one session, and what it is.
pub struct SessionExecutor {
    /// Runs the session's commands.
    pub executor: Arc<dyn CommandExecutor>,
    /// Commands run in their own namespaces.
    pub confined: bool,
    /// One line for the session's events.
    pub summary: String,
    /// How it is weaker than configured.
    pub degraded: Vec<String>,
}

/// What one session adds to its sandbox's network: the vault's hook on its
/// egress proxy (placeholders swapped for granted secrets), and the
/// placeholders in its commands' environment.
#[derive(Clone, Default)]
pub struct SessionNetwork {
    /// Sees every request of the session's egress proxy.
    pub hook: Option<Arc<dyn EgressHook>>,
    /// Added to every command's environment.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for SessionNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionNetwork")
            .field("hook", &self.hook.is_some())
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

/// Gives each session its executor (its sandbox), for the session's lifetime.
pub trait ExecutorFactory: Send + Sync {
    /// The executor for a session working in `workspace`, built at the
    /// session's first command. `Err` (with a message for the user) fails
    /// that command.
    fn for_session<'a>(
        &'a self,
        workspace: &'a Path,
    ) -> BoxFuture<'a, Result<SessionExecutor, String>>;

    /// [`ExecutorFactory::for_session`] with the session's network
    /// additions. The default ignores them: right for executors without a
    /// network of their own (the host executor of tests).
    fn for_session_with<'a>(
        &'a self,
        workspace: &'a Path,
        network: SessionNetwork,
    ) -> BoxFuture<'a, Result<SessionExecutor, String>> {
        let _ = network;
        self.for_session(workspace)
    }

    /// A cheap check, when a session starts, that executors can be had at
    /// all: `Err` (a message for the user) fails the session before it runs
    /// anything, e.g. `sandbox.required` on a machine that cannot confine.
    /// Sessions build their executor lazily, at their first command, so that
    /// a thousand sessions waiting on a model hold no sandbox.
    fn preflight(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Every session runs its commands on the host, unconfined. Only for tests
/// and benchmarks of the loop itself; the daemon uses [`SandboxFactory`].
impl ExecutorFactory for HostExecutor {
    fn for_session<'a>(
        &'a self,
        _workspace: &'a Path,
    ) -> BoxFuture<'a, Result<SessionExecutor, String>> {
        Box::pin(async {
            Ok(SessionExecutor {
                executor: Arc::new(HostExecutor),
                confined: false,
                summary: "unconfined host execution".into(),
                degraded: vec!["commands run on the host without a sandbox".into()],
            })
        })
    }
}

/// One sandbox per session, built from a template spec with the session's
/// workspace.
#[derive(Clone, Debug)]
pub struct SandboxFactory {
    /// With `template.required`: whether this machine can build a full
    /// sandbox, found once by building one.
    pub required_probe: Arc<tokio::sync::OnceCell<Result<(), String>>>,
    /// The spec every session starts from (its workspace is replaced).
    pub template: SandboxSpec,
    /// How to start the sandbox helper.
    pub helper: HelperCommand,
    /// The base environment of every command (no daemon variables leak in).
    pub env: Vec<(String, String)>,
    /// With `Some`, each session's network goes through its own egress proxy
    /// with this policy (sockets under `proxy_dir`); with `None`, no network.
    pub proxy: Option<ProxySettings>,
}

/// The egress proxy of `network = proxy` sessions.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Domain allow/deny rules.
    pub policy: DomainPolicy,
    /// A private directory (0700) for the proxies' Unix sockets.
    pub socket_dir: PathBuf,
    /// The daemon's CA, for intercepting the TLS of sessions with granted
    /// secrets; `None`: such sessions cannot use their secrets.
    pub ca: Option<Arc<CertAuthority>>,
    /// The CA certificate followed by the system roots, mounted into each
    /// sandbox that has a hook (`SSL_CERT_FILE` and friends point at it).
    pub ca_bundle: Option<PathBuf>,
    /// Roots for the upstream side of intercepted TLS; `None`: the system's.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

impl SandboxFactory {
    /// A factory; see the fields.
    pub fn new(
        template: SandboxSpec,
        helper: HelperCommand,
        env: Vec<(String, String)>,
        proxy: Option<ProxySettings>,
    ) -> SandboxFactory {
        SandboxFactory {
            required_probe: Arc::new(tokio::sync::OnceCell::new()),
            template,
            helper,
            env,
            proxy,
        }
    }
}

impl ExecutorFactory for SandboxFactory {
    fn preflight(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if !self.template.required {
                return Ok(());
            }
            self.required_probe
                .get_or_init(|| async {
                    let scratch = tempfile::tempdir()
                        .map_err(|err| format!("a scratch folder for the sandbox probe: {err}"))?;
                    let mut spec = self.template.clone();
                    spec.workspace = scratch.path().to_path_buf();
                    spec.network = NetworkMode::None;
                    let sandbox = Sandbox::create(spec, &self.helper)
                        .await
                        .map_err(|err| err.to_string())?;
                    sandbox.shutdown().await;
                    Ok(())
                })
                .await
                .clone()
        })
    }

    fn for_session<'a>(
        &'a self,
        workspace: &'a Path,
    ) -> BoxFuture<'a, Result<SessionExecutor, String>> {
        self.for_session_with(workspace, SessionNetwork::default())
    }

    fn for_session_with<'a>(
        &'a self,
        workspace: &'a Path,
        network: SessionNetwork,
    ) -> BoxFuture<'a, Result<SessionExecutor, String>> {
        Box::pin(async move {
            let mut spec = self.template.clone();
            spec.workspace = workspace.to_path_buf();
            let mut env = self.env.clone();
            let mut degraded = Vec::new();
            let proxy = match &self.proxy {
                Some(settings) => {
                    // Unguessable: in the degraded mode (no namespaces) a
                    // sandbox might reach another session's socket by name.
                    let socket = settings
                        .socket_dir
                        .join(format!("egress-{:032x}.sock", rand::random::<u128>()));
                    // Interception needs the CA; without it a hook could
                    // see plain http only, so secrets are unusable.
                    let (hook, ca, ca_bundle) = match (
                        &network.hook,
                        &settings.ca,
                        &settings.ca_bundle,
                    ) {
                        (Some(hook), Some(ca), Some(bundle)) => {
                            (Some(hook.clone()), Some(ca.clone()), Some(bundle.clone()))
                        }
                        (Some(_), _, _) => {
                            degraded.push("secrets are granted but the daemon has no CA for its egress proxy; they cannot be used".to_owned());
                            (None, None, None)
                        }
                        (None, _, _) => (None, None, None),
                    };
                    let options = ProxyOptions {
                        hook,
                        ca,
                        upstream_tls: settings.upstream_tls.clone(),
                    };
                    let proxy = EgressProxy::bind_unix_with(
                        &socket,
                        settings.policy.clone(),
                        None,
                        options,
                    )
                    .await
                    .map_err(|err| format!("starting the egress proxy: {err}"))?;
                    spec.network = NetworkMode::Proxy { socket, ca_bundle };
                    Some(proxy)
                }
                None => {
                    if network.hook.is_some() {
                        degraded.push("secrets are granted but the sandbox has no network ([sandbox] network = \"none\"); they cannot be used".to_owned());
                    }
                    spec.network = NetworkMode::None;
                    None
                }
            };
            let network_mode = spec.network.clone();
            let sandbox = Sandbox::create(spec, &self.helper)
                .await
                .map_err(|err| err.to_string())?;
            let report = sandbox.report();
            // The CA bundle is at a fixed path inside a namespaced sandbox,
            // at its host path in the degraded mode.
            match ca_bundle_path(&network_mode, report) {
                Some(bundle) => env.extend(proxy_env_with_ca(&bundle.to_string_lossy())),
                None if proxy.is_some() => env.extend(proxy_env()),
                None => {}
            }
            env.extend(network.env);
            degraded.extend(report.degraded.iter().cloned());
            Ok(SessionExecutor {
                confined: report.namespaces,
                summary: report.summary(),
                degraded,
                executor: Arc::new(SandboxExecutor {
                    sandbox,
                    env,
                    _proxy: proxy,
                }),
            })
        })
    }
}

/// The environment variables passed from the daemon into sandboxes; nothing
/// else is (API keys and tokens in the daemon's environment stay out).
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "SHELL",
    "COLORTERM",
    "NO_COLOR",
];

/// [`PASSED_ENV`] from the current process, plus `LC_*`.
pub fn sandbox_base_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| PASSED_ENV.contains(&k.as_str()) || k.starts_with("LC_"))
        .collect()
}

/// Runs commands in one session's [`Sandbox`] with `/bin/sh -c`, reading
/// their output from pipes passed into the sandbox. Timeout and cancel
/// signal the command's process group (SIGTERM, then SIGKILL after
/// [`TERM_GRACE`]); background jobs of a command that exits on its own keep
/// running until the sandbox ends.
pub struct SandboxExecutor {
    sandbox: Sandbox,
    env: Vec<(String, String)>,
    /// Lives (and serves) as long as the sandbox.
    _proxy: Option<EgressProxy>,
}

impl SandboxExecutor {
    /// An executor over an existing sandbox.
    pub fn new(sandbox: Sandbox, env: Vec<(String, String)>) -> SandboxExecutor {
        SandboxExecutor {
            sandbox,
            env,
            _proxy: None,
        }
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl CommandExecutor for SandboxExecutor {
    fn run<'a>(&'a self, req: CommandRequest) -> BoxFuture<'a, io::Result<CommandResult>> {
        Box::pin(self.run_in_sandbox(req))
    }

    fn is_usable(&self) -> bool {
        !self.sandbox.is_gone()
    }
}

/// SIGKILLs the command's group when dropped while armed (the caller gave up
/// on the future).
struct KillOnDrop {
    process: Option<flotilla_sandbox::Process>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = process.signal_group(libc::SIGKILL).await;
                });
            }
        }
    }
}

fn pipe_pair() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((pipe::Receiver::from_owned_fd(read)?, write))
}

impl SandboxExecutor {
    async fn run_in_sandbox(&self, req: CommandRequest) -> io::Result<CommandResult> {
        let started = Instant::now();
        let (out_read, out_write) = pipe_pair()?;
        let (err_read, err_write) = pipe_pair()?;
        let mut env = self.env.clone();
        env.extend(req.env.iter().cloned());
        env.push(("FLOTILLA".into(), "1".into()));
        let process = self
            .sandbox
            .spawn(SpawnRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), req.command.clone()],
                cwd: PathBuf::from(&req.cwd),
                env,
                stdin: None,
                stdout: out_write,
                stderr: err_write,
            })
            .await
            .map_err(io::Error::other)?;
        let stop = CancellationToken::new();
        let cap = req.output_cap_bytes;
        let stdout = tokio::spawn(drain(Some(out_read), cap, stop.clone()));
        let stderr = tokio::spawn(drain(Some(err_read), cap, stop.clone()));
        let mut guard = KillOnDrop {
            process: Some(process),
        };
        let (status, timed_out, cancelled) = {
            let Some(process) = guard.process.as_mut() else {
                return Err(io::Error::other("lost the process handle"));
            };
            let outcome = tokio::select! {
                status = process.wait() => Some(status),
                _ = tokio::time::sleep(req.timeout) => None,
                _ = req.cancel.cancelled() => None,
            };
            match outcome {
                Some(status) => (status, false, false),
                None => {
                    let timed_out = !req.cancel.is_cancelled();
                    let status = terminate(process).await;
                    (status, timed_out, !timed_out)
                }
            }
        };
        // A command that could not be started at all is an `Err`, as on the
        // host.
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                guard.process = None;
                stop.cancel();
                return Err(io::Error::other(err));
            }
        };
        // The shell is gone; its background jobs, if any, are left alone.
        guard.process = None;
        let output = collect_output(stdout, stderr, &stop).await;
        let notes = if status.code == Some(0) || timed_out || cancelled {
            Vec::new()
        } else {
            let mut seen = output.stderr.render(usize::MAX);
            seen.push_str(&output.stdout.render(usize::MAX));
            explain_refusal(&seen, status, self.sandbox.report())
        };
        Ok(CommandResult {
            exit_code: status.code,
            signal: status.signal,
            output,
            timed_out,
            cancelled,
            duration: started.elapsed(),
            notes,
        })
    }
}

/// SIGTERM to the group, up to [`TERM_GRACE`] for the shell to exit, then
/// SIGKILL to whatever is left of the group.
async fn terminate(
    process: &mut flotilla_sandbox::Process,
) -> Result<ExitStatus, flotilla_sandbox::SandboxError> {
    let _ = process.signal_group(libc::SIGTERM).await;
    let status = tokio::time::timeout(TERM_GRACE, process.wait()).await;
    let _ = process.signal_group(libc::SIGKILL).await;
    match status {
        Ok(status) => status,
        Err(_) => process.wait().await,
    }
}
