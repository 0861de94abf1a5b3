//! The Anthropic Messages wire protocol, streaming, with tool use. See
//! [`AnthropicClient`] for how requests and replies are mapped.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::{clip_error_body, http_client, snippet, Endpoint, Reply};
use crate::sse::EventSink;
use crate::{
    ChatMessage, ChatRequest, ChatResponse, ModelClient, ModelError, Role, ToolCall, Usage,
};

/// The endpoint used when neither the caller nor `ANTHROPIC_BASE_URL` names one.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent by default.
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` when the request sets none (the API requires one).
const DEFAULT_MAX_TOKENS: u32 = 8192;
/// The user turn put in front of a conversation that does not start with one.
const LEADING_USER_TEXT: &str = "(continued)";
/// The result given to a tool call that has none in the conversation.
const MISSING_RESULT_TEXT: &str = "No result was recorded for this tool call.";

/// Where and how to reach the Anthropic Messages API (or a server speaking it).
#[derive(Clone, PartialEq, Eq)]
pub struct AnthropicConfig {
    /// Base URL without the `/v1`, e.g. `https://api.anthropic.com`
    /// (requests go to `{base_url}/v1/messages`; a base URL already ending
    /// in `/v1` is accepted too).
    pub base_url: String,
    /// Sent as `x-api-key` when set.
    pub api_key: Option<String>,
    /// The `anthropic-version` header, `2023-06-01` by default.
    pub version: String,
    /// `max_tokens` of requests that set none (the API requires it): 8192 by default.
    pub max_tokens: u32,
    /// Limit on establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving the response headers.
    pub first_byte_timeout: Duration,
    /// Longest silence allowed between two chunks of the response body (the
    /// API sends `ping` events while the model thinks).
    pub idle_timeout: Duration,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            base_url: DEFAULT_ANTHROPIC_BASE_URL.to_owned(),
            api_key: None,
            version: DEFAULT_ANTHROPIC_VERSION.to_owned(),
            max_tokens: DEFAULT_MAX_TOKENS,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("version", &self.version)
            .field("max_tokens", &self.max_tokens)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl AnthropicConfig {
    /// Defaults, with the base URL from `base_url_override`, else
    /// `ANTHROPIC_BASE_URL`, else [`DEFAULT_ANTHROPIC_BASE_URL`], and the key
    /// from `ANTHROPIC_API_KEY`. Empty values count as unset.
    pub fn from_env(base_url_override: Option<String>) -> Self {
        AnthropicConfig::from_vars(base_url_override, |name| std::env::var(name).ok())
    }

    /// [`AnthropicConfig::from_env`] with the variables read by `var`.
    pub(crate) fn from_vars(
        base_url_override: Option<String>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let non_empty = |value: String| {
            let trimmed = value.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        };
        let base_url = base_url_override
            .and_then(non_empty)
            .or_else(|| var("ANTHROPIC_BASE_URL").and_then(non_empty))
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_BASE_URL.to_owned());
        AnthropicConfig {
            base_url,
            api_key: var("ANTHROPIC_API_KEY").and_then(non_empty),
            ..AnthropicConfig::default()
        }
    }
}

/// A [`ModelClient`] for the Anthropic Messages API.
///
/// Each [`ModelClient::chat`] is one attempt: `POST {base_url}/v1/messages`
/// with `stream: true`, reading the server-sent events as they come. A server
/// that ignores `stream` and answers with the plain JSON message is accepted
/// too.
///
/// # How a [`ChatRequest`] becomes a Messages request
///
/// * Every `System` message goes, joined by blank lines, into the top-level
///   `system` string.
/// * `User` messages become `user` turns; `Assistant` messages `assistant`
///   turns with a `text` block and one `tool_use` block per tool call; `Tool`
///   messages become `tool_result` blocks of a `user` turn. Consecutive
///   messages of the same role are merged into one turn (the API wants the
///   roles to alternate), so several tool results share one `user` turn, and
///   the task and a compaction summary (two user messages) share one too.
///   In a `user` turn the `tool_result` blocks come first, as the API wants.
/// * Blank text is dropped (the API refuses empty text blocks), as is a
///   message left with no block at all.
/// * The arguments of a tool call are sent as the `input` object they
///   parse to. Arguments that are not a JSON object (the model wrote broken
///   JSON, or ran out of tokens in the middle of it) are sent as
///   `{"_raw": "<the text verbatim>"}`: the API only takes an object, and this
///   keeps what the model wrote in front of it, so that it can see (with
///   the tool's error result) what went wrong. Empty arguments are `{}`.
/// * The API accepts a `tool_result` only right after the `tool_use` it
///   answers, and wants every `tool_use` answered in the next turn. A tool
///   result that answers no call of the previous assistant turn (or a
///   second result for the same call) is sent as plain text in its user
///   turn; a call left without a result gets a result saying that none was
///   recorded, marked `is_error`.
/// * A request without tools (compaction) may not carry `tool_use` or
///   `tool_result` blocks at all: tool calls and results are then written
///   out as text.
/// * The first turn must be the user's: a conversation that starts with an
///   assistant message (or has no message) gets a minimal user turn,
///   `"(continued)"`, in front.
/// * The last turn, when it is the assistant's (a prefill), loses the
///   trailing whitespace of its last text block, which the API refuses.
///
/// # How the reply becomes a [`ChatResponse`]
///
/// The `text` blocks, concatenated, are the text; the `tool_use` blocks are
/// the tool calls, their arguments the concatenated `partial_json` deltas
/// verbatim (`{}` when there were none). Block types and delta types other
/// than text and tool use (thinking...) and unknown event types are
/// ignored. `stop_reason` maps to the OpenAI-style finish reasons the agent
/// knows (`end_turn`/`stop_sequence` -> `stop`, `tool_use` -> `tool_calls`,
/// `max_tokens` -> `length`), others pass verbatim. The prompt tokens are
/// `input_tokens` plus the cache writes and reads.
///
/// # Errors
///
/// A non-2xx answer is `ModelError::Status` with the start of the body and
/// the `retry-after` delay (429 and 529 `overloaded_error` are retryable).
/// An `error` event in the stream, or an error object in place of the
/// message, is `ModelError::Status` too, with the status its type goes with
/// (`overloaded_error` 529, `api_error` 500, `rate_limit_error` 429,
/// `invalid_request_error` 400...; an unknown type 500). A stream that ends
/// without `message_stop` is `ModelError::Truncated`.
#[derive(Clone)]
pub struct AnthropicClient {
    config: AnthropicConfig,
    endpoint: Endpoint,
    /// `x-api-key`, marked sensitive so that it is never logged.
    api_key: Option<reqwest::header::HeaderValue>,
    version: reqwest::header::HeaderValue,
    http: reqwest::Client,
}

impl fmt::Debug for AnthropicClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AnthropicClient {
    /// A client for `config`; fails on a base URL that is not http(s), or an
    /// API key or version that cannot be a header value.
    pub fn new(config: AnthropicConfig) -> Result<Self, ModelError> {
        let http = http_client(
            &config.base_url,
            config.connect_timeout,
            DEFAULT_ANTHROPIC_BASE_URL,
        )?;
        let api_key = match &config.api_key {
            Some(key) => {
                let mut value =
                    reqwest::header::HeaderValue::from_str(key.trim()).map_err(|_| {
                        ModelError::Config(
                            "the Anthropic API key is not a valid header value".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let version =
            reqwest::header::HeaderValue::from_str(config.version.trim()).map_err(|_| {
                ModelError::Config(format!(
                    "anthropic-version {:?} is not a valid header value",
                    config.version
                ))
            })?;
        let base = config.base_url.trim().trim_end_matches('/');
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let endpoint = Endpoint {
            url,
            first_byte_timeout: config.first_byte_timeout,
            idle_timeout: config.idle_timeout,
        };
        Ok(AnthropicClient {
            config,
            endpoint,
            api_key,
            version,
            http,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &AnthropicConfig {
        &self.config
    }

    async fn chat_once(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        // Serialised straight to bytes: the JSON tree is dropped before the
        // request waits.
        let body = serde_json::to_vec(&request_body(request, self.config.max_tokens))
            .map_err(|e| ModelError::Config(format!("cannot encode the request: {e}")))?;
        let mut http_request = self
            .http
            .post(&self.endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("anthropic-version", self.version.clone())
            .body(body);
        if let Some(key) = &self.api_key {
            http_request = http_request.header("x-api-key", key.clone());
        }
        tracing::debug!(url = %self.endpoint.url, messages = request.messages.len(), "model request");
        match self.endpoint.send(http_request).await? {
            Reply::Json(bytes) => parse_message(&bytes),
            Reply::Events(mut body) => {
                let mut reply = MessageAccumulator::default();
                let received = self.endpoint.read_events(&mut body, &mut reply).await?;
                reply.finish(received)
            }
        }
    }
}

impl ModelClient for AnthropicClient {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(self.chat_once(request))
    }
}

/// The JSON body of a Messages request.
pub(crate) fn request_body(request: &ChatRequest, default_max_tokens: u32) -> Value {
    let with_tools = !request.tools.is_empty();
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(default_max_tokens)),
    );
    let system = request
        .messages
        .iter()
        .filter(|message| message.role == Role::System && !message.content.trim().is_empty())
        .map(|message| message.content.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    if !system.is_empty() {
        body.insert("system".into(), Value::String(system));
    }
    body.insert(
        "messages".into(),
        Value::Array(messages_json(&request.messages, with_tools)),
    );
    if with_tools {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let mut spec = Map::new();
                spec.insert("name".into(), json!(tool.name));
                if !tool.description.is_empty() {
                    spec.insert("description".into(), json!(tool.description));
                }
                spec.insert("input_schema".into(), tool.parameters.clone());
                Value::Object(spec)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    body.insert("stream".into(), Value::Bool(true));
    Value::Object(body)
}

/// One turn of the Messages conversation being built.
struct Turn {
    assistant: bool,
    blocks: Vec<Value>,
}

fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({ "type": "text", "text": text }))
}

fn tool_result_block(id: &str, content: &str, is_error: bool) -> Value {
    let mut block = Map::new();
    block.insert("type".into(), json!("tool_result"));
    block.insert("tool_use_id".into(), json!(id));
    // `content` is optional; an empty one is left out.
    if !content.is_empty() {
        block.insert("content".into(), json!(content));
    }
    if is_error {
        block.insert("is_error".into(), Value::Bool(true));
    }
    Value::Object(block)
}

/// A tool result written out as text (no tools in the request, or no call
/// to answer).
fn tool_result_text(id: Option<&str>, content: &str) -> String {
    match id {
        Some(id) => format!("[result of tool call {id}]\n{content}"),
        None => format!("[tool result]\n{content}"),
    }
}

/// The `input` object of a `tool_use` block for these argument text.
pub(crate) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => input,
        _ => json!({ "_raw": arguments }),
    }
}

fn block_type(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The `messages` array: see the module documentation for the rules. The
/// Bedrock client maps the same turns to Converse messages, so both
/// providers repair a conversation the same way.
pub(crate) fn messages_json(messages: &[ChatMessage], with_tools: bool) -> Vec<Value> {
    let mut turns: Vec<Turn> = Vec::new();
    for message in messages {
        let (assistant, blocks) = match message.role {
            Role::System => continue,
            Role::User => (false, text_block(&message.content).into_iter().collect()),
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(&message.content).into_iter().collect();
                for call in &message.tool_calls {
                    if with_tools {
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": tool_input(&call.arguments),
                        }));
                    } else {
                        blocks.extend(text_block(&format!(
                            "[tool call {}: {} {}]",
                            call.id, call.name, call.arguments
                        )));
                    }
                }
                (true, blocks)
            }
            Role::Tool => match (&message.tool_call_id, with_tools) {
                (Some(id), true) => (false, vec![tool_result_block(id, &message.content, false)]),
                (id, _) => (
                    false,
                    text_block(&tool_result_text(id.as_deref(), &message.content))
                        .into_iter()
                        .collect(),
                ),
            },
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.assistant == assistant => last.blocks.extend(blocks),
            _ => turns.push(Turn { assistant, blocks }),
        }
    }
    if with_tools {
        pair_tool_results(&mut turns);
    }
    if turns.first().is_none_or(|turn| turn.assistant) {
        turns.insert(
            0,
            Turn {
                assistant: false,
                blocks: text_block(LEADING_USER_TEXT).into_iter().collect(),
            },
        );
    }
    if let Some(last) = turns.last_mut().filter(|turn| turn.assistant) {
        if let Some(Value::String(text)) = last
            .blocks
            .last_mut()
            .filter(|block| block_type(block) == "text")
            .and_then(|block| block.get_mut("text"))
        {
            text.truncate(text.trim_end().len());
        }
    }
    turns
        .into_iter()
        .map(|turn| {
            json!({
                "role": if turn.assistant { "assistant" } else { "user" },
                "content": turn.blocks,
            })
        })
        .collect()
}

/// The ids of the `tool_use` blocks of a turn.
fn tool_use_ids(turn: &Turn) -> Vec<String> {
    turn.blocks
        .iter()
        .filter(|block| block_type(block) == "tool_use")
        .filter_map(|block| block.get("id").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// Makes every user turn start with exactly one `tool_result` for each
/// `tool_use` of the assistant turn before it, in the order of the calls:
/// results that answer no call there become text, missing ones are filled
/// in (see the module documentation). Turns alternate already.
fn pair_tool_results(turns: &mut Vec<Turn>) {
    if turns
        .last()
        .is_some_and(|last| last.assistant && !tool_use_ids(last).is_empty())
    {
        // The calls of a last assistant turn get their (missing) results too.
        turns.push(Turn {
            assistant: false,
            blocks: Vec::new(),
        });
    }
    for at in 0..turns.len() {
        if turns[at].assistant {
            continue;
        }
        let calls = match at.checked_sub(1) {
            Some(previous) => tool_use_ids(&turns[previous]),
            None => Vec::new(),
        };
        let turn = &mut turns[at];
        let mut results: Vec<Option<Value>> = vec![None; calls.len()];
        let mut rest = Vec::new();
        for block in std::mem::take(&mut turn.blocks) {
            if block_type(&block) != "tool_result" {
                rest.push(block);
                continue;
            }
            let id = block
                .get("tool_use_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            match calls.iter().position(|call| call == id) {
                Some(slot) if results[slot].is_none() => results[slot] = Some(block),
                _ => {
                    let content = block.get("content").and_then(Value::as_str).unwrap_or("");
                    rest.extend(text_block(&tool_result_text(Some(id), content)));
                }
            }
        }
        turn.blocks = results
            .into_iter()
            .zip(&calls)
            .map(|(result, id)| {
                result.unwrap_or_else(|| tool_result_block(id, MISSING_RESULT_TEXT, true))
            })
            .chain(rest)
            .collect();
    }
}

/// `stop_reason` as the finish reasons the agent knows.
fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "tool_use" => "tool_calls",
        "max_tokens" => "length",
        other => other,
    }
    .to_owned()
}

/// The HTTP status an Anthropic error type goes with.
fn error_status(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        // `api_error` and anything new: a server-side failure.
        _ => 500,
    }
}

/// An `error` event, or an error object in place of a message: the status
/// its type goes with, and the whole text as the body.
fn error_reply(error: Option<&Value>, text: &str) -> ModelError {
    let kind = error
        .and_then(|error| error.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    ModelError::Status {
        status: error_status(kind),
        body: clip_error_body(text.trim().to_owned()),
        retry_after: None,
    }
}

/// Token counts as the API reports them.
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Takes the counts `other` reports (`message_delta` repeats or updates
    /// those of `message_start`).
    fn update(&mut self, other: &WireUsage) {
        let fields = [
            (&mut self.input_tokens, other.input_tokens),
            (&mut self.output_tokens, other.output_tokens),
            (
                &mut self.cache_creation_input_tokens,
                other.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                other.cache_read_input_tokens,
            ),
        ];
        for (mine, theirs) in fields {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            // Counts from the server: saturate rather than wrap or panic.
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0)),
            completion_tokens: self.output_tokens.unwrap_or(0),
        }
    }
}

/// A content block, in a `content_block_start` event or a whole message.
#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

/// The `delta` of `content_block_delta` and of `message_delta`.
#[derive(Deserialize)]
struct WireDelta {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessageStart {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// One streamed event (its `type` says which fields are there).
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<WireMessageStart>,
    #[serde(default)]
    content_block: Option<WireBlock>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

/// A content block being streamed.
#[derive(Debug)]
enum PartialBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
        /// The `input` of `content_block_start`, used when no delta comes.
        input: Option<Value>,
    },
    /// A block type this client does not use (thinking...).
    Other,
}

/// The arguments text of a tool call: the streamed JSON verbatim, else the
/// `input` given whole, else `{}`.
fn arguments_text(json: String, input: Option<&Value>) -> String {
    if !json.trim().is_empty() {
        return json;
    }
    match input {
        Some(Value::Object(map)) if !map.is_empty() => Value::Object(map.clone()).to_string(),
        Some(Value::String(text)) if !text.trim().is_empty() => text.clone(),
        _ => "{}".to_owned(),
    }
}

/// Builds one answer from the events of a streamed message.
#[derive(Debug, Default)]
pub(crate) struct MessageAccumulator {
    /// By index, in the order they started.
    blocks: Vec<(u64, PartialBlock)>,
    usage: WireUsage,
    stop_reason: Option<String>,
    stopped: bool,
    events: usize,
}

impl EventSink for MessageAccumulator {
    fn event(&mut self, data: &str) -> Result<(), ModelError> {
        self.apply_event(data)
    }

    fn complete(&self) -> bool {
        self.stopped
    }
}

impl MessageAccumulator {
    fn block_mut(
        &mut self,
        index: Option<u64>,
        kind: &str,
    ) -> Result<&mut PartialBlock, ModelError> {
        let index =
            index.ok_or_else(|| ModelError::Protocol(format!("{kind} event without an index")))?;
        self.blocks
            .iter_mut()
            .find(|(at, _)| *at == index)
            .map(|(_, block)| block)
            .ok_or_else(|| {
                ModelError::Protocol(format!(
                    "{kind} for content block {index}, which never started"
                ))
            })
    }

    /// Takes the `data` of one event.
    pub(crate) fn apply_event(&mut self, data: &str) -> Result<(), ModelError> {
        if self.stopped {
            return Ok(());
        }
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let event: WireEvent = serde_json::from_str(data).map_err(|error| {
            ModelError::Protocol(format!("invalid stream event ({error}): {}", snippet(data)))
        })?;
        self.events += 1;
        match event.kind.as_str() {
            "message_start" => {
                if let Some(usage) = event.message.and_then(|message| message.usage) {
                    self.usage.update(&usage);
                }
            }
            "content_block_start" => {
                let index = event.index.ok_or_else(|| {
                    ModelError::Protocol("content_block_start event without an index".into())
                })?;
                if self.blocks.iter().any(|(at, _)| *at == index) {
                    return Err(ModelError::Protocol(format!(
                        "content block {index} started twice"
                    )));
                }
                let block = match event.content_block {
                    Some(block) if block.kind == "text" => {
                        PartialBlock::Text(block.text.unwrap_or_default())
                    }
                    Some(block) if block.kind == "tool_use" => PartialBlock::ToolUse {
                        id: block.id.unwrap_or_default(),
                        name: block.name.unwrap_or_default(),
                        json: String::new(),
                        input: block.input,
                    },
                    _ => PartialBlock::Other,
                };
                self.blocks.push((index, block));
            }
            "content_block_delta" => {
                let delta = event.delta;
                match self.block_mut(event.index, "content_block_delta")? {
                    PartialBlock::Text(text) => {
                        if let Some(WireDelta {
                            text: Some(piece), ..
                        }) = delta.filter(|d| d.kind.as_deref() == Some("text_delta"))
                        {
                            text.push_str(&piece);
                        }
                    }
                    PartialBlock::ToolUse { json, .. } => {
                        if let Some(WireDelta {
                            partial_json: Some(piece),
                            ..
                        }) = delta.filter(|d| d.kind.as_deref() == Some("input_json_delta"))
                        {
                            json.push_str(&piece);
                        }
                    }
                    PartialBlock::Other => {}
                }
            }
            "content_block_stop" => {
                self.block_mut(event.index, "content_block_stop")?;
            }
            "message_delta" => {
                if let Some(reason) = event.delta.and_then(|delta| delta.stop_reason) {
                    self.stop_reason = Some(reason);
                }
                if let Some(usage) = &event.usage {
                    self.usage.update(usage);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => return Err(error_reply(event.error.as_ref(), data)),
            // `ping`, and event types added after this was written.
            _ => {}
        }
        Ok(())
    }

    /// The stream ended (or `message_stop` came): the answer, or `Truncated`.
    pub(crate) fn finish(mut self, received: usize) -> Result<ChatResponse, ModelError> {
        if !self.stopped {
            return Err(ModelError::Truncated(format!(
                "the stream ended after {received} bytes ({} events) without message_stop",
                self.events
            )));
        }
        self.blocks.sort_by_key(|(index, _)| *index);
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for (index, block) in self.blocks {
            match block {
                PartialBlock::Text(piece) => text.push_str(&piece),
                PartialBlock::ToolUse {
                    id,
                    name,
                    json,
                    input,
                } => tool_calls.push(ToolCall {
                    id: if id.is_empty() {
                        format!("toolu_{index}")
                    } else {
                        id
                    },
                    name,
                    arguments: arguments_text(json, input.as_ref()),
                }),
                PartialBlock::Other => {}
            }
        }
        Ok(ChatResponse {
            text,
            tool_calls,
            usage: self.usage.usage(),
            finish_reason: self.stop_reason.as_deref().map(finish_reason),
            model: None,
        })
    }
}

/// A whole (non-streaming) Messages reply.
#[derive(Deserialize)]
struct WireMessage {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    content: Option<Vec<WireBlock>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

/// A non-streaming `message` reply (or an `error` object).
pub(crate) fn parse_message(bytes: &[u8]) -> Result<ChatResponse, ModelError> {
    let text_of = || String::from_utf8_lossy(bytes).into_owned();
    let message: WireMessage = serde_json::from_slice(bytes).map_err(|error| {
        ModelError::Protocol(format!(
            "invalid JSON reply ({error}): {}",
            snippet(&text_of())
        ))
    })?;
    if message.kind.as_deref() == Some("error") || message.error.is_some() {
        return Err(error_reply(message.error.as_ref(), &text_of()));
    }
    let content = message.content.ok_or_else(|| {
        ModelError::Protocol(format!("reply has no content: {}", snippet(&text_of())))
    })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (index, block) in content.into_iter().enumerate() {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(ToolCall {
                id: block
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("toolu_{index}")),
                name: block.name.unwrap_or_default(),
                arguments: arguments_text(String::new(), block.input.as_ref()),
            }),
            _ => {}
        }
    }
    Ok(ChatResponse {
        text,
        tool_calls,
        usage: message.usage.map(|u| u.usage()).unwrap_or_default(),
        finish_reason: message.stop_reason.as_deref().map(finish_reason),
        model: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ToolSpec;

    fn assistant(text: &str, calls: &[(&str, &str, &str)]) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            content: text.into(),
            tool_calls: calls
                .iter()
                .map(|(id, name, arguments)| ToolCall {
                    id: (*id).into(),
                    name: (*name).into(),
                    arguments: (*arguments).into(),
                })
                .collect(),
            tool_call_id: None,
        }
    }

    fn tools() -> std::sync::Arc<[ToolSpec]> {
        std::sync::Arc::from(vec![ToolSpec {
            name: "shell".into(),
            description: "Runs a command.".into(),
            parameters: json!({"type": "object"}),
        }])
    }

    fn request(messages: Vec<ChatMessage>) -> ChatRequest {
        ChatRequest {
            model: "claude-test".into(),
            messages,
            tools: tools(),
            max_tokens: None,
        }
    }

    #[test]
    fn request_body_maps_roles_merges_turns_and_pairs_tool_results() {
        let body = request_body(
            &request(vec![
                ChatMessage::text(Role::System, "sys one"),
                ChatMessage::text(Role::User, "the task"),
                ChatMessage::text(Role::User, "a summary"),
                ChatMessage::text(Role::System, "sys two"),
                assistant(
                    "Let me look.",
                    &[
                        ("t1", "shell", r#"{"command":"ls"}"#),
                        ("t2", "shell", "{broken"),
                        ("t3", "shell", ""),
                    ],
                ),
                ChatMessage::tool_result("t2", "error: invalid arguments"),
                ChatMessage::tool_result("t1", "a.txt"),
                ChatMessage::text(Role::User, "  "),
                ChatMessage::text(Role::User, "3 turns left"),
                ChatMessage::tool_result("t3", ""),
                assistant("", &[]),
                assistant("Done.  \n", &[]),
            ]),
            8192,
        );
        assert_eq!(
            body,
            json!({
                "model": "claude-test",
                "max_tokens": 8192,
                "system": "sys one\n\nsys two",
                "stream": true,
                "tools": [{"name": "shell", "description": "Runs a command.", "input_schema": {"type": "object"}}],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "the task"},
                        {"type": "text", "text": "a summary"},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "shell", "input": {"command": "ls"}},
                        {"type": "tool_use", "id": "t2", "name": "shell", "input": {"_raw": "{broken"}},
                        {"type": "tool_use", "id": "t3", "name": "shell", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": "error: invalid arguments"},
                        {"type": "tool_result", "tool_use_id": "t3"},
                        {"type": "text", "text": "3 turns left"},
                    ]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
                ],
            })
        );
    }

    #[test]
    fn leading_assistant_turn_gets_a_user_turn_and_orphans_become_text() {
        let body = request_body(
            &request(vec![
                assistant("", &[("a", "shell", "{}")]),
                // `b` answers nothing; `a` is answered twice.
                ChatMessage::tool_result("b", "stray"),
                ChatMessage::tool_result("a", "first"),
                ChatMessage::tool_result("a", "again"),
                assistant("", &[("c", "shell", "[1]")]),
            ]),
            100,
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": LEADING_USER_TEXT}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "shell", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "a", "content": "first"},
                    {"type": "text", "text": "[result of tool call b]\nstray"},
                    {"type": "text", "text": "[result of tool call a]\nagain"},
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "shell", "input": {"_raw": "[1]"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "c", "content": MISSING_RESULT_TEXT, "is_error": true},
                ]},
            ])
        );
        let empty = request_body(&request(vec![ChatMessage::text(Role::System, "s")]), 1);
        assert_eq!(
            empty["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": LEADING_USER_TEXT}]}])
        );
    }

    #[test]
    fn without_tools_tool_blocks_are_written_as_text() {
        let mut compaction = request(vec![
            ChatMessage::text(Role::User, "Task: x"),
            assistant("Checking.", &[("a", "shell", r#"{"command":"ls"}"#)]),
            ChatMessage::tool_result("a", "a.txt"),
            ChatMessage::text(Role::User, "Summarise."),
        ]);
        compaction.tools = Vec::new().into();
        compaction.max_tokens = Some(77);
        let body = request_body(&compaction, 8192);
        assert!(body.get("tools").is_none());
        assert_eq!(body["max_tokens"], 77);
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Task: x"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "text", "text": "[tool call a: shell {\"command\":\"ls\"}]"},
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "[result of tool call a]\na.txt"},
                    {"type": "text", "text": "Summarise."},
                ]},
            ])
        );
    }

    fn events(acc: &mut MessageAccumulator, events: &[&str]) {
        for data in events {
            acc.apply_event(data).unwrap();
        }
    }

    #[test]
    fn stream_with_text_and_interleaved_tool_deltas() {
        let mut acc = MessageAccumulator::default();
        events(
            &mut acc,
            &[
                r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
                r#"{"type":"ping"}"#,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
                r#"{"type":"content_block_stop","index":0}"#,
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Two "}}"#,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"calls."}}"#,
                r#"{"type":"content_block_stop","index":1}"#,
                r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_b","name":"read_file","input":{}}}"#,
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_a","name":"shell","input":{}}}"#,
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}"#,
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"command\": "}}"#,
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"path\":\"a\"}"}}"#,
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"ls\"}"}}"#,
                r#"{"type":"content_block_stop","index":2}"#,
                r#"{"type":"content_block_stop","index":3}"#,
                r#"{"type":"future_event","index":99}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}"#,
                r#"{"type":"message_stop"}"#,
                r#"{"type":"error","error":{"type":"api_error","message":"ignored after the stop"}}"#,
            ],
        );
        assert!(acc.complete());
        let reply = acc.finish(0).unwrap();
        assert_eq!(reply.text, "Two calls.");
        assert_eq!(
            reply.tool_calls,
            vec![
                ToolCall {
                    id: "toolu_a".into(),
                    name: "shell".into(),
                    arguments: "{\"command\": \"ls\"}".into()
                },
                ToolCall {
                    id: "toolu_b".into(),
                    name: "read_file".into(),
                    arguments: "{\"path\":\"a\"}".into()
                },
            ]
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 113,
                completion_tokens: 42
            }
        );
    }

    #[test]
    fn tool_use_without_deltas_has_empty_object_or_the_start_input() {
        let mut acc = MessageAccumulator::default();
        events(
            &mut acc,
            &[
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"x","name":"list","input":{}}}"#,
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"y","name":"read","input":{"path":"p"}}}"#,
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","name":"nameless"}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"}}"#,
                r#"{"type":"message_stop"}"#,
            ],
        );
        let reply = acc.finish(0).unwrap();
        assert_eq!(reply.tool_calls[0].arguments, "{}");
        assert_eq!(reply.tool_calls[1].arguments, r#"{"path":"p"}"#);
        assert_eq!(reply.tool_calls[2].id, "toolu_2");
        assert_eq!(reply.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn finish_reasons_map_and_unknown_ones_pass() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("refusal"), "refusal");
        assert_eq!(finish_reason("pause_turn"), "pause_turn");
    }

    #[test]
    fn stream_errors() {
        let mut acc = MessageAccumulator::default();
        events(
            &mut acc,
            &[
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ],
        );
        assert!(matches!(
            acc.finish(5),
            Err(ModelError::Truncated(message)) if message.contains("without message_stop")
        ));

        let mut acc = MessageAccumulator::default();
        let error = acc
            .apply_event(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            )
            .unwrap_err();
        assert!(
            matches!(&error, ModelError::Status { status: 529, body, .. } if body.contains("Overloaded")),
            "{error:?}"
        );
        assert!(error.is_retryable());
        let error = acc
            .apply_event(
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
            )
            .unwrap_err();
        assert!(matches!(&error, ModelError::Status { status: 400, .. }));
        assert!(!error.is_retryable());
        let error = acc
            .apply_event(r#"{"type":"error","error":{"type":"brand_new_error","message":"?"}}"#)
            .unwrap_err();
        assert!(matches!(&error, ModelError::Status { status: 500, .. }));

        for bad in [
            "{oops",
            r#"{"type":"content_block_delta","index":7,"delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type":"content_block_start","content_block":{"type":"text","text":""}}"#,
        ] {
            let mut acc = MessageAccumulator::default();
            assert!(
                matches!(acc.apply_event(bad), Err(ModelError::Protocol(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_streaming_message_is_parsed() {
        let reply = parse_message(
            br#"{"id":"msg","type":"message","role":"assistant","content":[
                {"type":"text","text":"Running it."},
                {"type":"tool_use","id":"toolu_1","name":"shell","input":{"command":"pwd"}}
            ],"stop_reason":"tool_use","usage":{"input_tokens":7,"cache_read_input_tokens":2,"output_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!(reply.text, "Running it.");
        assert_eq!(
            reply.tool_calls,
            vec![ToolCall {
                id: "toolu_1".into(),
                name: "shell".into(),
                arguments: r#"{"command":"pwd"}"#.into()
            }]
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 9,
                completion_tokens: 4
            }
        );
        let error = parse_message(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        )
        .unwrap_err();
        assert!(matches!(error, ModelError::Status { status: 429, .. }));
        assert!(matches!(
            parse_message(br#"{"type":"message"}"#),
            Err(ModelError::Protocol(_))
        ));
        assert!(matches!(
            parse_message(b"not json"),
            Err(ModelError::Protocol(_))
        ));
    }

    #[test]
    fn config_from_vars_defaults_and_url() {
        let vars = |base: Option<&str>, key: Option<&str>| {
            let (base, key) = (base.map(str::to_owned), key.map(str::to_owned));
            move |name: &str| match name {
                "ANTHROPIC_BASE_URL" => base.clone(),
                "ANTHROPIC_API_KEY" => key.clone(),
                _ => None,
            }
        };
        let config = AnthropicConfig::from_vars(None, vars(None, None));
        assert_eq!(config, AnthropicConfig::default());
        assert_eq!(config.base_url, DEFAULT_ANTHROPIC_BASE_URL);
        assert_eq!(config.version, "2023-06-01");
        assert_eq!(config.max_tokens, 8192);
        let config = AnthropicConfig::from_vars(
            None,
            vars(Some(" http://127.0.0.1:1 "), Some(" sk-ant-x ")),
        );
        assert_eq!(config.base_url, "http://127.0.0.1:1");
        assert_eq!(config.api_key.as_deref(), Some("sk-ant-x"));
        let config = AnthropicConfig::from_vars(
            Some("http://override".into()),
            vars(Some("http://env"), Some("")),
        );
        assert_eq!(config.base_url, "http://override");
        assert_eq!(config.api_key, None);
        let config = AnthropicConfig::from_vars(Some("  ".into()), vars(Some(""), None));
        assert_eq!(config.base_url, DEFAULT_ANTHROPIC_BASE_URL);
    }

    #[test]
    fn client_urls_and_bad_settings() {
        let url = |base: &str| {
            AnthropicClient::new(AnthropicConfig {
                base_url: base.into(),
                ..AnthropicConfig::default()
            })
            .unwrap()
            .endpoint
            .url
        };
        assert_eq!(
            url("https://api.anthropic.com"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(url("http://127.0.0.1:9/"), "http://127.0.0.1:9/v1/messages");
        assert_eq!(
            url("http://127.0.0.1:9/v1/"),
            "http://127.0.0.1:9/v1/messages"
        );
        for config in [
            AnthropicConfig {
                base_url: "ftp://x".into(),
                ..AnthropicConfig::default()
            },
            AnthropicConfig {
                api_key: Some("bad\nkey".into()),
                ..AnthropicConfig::default()
            },
            AnthropicConfig {
                version: "bad\u{7f}".into(),
                ..AnthropicConfig::default()
            },
        ] {
            assert!(matches!(
                AnthropicClient::new(config),
                Err(ModelError::Config(_))
            ));
        }
    }

    #[test]
    fn tool_input_of_arguments() {
        assert_eq!(tool_input(""), json!({}));
        assert_eq!(tool_input(" {\"a\": 1} "), json!({"a": 1}));
        assert_eq!(tool_input("{\"a\":"), json!({"_raw": "{\"a\":"}));
        assert_eq!(tool_input("\"str\""), json!({"_raw": "\"str\""}));
    }
}
