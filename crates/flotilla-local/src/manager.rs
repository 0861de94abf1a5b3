//! The daemon's local model servers: each `local:MODEL` gets a `flotilla
//! model serve` child on loopback, started at its first request, started
//! again (with backoff) when it has died, and left to exit on its own after
//! a while without requests (`--idle-exit`). Children die with the daemon.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::AsyncBufReadExt;

/// How the daemon runs its local models.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// The flotilla executable.
    pub exe: PathBuf,
    /// Where model files are.
    pub models_dir: PathBuf,
    /// Context per slot.
    pub ctx: u32,
    /// Requests served at once per model.
    pub parallel: u32,
    /// A server exits after this long without a request.
    pub idle_exit: Duration,
}

struct Server {
    child: tokio::process::Child,
    url: String,
}

#[derive(Default)]
struct ModelState {
    server: Option<Server>,
    /// Quick deaths in a row, and when the next start may be tried.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// The servers, by model file. Each model has its own lock: one model
/// loading never holds up requests to another.
pub struct LocalServers {
    config: LocalConfig,
    models: std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<ModelState>>>>,
}

impl LocalServers {
    /// No servers yet.
    pub fn new(config: LocalConfig) -> Arc<LocalServers> {
        Arc::new(LocalServers {
            config,
            models: std::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn ensure(&self, model: &str) -> Result<String, String> {
        let path = crate::catalogue::resolve(model, &self.config.models_dir)?;
        let entry = {
            let mut all = self
                .models
                .lock()
                .map_err(|_| "the model servers' state is poisoned".to_owned())?;
            all.entry(path.clone()).or_default().clone()
        };
        let mut state = entry.lock().await;
        if let Some(s) = state.server.as_mut() {
            match s.child.try_wait() {
                Ok(None) => return Ok(s.url.clone()),
                Ok(Some(status)) => {
                    tracing::info!(model = %path.display(), %status, "local model server exited; starting it again when asked");
                    state.server = None;
                }
                Err(e) => return Err(format!("cannot check the model server: {e}")),
            }
        }
        if let Some(at) = state.retry_at {
            if Instant::now() < at {
                return Err(state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the model server is restarting".into()));
            }
        }
        match self.start(&path).await {
            Ok(server) => {
                let url = server.url.clone();
                state.server = Some(server);
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                Ok(url)
            }
            Err(e) => {
                state.failures += 1;
                let backoff = Duration::from_millis(250)
                    .saturating_mul(1 << state.failures.min(7))
                    .min(Duration::from_secs(30));
                state.retry_at = Some(Instant::now() + backoff);
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn start(&self, model: &std::path::Path) -> Result<Server, String> {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.exe);
        cmd.args(["model", "serve", "--listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(model)
            .arg("--ctx")
            .arg(c.ctx.to_string())
            .arg("--parallel")
            .arg(c.parallel.to_string())
            .arg("--idle-exit")
            .arg(c.idle_exit.as_secs().max(1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // It dies with the daemon, whatever ends the daemon.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `flotilla model serve`: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let said = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = said.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "model-server", "{line}");
                if let Ok(mut s) = sink.lock() {
                    if s.len() < 4000 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            }
        });
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(l))) => l,
            _ => {
                let _ = child.kill().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let why = said.lock().map(|s| s.trim().to_owned()).unwrap_or_default();
                return Err(if why.is_empty() {
                    format!("the model server for {} did not start", model.display())
                } else {
                    why
                });
            }
        };
        let addr = line
            .strip_prefix("listening ")
            .map(str::trim)
            .ok_or_else(|| format!("the model server said {line:?}"))?
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::info!(model = %model.display(), %addr, "local model server up");
        Ok(Server {
            child,
            url: format!("http://{addr}/v1"),
        })
    }
}

impl flotilla_models::LocalModels for LocalServers {
    fn endpoint<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.ensure(model))
    }
}
