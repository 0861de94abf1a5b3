//! The built-in tools of an agent, and the command executor seam.
//!
//! The agent loop offers [`tool_specs`] to the model and runs each call the
//! model proposes with [`run_tool`], which never fails: whatever goes wrong
//! (bad JSON, a path outside the workspace, a missing file) becomes an
//! [`ToolOutcome::Output`] with `is_error: true` and a message that tells the
//! model what to do differently.
//!
//! Every path goes through [`resolve_in_workspace`]; every command goes
//! through the [`CommandExecutor`] in the [`ToolContext`] ([`HostExecutor`]
//! until the sandbox provides its own).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

mod exec;
mod fs;
mod path;
mod sandboxed;
mod search;
mod shell;
mod specs;

pub use exec::{
    CapturedOutput, CapturedStream, CommandExecutor, CommandRequest, CommandResult, HostExecutor,
    PIPE_EOF_GRACE, TERM_GRACE,
};
pub use path::{refuse_protected, resolve_in_workspace, PathError, PathIntent};
pub use sandboxed::{
    sandbox_base_env, ExecutorFactory, ProxySettings, SandboxExecutor, SandboxFactory,
    SessionExecutor, SessionNetwork, PASSED_ENV,
};
pub use specs::{shared_tool_specs, spec as tool_spec, tool_specs};

/// Size limits of the built-in tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolLimits {
    /// Most bytes of output a tool returns to the model (shell output, listings,
    /// search hits); more is cut, keeping head and tail, with a notice.
    pub output_cap_bytes: usize,
    /// Timeout of a `shell` call that does not ask for one.
    pub default_timeout: Duration,
    /// Longest timeout a `shell` call may ask for.
    pub max_timeout: Duration,
    /// Most bytes `read_file` returns in one call.
    pub max_read_bytes: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            output_cap_bytes: 30_000,
            default_timeout: Duration::from_secs(120),
            max_timeout: Duration::from_secs(600),
            max_read_bytes: 256 * 1024,
        }
    }
}

/// Everything a tool call needs from its session.
#[derive(Clone)]
pub struct ToolContext {
    /// The workspace: a canonicalized absolute directory. Every path a tool
    /// touches must resolve inside it.
    pub workspace: PathBuf,
    /// Runs `shell` commands.
    pub executor: Arc<dyn CommandExecutor>,
    /// Size and time limits.
    pub limits: ToolLimits,
    /// Cancels the running tool (kills a running command).
    pub cancel: CancellationToken,
    /// Files policy forbids reading: `list_files`, `glob` and `grep` skip
    /// them (so `deny Read(./.env)` holds for searches too).
    pub hidden: Option<HiddenPaths>,
}

/// A predicate: whether the session may not read this absolute path.
pub type HiddenPaths = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

impl ToolContext {
    /// A context for `workspace` (canonicalized here) with the [`HostExecutor`],
    /// default limits and a fresh cancel token.
    pub fn on_host(workspace: &Path) -> std::io::Result<Self> {
        Ok(ToolContext {
            workspace: workspace.canonicalize()?,
            executor: Arc::new(HostExecutor),
            limits: ToolLimits::default(),
            cancel: CancellationToken::new(),
            hidden: None,
        })
    }
}

impl std::fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolContext")
            .field("workspace", &self.workspace)
            .field("limits", &self.limits)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// What a tool call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolOutcome {
    /// Text for the model.
    Output {
        /// The text.
        text: String,
        /// Whether the call failed (the model should change something).
        is_error: bool,
    },
    /// The agent is done (the `finish` tool).
    Finish {
        /// The final answer.
        answer: String,
    },
}

impl ToolOutcome {
    pub(crate) fn ok(text: impl Into<String>) -> Self {
        ToolOutcome::Output {
            text: text.into(),
            is_error: false,
        }
    }

    pub(crate) fn error(text: impl Into<String>) -> Self {
        ToolOutcome::Output {
            text: text.into(),
            is_error: true,
        }
    }
}

/// Names of the built-in tools.
pub const BUILTIN_TOOLS: [&str; 8] = [
    "shell",
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "glob",
    "grep",
    "finish",
];

/// Whether `name` is one of the built-in tools.
pub fn is_builtin(name: &str) -> bool {
    BUILTIN_TOOLS.contains(&name)
}

/// Runs the built-in tool `name` with `arguments` (the raw JSON text the model
/// sent). Never panics, never fails: every problem is reported to the model as
/// an [`ToolOutcome::Output`] with `is_error: true`.
pub async fn run_tool(ctx: &ToolContext, name: &str, arguments: &str) -> ToolOutcome {
    if ctx.cancel.is_cancelled() {
        return ToolOutcome::error(format!("{name} was not run: the session was cancelled"));
    }
    match AssertUnwindSafe(dispatch(ctx, name, arguments))
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(tool = name, %what, "built-in tool panicked");
            ToolOutcome::error(format!(
                "internal error in tool {name} (a flotilla bug, not your mistake): {what}"
            ))
        }
    }
}

async fn dispatch(ctx: &ToolContext, name: &str, arguments: &str) -> ToolOutcome {
    macro_rules! parsed {
        ($ty:ty) => {
            match parse_args::<$ty>(name, arguments) {
                Ok(args) => args,
                Err(message) => return ToolOutcome::error(message),
            }
        };
    }
    match name {
        "shell" => shell::run(ctx, parsed!(shell::ShellArgs)).await,
        "read_file" => blocking(ctx, parsed!(fs::ReadArgs), fs::read_file).await,
        "write_file" => blocking(ctx, parsed!(fs::WriteArgs), fs::write_file).await,
        "edit_file" => blocking(ctx, parsed!(fs::EditArgs), fs::edit_file).await,
        "list_files" => blocking(ctx, parsed!(search::ListArgs), search::list_files).await,
        "glob" => blocking(ctx, parsed!(search::GlobArgs), search::glob).await,
        "grep" => blocking(ctx, parsed!(search::GrepArgs), search::grep).await,
        "finish" => {
            let args = parsed!(FinishArgs);
            ToolOutcome::Finish {
                answer: args.answer,
            }
        }
        _ => ToolOutcome::error(format!(
            "unknown tool {name:?}; the available tools are: {}",
            BUILTIN_TOOLS.join(", ")
        )),
    }
}

#[derive(serde::Deserialize)]
struct FinishArgs {
    answer: String,
}

/// Runs a file-system tool off the async workers: these walk and read files
/// with blocking I/O.
async fn blocking<A: Send + 'static>(
    ctx: &ToolContext,
    args: A,
    tool: fn(&ToolContext, A) -> ToolOutcome,
) -> ToolOutcome {
    let ctx = ctx.clone();
    match tokio::task::spawn_blocking(move || tool(&ctx, args)).await {
        Ok(outcome) => outcome,
        Err(err) => ToolOutcome::error(format!(
            "internal error in a file tool (a flotilla bug, not your mistake): {err}"
        )),
    }
}

/// Parses the model's arguments, or explains what was wrong and what was expected.
fn parse_args<T: DeserializeOwned>(tool: &str, raw: &str) -> Result<T, String> {
    let expected = specs::expected_arguments(tool);
    let trimmed = raw.trim();
    // Some models send nothing for a call without required arguments.
    let text = if trimmed.is_empty() { "{}" } else { trimmed };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            return Err(format!(
                "invalid arguments for {tool}: not valid JSON ({err}); expected a JSON object {expected}"
            ))
        }
    };
    // Some models encode the arguments object twice, as a JSON string.
    let value = match value {
        serde_json::Value::String(inner) => match serde_json::from_str(&inner) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            _ => serde_json::Value::String(inner),
        },
        other => other,
    };
    if !value.is_object() {
        return Err(format!(
            "invalid arguments for {tool}: expected a JSON object {expected}, got {}",
            json_kind(&value)
        ));
    }
    serde_json::from_value(value).map_err(|err| {
        let message = err.to_string().replace('`', "\"");
        format!("invalid arguments for {tool}: {message}; expected {expected}")
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Cuts `text` to at most `cap` bytes (plus a notice) at line boundaries where
/// possible, keeping head and tail.
pub(crate) fn cap_text(text: String, cap: usize) -> String {
    if text.len() <= cap {
        return text;
    }
    let bytes = text.as_bytes();
    let head_end = exec::char_floor(bytes, cap / 2);
    let head_end = text[..head_end].rfind('\n').map_or(head_end, |i| i + 1);
    let tail_start = exec::char_ceil(bytes, bytes.len() - (cap - cap / 2));
    let tail_start = text[tail_start..]
        .find('\n')
        .map_or(tail_start, |i| tail_start + i + 1);
    format!(
        "{}[output truncated: {} bytes total, showing the first {} and last {}]\n{}",
        &text[..head_end],
        text.len(),
        head_end,
        text.len() - tail_start,
        &text[tail_start..]
    )
}
