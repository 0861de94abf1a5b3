//! Model providers for flotilla.
//!
//! [`ModelClient`] is one attempt at one chat completion; the agent loop owns
//! retries (so that it can log every failed attempt as an event) using
//! [`RetryPolicy`] and [`ModelError::is_retryable`]. [`OpenAiClient`] speaks
//! the OpenAI Chat Completions wire protocol, streaming, with tool calls:
//! llama.cpp's llama-server, Ollama, vLLM, LM Studio and OpenRouter all
//! speak it. [`AnthropicClient`] speaks the Anthropic Messages wire
//! protocol, streaming, with tool use: the roles and tool results of a
//! [`ChatRequest`] are mapped to Anthropic's alternating user/assistant
//! turns with `tool_use` and `tool_result` content blocks. [`BedrockClient`]
//! speaks Amazon Bedrock's Converse API (`ConverseStream`) through the
//! official AWS SDK, with the standard AWS credential chain and SigV4; the
//! conversation is repaired as for Anthropic and mapped to Converse's
//! `toolUse` and `toolResult` blocks.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use flotilla_protocol::{ToolCall, ToolSpec, Usage};

mod anthropic;
mod bedrock;
mod clock;
mod http;
mod local;
mod openai;
mod retry;
mod routing;
mod sse;

pub use anthropic::{AnthropicClient, AnthropicConfig, DEFAULT_ANTHROPIC_BASE_URL};
pub use bedrock::{BedrockClient, BedrockConfig};
/// GGUF reading, the memory-fit estimator and machine detection.
pub use flotilla_fit as fit;

pub use clock::{ClockSource, SuspendAwareClock, SystemClocks};
pub use local::{LocalClient, LocalModels};
pub use openai::{OpenAiClient, OpenAiConfig, DEFAULT_OPENAI_BASE_URL};
pub use retry::RetryPolicy;
pub use routing::{ChainLink, FallbackClient, Price, PriceTable};

/// The host an endpoint URL reaches, parsed exactly as the clients parse
/// it (WHATWG URL rules: percent-decoding, IDNA, numeric IPv4 forms), so a
/// check on it cannot be fooled by a URL the client reads differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointHost {
    /// An IP address.
    Ip(std::net::IpAddr),
    /// A domain name, lowercase, without a trailing dot.
    Domain(String),
}

/// The host of `url` (trimmed, as the clients trim it), or `None` when it
/// is not an http(s) URL with a host.
pub fn endpoint_host(url: &str) -> Option<EndpointHost> {
    let url = reqwest::Url::parse(url.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    match url.host()? {
        url::Host::Ipv4(ip) => Some(EndpointHost::Ip(ip.into())),
        url::Host::Ipv6(ip) => Some(EndpointHost::Ip(
            ip.to_ipv4_mapped().map(Into::into).unwrap_or(ip.into()),
        )),
        url::Host::Domain(d) => Some(EndpointHost::Domain(
            d.trim_end_matches('.').to_ascii_lowercase(),
        )),
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user (the task, summaries).
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with only text.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A tool result.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// One request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The model name the server knows.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tools offered; empty means none. Shared: the same list goes with
    /// every request of every session, so it is built once.
    pub tools: Arc<[ToolSpec]>,
    /// Cap on generated tokens.
    pub max_tokens: Option<u32>,
}

/// One complete answer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ChatResponse {
    /// Text (may be empty when there are tool calls).
    pub text: String,
    /// Tool calls, with their argument text verbatim.
    pub tool_calls: Vec<ToolCall>,
    /// Token counts (zero when the server did not say).
    pub usage: Usage,
    /// `stop`, `tool_calls`, `length`...
    pub finish_reason: Option<String>,
    /// The model that answered (`provider:model`), when a chain of
    /// fallbacks may have answered with another than the session's.
    pub model: Option<String>,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The server answered with an error status.
    #[error("model server answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
        /// The server's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// No answer (or no next chunk) in time.
    #[error("model server timed out: {0}")]
    Timeout(String),
    /// Could not connect, or the connection broke.
    #[error("connection to the model server failed: {0}")]
    Connection(String),
    /// The stream ended before the answer was complete.
    #[error("the model's reply stream ended early: {0}")]
    Truncated(String),
    /// The server sent something that is not the protocol.
    #[error("the model server sent an invalid reply: {0}")]
    Protocol(String),
    /// A setting is wrong (bad URL, missing key...).
    #[error("model configuration: {0}")]
    Config(String),
}

impl ModelError {
    /// Whether trying again may help: 408, 409, 429, 5xx, timeouts, broken connections, truncated streams.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Status { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || (500..600).contains(status)
            }
            ModelError::Timeout(_) | ModelError::Connection(_) | ModelError::Truncated(_) => true,
            ModelError::Protocol(_) | ModelError::Config(_) => false,
        }
    }

    /// The server's requested delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One attempt at one chat completion.
pub trait ModelClient: Send + Sync {
    /// Sends the request and waits for the whole answer.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>>;
}
