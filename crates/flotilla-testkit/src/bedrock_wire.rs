//! The Amazon Bedrock Runtime Converse wire format as the mock reads, checks
//! and writes it: JSON requests, JSON errors, and replies as binary
//! `application/vnd.amazon.eventstream` frames.

use std::collections::HashSet;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::wire::{content_text, script_name, split_pieces, step_index, Answer};

/// Latency reported in `metrics.latencyMs`.
const LATENCY_MS: u64 = 42;

/// The exception the service sends with an HTTP status.
pub(crate) fn exception_name(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// The message the service sends with an HTTP status, when the script
/// gives none.
pub(crate) fn default_message(status: u16) -> String {
    match status {
        429 => "Too many requests, please wait before trying again.".to_owned(),
        503 => "Bedrock is unable to process your request.".to_owned(),
        500 => "The server encountered an error processing your request.".to_owned(),
        _ => format!("mock failure: HTTP {status}"),
    }
}

/// The `x-amzn-errortype` header value of an exception.
pub(crate) fn error_type_header(name: &str) -> String {
    format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/")
}

/// A restJson1 error body.
pub(crate) fn error_body(name: &str, message: &str) -> Value {
    json!({ "__type": format!("com.amazon.bedrock#{name}"), "message": message })
}

/// The text of a `system` value: its text blocks.
fn system_text(system: Option<&Value>) -> String {
    system
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Characters of a message's content: text, tool uses, tool results.
fn message_chars(message: &Value) -> usize {
    let Some(blocks) = message.get("content").and_then(Value::as_array) else {
        return 0;
    };
    blocks
        .iter()
        .map(|block| {
            if let Some(text) = block.get("text").and_then(Value::as_str) {
                text.chars().count()
            } else if let Some(tool_use) = block.get("toolUse") {
                tool_use
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or(0, |n| n.chars().count())
                    + tool_use
                        .get("input")
                        .map_or(0, |i| i.to_string().chars().count())
            } else if let Some(result) = block.get("toolResult") {
                content_text(result).chars().count()
            } else {
                0
            }
        })
        .sum()
}

/// What the server needs to know about one (valid) request.
pub(crate) struct BedrockInfo {
    pub script: String,
    pub step: usize,
    pub has_tools: bool,
    /// Characters of the messages (reported as `inputTokens`, 4 a token).
    pub message_chars: usize,
    /// Characters of the system prompt (reported as `cacheReadInputTokens`).
    pub system_chars: usize,
}

impl BedrockInfo {
    pub(crate) fn of(request: &Value) -> Self {
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        BedrockInfo {
            script: script_name(request).unwrap_or_else(|| crate::DEFAULT_SCRIPT.to_owned()),
            step: step_index(request),
            has_tools: request
                .pointer("/toolConfig/tools")
                .and_then(Value::as_array)
                .is_some_and(|tools| !tools.is_empty()),
            message_chars: messages.iter().map(message_chars).sum(),
            system_chars: system_text(request.get("system")).chars().count(),
        }
    }
}

fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// `[a-zA-Z0-9_-]{1,64}`: tool names and tool use ids.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The single member of a union (`{"text": ...}`), or why there is none.
fn union_member<'a>(
    value: &'a Value,
    at: &str,
    what: &str,
) -> Result<(&'a str, &'a Value), String> {
    match value.as_object() {
        Some(object) if object.len() == 1 => {
            let (key, member) = object.iter().next().ok_or_else(String::new)?;
            Ok((key.as_str(), member))
        }
        _ => Err(format!(
            "{what} object at {at} must set exactly one of its members"
        )),
    }
}

/// Checks a Converse request body the way the service does; the error is
/// the message of the HTTP 400 `ValidationException` it would send.
pub(crate) fn validate(request: &Value) -> Result<(), String> {
    let Some(object) = request.as_object() else {
        return Err("Malformed input request, please reformat your input and try again.".into());
    };
    if let Some(inference) = object.get("inferenceConfig") {
        if let Some(max_tokens) = inference.get("maxTokens") {
            if max_tokens.as_i64().is_none_or(|n| n < 1) {
                return Err(format!(
                    "1 validation error detected: Value '{max_tokens}' at \
                     'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have \
                     value greater than or equal to 1"
                ));
            }
        }
    }
    match object.get("system") {
        None => {}
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                let at = format!("system.{j}");
                match union_member(block, &at, "SystemContentBlock")? {
                    ("text", Value::String(text)) if !is_blank(text) => {}
                    ("text", _) => {
                        return Err(format!(
                            "The text field in the SystemContentBlock object at {at} is blank. \
                             Add text to the text field, and try again."
                        ))
                    }
                    ("cachePoint" | "guardContent", _) => {}
                    (other, _) => return Err(format!("{at}: unknown member {other:?}")),
                }
            }
        }
        Some(_) => return Err("system: expected a list of SystemContentBlock objects".into()),
    }
    let has_tools = validate_tools(object.get("toolConfig"))?;
    validate_messages(object.get("messages"), has_tools)
}

/// Checks `toolConfig`; whether it names tools.
fn validate_tools(config: Option<&Value>) -> Result<bool, String> {
    let Some(config) = config else {
        return Ok(false);
    };
    let Some(tools) = config.get("tools").and_then(Value::as_array) else {
        return Err(
            "1 validation error detected: Value null at 'toolConfig.tools' failed to satisfy \
             constraint: Member must not be null"
                .into(),
        );
    };
    if tools.is_empty() {
        return Err(
            "1 validation error detected: Value '[]' at 'toolConfig.tools' failed to satisfy \
             constraint: Member must have length greater than or equal to 1"
                .into(),
        );
    }
    let mut names = HashSet::new();
    for (k, tool) in tools.iter().enumerate() {
        let at = format!("toolConfig.tools.{k}");
        let spec = match union_member(tool, &at, "Tool")? {
            ("toolSpec", spec) => spec,
            ("cachePoint" | "systemTool", _) => continue,
            (other, _) => return Err(format!("{at}: unknown member {other:?}")),
        };
        let name = spec.get("name").and_then(Value::as_str).unwrap_or("");
        if !valid_name(name) {
            return Err(format!(
                "1 validation error detected: Value '{name}' at '{at}.member.toolSpec.name' \
                 failed to satisfy constraint: Member must satisfy regular expression pattern: \
                 [a-zA-Z0-9_-]+"
            ));
        }
        if !names.insert(name) {
            return Err(format!(
                "The toolConfig field contains duplicate tool names: {name}"
            ));
        }
        if spec.get("description").is_some_and(|d| !d.is_string()) {
            return Err(format!("{at}.toolSpec.description: expected a string"));
        }
        match spec.pointer("/inputSchema/json") {
            Some(schema) if schema.is_object() => {}
            _ => {
                return Err(format!(
                    "The value at {at}.toolSpec.inputSchema.json must be a JSON object"
                ))
            }
        }
    }
    Ok(true)
}

/// Checks `messages`: alternating roles starting with the user's, no blank
/// text, tool use answered by tool results in the next message, tool
/// results answering tool use of the previous message and coming first,
/// tool blocks only with a `toolConfig`.
fn validate_messages(messages: Option<&Value>, has_tools: bool) -> Result<(), String> {
    const START: &str = "A conversation must start with a user message. Try again with a \
                         conversation that starts with a user message.";
    let messages = match messages {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return Err(START.into()),
        _ => {
            return Err(
                "1 validation error detected: Value null at 'messages' failed to \
                        satisfy constraint: Member must not be null"
                    .into(),
            )
        }
    };
    let mut tool_use_ids = HashSet::new();
    // The tool use of the previous message, which this one must answer.
    let mut open_calls: Vec<String> = Vec::new();
    let mut previous_role = "";
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            other => {
                return Err(format!(
                    "1 validation error detected: Value '{}' at 'messages.{}.member.role' \
                     failed to satisfy constraint: Member must satisfy enum value set: \
                     [user, assistant]",
                    other.unwrap_or("null"),
                    i + 1
                ))
            }
        };
        if i == 0 && role != "user" {
            return Err(START.into());
        }
        if role == previous_role {
            return Err(
                "A conversation must alternate between user and assistant roles. \
                        Make sure the conversation alternates between user and assistant \
                        roles and try again."
                    .into(),
            );
        }
        let blocks = match message.get("content").and_then(Value::as_array) {
            Some(blocks) if !blocks.is_empty() => blocks,
            _ => {
                return Err(format!(
                    "The content field in the Message object at messages.{i} is empty. Add a \
                     ContentBlock object to the content field and try again."
                ))
            }
        };
        let mut calls = Vec::new();
        let mut results: Vec<String> = Vec::new();
        let mut leading_results = 0usize;
        for (j, block) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match union_member(block, &at, "ContentBlock")? {
                ("text", Value::String(text)) if !is_blank(text) => {}
                ("text", _) => {
                    return Err(format!(
                        "The text field in the ContentBlock object at {at} is blank. Add text \
                         to the text field, and try again."
                    ))
                }
                ("toolUse", tool_use) => {
                    if role != "assistant" {
                        return Err(format!(
                            "{at}: toolUse blocks can only be in assistant messages"
                        ));
                    }
                    let id = tool_use
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let name = tool_use.get("name").and_then(Value::as_str).unwrap_or("");
                    for (field, value) in [("toolUseId", id), ("name", name)] {
                        if !valid_name(value) {
                            return Err(format!(
                                "1 validation error detected: Value '{value}' at \
                                 '{at}.member.toolUse.{field}' failed to satisfy constraint: \
                                 Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
                            ));
                        }
                    }
                    if tool_use.get("input").is_none_or(Value::is_null) {
                        return Err(format!("The input field at {at}.toolUse is missing"));
                    }
                    if !tool_use_ids.insert(id.to_owned()) {
                        return Err(format!("{at}: the toolUseId {id} is used twice"));
                    }
                    calls.push(id.to_owned());
                }
                ("toolResult", result) => {
                    if role != "user" {
                        return Err(format!(
                            "{at}: toolResult blocks can only be in user messages"
                        ));
                    }
                    let id = result
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    validate_tool_result(result, &at)?;
                    if results.iter().any(|seen| seen == id) {
                        return Err(format!(
                            "messages.{i}.content: more than one toolResult block for {id}"
                        ));
                    }
                    if leading_results == j {
                        leading_results += 1;
                    }
                    results.push(id.to_owned());
                }
                ("image" | "document" | "video" | "cachePoint" | "reasoningContent", _) => {}
                (other, _) => {
                    return Err(format!(
                        "ContentBlock object at {at} must set one of the following keys: text, \
                         image, toolUse, toolResult, document, video (found {other:?})."
                    ))
                }
            }
        }
        if (!calls.is_empty() || !results.is_empty()) && !has_tools {
            return Err(
                "The toolConfig field must be defined when using toolUse and toolResult content \
                 blocks."
                    .into(),
            );
        }
        if role == "user" {
            if results.len() > open_calls.len() {
                return Err(format!(
                    "The number of toolResult blocks at messages.{i}.content exceeds the number \
                     of toolUse blocks of previous turn."
                ));
            }
            if let Some(stray) = results.iter().find(|id| !open_calls.contains(id)) {
                return Err(format!(
                    "messages.{i}.content: the toolResult block for {stray} answers no toolUse \
                     block of the previous turn."
                ));
            }
            let missing: Vec<&str> = open_calls
                .iter()
                .filter(|id| !results.contains(id))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(unanswered(i, &missing));
            }
            if leading_results < results.len() {
                return Err(format!(
                    "The model returned the following errors: messages.{i}: the toolResult \
                     blocks must come first in the message."
                ));
            }
        }
        open_calls = calls;
        previous_role = role;
    }
    if !open_calls.is_empty() {
        let missing: Vec<&str> = open_calls.iter().map(String::as_str).collect();
        return Err(unanswered(messages.len(), &missing));
    }
    let tail = messages
        .last()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .and_then(|m| m.get("content").and_then(Value::as_array))
        .and_then(|blocks| blocks.last())
        .and_then(|block| block.get("text").and_then(Value::as_str));
    if tail.is_some_and(|text| text.ends_with(char::is_whitespace)) {
        return Err(
            "The model returned the following errors: final assistant content cannot \
                    end with trailing whitespace"
                .into(),
        );
    }
    Ok(())
}

/// Checks a `toolResult` member.
fn validate_tool_result(result: &Value, at: &str) -> Result<(), String> {
    let id = result
        .get("toolUseId")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !valid_name(id) {
        return Err(format!(
            "1 validation error detected: Value '{id}' at '{at}.member.toolResult.toolUseId' \
             failed to satisfy constraint: Member must satisfy regular expression pattern: \
             [a-zA-Z0-9_-]+"
        ));
    }
    let status = result.get("status");
    if let Some(status) = status {
        if !matches!(status.as_str(), Some("success" | "error")) {
            return Err(format!(
                "1 validation error detected: Value {status} at '{at}.member.toolResult.status' \
                 failed to satisfy constraint: Member must satisfy enum value set: \
                 [success, error]"
            ));
        }
    }
    let parts = match result.get("content").and_then(Value::as_array) {
        Some(parts) if !parts.is_empty() => parts,
        _ => {
            return Err(format!(
                "The content field at {at}.toolResult cannot be empty."
            ))
        }
    };
    for (k, part) in parts.iter().enumerate() {
        let part_at = format!("{at}.toolResult.content.{k}");
        match union_member(part, &part_at, "ToolResultContentBlock")? {
            ("text", Value::String(text)) if !is_blank(text) => {}
            ("text", _) => {
                return Err(format!(
                    "The text field in the ToolResultContentBlock object at {part_at} is blank. \
                     Add text to the text field, and try again."
                ))
            }
            ("json" | "image" | "document" | "video", _) => {}
            (other, _) => return Err(format!("{part_at}: unknown member {other:?}")),
        }
    }
    Ok(())
}

fn unanswered(index: usize, ids: &[&str]) -> String {
    format!(
        "Expected toolResult blocks at messages.{index}.content for the following Ids: {}",
        ids.join(", ")
    )
}

fn tool_use_id(step: usize, index: usize) -> String {
    format!("tooluse_mock_{step}_{index}")
}

fn stop_reason(answer: &Answer<'_>) -> &'static str {
    match answer {
        Answer::Text(_) => "end_turn",
        Answer::Calls(_) => "tool_use",
    }
}

fn usage(info: &BedrockInfo, answer: &Answer<'_>) -> Value {
    let input = (info.message_chars / 4) as u64;
    let cache_read = (info.system_chars / 4) as u64;
    let output = (answer.completion_chars() / 4) as u64;
    json!({
        "inputTokens": input,
        "outputTokens": output,
        "totalTokens": input + cache_read + output,
        "cacheReadInputTokens": cache_read,
        "cacheWriteInputTokens": 0,
    })
}

/// A tool call's `input`: its arguments parsed, or (for scripts that send
/// broken JSON on purpose) the text itself.
fn input_value(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// The non-streaming `Converse` reply.
pub(crate) fn converse_json(info: &BedrockInfo, answer: &Answer<'_>) -> Value {
    let content: Vec<Value> = match answer {
        Answer::Text(text) => vec![json!({ "text": text })],
        Answer::Calls(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                json!({ "toolUse": {
                    "toolUseId": tool_use_id(info.step, i),
                    "name": call.name,
                    "input": input_value(&call.arguments),
                }})
            })
            .collect(),
    };
    json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": stop_reason(answer),
        "usage": usage(info, answer),
        "metrics": { "latencyMs": LATENCY_MS },
    })
}

/// One event-stream frame: a message with these headers and payload.
fn frame(headers: &[(&'static str, String)], payload: &Value) -> Bytes {
    let mut message = Message::new(Bytes::from(payload.to_string()));
    for (name, value) in headers {
        message = message.add_header(Header::new(
            *name,
            HeaderValue::String(value.clone().into()),
        ));
    }
    let mut buffer = Vec::new();
    if let Err(error) = write_message_to(&message, &mut buffer) {
        tracing::error!(%error, "mock bedrock: cannot encode an event-stream frame");
    }
    Bytes::from(buffer)
}

/// An `event` frame of type `kind`. Like the service, it pads the payload
/// with a `p` field (the client must ignore what it does not know).
fn event(kind: &str, mut payload: Value) -> Bytes {
    if let Some(object) = payload.as_object_mut() {
        let padding = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";
        object.insert(
            "p".into(),
            Value::String(padding[..(kind.len() * 2).min(padding.len())].to_owned()),
        );
    }
    frame(
        &[
            (":event-type", kind.to_owned()),
            (":content-type", "application/json".to_owned()),
            (":message-type", "event".to_owned()),
        ],
        &payload,
    )
}

/// An `exception` frame, e.g. `throttlingException`.
pub(crate) fn exception_frame(kind: &str, message: &str) -> Bytes {
    let mut payload = Map::new();
    payload.insert("message".into(), json!(message));
    if kind == "modelStreamErrorException" {
        payload.insert("originalStatusCode".into(), json!(500));
        payload.insert("originalMessage".into(), json!(message));
    }
    frame(
        &[
            (":exception-type", kind.to_owned()),
            (":content-type", "application/json".to_owned()),
            (":message-type", "exception".to_owned()),
        ],
        &Value::Object(payload),
    )
}

fn message_start() -> Bytes {
    event("messageStart", json!({ "role": "assistant" }))
}

fn delta(index: usize, delta: Value) -> Bytes {
    event(
        "contentBlockDelta",
        json!({ "contentBlockIndex": index, "delta": delta }),
    )
}

fn block_stop(index: usize) -> Bytes {
    event("contentBlockStop", json!({ "contentBlockIndex": index }))
}

/// The frames of a complete streamed answer: text in three deltas (text
/// blocks have no start event), each tool call's input in two or three;
/// `messageStop`, then `metadata` with the usage.
pub(crate) fn stream_frames(info: &BedrockInfo, answer: &Answer<'_>) -> Vec<Bytes> {
    let mut frames = vec![message_start()];
    match answer {
        Answer::Text(text) => {
            for piece in split_pieces(text, 3) {
                frames.push(delta(0, json!({ "text": piece })));
            }
            frames.push(block_stop(0));
        }
        Answer::Calls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                frames.push(event(
                    "contentBlockStart",
                    json!({
                        "contentBlockIndex": index,
                        "start": { "toolUse": {
                            "toolUseId": tool_use_id(info.step, index),
                            "name": call.name,
                        }},
                    }),
                ));
                let pieces = if call.arguments.chars().count() >= 6 {
                    3
                } else {
                    2
                };
                for piece in split_pieces(&call.arguments, pieces) {
                    frames.push(delta(index, json!({ "toolUse": { "input": piece } })));
                }
                frames.push(block_stop(index));
            }
        }
    }
    frames.push(event(
        "messageStop",
        json!({ "stopReason": stop_reason(answer) }),
    ));
    frames.push(event(
        "metadata",
        json!({ "usage": usage(info, answer), "metrics": { "latencyMs": LATENCY_MS } }),
    ));
    frames
}

/// The first frames of an answer that will never complete.
pub(crate) fn partial_frames() -> Vec<Bytes> {
    vec![message_start(), delta(0, json!({ "text": "Partial ans" }))]
}

/// The first frames of an answer, then the first half of another (after
/// which the server closes the connection).
pub(crate) fn truncated_frames() -> Vec<Bytes> {
    let mut frames = partial_frames();
    let next = delta(0, json!({ "text": "wer that never ends" }));
    frames.push(next.slice(..next.len() / 2));
    frames
}

/// The first frames of an answer, then an exception frame; the body ends
/// there.
pub(crate) fn error_frames(kind: &str, message: &str) -> Vec<Bytes> {
    let mut frames = partial_frames();
    frames.push(exception_frame(kind, message));
    frames
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;

    fn valid() -> Value {
        json!({
            "system": [{"text": "s"}],
            "inferenceConfig": {"maxTokens": 10},
            "toolConfig": {"tools": [{"toolSpec": {
                "name": "shell", "description": "d", "inputSchema": {"json": {"type": "object"}},
            }}]},
            "messages": [
                {"role": "user", "content": [{"text": "task"}]},
                {"role": "assistant", "content": [
                    {"text": "ok"},
                    {"toolUse": {"toolUseId": "a", "name": "shell", "input": {}}},
                    {"toolUse": {"toolUseId": "b", "name": "shell", "input": {"x": 1}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "b", "content": [{"text": "1"}]}},
                    {"toolResult": {"toolUseId": "a", "content": [{"text": "e"}], "status": "error"}},
                    {"text": "more"},
                ]},
                {"role": "assistant", "content": [{"text": "prefill"}]},
            ],
        })
    }

    #[track_caller]
    fn assert_refused<R>(edit: impl FnOnce(&mut Value) -> R, expected: &str) {
        let mut request = valid();
        edit(&mut request);
        let message = validate(&request).unwrap_err();
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }

    #[test]
    fn accepts_a_valid_request() {
        validate(&valid()).unwrap();
    }

    #[test]
    fn refuses_what_the_service_refuses() {
        assert_refused(
            |r| r["inferenceConfig"]["maxTokens"] = json!(0),
            "inferenceConfig.maxTokens",
        );
        assert_refused(|r| r["system"][0]["text"] = json!(" "), "is blank");
        assert_refused(
            |r| r["messages"][0]["role"] = json!("system"),
            "Member must satisfy enum value set: [user, assistant]",
        );
        assert_refused(
            |r| r["messages"] = json!([]),
            "must start with a user message",
        );
        assert_refused(
            |r| r["messages"].as_array_mut().unwrap().remove(0),
            "must start with a user message",
        );
        assert_refused(
            |r| r["messages"].as_array_mut().unwrap().remove(1),
            "must alternate between user and assistant roles",
        );
        assert_refused(
            |r| r["messages"][0]["content"] = json!([]),
            "messages.0 is empty",
        );
        assert_refused(
            |r| r["messages"][1]["content"][0]["text"] = json!(""),
            "ContentBlock object at messages.1.content.0 is blank",
        );
        assert_refused(
            |r| r["messages"][0]["content"][0] = json!({"text": "a", "image": {}}),
            "exactly one of its members",
        );
        assert_refused(
            |r| r["messages"][1]["content"][1]["toolUse"]["toolUseId"] = json!("call:1"),
            "toolUse.toolUseId",
        );
        assert_refused(
            |r| r["messages"][2]["content"][0]["toolResult"]["toolUseId"] = json!("zzz"),
            "answers no toolUse block of the previous turn",
        );
        assert_refused(
            |r| {
                r["messages"][2]["content"]
                    .as_array_mut()
                    .unwrap()
                    .remove(1)
            },
            "Expected toolResult blocks at messages.2.content for the following Ids: a",
        );
        assert_refused(
            |r| {
                r["messages"][2]["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"toolResult": {"toolUseId": "c", "content": [{"text": "x"}]}}))
            },
            "exceeds the number of toolUse blocks",
        );
        assert_refused(
            |r| {
                r["messages"][2]["content"]
                    .as_array_mut()
                    .unwrap()
                    .swap(1, 2)
            },
            "must come first",
        );
        assert_refused(
            |r| r["messages"][2]["content"][1]["toolResult"]["content"] = json!([]),
            "cannot be empty",
        );
        assert_refused(
            |r| r["messages"][2]["content"][0]["toolResult"]["content"] = json!([{"text": ""}]),
            "ToolResultContentBlock object at messages.2.content.0.toolResult.content.0 is blank",
        );
        assert_refused(
            |r| r["messages"][2]["content"][0]["toolResult"]["status"] = json!("ok"),
            "[success, error]",
        );
        assert_refused(
            |r| r.as_object_mut().unwrap().remove("toolConfig"),
            "The toolConfig field must be defined",
        );
        assert_refused(|r| r["toolConfig"]["tools"] = json!([]), "toolConfig.tools");
        assert_refused(
            |r| r["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] = json!({"type": "object"}),
            "inputSchema.json must be a JSON object",
        );
        assert_refused(
            |r| r["toolConfig"]["tools"][0]["toolSpec"]["name"] = json!("has space"),
            "toolSpec.name",
        );
        assert_refused(
            |r| r["messages"][3]["content"][0]["text"] = json!("ends in space "),
            "trailing whitespace",
        );
        assert_refused(
            |r| {
                r["messages"][3]["content"] =
                    json!([{"toolUse": {"toolUseId": "a", "name": "shell", "input": {}}}])
            },
            "used twice",
        );
        assert_refused(
            |r| {
                r["messages"][3]["content"] =
                    json!([{"toolUse": {"toolUseId": "c", "name": "shell", "input": {}}}])
            },
            "Expected toolResult blocks at messages.4.content for the following Ids: c",
        );
    }

    #[test]
    fn info_counts_and_picks_the_script() {
        let mut request = valid();
        request["messages"][0]["content"][0]["text"] = json!("go [script:x]");
        let info = BedrockInfo::of(&request);
        assert_eq!(info.script, "x");
        assert_eq!(info.step, 2);
        assert!(info.has_tools);
        assert_eq!(info.system_chars, 1);
        assert!(info.message_chars > 20);
    }

    #[test]
    fn frames_decode_with_their_headers() {
        let frame = event("messageStop", json!({"stopReason": "end_turn"}));
        let message = read_message_from(&frame[..]).unwrap();
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .map(|h| h.value().as_string().unwrap().as_str().to_owned())
        };
        assert_eq!(header(":event-type").as_deref(), Some("messageStop"));
        assert_eq!(header(":message-type").as_deref(), Some("event"));
        assert_eq!(header(":content-type").as_deref(), Some("application/json"));
        let payload: Value = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(payload["stopReason"], "end_turn");
        assert!(payload["p"].is_string());

        let truncated = truncated_frames();
        let last = truncated.last().unwrap();
        assert!(read_message_from(&last[..]).is_err());
    }
}
