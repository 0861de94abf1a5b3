//! What the mock model answers: named scripts of steps.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Name of the script that answers requests carrying no `[script:NAME]` marker.
pub const DEFAULT_SCRIPT: &str = "default";

/// Every script the server can play, by name.
///
/// A request picks its script with a `[script:NAME]` marker in its first user
/// message that has one (see [`script_marker`](crate::script_marker)), or
/// plays [`DEFAULT_SCRIPT`]. The step is derived from the request itself: the
/// number of assistant messages it carries plus the `N` of a
/// `[mock-turns:N]` marker, so retries, concurrent sessions and restarted
/// clients all land on the right step.
///
/// In JSON (the `--script` file of `flotilla-mock-model`):
///
/// ```json
/// {"scripts": {"default": [
///   {"reply": {"tool_calls": [{"name": "shell", "arguments": "{\"command\":\"ls\"}"}]},
///    "fail_first": [{"status": {"status": 429, "retry_after_secs": 1}}, "reset"]},
///   {"reply": {"text": "done"}, "delay_ms": 50}
/// ]}}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// Steps of each script, by name.
    pub scripts: BTreeMap<String, Vec<Step>>,
}

impl Script {
    /// No scripts yet.
    pub fn new() -> Self {
        Script::default()
    }

    /// Only the [`DEFAULT_SCRIPT`], with these steps.
    pub fn single(steps: Vec<Step>) -> Self {
        Script::new().with(DEFAULT_SCRIPT, steps)
    }

    /// Adds (or replaces) the script `name`.
    pub fn with(mut self, name: impl Into<String>, steps: Vec<Step>) -> Self {
        self.scripts.insert(name.into(), steps);
        self
    }

    /// Reads a script from a JSON file.
    pub fn from_json_file(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading mock script {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "parsing mock script {}: expected {{\"scripts\": {{\"NAME\": [steps...]}}}}",
                path.display()
            )
        })
    }
}

/// One turn of the model: what it answers, after which scripted failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The answer.
    pub reply: Reply,
    /// The first `k` requests that reach this step get these failures, in
    /// order; the next ones get [`Step::reply`]. Counted per (script, step)
    /// by the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_first: Vec<Failure>,
    /// Milliseconds to wait before answering (failures included).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Step {
    /// A step that answers with `reply`.
    pub fn reply(reply: Reply) -> Self {
        Step {
            reply,
            fail_first: Vec::new(),
            delay_ms: 0,
        }
    }

    /// A text answer (finish reason `stop`).
    pub fn text(text: impl Into<String>) -> Self {
        Step::reply(Reply::Text(text.into()))
    }

    /// One call of tool `name` with these arguments.
    pub fn tool(name: impl Into<String>, arguments: serde_json::Value) -> Self {
        Step::tools(vec![ScriptedCall::new(name, arguments)])
    }

    /// One call of tool `name` with this argument text, sent verbatim (it
    /// may be invalid JSON).
    pub fn tool_raw(name: impl Into<String>, arguments: &str) -> Self {
        Step::tools(vec![ScriptedCall::raw(name, arguments)])
    }

    /// Several tool calls in one answer.
    pub fn tools(calls: Vec<ScriptedCall>) -> Self {
        Step::reply(Reply::ToolCalls(calls))
    }

    /// A call of tool `finish` with `{"answer": answer}`.
    pub fn finish(answer: impl Into<String>) -> Self {
        Step::tool("finish", serde_json::json!({ "answer": answer.into() }))
    }

    /// Never answers; the connection stays open until the server stops.
    pub fn hang() -> Self {
        Step::reply(Reply::Hang)
    }

    /// Always fails with this HTTP status.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Step::reply(Reply::Status {
            status,
            retry_after_secs: None,
            body: body.into(),
        })
    }

    /// The first requests of this step get `failures` (in order) before the reply.
    pub fn failing_first(mut self, failures: Vec<Failure>) -> Self {
        self.fail_first = failures;
        self
    }

    /// Waits `delay_ms` milliseconds before answering.
    pub fn with_delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay_ms = delay_ms;
        self
    }
}

/// What a step answers once its scripted failures are used up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A text answer, finish reason `stop`.
    Text(String),
    /// Tool calls, finish reason `tool_calls`.
    ToolCalls(Vec<ScriptedCall>),
    /// No answer at all; the connection stays open until the server stops.
    /// Used for sessions that must stay busy.
    Hang,
    /// Always this HTTP error.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` header in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
        /// Response body; empty means the protocol's error object
        /// (OpenAI's, or Anthropic's with the type that goes with the status).
        #[serde(default)]
        body: String,
    },
}

/// One tool call of a scripted answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptedCall {
    /// Tool name.
    pub name: String,
    /// Argument text, sent verbatim (may be invalid JSON on purpose).
    pub arguments: String,
}

impl ScriptedCall {
    /// A call with these JSON arguments.
    pub fn new(name: impl Into<String>, arguments: serde_json::Value) -> Self {
        ScriptedCall {
            name: name.into(),
            arguments: arguments.to_string(),
        }
    }

    /// A call with this argument text, verbatim.
    pub fn raw(name: impl Into<String>, arguments: &str) -> Self {
        ScriptedCall {
            name: name.into(),
            arguments: arguments.to_owned(),
        }
    }
}

/// A scripted failure of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// An HTTP error status.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` header in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
        /// Response body; empty means the protocol's error object
        /// (OpenAI's, or Anthropic's with the type that goes with the status).
        #[serde(default)]
        body: String,
    },
    /// The connection is reset (RST) without any response.
    Reset,
    /// HTTP 200 and a couple of stream chunks, then the body ends without a
    /// finish reason or `[DONE]`.
    Truncate,
    /// HTTP 200 and a couple of stream chunks, then nothing more while the
    /// connection stays open (exercises a client's idle timeout).
    Stall,
    /// HTTP 200 and a couple of stream chunks, then an error event and the
    /// end of the body: an OpenAI `{"error": {...}}` chunk, an Anthropic
    /// `error` event (e.g. `overloaded_error`).
    StreamError {
        /// The error's `type`, e.g. `overloaded_error`, `api_error`.
        error_type: String,
        /// Its message.
        message: String,
    },
}

impl Failure {
    /// An HTTP error without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Failure::Status {
            status,
            retry_after_secs: None,
            body: String::new(),
        }
    }

    /// An error event in the middle of the stream.
    pub fn stream_error(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Failure::StreamError {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// HTTP 429 with `Retry-After: secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Failure::Status {
            status: 429,
            retry_after_secs: Some(retry_after_secs),
            body: String::new(),
        }
    }
}
