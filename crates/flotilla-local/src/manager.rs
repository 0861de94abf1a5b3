//! The daemon's local model servers: each `local:MODEL` gets a `flotilla
//! model serve` child on loopback, started at its first request, started
//! again (with backoff) when it has died, and left to exit on its own after
//! a while without requests (`--idle-exit`). Children die with the daemon.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

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
        // A session names a model; it does not point the daemon at files.
        if model.contains('/') || model.ends_with(".gguf") {
            return Err(format!(
                "local:{model}: name a model (a catalogue name, or NAME for NAME.gguf in {}), not a path",
                self.config.models_dir.display()
            ));
        }
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
            .arg(c.idle_exit.as_secs().max(1).to_string());
        let (child, addr) = crate::child::spawn_listening(
            cmd,
            Duration::from_secs(300),
            &format!("the model server for {}", model.display()),
        )
        .await?;
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
