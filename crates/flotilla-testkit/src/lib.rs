//! Test harness for flotilla: [`MockModelServer`], a scripted model server
//! that speaks the OpenAI Chat Completions wire protocol on loopback, and
//! [`MockAnthropicServer`], the same scripts spoken in the Anthropic
//! Messages wire protocol, and [`MockBedrockServer`], the same scripts
//! spoken in the Amazon Bedrock Runtime Converse protocol (binary event
//! streams, SigV4-signed requests); these two also check requests the way
//! the real APIs do and record their paths and headers.
//!
//! The one part of the system that tests simulate is the paid model API. The
//! mock replays [`Script`]s: which script answers is chosen by a
//! `[script:NAME]` marker in the request's first user message (else
//! [`DEFAULT_SCRIPT`]), and which step answers is derived from the request
//! alone (its assistant messages plus a `[mock-turns:N]` marker left by
//! compaction), so retries, concurrent sessions and restarted daemons stay
//! on script without any server-side session state. The only server state is
//! the per-(script, step) counter behind [`Step::fail_first`].
//!
//! A request without tools is a summarisation (compaction) request: the mock
//! answers `"Summary of earlier work. [mock-turns:N]"` without using a step.
//! A request past the end of its script gets HTTP 400 naming the script and
//! step, so a test that goes off script fails loudly.
//!
//! Beyond the replies, a step can fail its first requests
//! ([`Failure`]: an HTTP status with `Retry-After`, a connection reset, a
//! truncated stream, a stalled stream, an error event mid-stream), be slow
//! ([`Step::with_delay_ms`]) or never answer ([`Step::hang`]). A request
//! carrying [`NO_STREAM_MARKER`] is answered with plain JSON even when it
//! asked for a stream, like a server that ignores `stream`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flotilla_testkit::{MockModelServer, Script, Step};
//! let script = Script::new().with(
//!     "default",
//!     vec![Step::tool("shell", serde_json::json!({"command": "ls"})), Step::finish("done")],
//! );
//! let server = MockModelServer::start(script).await?;
//! std::env::set_var("OPENAI_BASE_URL", server.base_url());
//! # Ok(()) }
//! ```

mod anthropic;
mod anthropic_wire;
mod bedrock;
mod bedrock_wire;
mod script;
mod serve;
mod server;
pub mod tls;
mod wire;

pub use anthropic::MockAnthropicServer;
pub use bedrock::MockBedrockServer;
pub use script::{Failure, Reply, Script, ScriptedCall, Step, DEFAULT_SCRIPT};
pub use serve::RecordedRequest;
pub use server::MockModelServer;
pub use tls::TlsEchoServer;
pub use wire::{script_marker, script_name, step_index, turns_marker, NO_STREAM_MARKER};
