//! The in-process parts of the in-process benchmarks: a zero-latency scripted
//! model, a no-op command executor, and helpers that run one agent loop.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_agent::tools::{
    CapturedOutput, CapturedStream, CommandExecutor, CommandRequest, CommandResult, ToolLimits,
};
use flotilla_agent::{run_agent, AgentExit, AgentRun, AgentSettings};
use flotilla_models::{ChatRequest, ChatResponse, ModelClient, ModelError, RetryPolicy};
use flotilla_protocol::{EventKind, SessionId, SessionLimits, ToolCall, Usage};
use flotilla_store::Store;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// The shell command every scripted turn proposes.
pub const SHELL_ARGUMENTS: &str = r#"{"command":"true"}"#;
/// What the no-op executor "prints".
pub const NOOP_OUTPUT: &[u8] = b"ok\n";

/// A model that answers at once: `shell_turns` replies that each propose one
/// `shell` call, then one `finish` call. It records when each request
/// arrived, so that the time between two requests is one turn of the loop.
///
/// One instance serves one session: the turn is counted here, not derived
/// from the request, so that the model itself costs next to nothing.
pub struct ScriptedModel {
    shell_turns: u32,
    answered: AtomicU32,
    arrivals: Mutex<Vec<Instant>>,
}

impl ScriptedModel {
    /// A model for one session of `shell_turns` shell turns and a finish.
    pub fn new(shell_turns: u32) -> Arc<ScriptedModel> {
        Arc::new(ScriptedModel {
            shell_turns,
            answered: AtomicU32::new(0),
            arrivals: Mutex::new(Vec::with_capacity(shell_turns as usize + 2)),
        })
    }

    /// When each tool-offering request arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Time between successive requests: one delta per shell turn.
    pub fn turn_times(&self) -> Vec<Duration> {
        self.arrivals()
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .collect()
    }

    /// Requests answered.
    pub fn requests(&self) -> u32 {
        self.answered.load(Ordering::Relaxed)
    }
}

/// The reply of turn `n` (from 0) of a script of `shell_turns` shell turns.
pub fn scripted_reply(n: u32, shell_turns: u32) -> ChatResponse {
    let call = if n < shell_turns {
        ToolCall {
            id: format!("call_{n}"),
            name: "shell".to_owned(),
            arguments: SHELL_ARGUMENTS.to_owned(),
        }
    } else {
        ToolCall {
            id: format!("call_{n}"),
            name: "finish".to_owned(),
            arguments: r#"{"answer":"done"}"#.to_owned(),
        }
    };
    ChatResponse {
        text: String::new(),
        tool_calls: vec![call],
        usage: Usage {
            prompt_tokens: 100,
            completion_tokens: 10,
        },
        finish_reason: Some("tool_calls".to_owned()),
        model: None,
    }
}

impl ModelClient for ScriptedModel {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        let now = Instant::now();
        let response = if request.tools.is_empty() {
            // A compaction request; the benchmarks set a context window that
            // avoids them, but answer sensibly if one comes.
            ChatResponse {
                text: "Summary of earlier work.".to_owned(),
                ..ChatResponse::default()
            }
        } else {
            if let Ok(mut a) = self.arrivals.lock() {
                a.push(now);
            }
            let n = self.answered.fetch_add(1, Ordering::Relaxed);
            scripted_reply(n, self.shell_turns)
        };
        Box::pin(futures::future::ready(Ok(response)))
    }
}

/// A command executor that "runs" every command instantly and successfully,
/// without spawning anything: what is measured is the tool path (argument
/// parsing, events, formatting), not fork/exec.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopExecutor;

impl CommandExecutor for NoopExecutor {
    fn run<'a>(&'a self, _req: CommandRequest) -> BoxFuture<'a, std::io::Result<CommandResult>> {
        Box::pin(futures::future::ready(Ok(CommandResult {
            exit_code: Some(0),
            signal: None,
            output: CapturedOutput {
                stdout: CapturedStream {
                    head: NOOP_OUTPUT.to_vec(),
                    tail: Vec::new(),
                    total_bytes: NOOP_OUTPUT.len() as u64,
                },
                stderr: CapturedStream::default(),
            },
            timed_out: false,
            cancelled: false,
            duration: Duration::ZERO,
            notes: Vec::new(),
        })))
    }
}

/// Records a new session of `shell_turns` turns (plus the finish) in `store`.
///
/// The context window is set far beyond what the script fills, so that no
/// compaction request interrupts the measurement.
pub async fn create_session(
    store: &Store,
    workspace: &Path,
    shell_turns: u32,
) -> Result<SessionId> {
    let id = SessionId::generate();
    store
        .append(
            &id,
            vec![EventKind::SessionCreated {
                task: "benchmark: run a no-op command per turn, then finish".to_owned(),
                model: "openai:scripted".to_owned(),
                workspace: workspace.to_string_lossy().into_owned(),
                base_url: None,
                limits: SessionLimits {
                    max_turns: shell_turns + 10,
                    wall_time_secs: 24 * 3600,
                    context_window: 1 << 40,
                },
                principal: None,
                permissions: None,
                role: None,
                fallbacks: Vec::new(),
                machine: None,
                fleet: None,
            }],
        )
        .await
        .context("recording a benchmark session")?;
    Ok(id)
}

/// Runs the agent loop of `session` to its end against `model` and the
/// no-op executor; fails unless it completes.
pub async fn run_session(
    store: Store,
    session: SessionId,
    model: Arc<ScriptedModel>,
) -> Result<()> {
    let exit = run_agent(AgentRun {
        store,
        session: session.clone(),
        client: model,
        executor: Arc::new(NoopExecutor),
        settings: AgentSettings {
            model_name: "scripted".to_owned(),
            retry: RetryPolicy::default(),
            tool_limits: ToolLimits::default(),
            system_prompt: None,
            max_tokens: None,
            prices: Arc::default(),
        },
        cancel: CancellationToken::new(),
        resume: false,
        policy: None,
        redact: None,
        host_tools: None,
    })
    .await
    .with_context(|| format!("agent loop of {session}"))?;
    match exit {
        AgentExit::Completed(_) => Ok(()),
        other => bail!("session {session} did not complete: {other:?}"),
    }
}
