//! The OpenAI Chat Completions wire protocol, streaming, with tool calls.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{clip_error_body, http_client, snippet, Endpoint, Reply};
use crate::sse::EventSink;
use crate::{
    ChatMessage, ChatRequest, ChatResponse, ModelClient, ModelError, Role, ToolCall, Usage,
};

/// The endpoint used when neither the caller nor `OPENAI_BASE_URL` names one.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

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
    endpoint: Endpoint,
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
        let http = http_client(
            &config.base_url,
            config.connect_timeout,
            "http://127.0.0.1:8080/v1",
        )?;
        let endpoint = Endpoint {
            url: format!(
                "{}/chat/completions",
                config.base_url.trim().trim_end_matches('/')
            ),
            first_byte_timeout: config.first_byte_timeout,
            idle_timeout: config.idle_timeout,
        };
        Ok(OpenAiClient {
            config,
            endpoint,
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
            .post(&self.endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.config.api_key {
            http_request = http_request.bearer_auth(key);
        }
        tracing::debug!(url = %self.endpoint.url, messages = request.messages.len(), "model request");
        match self.endpoint.send(http_request).await? {
            Reply::Json(bytes) => parse_completion(&bytes),
            Reply::Events(mut body) => {
                let mut reply = StreamAccumulator::default();
                let received = self.endpoint.read_events(&mut body, &mut reply).await?;
                reply.finish(received)
            }
        }
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
    let body = clip_error_body(error.to_string());
    ModelError::Status {
        status,
        body,
        retry_after: None,
    }
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

impl EventSink for StreamAccumulator {
    fn event(&mut self, data: &str) -> Result<(), ModelError> {
        self.apply_event(data)
    }

    fn complete(&self) -> bool {
        self.done
    }
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
            model: None,
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
        model: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;

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
        assert_eq!(
            client.endpoint.url,
            "http://127.0.0.1:9/v1/chat/completions"
        );
    }
}
