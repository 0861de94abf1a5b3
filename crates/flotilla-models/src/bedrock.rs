//! Amazon Bedrock's Converse API, streaming, with tool use, through the
//! official AWS SDK. See [`BedrockClient`] for how requests and replies are
//! mapped.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_bedrockruntime as sdk;
use aws_smithy_http_client::tls;
use aws_smithy_types::event_stream::RawMessage;
use aws_smithy_types::{Document, Number};
use futures::future::BoxFuture;
use sdk::config::http::HttpResponse;
use sdk::config::retry::RetryConfig;
use sdk::config::timeout::TimeoutConfig;
use sdk::config::{
    AppName, Credentials, Region, SharedCredentialsProvider, SharedHttpClient,
    StalledStreamProtectionConfig,
};
use sdk::error::{ConnectorError, ProvideErrorMetadata, SdkError};
use sdk::operation::converse_stream::ConverseStreamError;
use sdk::operation::RequestId as _;
use sdk::types::error::ConverseStreamOutputError;
use sdk::types::{
    ContentBlock, ContentBlockDelta, ContentBlockStart, ConversationRole, ConverseStreamOutput,
    InferenceConfiguration, Message, SystemContentBlock, Tool, ToolConfiguration, ToolInputSchema,
    ToolResultBlock, ToolResultContentBlock, ToolSpecification, ToolUseBlock,
};
use serde_json::Value;

use crate::anthropic::messages_json;
use crate::http::{clip_error_body, error_chain, parse_retry_after};
use crate::{ChatRequest, ChatResponse, ModelClient, ModelError, Role, ToolCall, Usage};

/// `maxTokens` when the request sets none.
const DEFAULT_MAX_TOKENS: u32 = 8192;
/// The text of a tool result that has none (Bedrock refuses blank text).
const EMPTY_RESULT_TEXT: &str = "(no output)";
/// How long to wait for the `metadata` event (the usage) once
/// `messageStop` came: the answer is complete by then.
const METADATA_WAIT: Duration = Duration::from_secs(5);
/// The provider name of the credentials given to
/// [`BedrockClient::with_static_credentials`].
const STATIC_PROVIDER: &str = "flotilla-static";

/// How to reach Amazon Bedrock. Credentials are not part of it: they come
/// from the standard AWS chain (see [`BedrockClient::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BedrockConfig {
    /// The AWS region, e.g. `us-east-1`; `None` takes the chain's
    /// (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, IMDS).
    pub region: Option<String>,
    /// An endpoint to use instead of the region's
    /// (`https://bedrock-runtime.{region}.amazonaws.com`), e.g. a VPC
    /// endpoint or a local server; `None` takes
    /// `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, else `AWS_ENDPOINT_URL`, else the
    /// profile's `endpoint_url`, else the region's.
    pub endpoint_url: Option<String>,
    /// The profile of the shared config and credentials files; `None`
    /// takes `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// `maxTokens` of requests that set none: 8192 by default.
    pub max_tokens: u32,
    /// Limit on establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving the response headers.
    pub first_byte_timeout: Duration,
    /// Longest wait for the next event of the reply stream.
    pub idle_timeout: Duration,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        BedrockConfig {
            region: None,
            endpoint_url: None,
            profile: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// The HTTPS client of the SDK and of the credential providers: hyper with
/// rustls on ring (the SDK's default client would build aws-lc), trusting
/// the system's roots.
fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// A [`ModelClient`] for Amazon Bedrock's `ConverseStream` operation.
///
/// Each [`ModelClient::chat`] is one attempt (the SDK's own retries are
/// off: the agent loop retries): `POST /model/{model}/converse-stream`,
/// signed with SigV4 for the service `bedrock`, reading the event stream as
/// it comes. The model is the request's `model`: a model id
/// (`anthropic.claude-sonnet-4-20250514-v1:0`), an inference profile
/// (`us.anthropic...`) or an ARN.
///
/// # How a [`ChatRequest`] becomes a Converse request
///
/// The conversation is repaired exactly as for the Anthropic Messages API
/// (see [`AnthropicClient`](crate::AnthropicClient)), which has the same
/// rules as Converse: consecutive messages of the same role are merged into
/// one turn, tool results go first in the user turn after the assistant
/// turn that called them (results that answer no call become text, calls
/// without a result get one saying none was recorded), blank text is
/// dropped, a conversation that does not start with the user's turn gets a
/// minimal one in front, and a request without tools (compaction) writes
/// tool calls and results as text, since Converse refuses `toolUse` and
/// `toolResult` blocks without a `toolConfig`. Then:
///
/// * Every non-blank `System` message is one `system` text block.
/// * Text is a `text` block; a tool call is a `toolUse` block whose `input`
///   is the object its arguments parse to, or `{"_raw": "<text>"}` when they
///   are not a JSON object; a tool result is a `toolResult` block with one
///   text part (`"(no output)"` for an empty result, as Bedrock refuses
///   blank text). No `status` is sent: only some models accept it, and the
///   agent writes tool errors into the result text anyway.
/// * Tool call ids and names are reduced to the characters Bedrock accepts
///   (`[a-zA-Z0-9_-]`, at most 64), the same way in the call and in its
///   result, so history from another provider stays valid.
/// * The tools are the `toolConfig`'s `toolSpec`s (`inputSchema.json` is the
///   tool's parameter schema); `inferenceConfig.maxTokens` is the request's
///   `max_tokens`, else [`BedrockConfig::max_tokens`].
///
/// # How the reply becomes a [`ChatResponse`]
///
/// The `text` deltas, concatenated, are the text; each `toolUse` block
/// (`contentBlockStart` names it) is a tool call whose arguments are its
/// `input` deltas concatenated verbatim (`{}` when there were none); blocks
/// are ordered by their index. Reasoning and other block types, and unknown
/// events, are ignored. `stopReason` maps to the finish reasons the agent
/// knows (`end_turn`/`stop_sequence` -> `stop`, `tool_use` -> `tool_calls`,
/// `max_tokens` -> `length`), others pass verbatim. The `metadata` event
/// after `messageStop` gives the usage: the prompt tokens are `inputTokens`
/// plus the cache reads and writes.
///
/// # Errors
///
/// An error answer is `ModelError::Status` with its HTTP status and
/// `"{code}: {message} (request id ...)"` as the body:
/// `ThrottlingException` and `ModelNotReadyException` are 429,
/// `ModelTimeoutException` 408, `InternalServerException` 500,
/// `ServiceUnavailableException` 503 (all retryable);
/// `ValidationException` 400, `AccessDeniedException` 403,
/// `ResourceNotFoundException` 404 are not. An exception event in the
/// stream is a `Status` too: `throttlingException` 429,
/// `internalServerException` 500, `serviceUnavailableException` 503,
/// `modelStreamErrorException` 502 (the API asks to retry it),
/// `validationException` 400, anything else 500. A stream that ends (or
/// breaks) before `messageStop` is `ModelError::Truncated`; no response
/// headers within [`BedrockConfig::first_byte_timeout`], or no event within
/// [`BedrockConfig::idle_timeout`], is `ModelError::Timeout`; a connection
/// that cannot be made or breaks before the answer is
/// `ModelError::Connection`; no credentials (or a profile that cannot give
/// them) is `ModelError::Config`.
///
/// Neither the client's `Debug` nor its errors show the credentials.
#[derive(Clone)]
pub struct BedrockClient {
    config: BedrockConfig,
    region: String,
    /// Where requests go, for error messages: the configured endpoint, else
    /// the region.
    target: String,
    client: sdk::Client,
}

impl fmt::Debug for BedrockClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockClient")
            .field("config", &self.config)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl BedrockClient {
    /// A client whose credentials, region and endpoint come from the
    /// standard AWS chain, loaded once here: the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`...), the shared
    /// config and credentials files (profile [`BedrockConfig::profile`], else
    /// `AWS_PROFILE`), SSO, `credential_process`, web identity, ECS and EC2
    /// instance metadata. Credentials are resolved at the first request and
    /// refreshed when they expire. `AWS_BEARER_TOKEN_BEDROCK` (a Bedrock API
    /// key) is honoured too. The region and endpoint of `config` win over the
    /// chain's. Fails when no region is found.
    pub async fn new(config: BedrockConfig) -> Result<Self, ModelError> {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
        if let Some(profile) = non_empty(&config.profile) {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = non_empty(&config.region) {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let shared = loader.load().await;
        BedrockClient::with_sdk_config(config, &shared)
    }

    /// A client with these static credentials (no session token) instead of
    /// the chain, e.g. for tests; the region must be in `config`.
    pub fn with_static_credentials(
        config: BedrockConfig,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Result<Self, ModelError> {
        let credentials = Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            STATIC_PROVIDER,
        );
        let shared = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .http_client(https_client())
            .build();
        BedrockClient::with_sdk_config(config, &shared)
    }

    /// A client on an already loaded AWS configuration (its credentials,
    /// region, endpoint and HTTP client); the region and endpoint of `config`
    /// win over it. Its retry, timeout and stalled-stream settings are
    /// replaced: one attempt, the timeouts of `config`.
    pub fn with_sdk_config(config: BedrockConfig, shared: &SdkConfig) -> Result<Self, ModelError> {
        let mut builder = sdk::config::Builder::from(shared);
        if let Some(region) = non_empty(&config.region) {
            builder.set_region(Some(Region::new(region.to_owned())));
        }
        if let Some(url) = non_empty(&config.endpoint_url) {
            check_endpoint(url)?;
            builder.set_endpoint_url(Some(url.to_owned()));
        }
        builder.set_retry_config(Some(RetryConfig::disabled()));
        builder.set_timeout_config(Some(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.first_byte_timeout)
                .build(),
        ));
        // The idle timeout watches the stream instead: a model may think for
        // a while before its first event.
        builder.set_stalled_stream_protection(Some(StalledStreamProtectionConfig::disabled()));
        if shared.app_name().is_none() {
            builder.set_app_name(AppName::new("flotilla").ok());
        }
        let mut conf = builder.build();
        if conf.http_client().is_none() {
            conf = conf.to_builder().http_client(https_client()).build();
        }
        let region = conf.region().map(ToString::to_string).ok_or_else(|| {
            ModelError::Config(
                "no AWS region for Bedrock: set AWS_REGION, a region in the AWS profile, \
                 or the region of the Bedrock configuration"
                    .into(),
            )
        })?;
        let target = match non_empty(&config.endpoint_url) {
            Some(url) => url.to_owned(),
            None => format!("region {region}"),
        };
        Ok(BedrockClient {
            config,
            region,
            target,
            client: sdk::Client::from_conf(conf),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BedrockConfig {
        &self.config
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    async fn chat_once(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        let parts = converse_parts(request, self.config.max_tokens)?;
        tracing::debug!(
            model = %request.model,
            region = %self.region,
            messages = parts.messages.len(),
            "bedrock request"
        );
        let mut output = self
            .client
            .converse_stream()
            .model_id(&request.model)
            .set_system(parts.system)
            .set_messages(Some(parts.messages))
            .set_tool_config(parts.tool_config)
            .inference_config(parts.inference)
            .send()
            .await
            .map_err(|error| send_error(error, &self.target))?;
        let mut reply = ReplyAccumulator::default();
        loop {
            let wait = if reply.stopped {
                self.config.idle_timeout.min(METADATA_WAIT)
            } else {
                self.config.idle_timeout
            };
            match tokio::time::timeout(wait, output.stream.recv()).await {
                Ok(Ok(Some(event))) => reply.apply(event)?,
                Ok(Ok(None)) => break,
                // The answer is complete; only the usage may be missing.
                Ok(Err(error)) if reply.stopped => {
                    tracing::debug!(error = %error_chain(&error), "bedrock stream error after messageStop");
                    break;
                }
                Err(_) if reply.stopped => break,
                Ok(Err(error)) => return Err(stream_error(&error, reply.events)),
                Err(_) => {
                    return Err(ModelError::Timeout(format!(
                        "no stream event from Bedrock within {:?} (after {} events)",
                        self.config.idle_timeout, reply.events
                    )))
                }
            }
        }
        reply.finish()
    }
}

impl ModelClient for BedrockClient {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(self.chat_once(request))
    }
}

/// An endpoint URL must be http(s) with a host.
fn check_endpoint(url: &str) -> Result<(), ModelError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        _ => Err(ModelError::Config(format!(
            "Bedrock endpoint URL {url:?} is not an http(s) URL; expected e.g. \
             https://bedrock-runtime.us-east-1.amazonaws.com"
        ))),
    }
}

/// The parts of a `ConverseStream` request.
#[derive(Debug, PartialEq)]
pub(crate) struct ConverseParts {
    pub(crate) system: Option<Vec<SystemContentBlock>>,
    pub(crate) messages: Vec<Message>,
    pub(crate) tool_config: Option<ToolConfiguration>,
    pub(crate) inference: InferenceConfiguration,
}

fn build_error(error: impl std::error::Error) -> ModelError {
    ModelError::Config(format!("cannot build the Bedrock request: {error}"))
}

/// Maps a request (see [`BedrockClient`] for the rules).
pub(crate) fn converse_parts(
    request: &ChatRequest,
    default_max_tokens: u32,
) -> Result<ConverseParts, ModelError> {
    let with_tools = !request.tools.is_empty();
    let system: Vec<SystemContentBlock> = request
        .messages
        .iter()
        .filter(|message| message.role == Role::System && !message.content.trim().is_empty())
        .map(|message| SystemContentBlock::Text(message.content.clone()))
        .collect();
    let messages = messages_json(&request.messages, with_tools)
        .iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let tool_config = if with_tools {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                ToolSpecification::builder()
                    .name(&tool.name)
                    .set_description(
                        (!tool.description.is_empty()).then(|| tool.description.clone()),
                    )
                    .input_schema(ToolInputSchema::Json(document(&tool.parameters)))
                    .build()
                    .map(Tool::ToolSpec)
                    .map_err(build_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Some(
            ToolConfiguration::builder()
                .set_tools(Some(tools))
                .build()
                .map_err(build_error)?,
        )
    } else {
        None
    };
    let max_tokens = request.max_tokens.unwrap_or(default_max_tokens);
    Ok(ConverseParts {
        system: (!system.is_empty()).then_some(system),
        messages,
        tool_config,
        inference: InferenceConfiguration::builder()
            .max_tokens(i32::try_from(max_tokens).unwrap_or(i32::MAX))
            .build(),
    })
}

/// `text` reduced to what Bedrock accepts in tool ids and names:
/// `[a-zA-Z0-9_-]{1,64}`.
fn wire_name(text: &str, fallback: &str) -> String {
    let name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        fallback.to_owned()
    } else {
        name
    }
}

/// One turn of [`messages_json`] as a Converse message.
fn message(turn: &Value) -> Result<Message, ModelError> {
    let role = match turn.get("role").and_then(Value::as_str) {
        Some("assistant") => ConversationRole::Assistant,
        _ => ConversationRole::User,
    };
    let blocks = turn
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let content = blocks
        .iter()
        .map(content_block)
        .filter_map(Result::transpose)
        .collect::<Result<Vec<_>, _>>()?;
    Message::builder()
        .role(role)
        .set_content(Some(content))
        .build()
        .map_err(build_error)
}

/// One content block of [`messages_json`] (Anthropic's shape) as a Converse
/// content block.
fn content_block(block: &Value) -> Result<Option<ContentBlock>, ModelError> {
    let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("");
    Ok(Some(match field("type") {
        "text" => ContentBlock::Text(field("text").to_owned()),
        "tool_use" => ContentBlock::ToolUse(
            ToolUseBlock::builder()
                .tool_use_id(wire_name(field("id"), "tooluse"))
                .name(wire_name(field("name"), "tool"))
                .input(
                    block
                        .get("input")
                        .map(document)
                        .unwrap_or_else(empty_object),
                )
                .build()
                .map_err(build_error)?,
        ),
        "tool_result" => {
            let text = field("content");
            let text = if text.trim().is_empty() {
                EMPTY_RESULT_TEXT
            } else {
                text
            };
            ContentBlock::ToolResult(
                ToolResultBlock::builder()
                    .tool_use_id(wire_name(field("tool_use_id"), "tooluse"))
                    .content(ToolResultContentBlock::Text(text.to_owned()))
                    .build()
                    .map_err(build_error)?,
            )
        }
        _ => return Ok(None),
    }))
}

fn empty_object() -> Document {
    Document::Object(Default::default())
}

/// A JSON value as a Smithy document.
pub(crate) fn document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(flag) => Document::Bool(*flag),
        Value::Number(number) => Document::Number(if let Some(n) = number.as_u64() {
            Number::PosInt(n)
        } else if let Some(n) = number.as_i64() {
            Number::NegInt(n)
        } else {
            Number::Float(number.as_f64().unwrap_or(0.0))
        }),
        Value::String(text) => Document::String(text.clone()),
        Value::Array(items) => Document::Array(items.iter().map(document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), document(value)))
                .collect(),
        ),
    }
}

/// `stopReason` as the finish reasons the agent knows.
fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "tool_use" => "tool_calls",
        "max_tokens" => "length",
        other => other,
    }
    .to_owned()
}

/// A content block being streamed.
#[derive(Debug)]
enum PartialBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: String,
    },
}

/// Builds one answer from the events of a `ConverseStream` reply.
#[derive(Debug, Default)]
pub(crate) struct ReplyAccumulator {
    /// By index, in the order they started.
    blocks: Vec<(i32, PartialBlock)>,
    stop_reason: Option<String>,
    stopped: bool,
    usage: Usage,
    events: usize,
}

impl ReplyAccumulator {
    fn block_mut(&mut self, index: i32) -> Option<&mut PartialBlock> {
        self.blocks
            .iter_mut()
            .find(|(at, _)| *at == index)
            .map(|(_, block)| block)
    }

    /// Takes one event of the stream.
    pub(crate) fn apply(&mut self, event: ConverseStreamOutput) -> Result<(), ModelError> {
        self.events += 1;
        if self.stopped {
            // Only the usage comes after `messageStop`.
            if let ConverseStreamOutput::Metadata(metadata) = event {
                if let Some(usage) = metadata.usage {
                    let non_negative = |n: i32| u64::try_from(n).unwrap_or(0);
                    self.usage = Usage {
                        prompt_tokens: non_negative(usage.input_tokens)
                            + usage.cache_read_input_tokens.map_or(0, non_negative)
                            + usage.cache_write_input_tokens.map_or(0, non_negative),
                        completion_tokens: non_negative(usage.output_tokens),
                    };
                }
            }
            return Ok(());
        }
        match event {
            ConverseStreamOutput::ContentBlockStart(start) => {
                let index = start.content_block_index;
                if self.block_mut(index).is_some() {
                    return Err(ModelError::Protocol(format!(
                        "Bedrock started content block {index} twice"
                    )));
                }
                if let Some(ContentBlockStart::ToolUse(tool)) = start.start {
                    self.blocks.push((
                        index,
                        PartialBlock::ToolUse {
                            id: tool.tool_use_id,
                            name: tool.name,
                            input: String::new(),
                        },
                    ));
                }
            }
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                let index = delta.content_block_index;
                match delta.delta {
                    // Text blocks have no start event.
                    Some(ContentBlockDelta::Text(piece)) => match self.block_mut(index) {
                        Some(PartialBlock::Text(text)) => text.push_str(&piece),
                        Some(PartialBlock::ToolUse { .. }) => {
                            return Err(ModelError::Protocol(format!(
                                "Bedrock sent text for tool use block {index}"
                            )))
                        }
                        None => self.blocks.push((index, PartialBlock::Text(piece))),
                    },
                    Some(ContentBlockDelta::ToolUse(piece)) => match self.block_mut(index) {
                        Some(PartialBlock::ToolUse { input, .. }) => input.push_str(&piece.input),
                        _ => {
                            return Err(ModelError::Protocol(format!(
                                "Bedrock sent tool input for content block {index}, \
                                 which is no tool use"
                            )))
                        }
                    },
                    // Reasoning, citations and what came after this was written.
                    _ => {}
                }
            }
            ConverseStreamOutput::MessageStop(stop) => {
                self.stop_reason = Some(finish_reason(stop.stop_reason.as_str()));
                self.stopped = true;
            }
            // `messageStart`, `contentBlockStop`, and event types added
            // after this was written.
            _ => {}
        }
        Ok(())
    }

    /// The stream ended: the answer, or `Truncated` without `messageStop`.
    pub(crate) fn finish(mut self) -> Result<ChatResponse, ModelError> {
        if !self.stopped {
            return Err(ModelError::Truncated(format!(
                "the Bedrock stream ended after {} events without messageStop",
                self.events
            )));
        }
        self.blocks.sort_by_key(|(index, _)| *index);
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for (index, block) in self.blocks {
            match block {
                PartialBlock::Text(piece) => text.push_str(&piece),
                PartialBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                    id: if id.is_empty() {
                        format!("tooluse_{index}")
                    } else {
                        id
                    },
                    name,
                    arguments: if input.trim().is_empty() {
                        "{}".to_owned()
                    } else {
                        input
                    },
                }),
            }
        }
        Ok(ChatResponse {
            text,
            tool_calls,
            usage: self.usage,
            finish_reason: self.stop_reason,
            model: None,
        })
    }
}

/// The HTTP status a Bedrock exception goes with (its name in either case:
/// `ThrottlingException` in an error answer, `throttlingException` in the
/// stream).
fn exception_status(name: &str) -> u16 {
    match name.to_ascii_lowercase().as_str() {
        "validationexception" | "servicequotaexceededexception" => 400,
        "accessdeniedexception" => 403,
        "resourcenotfoundexception" => 404,
        "modeltimeoutexception" => 408,
        "conflictexception" => 409,
        "modelerrorexception" => 424,
        "throttlingexception" | "modelnotreadyexception" => 429,
        // The API asks to retry the request.
        "modelstreamerrorexception" => 502,
        "serviceunavailableexception" => 503,
        // `InternalServerException` and anything new: a server-side failure.
        _ => 500,
    }
}

/// `"{code}: {message} (request id {id})"`.
fn error_text(code: &str, message: Option<&str>, request_id: Option<&str>) -> String {
    let mut text = code.to_owned();
    if let Some(message) = message.filter(|m| !m.trim().is_empty()) {
        text.push_str(": ");
        text.push_str(message.trim());
    }
    if let Some(id) = request_id {
        text.push_str(&format!(" (request id {id})"));
    }
    clip_error_body(text)
}

/// The credentials error somewhere in `error`'s causes.
fn credentials_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        cause = current.source();
    }
    None
}

/// A request that got no answer: credentials, timeouts, connections.
fn dispatch_error(failure: Option<&ConnectorError>, detail: String) -> ModelError {
    let Some(failure) = failure else {
        return ModelError::Connection(detail);
    };
    if let Some(credentials) = credentials_error(failure) {
        return match credentials {
            CredentialsError::ProviderTimedOut(_) => {
                ModelError::Timeout(format!("AWS credentials: {detail}"))
            }
            CredentialsError::Unhandled(_) => {
                ModelError::Connection(format!("AWS credentials: {detail}"))
            }
            _ => ModelError::Config(format!("no usable AWS credentials: {detail}")),
        };
    }
    if failure.is_timeout() {
        ModelError::Timeout(detail)
    } else if failure.is_user() {
        ModelError::Config(detail)
    } else {
        ModelError::Connection(detail)
    }
}

/// Maps the error of sending a `ConverseStream` request.
pub(crate) fn send_error(
    error: SdkError<ConverseStreamError, HttpResponse>,
    target: &str,
) -> ModelError {
    let detail = || format!("Bedrock ({target}): {}", error_chain(&error));
    match &error {
        SdkError::ServiceError(context) => {
            let raw = context.raw();
            let err = context.err();
            let code = err.code().unwrap_or("UnknownError");
            let status = raw.status().as_u16();
            let status = if status >= 400 {
                status
            } else {
                exception_status(code)
            };
            ModelError::Status {
                status,
                body: error_text(code, err.message(), err.request_id()),
                retry_after: raw
                    .headers()
                    .get("retry-after")
                    .and_then(|value| parse_retry_after(value, SystemTime::now())),
            }
        }
        SdkError::TimeoutError(_) => ModelError::Timeout(detail()),
        SdkError::DispatchFailure(failure) => {
            dispatch_error(failure.as_connector_error(), detail())
        }
        SdkError::ConstructionFailure(_) => ModelError::Config(detail()),
        _ => ModelError::Protocol(detail()),
    }
}

/// The string value of header `name` of an event-stream message.
fn message_header<'a>(
    message: &'a sdk::primitives::event_stream::Message,
    name: &str,
) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|header| header.name().as_str() == name)
        .and_then(|header| header.value().as_string().ok())
        .map(|value| value.as_str())
}

/// Maps an error of the reply stream, after `events` events.
pub(crate) fn stream_error(
    error: &SdkError<ConverseStreamOutputError, RawMessage>,
    events: usize,
) -> ModelError {
    let detail = || format!("Bedrock stream: {}", error_chain(error));
    match error {
        SdkError::ServiceError(context) => {
            let err = context.err();
            let name = match err {
                ConverseStreamOutputError::ThrottlingException(_) => "throttlingException",
                ConverseStreamOutputError::InternalServerException(_) => "internalServerException",
                ConverseStreamOutputError::ServiceUnavailableException(_) => {
                    "serviceUnavailableException"
                }
                ConverseStreamOutputError::ModelStreamErrorException(_) => {
                    "modelStreamErrorException"
                }
                ConverseStreamOutputError::ValidationException(_) => "validationException",
                other => other.code().unwrap_or("unknownException"),
            };
            let mut message = err.message().map(str::to_owned);
            if let ConverseStreamOutputError::ModelStreamErrorException(model) = err {
                if let (Some(status), Some(original)) =
                    (model.original_status_code, &model.original_message)
                {
                    message = Some(format!(
                        "{} (the model answered {status}: {original})",
                        message.unwrap_or_default()
                    ));
                }
            }
            ModelError::Status {
                status: exception_status(name),
                body: error_text(name, message.as_deref(), None),
                retry_after: None,
            }
        }
        SdkError::ResponseError(context) => match context.raw() {
            // A message of type `error`, which the SDK does not model.
            RawMessage::Decoded(message)
                if message_header(message, ":message-type") == Some("error") =>
            {
                ModelError::Status {
                    status: 500,
                    body: error_text(
                        message_header(message, ":error-code").unwrap_or("error"),
                        message_header(message, ":error-message"),
                        None,
                    ),
                    retry_after: None,
                }
            }
            // Bytes left over at the end: the body ended inside an event.
            RawMessage::Invalid(Some(_)) => ModelError::Truncated(format!(
                "the Bedrock stream ended in the middle of an event, after {events} events"
            )),
            _ => ModelError::Protocol(detail()),
        },
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ModelError::Timeout(detail()),
        SdkError::DispatchFailure(_) => ModelError::Truncated(format!(
            "the Bedrock stream broke after {events} events: {}",
            detail()
        )),
        SdkError::TimeoutError(_) => ModelError::Timeout(detail()),
        _ => ModelError::Protocol(detail()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{ChatMessage, ToolSpec};
    use sdk::primitives::event_stream::{Header, HeaderValue};
    use sdk::types::error::{
        InternalServerException, ModelStreamErrorException, ThrottlingException,
        ValidationException,
    };
    use sdk::types::{
        ContentBlockDeltaEvent, ContentBlockStartEvent, ContentBlockStopEvent,
        ConverseStreamMetadataEvent, MessageStartEvent, MessageStopEvent,
        ReasoningContentBlockDelta, StopReason, TokenUsage, ToolUseBlockDelta, ToolUseBlockStart,
    };
    use serde_json::json;

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

    fn request(messages: Vec<ChatMessage>) -> ChatRequest {
        ChatRequest {
            model: "anthropic.claude-test-v1:0".into(),
            messages,
            tools: std::sync::Arc::from(vec![ToolSpec {
                name: "shell".into(),
                description: "Runs a command.".into(),
                parameters: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
            }]),
            max_tokens: None,
        }
    }

    fn text(text: &str) -> ContentBlock {
        ContentBlock::Text(text.into())
    }

    fn tool_use(id: &str, name: &str, input: Value) -> ContentBlock {
        ContentBlock::ToolUse(
            ToolUseBlock::builder()
                .tool_use_id(id)
                .name(name)
                .input(document(&input))
                .build()
                .unwrap(),
        )
    }

    fn tool_result(id: &str, content: &str) -> ContentBlock {
        ContentBlock::ToolResult(
            ToolResultBlock::builder()
                .tool_use_id(id)
                .content(ToolResultContentBlock::Text(content.into()))
                .build()
                .unwrap(),
        )
    }

    fn turn(role: ConversationRole, content: Vec<ContentBlock>) -> Message {
        Message::builder()
            .role(role)
            .set_content(Some(content))
            .build()
            .unwrap()
    }

    #[test]
    fn request_parts_map_system_turns_tools_and_repairs() {
        let parts = converse_parts(
            &request(vec![
                ChatMessage::text(Role::System, "sys one"),
                ChatMessage::text(Role::System, "  "),
                ChatMessage::text(Role::User, "the task"),
                ChatMessage::text(Role::User, "a summary"),
                ChatMessage::text(Role::System, "sys two"),
                assistant(
                    "Let me look.",
                    &[
                        ("call:1", "shell", r#"{"n": -3}"#),
                        ("t2", "shell", "[1]"),
                        ("t3", "sh.ell", ""),
                    ],
                ),
                ChatMessage::tool_result("t2", "error: invalid arguments"),
                ChatMessage::tool_result("call:1", "a.txt"),
                ChatMessage::tool_result("stray", "x"),
            ]),
            8192,
        )
        .unwrap();
        assert_eq!(
            parts.system,
            Some(vec![
                SystemContentBlock::Text("sys one".into()),
                SystemContentBlock::Text("sys two".into()),
            ])
        );
        assert_eq!(
            parts.messages,
            vec![
                turn(
                    ConversationRole::User,
                    vec![text("the task"), text("a summary")]
                ),
                turn(
                    ConversationRole::Assistant,
                    vec![
                        text("Let me look."),
                        tool_use("call_1", "shell", json!({"n": -3})),
                        tool_use("t2", "shell", json!({"_raw": "[1]"})),
                        tool_use("t3", "sh_ell", json!({})),
                    ]
                ),
                turn(
                    ConversationRole::User,
                    vec![
                        tool_result("call_1", "a.txt"),
                        tool_result("t2", "error: invalid arguments"),
                        tool_result("t3", "No result was recorded for this tool call."),
                        text("[result of tool call stray]\nx"),
                    ]
                ),
            ]
        );
        let tools = parts.tool_config.unwrap();
        assert_eq!(
            tools.tools,
            vec![Tool::ToolSpec(
                ToolSpecification::builder()
                    .name("shell")
                    .description("Runs a command.")
                    .input_schema(ToolInputSchema::Json(document(
                        &json!({"type": "object", "properties": {"n": {"type": "integer"}}})
                    )))
                    .build()
                    .unwrap()
            )]
        );
        assert_eq!(parts.inference.max_tokens, Some(8192));
    }

    #[test]
    fn leading_assistant_empty_results_and_compaction() {
        let parts = converse_parts(
            &request(vec![
                assistant("", &[("a", "shell", "{}")]),
                ChatMessage::tool_result("a", " "),
            ]),
            100,
        )
        .unwrap();
        assert_eq!(
            parts.messages,
            vec![
                turn(ConversationRole::User, vec![text("(continued)")]),
                turn(
                    ConversationRole::Assistant,
                    vec![tool_use("a", "shell", json!({}))]
                ),
                turn(
                    ConversationRole::User,
                    vec![tool_result("a", EMPTY_RESULT_TEXT)]
                ),
            ]
        );
        assert_eq!(parts.system, None);
        assert_eq!(parts.inference.max_tokens, Some(100));

        let mut compaction = request(vec![
            ChatMessage::text(Role::User, "Task"),
            assistant("", &[("a", "shell", r#"{"command":"ls"}"#)]),
            ChatMessage::tool_result("a", "a.txt"),
            ChatMessage::text(Role::User, "Summarise."),
        ]);
        compaction.tools = Vec::new().into();
        compaction.max_tokens = Some(u32::MAX);
        let parts = converse_parts(&compaction, 8192).unwrap();
        assert_eq!(parts.tool_config, None);
        assert_eq!(parts.inference.max_tokens, Some(i32::MAX));
        assert_eq!(
            parts.messages,
            vec![
                turn(ConversationRole::User, vec![text("Task")]),
                turn(
                    ConversationRole::Assistant,
                    vec![text("[tool call a: shell {\"command\":\"ls\"}]")]
                ),
                turn(
                    ConversationRole::User,
                    vec![text("[result of tool call a]\na.txt"), text("Summarise.")]
                ),
            ]
        );
    }

    #[test]
    fn documents_and_wire_names() {
        let doc = document(&json!({"a": [1, -2, 2.5, null, true, "s"], "b": {}}));
        let Document::Object(map) = &doc else {
            panic!("{doc:?}")
        };
        assert_eq!(
            map["a"],
            Document::Array(vec![
                Document::Number(Number::PosInt(1)),
                Document::Number(Number::NegInt(-2)),
                Document::Number(Number::Float(2.5)),
                Document::Null,
                Document::Bool(true),
                Document::String("s".into()),
            ])
        );
        assert_eq!(map["b"], empty_object());
        assert_eq!(wire_name("functions.shell:0", "x"), "functions_shell_0");
        assert_eq!(wire_name("", "tool"), "tool");
        assert_eq!(wire_name(&"é".repeat(70), "x"), "_".repeat(64));
    }

    fn start(index: i32, id: &str, name: &str) -> ConverseStreamOutput {
        ConverseStreamOutput::ContentBlockStart(
            ContentBlockStartEvent::builder()
                .content_block_index(index)
                .start(ContentBlockStart::ToolUse(
                    ToolUseBlockStart::builder()
                        .tool_use_id(id)
                        .name(name)
                        .build()
                        .unwrap(),
                ))
                .build()
                .unwrap(),
        )
    }

    fn delta(index: i32, delta: ContentBlockDelta) -> ConverseStreamOutput {
        ConverseStreamOutput::ContentBlockDelta(
            ContentBlockDeltaEvent::builder()
                .content_block_index(index)
                .delta(delta)
                .build()
                .unwrap(),
        )
    }

    fn input(index: i32, piece: &str) -> ConverseStreamOutput {
        delta(
            index,
            ContentBlockDelta::ToolUse(ToolUseBlockDelta::builder().input(piece).build().unwrap()),
        )
    }

    fn stop(reason: StopReason) -> ConverseStreamOutput {
        ConverseStreamOutput::MessageStop(
            MessageStopEvent::builder()
                .stop_reason(reason)
                .build()
                .unwrap(),
        )
    }

    fn metadata(input: i32, output: i32, cache_read: Option<i32>) -> ConverseStreamOutput {
        ConverseStreamOutput::Metadata(
            ConverseStreamMetadataEvent::builder()
                .usage(
                    TokenUsage::builder()
                        .input_tokens(input)
                        .output_tokens(output)
                        .total_tokens(input + output)
                        .set_cache_read_input_tokens(cache_read)
                        .cache_write_input_tokens(2)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
    }

    #[test]
    fn stream_of_text_and_interleaved_tool_input() {
        let mut acc = ReplyAccumulator::default();
        let events = vec![
            ConverseStreamOutput::MessageStart(
                MessageStartEvent::builder()
                    .role(ConversationRole::Assistant)
                    .build()
                    .unwrap(),
            ),
            delta(0, ContentBlockDelta::Text("Two ".into())),
            delta(0, ContentBlockDelta::Text("calls.".into())),
            ConverseStreamOutput::ContentBlockStop(
                ContentBlockStopEvent::builder()
                    .content_block_index(0)
                    .build()
                    .unwrap(),
            ),
            start(2, "tooluse_b", "read_file"),
            start(1, "tooluse_a", "shell"),
            input(1, "{\"command\": "),
            input(2, "{\"path\":\"a\"}"),
            input(1, "\"ls\"}"),
            delta(
                3,
                ContentBlockDelta::ReasoningContent(ReasoningContentBlockDelta::Text("hmm".into())),
            ),
            stop(StopReason::ToolUse),
            delta(0, ContentBlockDelta::Text("ignored".into())),
            metadata(10, 42, Some(100)),
        ];
        for event in events {
            acc.apply(event).unwrap();
        }
        let reply = acc.finish().unwrap();
        assert_eq!(reply.text, "Two calls.");
        assert_eq!(
            reply.tool_calls,
            vec![
                ToolCall {
                    id: "tooluse_a".into(),
                    name: "shell".into(),
                    arguments: "{\"command\": \"ls\"}".into()
                },
                ToolCall {
                    id: "tooluse_b".into(),
                    name: "read_file".into(),
                    arguments: "{\"path\":\"a\"}".into()
                },
            ]
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 112,
                completion_tokens: 42
            }
        );
    }

    #[test]
    fn stream_edge_cases() {
        // A tool use without input, a stop without metadata.
        let mut acc = ReplyAccumulator::default();
        acc.apply(start(0, "", "list")).unwrap();
        acc.apply(stop(StopReason::MaxTokens)).unwrap();
        let reply = acc.finish().unwrap();
        assert_eq!(reply.tool_calls[0].id, "tooluse_0");
        assert_eq!(reply.tool_calls[0].arguments, "{}");
        assert_eq!(reply.finish_reason.as_deref(), Some("length"));
        assert_eq!(reply.usage, Usage::default());

        // No messageStop.
        let mut acc = ReplyAccumulator::default();
        acc.apply(delta(0, ContentBlockDelta::Text("Partial".into())))
            .unwrap();
        assert!(matches!(
            acc.finish(),
            Err(ModelError::Truncated(message)) if message.contains("without messageStop")
        ));

        // Input for a block that is no tool use; a block started twice.
        let mut acc = ReplyAccumulator::default();
        assert!(matches!(
            acc.apply(input(3, "{}")),
            Err(ModelError::Protocol(_))
        ));
        acc.apply(start(1, "a", "x")).unwrap();
        assert!(matches!(
            acc.apply(start(1, "a", "x")),
            Err(ModelError::Protocol(_))
        ));
        assert!(matches!(
            acc.apply(delta(1, ContentBlockDelta::Text("t".into()))),
            Err(ModelError::Protocol(_))
        ));
    }

    #[test]
    fn finish_reasons_map_and_unknown_ones_pass() {
        assert_eq!(finish_reason(StopReason::EndTurn.as_str()), "stop");
        assert_eq!(finish_reason(StopReason::StopSequence.as_str()), "stop");
        assert_eq!(finish_reason(StopReason::ToolUse.as_str()), "tool_calls");
        assert_eq!(finish_reason(StopReason::MaxTokens.as_str()), "length");
        assert_eq!(
            finish_reason(StopReason::GuardrailIntervened.as_str()),
            "guardrail_intervened"
        );
        assert_eq!(
            finish_reason(StopReason::from("brand_new").as_str()),
            "brand_new"
        );
    }

    fn event_error(
        err: ConverseStreamOutputError,
    ) -> SdkError<ConverseStreamOutputError, RawMessage> {
        SdkError::service_error(
            err,
            RawMessage::Decoded(sdk::primitives::event_stream::Message::new(&b"{}"[..])),
        )
    }

    #[test]
    fn stream_exceptions_map_to_statuses() {
        let cases: Vec<(ConverseStreamOutputError, u16, bool)> = vec![
            (
                ConverseStreamOutputError::ThrottlingException(
                    ThrottlingException::builder().message("slow down").build(),
                ),
                429,
                true,
            ),
            (
                ConverseStreamOutputError::InternalServerException(
                    InternalServerException::builder().message("oops").build(),
                ),
                500,
                true,
            ),
            (
                ConverseStreamOutputError::ModelStreamErrorException(
                    ModelStreamErrorException::builder()
                        .message("stream broke")
                        .original_status_code(500)
                        .original_message("model crashed")
                        .build(),
                ),
                502,
                true,
            ),
            (
                ConverseStreamOutputError::ValidationException(
                    ValidationException::builder().message("bad input").build(),
                ),
                400,
                false,
            ),
        ];
        for (err, status, retryable) in cases {
            let error = stream_error(&event_error(err), 3);
            assert!(
                matches!(&error, ModelError::Status { status: s, .. } if *s == status),
                "{error:?}"
            );
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
        }
        let error = stream_error(
            &event_error(ConverseStreamOutputError::ModelStreamErrorException(
                ModelStreamErrorException::builder()
                    .message("stream broke")
                    .original_status_code(500)
                    .original_message("model crashed")
                    .build(),
            )),
            3,
        );
        assert!(error.to_string().contains("model crashed"), "{error}");

        // A message of type `error`.
        let message = sdk::primitives::event_stream::Message::new(&b""[..])
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("error".into()),
            ))
            .add_header(Header::new(
                ":error-code",
                HeaderValue::String("InternalFailure".into()),
            ))
            .add_header(Header::new(
                ":error-message",
                HeaderValue::String("try later".into()),
            ));
        let error = stream_error(
            &SdkError::response_error("unrecognized", RawMessage::Decoded(message)),
            1,
        );
        assert!(
            matches!(&error, ModelError::Status { status: 500, body, .. } if body == "InternalFailure: try later"),
            "{error:?}"
        );
        // Bytes left at the end of the body; a frame that does not decode.
        let error = stream_error(
            &SdkError::response_error(
                "unexpected end of stream",
                RawMessage::Invalid(Some(bytes::Bytes::from_static(b"\0\0"))),
            ),
            4,
        );
        assert!(matches!(error, ModelError::Truncated(_)), "{error:?}");
        let error = stream_error(
            &SdkError::response_error("bad crc", RawMessage::Invalid(None)),
            4,
        );
        assert!(matches!(error, ModelError::Protocol(_)), "{error:?}");
    }

    #[test]
    fn exception_names_map_to_statuses() {
        for (name, status) in [
            ("ThrottlingException", 429),
            ("throttlingException", 429),
            ("ModelNotReadyException", 429),
            ("ModelTimeoutException", 408),
            ("ServiceUnavailableException", 503),
            ("InternalServerException", 500),
            ("ValidationException", 400),
            ("AccessDeniedException", 403),
            ("ResourceNotFoundException", 404),
            ("SomethingNew", 500),
        ] {
            assert_eq!(exception_status(name), status, "{name}");
        }
        assert_eq!(
            error_text("ValidationException", Some(" bad "), Some("r-1")),
            "ValidationException: bad (request id r-1)"
        );
        assert_eq!(error_text("X", Some(""), None), "X");
    }

    #[test]
    fn config_defaults_and_bad_endpoints() {
        let config = BedrockConfig::default();
        assert_eq!(config.max_tokens, 8192);
        assert_eq!(config.region, None);
        assert!(check_endpoint("https://bedrock-runtime.us-east-1.amazonaws.com").is_ok());
        assert!(check_endpoint("http://127.0.0.1:9").is_ok());
        for bad in ["ftp://x", "not a url", "unix:/tmp/sock"] {
            assert!(
                matches!(check_endpoint(bad), Err(ModelError::Config(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn constructors_need_a_region_and_a_valid_endpoint() {
        let error =
            BedrockClient::with_static_credentials(BedrockConfig::default(), "AKID", "SECRET")
                .unwrap_err();
        assert!(
            matches!(&error, ModelError::Config(message) if message.contains("region")),
            "{error:?}"
        );
        let error = BedrockClient::with_static_credentials(
            BedrockConfig {
                region: Some("us-east-1".into()),
                endpoint_url: Some("ftp://x".into()),
                ..BedrockConfig::default()
            },
            "AKID",
            "SECRET",
        )
        .unwrap_err();
        assert!(matches!(error, ModelError::Config(_)), "{error:?}");
        let client = BedrockClient::with_static_credentials(
            BedrockConfig {
                region: Some(" eu-west-3 ".into()),
                ..BedrockConfig::default()
            },
            "AKIDSECRETLESS",
            "VERYSECRET",
        )
        .unwrap();
        assert_eq!(client.region(), "eu-west-3");
        let debug = format!("{client:?}");
        assert!(!debug.contains("AKIDSECRETLESS") && !debug.contains("VERYSECRET"));
    }
}
