//! The OpenAI Chat Completions wire protocol, streaming, with tool calls.

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    ChatMessage, ChatRequest, ChatResponse, ModelClient, ModelError, Role, ToolCall, Usage,
};

/// The endpoint used when neither the caller nor `OPENAI_BASE_URL` names one.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// How much of an error response body is kept.
const ERROR_BODY_LIMIT: usize = 2048;
/// The largest non-streaming reply accepted.
const JSON_BODY_LIMIT: usize = 32 << 20;
/// How long to wait for the end of the body after `[DONE]`, so the
/// connection can go back to the pool.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(200);

/// Where and how to reach an OpenAI-compatible server.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// Base URL, up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// Limit on establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving the response headers
    /// (a local model may take long to process a large prompt).
    pub first_byte_timeout: Duration,
    /// Longest silence allowed between two chunks of the response body.
    pub idle_timeout: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: DEFAULT_OPENAI_BASE_URL.to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl OpenAiConfig {
    /// Defaults, with the base URL from `base_url_override`, else
    /// `OPENAI_BASE_URL`, else [`DEFAULT_OPENAI_BASE_URL`], and the key from
    /// `OPENAI_API_KEY`. Empty values count as unset.
    pub fn from_env(base_url_override: Option<String>) -> Self {
        let non_empty = |value: String| {
            let trimmed = value.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        };
        let base_url = base_url_override
            .and_then(non_empty)
            .or_else(|| std::env::var("OPENAI_BASE_URL").ok().and_then(non_empty))
            .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_owned());
        OpenAiConfig {
            base_url,
            api_key: std::env::var("OPENAI_API_KEY").ok().and_then(non_empty),
            ..OpenAiConfig::default()
        }
    }
}

/// A [`ModelClient`] for OpenAI-compatible servers (OpenAI, llama.cpp's
/// llama-server, Ollama, vLLM, LM Studio, OpenRouter...).
///
/// Each [`ModelClient::chat`] is one attempt: `POST {base_url}/chat/completions`
/// with `stream: true`, reading the server-sent events as they come. A server
/// that ignores `stream` and answers with plain JSON is accepted too.
#[derive(Clone)]
pub struct OpenAiClient {
    config: OpenAiConfig,
    chat_url: String,
    http: reqwest::Client,
}

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    /// A client for `config`; fails on a base URL that is not http(s).
    pub fn new(config: OpenAiConfig) -> Result<Self, ModelError> {
        let url = reqwest::Url::parse(config.base_url.trim()).map_err(|error| {
            ModelError::Config(format!(
                "base URL {:?} is not a URL ({error}); expected e.g. http://127.0.0.1:8080/v1",
                config.base_url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ModelError::Config(format!(
                "base URL {:?} must start with http:// or https://",
                config.base_url
            )));
        }
        let host = url.host_str().unwrap_or("");
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")));
        if loopback {
            // A local model server is never behind the user's HTTP proxy.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|error| {
            ModelError::Config(format!("building the HTTP client: {}", error_chain(&error)))
        })?;
        let chat_url = format!(
            "{}/chat/completions",
            config.base_url.trim().trim_end_matches('/')
        );
        Ok(OpenAiClient {
            config,
            chat_url,
            http,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    async fn chat_once(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        // Serialised straight to bytes: the JSON tree is dropped before the
        // request waits, which matters with a thousand sessions waiting.
        let body = serde_json::to_vec(&request_body(request))
            .map_err(|e| ModelError::Config(format!("cannot encode the request: {e}")))?;
        let mut http_request = self
            .http
            .post(&self.chat_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.config.api_key {
            http_request = http_request.bearer_auth(key);
        }
        tracing::debug!(url = %self.chat_url, messages = request.messages.len(), "model request");
        let response =
            match tokio::time::timeout(self.config.first_byte_timeout, http_request.send()).await {
                Err(_) => {
                    return Err(ModelError::Timeout(format!(
                        "no response from {} within {:?}",
                        self.chat_url, self.config.first_byte_timeout
                    )))
                }
                Ok(Err(error)) => return Err(transport_error(&error)),
                Ok(Ok(response)) => response,
            };
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = response.bytes_stream();
        if !status.is_success() {
            let retry_after = retry_after(&headers, SystemTime::now());
            let text = read_error_body(&mut body, self.config.idle_timeout).await;
            return Err(ModelError::Status {
                status: status.as_u16(),
                body: text,
                retry_after,
            });
        }
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            let bytes = self.read_all(&mut body).await?;
            parse_completion(&bytes)
        } else if content_type.is_empty() || content_type.starts_with("text/event-stream") {
            self.read_stream(&mut body).await
        } else {
            Err(ModelError::Protocol(format!(
                "{} answered with content type {content_type:?}; expected text/event-stream or application/json",
                self.chat_url
            )))
        }
    }

    /// The next body chunk, within the idle timeout.
    async fn next_chunk<S>(
        &self,
        body: &mut S,
        received: usize,
    ) -> Result<Option<bytes::Bytes>, ModelError>
    where
        S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        match tokio::time::timeout(self.config.idle_timeout, body.next()).await {
            Err(_) => Err(ModelError::Timeout(format!(
                "no data from {} for {:?} (after {received} bytes of the reply)",
                self.chat_url, self.config.idle_timeout
            ))),
            Ok(None) => Ok(None),
            Ok(Some(Err(error))) => Err(transport_error(&error)),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        }
    }

    async fn read_all<S>(&self, body: &mut S) -> Result<Vec<u8>, ModelError>
    where
        S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        let mut bytes = Vec::new();
        while let Some(chunk) = self.next_chunk(body, bytes.len()).await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > JSON_BODY_LIMIT {
                return Err(ModelError::Protocol(format!(
                    "reply from {} is larger than {JSON_BODY_LIMIT} bytes",
                    self.chat_url
                )));
            }
        }
        Ok(bytes)
    }

    async fn read_stream<S>(&self, body: &mut S) -> Result<ChatResponse, ModelError>
    where
        S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        let mut parser = SseParser::default();
        let mut reply = StreamAccumulator::default();
        let mut events = Vec::new();
        let mut received = 0usize;
        loop {
            let chunk = self.next_chunk(body, received).await?;
            match &chunk {
                Some(bytes) => {
                    received += bytes.len();
                    parser.feed(bytes, &mut events)?;
                }
                None => parser.finish(&mut events)?,
            }
            for data in events.drain(..) {
                reply.apply_event(&data)?;
            }
            if reply.done {
                // Read the end of the body so the connection can be reused.
                let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
                    while let Some(Ok(_)) = body.next().await {}
                })
                .await;
                break;
            }
            if chunk.is_none() {
                break;
            }
        }
        reply.finish(received)
    }
}

impl ModelClient for OpenAiClient {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(self.chat_once(request))
    }
}

/// The JSON body of a chat request.
pub(crate) fn request_body(request: &ChatRequest) -> Value {
    let mut body = json!({
        "model": request.model,
        "messages": request.messages.iter().map(message_json).collect::<Vec<_>>(),
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if let Some(object) = body.as_object_mut() {
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.parameters,
                        },
                    })
                })
                .collect::<Vec<_>>();
            object.insert("tools".to_owned(), Value::Array(tools));
        }
        if let Some(max_tokens) = request.max_tokens {
            object.insert("max_tokens".to_owned(), json!(max_tokens));
        }
    }
    body
}

fn message_json(message: &ChatMessage) -> Value {
    match message.role {
        Role::System => json!({ "role": "system", "content": message.content }),
        Role::User => json!({ "role": "user", "content": message.content }),
        Role::Assistant => {
            if message.tool_calls.is_empty() {
                json!({ "role": "assistant", "content": message.content })
            } else {
                let content = if message.content.is_empty() {
                    Value::Null
                } else {
                    Value::String(message.content.clone())
                };
                let calls = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": call.arguments },
                        })
                    })
                    .collect::<Vec<_>>();
                json!({ "role": "assistant", "content": content, "tool_calls": calls })
            }
        }
        Role::Tool => match &message.tool_call_id {
            Some(id) => json!({ "role": "tool", "tool_call_id": id, "content": message.content }),
            None => json!({ "role": "tool", "content": message.content }),
        },
    }
}

/// A reqwest error with its causes, which is where the useful part is
/// ("connection refused", "connection reset by peer").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Maps a reqwest error (its text names the URL) to the error kinds.
fn transport_error(error: &reqwest::Error) -> ModelError {
    let detail = error_chain(error);
    if error.is_timeout() {
        ModelError::Timeout(detail)
    } else if error.is_builder() {
        ModelError::Config(detail)
    } else {
        ModelError::Connection(detail)
    }
}

/// The delay a server asks for: OpenAI's `retry-after-ms`, else
/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms.min(1e12) / 1000.0));
        }
    }
    header("retry-after").and_then(|value| parse_retry_after(value, now))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
        return None;
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

async fn read_error_body<S>(body: &mut S, idle: Duration) -> String
where
    S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let cut = bytes.len().min(ERROR_BODY_LIMIT);
    let mut text = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if text.ends_with('\u{FFFD}') && cut == ERROR_BODY_LIMIT {
        // A character cut in half at the limit.
        text.pop();
    }
    text.trim_end().to_owned()
}

/// Splits a server-sent-events byte stream into the `data` of each event.
///
/// Bytes may be split anywhere: a line (or a `\r\n`) cut between two
/// chunks is kept until its end arrives. Lines end in `\n`, `\r\n` or `\r`;
/// lines starting with `:` are comments; fields other than `data` are
/// ignored; an event ends at an empty line.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for a line end.
    scanned: usize,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Adds bytes; pushes the data of every event they complete onto `events`.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        events: &mut Vec<String>,
    ) -> Result<(), ModelError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(bytes);
        let result = self.split_lines(&buffer, events);
        if let Ok(start) = result {
            buffer.drain(..start);
        }
        self.buffer = buffer;
        result.map(|_| ())
    }

    /// Handles every complete line of `buffer`; returns where the rest starts.
    fn split_lines(
        &mut self,
        buffer: &[u8],
        events: &mut Vec<String>,
    ) -> Result<usize, ModelError> {
        let mut start = 0;
        let mut at = self.scanned;
        while at < buffer.len() {
            match buffer[at] {
                b'\n' => {
                    self.line(&buffer[start..at], events)?;
                    at += 1;
                    start = at;
                }
                b'\r' => {
                    if at + 1 == buffer.len() {
                        // Might be the first half of a `\r\n`: wait for more.
                        break;
                    }
                    self.line(&buffer[start..at], events)?;
                    at += if buffer[at + 1] == b'\n' { 2 } else { 1 };
                    start = at;
                }
                _ => at += 1,
            }
        }
        self.scanned = at - start;
        Ok(start)
    }

    /// The stream ended: handles a last line without its line end and an
    /// event without its closing empty line.
    pub(crate) fn finish(&mut self, events: &mut Vec<String>) -> Result<(), ModelError> {
        let mut rest = std::mem::take(&mut self.buffer);
        self.scanned = 0;
        if rest.last() == Some(&b'\r') {
            rest.pop();
        }
        if !rest.is_empty() {
            self.line(&rest, events)?;
        }
        self.line(b"", events)
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<String>) -> Result<(), ModelError> {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let value = std::str::from_utf8(value).map_err(|error| {
                ModelError::Protocol(format!("stream data is not UTF-8: {error}"))
            })?;
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Option<Vec<StreamChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<DeltaCall>>,
}

#[derive(Deserialize)]
struct DeltaCall {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    /// A string normally; some servers send an object.
    #[serde(default)]
    arguments: Option<Value>,
}

fn arguments_text(arguments: Option<&Value>) -> String {
    match arguments {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// An error object sent in place of a reply.
fn error_object(error: &Value) -> ModelError {
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (400..600).contains(code))
        .unwrap_or(500);
    let mut body = error.to_string();
    if body.len() > ERROR_BODY_LIMIT {
        let mut cut = ERROR_BODY_LIMIT;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    ModelError::Status {
        status,
        body,
        retry_after: None,
    }
}

fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

#[derive(Debug)]
struct PartialCall {
    index: u64,
    id: String,
    name: String,
    arguments: String,
}

/// Builds one answer from stream chunks.
#[derive(Debug, Default)]
pub(crate) struct StreamAccumulator {
    text: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Usage,
    done: bool,
    chunks: usize,
}

impl StreamAccumulator {
    /// Takes the `data` of one event.
    pub(crate) fn apply_event(&mut self, data: &str) -> Result<(), ModelError> {
        if self.done {
            return Ok(());
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: StreamChunk = serde_json::from_str(data).map_err(|error| {
            ModelError::Protocol(format!("invalid stream chunk ({error}): {}", snippet(data)))
        })?;
        self.chunks += 1;
        if let Some(error) = &chunk.error {
            return Err(error_object(error.get("error").unwrap_or(error)));
        }
        if let Some(usage) = &chunk.usage {
            self.usage = usage.usage();
        }
        for choice in chunk.choices.iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = &choice.delta {
                if let Some(content) = &delta.content {
                    self.text.push_str(content);
                }
                for call in delta.tool_calls.iter().flatten() {
                    self.apply_call(call);
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
        Ok(())
    }

    fn apply_call(&mut self, delta: &DeltaCall) {
        let index = match delta.index {
            Some(index) => index,
            // Servers that leave out `index`: a new id starts a new call.
            None => match (self.calls.last(), &delta.id) {
                (Some(last), Some(id)) if !last.id.is_empty() && last.id != *id => last.index + 1,
                (Some(last), _) => last.index,
                (None, _) => 0,
            },
        };
        let position = match self.calls.iter().position(|call| call.index == index) {
            Some(position) => position,
            None => {
                self.calls.push(PartialCall {
                    index,
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[position];
        if let Some(id) = delta.id.as_deref().filter(|id| !id.is_empty()) {
            if call.id.is_empty() {
                call.id = id.to_owned();
            }
        }
        if let Some(function) = &delta.function {
            if let Some(name) = function.name.as_deref().filter(|name| !name.is_empty()) {
                if call.name.is_empty() {
                    call.name = name.to_owned();
                }
            }
            call.arguments
                .push_str(&arguments_text(function.arguments.as_ref()));
        }
    }

    /// The stream ended (or `[DONE]` came): the answer, or `Truncated`.
    pub(crate) fn finish(mut self, received: usize) -> Result<ChatResponse, ModelError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ModelError::Truncated(format!(
                "the stream ended after {received} bytes ({} chunks) without a finish reason or [DONE]",
                self.chunks
            )));
        }
        self.calls.sort_by_key(|call| call.index);
        let tool_calls = self
            .calls
            .into_iter()
            .map(|call| ToolCall {
                id: if call.id.is_empty() {
                    format!("call_{}", call.index)
                } else {
                    call.id
                },
                name: call.name,
                arguments: call.arguments,
            })
            .collect();
        Ok(ChatResponse {
            text: self.text,
            tool_calls,
            usage: self.usage,
            finish_reason: self.finish_reason,
        })
    }
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Option<Vec<CompletionChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    #[serde(default)]
    message: Option<CompletionMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CompletionMessage {
    /// A string, or a list of `{type: "text", text}` parts.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<CompletionCall>>,
}

#[derive(Deserialize)]
struct CompletionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

/// A non-streaming `chat.completion` reply.
pub(crate) fn parse_completion(bytes: &[u8]) -> Result<ChatResponse, ModelError> {
    let completion: Completion = serde_json::from_slice(bytes).map_err(|error| {
        ModelError::Protocol(format!(
            "invalid JSON reply ({error}): {}",
            snippet(&String::from_utf8_lossy(bytes))
        ))
    })?;
    if let Some(error) = &completion.error {
        return Err(error_object(error));
    }
    let choice = completion
        .choices
        .and_then(|choices| choices.into_iter().next())
        .ok_or_else(|| {
            ModelError::Protocol(format!(
                "reply has no choices: {}",
                snippet(&String::from_utf8_lossy(bytes))
            ))
        })?;
    let message = choice.message;
    let text = match message.as_ref().and_then(|m| m.content.as_ref()) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let tool_calls = message
        .and_then(|m| m.tool_calls)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, call)| {
            let function = call.function;
            ToolCall {
                id: call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call_{index}")),
                name: function
                    .as_ref()
                    .and_then(|f| f.name.clone())
                    .unwrap_or_default(),
                arguments: arguments_text(function.as_ref().and_then(|f| f.arguments.as_ref())),
            }
        })
        .collect();
    Ok(ChatResponse {
        text,
        tool_calls,
        usage: completion.usage.map(|u| u.usage()).unwrap_or_default(),
        finish_reason: choice.finish_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;

    fn parse_all(pieces: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut events).unwrap();
        }
        parser.finish(&mut events).unwrap();
        events
    }

    #[test]
    fn sse_events_survive_any_split() {
        let stream: &[u8] = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\ndata: h\xc3\xa9\r\rdata: [DONE]\n\n";
        let expected = vec!["{\"a\":1}", "line1\nline2", "h\u{e9}", "[DONE]"];
        assert_eq!(parse_all(&[stream]), expected);
        for cut in 0..=stream.len() {
            assert_eq!(
                parse_all(&[&stream[..cut], &stream[cut..]]),
                expected,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytes), expected);
    }

    #[test]
    fn sse_last_event_without_blank_line_is_kept() {
        assert_eq!(
            parse_all(&[b"data: a\n\ndata: [DONE]"]),
            vec!["a", "[DONE]"]
        );
        assert_eq!(parse_all(&[b"data: a\r"]), vec!["a"]);
        assert!(parse_all(&[b": only a comment\n\n"]).is_empty());
    }

    #[test]
    fn sse_rejects_invalid_utf8() {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let error = parser.feed(b"data: \xff\n\n", &mut events).unwrap_err();
        assert!(matches!(error, ModelError::Protocol(_)), "{error:?}");
    }

    #[test]
    fn accumulates_tool_calls_by_index_and_keeps_arguments_verbatim() {
        let mut acc = StreamAccumulator::default();
        for data in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"read","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"shell","arguments":"{\"cmd\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{not json"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"ls\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#,
            "[DONE]",
        ] {
            acc.apply_event(data).unwrap();
        }
        let reply = acc.finish(0).unwrap();
        assert_eq!(
            reply.tool_calls,
            vec![
                ToolCall {
                    id: "a".into(),
                    name: "shell".into(),
                    arguments: "{\"cmd\":\"ls\"}".into()
                },
                ToolCall {
                    id: "b".into(),
                    name: "read".into(),
                    arguments: "{not json".into()
                },
            ]
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 5
            }
        );
    }

    #[test]
    fn stream_without_end_is_truncated_but_finish_reason_suffices() {
        let mut acc = StreamAccumulator::default();
        acc.apply_event(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#)
            .unwrap();
        assert!(matches!(acc.finish(10), Err(ModelError::Truncated(_))));

        let mut acc = StreamAccumulator::default();
        acc.apply_event(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#)
            .unwrap();
        assert_eq!(acc.finish(10).unwrap().text, "Hi");
    }

    #[test]
    fn invalid_chunk_is_protocol_error_and_error_chunk_is_status() {
        let mut acc = StreamAccumulator::default();
        assert!(matches!(
            acc.apply_event("{oops"),
            Err(ModelError::Protocol(_))
        ));
        let error = acc
            .apply_event(r#"{"error":{"message":"overloaded","code":503}}"#)
            .unwrap_err();
        assert!(
            matches!(error, ModelError::Status { status: 503, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn request_body_follows_the_openai_format() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::text(Role::System, "sys"),
                ChatMessage::text(Role::User, "task"),
                ChatMessage {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "shell".into(),
                        arguments: "{bad".into(),
                    }],
                    tool_call_id: None,
                },
                ChatMessage::tool_result("c1", "out"),
            ],
            tools: Vec::new().into(),
            max_tokens: None,
        };
        let body = request_body(&request);
        assert_eq!(
            body,
            json!({
                "model": "m",
                "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "task"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{bad"}}
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": "out"},
                ],
            })
        );
        let with_tools = ChatRequest {
            tools: std::sync::Arc::from(vec![ToolSpec {
                name: "t".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }]),
            max_tokens: Some(64),
            ..request
        };
        let body = request_body(&with_tools);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "t", "description": "d", "parameters": {"type": "object"}}}])
        );
    }

    #[test]
    fn non_streaming_reply_is_parsed() {
        let reply = parse_completion(
            br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!(reply.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(reply.usage.completion_tokens, 4);
        assert!(matches!(
            parse_completion(b"{\"choices\":[]}"),
            Err(ModelError::Protocol(_))
        ));
    }

    #[test]
    fn config_rejects_bad_urls_and_hides_the_key() {
        let bad = OpenAiConfig {
            base_url: "ftp://x".into(),
            ..OpenAiConfig::default()
        };
        assert!(matches!(OpenAiClient::new(bad), Err(ModelError::Config(_))));
        let bad = OpenAiConfig {
            base_url: "not a url".into(),
            ..OpenAiConfig::default()
        };
        assert!(matches!(OpenAiClient::new(bad), Err(ModelError::Config(_))));
        let config = OpenAiConfig {
            api_key: Some("sk-secret".into()),
            ..OpenAiConfig::default()
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
        let client = OpenAiClient::new(OpenAiConfig {
            base_url: "http://127.0.0.1:9/v1/".into(),
            ..OpenAiConfig::default()
        })
        .unwrap();
        assert_eq!(client.chat_url, "http://127.0.0.1:9/v1/chat/completions");
    }
}
