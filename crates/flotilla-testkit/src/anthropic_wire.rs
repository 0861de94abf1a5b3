//! The Anthropic Messages wire format as the mock reads, checks and writes it.

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::wire::{content_text, script_name, split_pieces, step_index, Answer, NO_STREAM_MARKER};

/// The top-level fields the Messages API knows; the API refuses any other
/// ("Extra inputs are not permitted"), and so does the mock.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "tools",
    "tool_choice",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "thinking",
    "service_tier",
];

/// The fields of a tool definition.
const TOOL_FIELDS: &[&str] = &[
    "name",
    "description",
    "input_schema",
    "cache_control",
    "type",
];

/// The `error.type` the API sends with an HTTP status.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An Anthropic error body.
pub(crate) fn error_body(kind: &str, message: &str) -> Value {
    json!({ "type": "error", "error": { "type": kind, "message": message } })
}

/// The text of a `system` value: a string or text blocks.
fn system_text(system: Option<&Value>) -> String {
    match system {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Characters of a message's content: text, tool inputs, tool results.
fn message_chars(message: &Value) -> usize {
    match message.get("content") {
        Some(Value::String(text)) => text.chars().count(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|block| match block.get("type").and_then(Value::as_str) {
                Some("text") => block
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, |t| t.chars().count()),
                Some("tool_use") => {
                    block
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or(0, |n| n.chars().count())
                        + block
                            .get("input")
                            .map_or(0, |i| i.to_string().chars().count())
                }
                Some("tool_result") => content_text(block).chars().count(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// What the server needs to know about one (valid) request.
pub(crate) struct AnthropicInfo {
    pub script: String,
    pub step: usize,
    pub stream: bool,
    pub has_tools: bool,
    /// Characters of the messages (reported as `input_tokens`, 4 a token).
    pub message_chars: usize,
    /// Characters of the system prompt (reported as `cache_read_input_tokens`).
    pub system_chars: usize,
    pub model: String,
}

impl AnthropicInfo {
    pub(crate) fn of(request: &Value) -> Self {
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let no_stream = messages
            .iter()
            .any(|message| content_text(message).contains(NO_STREAM_MARKER));
        AnthropicInfo {
            script: script_name(request).unwrap_or_else(|| crate::DEFAULT_SCRIPT.to_owned()),
            step: step_index(request),
            stream: !no_stream
                && request
                    .get("stream")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            has_tools: request
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|tools| !tools.is_empty()),
            message_chars: messages.iter().map(message_chars).sum(),
            system_chars: system_text(request.get("system")).chars().count(),
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock-model")
                .to_owned(),
        }
    }
}

fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// Checks a request body the way the Messages API does; the error is the
/// message of the HTTP 400 `invalid_request_error` the API would send.
pub(crate) fn validate(request: &Value) -> Result<(), String> {
    let Some(object) = request.as_object() else {
        return Err("the request body must be a JSON object".into());
    };
    if let Some(extra) = object
        .keys()
        .find(|key| !KNOWN_FIELDS.contains(&key.as_str()))
    {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => {}
        None => return Err("model: Field required".into()),
        Some(_) => return Err("model: Input should be a non-empty string".into()),
    }
    match object.get("max_tokens") {
        None => return Err("max_tokens: Field required".into()),
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => {}
            Some(_) => return Err("max_tokens: Input should be greater than or equal to 1".into()),
            None => return Err("max_tokens: Input should be a valid integer".into()),
        },
    }
    if object
        .get("stream")
        .is_some_and(|stream| !stream.is_boolean())
    {
        return Err("stream: Input should be a valid boolean".into());
    }
    match object.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                let text = block.get("text").and_then(Value::as_str);
                if block.get("type").and_then(Value::as_str) != Some("text") || text.is_none() {
                    return Err(format!("system.{j}: expected a text block"));
                }
                if text.is_some_and(is_blank) {
                    return Err(format!(
                        "system.{j}.text: text content blocks must contain non-whitespace text"
                    ));
                }
            }
        }
        Some(_) => return Err("system: Input should be a valid string or list".into()),
    }
    let has_tools = validate_tools(object.get("tools"))?;
    validate_messages(object.get("messages"), has_tools)
}

/// Checks `tools`; whether there are any.
fn validate_tools(tools: Option<&Value>) -> Result<bool, String> {
    let tools = match tools {
        None => return Ok(false),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err("tools: Input should be a valid list".into()),
    };
    let mut names = HashSet::new();
    for (k, tool) in tools.iter().enumerate() {
        let Some(tool) = tool.as_object() else {
            return Err(format!("tools.{k}: Input should be a valid dictionary"));
        };
        if let Some(extra) = tool.keys().find(|key| !TOOL_FIELDS.contains(&key.as_str())) {
            return Err(format!("tools.{k}.{extra}: Extra inputs are not permitted"));
        }
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Err(format!("tools.{k}.name: Field required"));
        };
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "tools.{k}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !names.insert(name) {
            return Err(format!(
                "tools: Tool names must be unique (found {name:?} twice)"
            ));
        }
        if tool.get("description").is_some_and(|d| !d.is_string()) {
            return Err(format!(
                "tools.{k}.description: Input should be a valid string"
            ));
        }
        match tool.get("input_schema") {
            None => return Err(format!("tools.{k}.input_schema: Field required")),
            Some(schema) if !schema.is_object() => {
                return Err(format!(
                    "tools.{k}.input_schema: Input should be a valid dictionary"
                ))
            }
            Some(schema) if schema.get("type").and_then(Value::as_str) != Some("object") => {
                return Err(format!(
                    "tools.{k}.input_schema.type: Input should be 'object'"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(!tools.is_empty())
}

/// Checks `messages`: alternating roles starting with the user's, no blank
/// text, tool use answered by tool results in the next message, tool
/// results answering tool use of the previous message and coming first.
fn validate_messages(messages: Option<&Value>, has_tools: bool) -> Result<(), String> {
    let messages = match messages {
        None => return Err("messages: Field required".into()),
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut tool_use_ids = HashSet::new();
    // The tool use of the previous message, which this one must answer.
    let mut open_calls: Vec<String> = Vec::new();
    let mut previous_role = "";
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            Some(other) => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant' (got {other:?}; \
                     system prompts go in the top-level `system` parameter)"
                ))
            }
            None => return Err(format!("messages.{i}.role: Field required")),
        };
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        if role == previous_role {
            return Err(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", \
                 but found multiple \"{role}\" roles in a row"
            ));
        }
        let blocks: &[Value] = match message.get("content") {
            Some(Value::String(text)) => {
                if is_blank(text) {
                    return Err(format!(
                        "messages.{i}: text content blocks must contain non-whitespace text"
                    ));
                }
                &[]
            }
            Some(Value::Array(blocks)) if blocks.is_empty() => {
                return Err(format!(
                    "messages.{i}.content: List should have at least 1 item"
                ))
            }
            Some(Value::Array(blocks)) => blocks,
            Some(_) => {
                return Err(format!(
                    "messages.{i}.content: Input should be a valid string or list"
                ))
            }
            None => return Err(format!("messages.{i}.content: Field required")),
        };
        let mut calls = Vec::new();
        let mut results: Vec<String> = Vec::new();
        let mut leading_results = 0usize;
        for (j, block) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match block.get("type").and_then(Value::as_str) {
                Some("text") => match block.get("text").and_then(Value::as_str) {
                    Some(text) if !is_blank(text) => {}
                    Some(_) => {
                        return Err(format!(
                            "{at}.text: text content blocks must contain non-whitespace text"
                        ))
                    }
                    None => return Err(format!("{at}.text: Field required")),
                },
                Some("tool_use") => {
                    if role != "assistant" {
                        return Err(format!(
                            "{at}: `tool_use` blocks can only be in `assistant` messages"
                        ));
                    }
                    let id = match block.get("id").and_then(Value::as_str) {
                        Some(id) if !id.is_empty() => id,
                        _ => return Err(format!("{at}.id: Field required")),
                    };
                    if block.get("name").and_then(Value::as_str).is_none() {
                        return Err(format!("{at}.name: Field required"));
                    }
                    if !block.get("input").is_some_and(Value::is_object) {
                        return Err(format!("{at}.input: Input should be a valid dictionary"));
                    }
                    if !tool_use_ids.insert(id.to_owned()) {
                        return Err(format!(
                            "{at}: `tool_use` ids must be unique (found {id:?} twice)"
                        ));
                    }
                    calls.push(id.to_owned());
                }
                Some("tool_result") => {
                    if role != "user" {
                        return Err(format!(
                            "{at}: `tool_result` blocks can only be in `user` messages"
                        ));
                    }
                    let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(format!("{at}.tool_use_id: Field required"));
                    };
                    match block.get("content") {
                        None | Some(Value::String(_)) => {}
                        Some(Value::Array(parts))
                            if parts.iter().all(|part| {
                                part.get("type").and_then(Value::as_str) == Some("text")
                                    && part
                                        .get("text")
                                        .and_then(Value::as_str)
                                        .is_some_and(|t| !is_blank(t))
                            }) => {}
                        Some(_) => {
                            return Err(format!(
                            "{at}.content: Input should be a valid string or list of text blocks"
                        ))
                        }
                    }
                    if block.get("is_error").is_some_and(|e| !e.is_boolean()) {
                        return Err(format!("{at}.is_error: Input should be a valid boolean"));
                    }
                    if results.iter().any(|seen| seen == id) {
                        return Err(format!("{at}: more than one `tool_result` for {id:?}"));
                    }
                    if leading_results == j {
                        leading_results += 1;
                    }
                    results.push(id.to_owned());
                }
                Some(other) => {
                    return Err(format!(
                        "{at}: Input tag '{other}' found using 'type' does not match any of the \
                         expected tags: 'text', 'tool_use', 'tool_result'"
                    ))
                }
                None => return Err(format!("{at}.type: Field required")),
            }
        }
        if (!calls.is_empty() || !results.is_empty()) && !has_tools {
            return Err(
                "Requests which include `tool_use` or `tool_result` blocks must define tools."
                    .into(),
            );
        }
        if role == "user" {
            if let Some(stray) = results.iter().find(|id| !open_calls.contains(id)) {
                return Err(format!(
                    "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: \
                     {stray}. Each `tool_result` block must have a corresponding `tool_use` block \
                     in the previous message."
                ));
            }
            let missing: Vec<&str> = open_calls
                .iter()
                .filter(|id| !results.contains(id))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(unanswered(i - 1, &missing));
            }
            if leading_results < results.len() {
                return Err(format!(
                    "messages.{i}: Did not find {} `tool_result` block(s) at the beginning of \
                     this message. Messages following `tool_use` blocks must begin with a \
                     matching number of `tool_result` blocks.",
                    results.len()
                ));
            }
        }
        open_calls = calls;
        previous_role = role;
    }
    if !open_calls.is_empty() {
        let missing: Vec<&str> = open_calls.iter().map(String::as_str).collect();
        return Err(unanswered(messages.len() - 1, &missing));
    }
    if let Some(last) = messages
        .last()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
    {
        let tail = match last.get("content") {
            Some(Value::String(text)) => Some(text.as_str()),
            Some(Value::Array(blocks)) => blocks
                .last()
                .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                .and_then(|block| block.get("text").and_then(Value::as_str)),
            _ => None,
        };
        if tail.is_some_and(|text| text.ends_with(char::is_whitespace)) {
            return Err(
                "messages: final assistant content cannot end with trailing whitespace".into(),
            );
        }
    }
    Ok(())
}

fn unanswered(index: usize, ids: &[&str]) -> String {
    format!(
        "messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately \
         after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the \
         next message.",
        ids.join(", ")
    )
}

fn message_id(info: &AnthropicInfo) -> String {
    format!("msg_mock_{}_{}", info.script, info.step)
}

fn tool_use_id(step: usize, index: usize) -> String {
    format!("toolu_{step}_{index}")
}

fn stop_reason(answer: &Answer<'_>) -> &'static str {
    match answer {
        Answer::Text(_) => "end_turn",
        Answer::Calls(_) => "tool_use",
    }
}

fn usage(info: &AnthropicInfo, output_tokens: u64) -> Value {
    json!({
        "input_tokens": (info.message_chars / 4) as u64,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": (info.system_chars / 4) as u64,
        "output_tokens": output_tokens,
    })
}

fn output_tokens(answer: &Answer<'_>) -> u64 {
    (answer.completion_chars() / 4) as u64
}

/// A tool call's `input`: its arguments parsed, or (for scripts that send
/// broken JSON on purpose) the text itself.
fn input_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// The non-streaming `message` object.
pub(crate) fn message_json(info: &AnthropicInfo, answer: &Answer<'_>) -> Value {
    let content = match answer {
        Answer::Text(text) => vec![json!({ "type": "text", "text": text })],
        Answer::Calls(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                json!({
                    "type": "tool_use",
                    "id": tool_use_id(info.step, i),
                    "name": call.name,
                    "input": input_value(&call.arguments),
                })
            })
            .collect(),
    };
    json!({
        "id": message_id(info),
        "type": "message",
        "role": "assistant",
        "model": info.model,
        "content": content,
        "stop_reason": stop_reason(answer),
        "stop_sequence": Value::Null,
        "usage": usage(info, output_tokens(answer)),
    })
}

/// One server-sent event as the API writes it: `event:` and `data:` lines.
fn event(data: &Value) -> Bytes {
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// `message_start` and a `ping`.
fn start_events(info: &AnthropicInfo) -> Vec<Bytes> {
    vec![
        event(&json!({
            "type": "message_start",
            "message": {
                "id": message_id(info),
                "type": "message",
                "role": "assistant",
                "model": info.model,
                "content": [],
                "stop_reason": Value::Null,
                "stop_sequence": Value::Null,
                "usage": usage(info, 1),
            },
        })),
        event(&json!({ "type": "ping" })),
    ]
}

fn block_start(index: usize, block: Value) -> Bytes {
    event(&json!({ "type": "content_block_start", "index": index, "content_block": block }))
}

fn block_delta(index: usize, delta: Value) -> Bytes {
    event(&json!({ "type": "content_block_delta", "index": index, "delta": delta }))
}

fn block_stop(index: usize) -> Bytes {
    event(&json!({ "type": "content_block_stop", "index": index }))
}

/// The events of a complete streamed answer, `message_stop` included:
/// text in three deltas, each tool call's input in two or three.
pub(crate) fn stream_events(info: &AnthropicInfo, answer: &Answer<'_>) -> Vec<Bytes> {
    let mut events = start_events(info);
    match answer {
        Answer::Text(text) => {
            events.push(block_start(0, json!({ "type": "text", "text": "" })));
            for piece in split_pieces(text, 3) {
                events.push(block_delta(
                    0,
                    json!({ "type": "text_delta", "text": piece }),
                ));
            }
            events.push(block_stop(0));
        }
        Answer::Calls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                events.push(block_start(
                    index,
                    json!({
                        "type": "tool_use",
                        "id": tool_use_id(info.step, index),
                        "name": call.name,
                        "input": {},
                    }),
                ));
                // The API opens with an empty piece.
                events.push(block_delta(
                    index,
                    json!({ "type": "input_json_delta", "partial_json": "" }),
                ));
                let pieces = if call.arguments.chars().count() >= 6 {
                    3
                } else {
                    2
                };
                for piece in split_pieces(&call.arguments, pieces) {
                    events.push(block_delta(
                        index,
                        json!({ "type": "input_json_delta", "partial_json": piece }),
                    ));
                }
                events.push(block_stop(index));
            }
        }
    }
    events.push(event(&json!({
        "type": "message_delta",
        "delta": { "stop_reason": stop_reason(answer), "stop_sequence": Value::Null },
        "usage": { "output_tokens": output_tokens(answer) },
    })));
    events.push(event(&json!({ "type": "message_stop" })));
    events
}

/// The first events of an answer that will never complete.
pub(crate) fn partial_events(info: &AnthropicInfo) -> Vec<Bytes> {
    let mut events = start_events(info);
    events.push(block_start(0, json!({ "type": "text", "text": "" })));
    events.push(block_delta(
        0,
        json!({ "type": "text_delta", "text": "Partial ans" }),
    ));
    events
}

/// The first events of an answer, then an `error` event; the body ends there.
pub(crate) fn error_events(info: &AnthropicInfo, kind: &str, message: &str) -> Vec<Bytes> {
    let mut events = partial_events(info);
    events.push(event(&error_body(kind, message)));
    events
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "model": "m",
            "max_tokens": 10,
            "system": "s",
            "stream": true,
            "tools": [{"name": "shell", "description": "d", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "task"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "ok"},
                    {"type": "tool_use", "id": "a", "name": "shell", "input": {}},
                    {"type": "tool_use", "id": "b", "name": "shell", "input": {"x": 1}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "b", "content": "1"},
                    {"type": "tool_result", "tool_use_id": "a"},
                    {"type": "text", "text": "more"},
                ]},
                {"role": "assistant", "content": "prefill"},
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
    fn refuses_what_the_api_refuses() {
        assert_refused(
            |r| r["stream_options"] = json!({}),
            "stream_options: Extra inputs",
        );
        assert_refused(
            |r| r.as_object_mut().unwrap().remove("max_tokens"),
            "max_tokens: Field required",
        );
        assert_refused(|r| r["max_tokens"] = json!(0), "greater than or equal to 1");
        assert_refused(
            |r| r["messages"][0]["role"] = json!("system"),
            "Input should be 'user' or 'assistant'",
        );
        assert_refused(|r| r["messages"] = json!([]), "at least one message");
        assert_refused(
            |r| r["messages"].as_array_mut().unwrap().remove(0),
            "first message must use the \"user\" role",
        );
        assert_refused(
            |r| r["messages"].as_array_mut().unwrap().remove(1),
            "multiple \"user\" roles in a row",
        );
        assert_refused(
            |r| r["messages"][0]["content"] = json!(" "),
            "non-whitespace text",
        );
        assert_refused(
            |r| r["messages"][1]["content"][0]["text"] = json!(""),
            "non-whitespace text",
        );
        assert_refused(
            |r| r["messages"][1]["content"][1]["input"] = json!("{}"),
            "valid dictionary",
        );
        assert_refused(
            |r| r["messages"][2]["content"][0]["tool_use_id"] = json!("zzz"),
            "unexpected `tool_use_id` found in `tool_result` blocks: zzz",
        );
        assert_refused(
            |r| {
                r["messages"][2]["content"]
                    .as_array_mut()
                    .unwrap()
                    .remove(1)
            },
            "messages.1: `tool_use` ids were found without `tool_result` blocks",
        );
        assert_refused(
            |r| {
                r["messages"][2]["content"]
                    .as_array_mut()
                    .unwrap()
                    .swap(1, 2)
            },
            "Did not find 2 `tool_result` block(s) at the beginning",
        );
        assert_refused(
            |r| r.as_object_mut().unwrap().remove("tools"),
            "must define tools",
        );
        assert_refused(
            |r| r["tools"][0]["input_schema"] = json!({"properties": {}}),
            "input_schema.type",
        );
        assert_refused(
            |r| r["tools"][0]["name"] = json!("has space"),
            "should match pattern",
        );
        assert_refused(
            |r| r["messages"][3]["content"] = json!("ends in space "),
            "trailing whitespace",
        );
        assert_refused(
            |r| {
                r["messages"][3]["content"] =
                    json!([{"type": "tool_use", "id": "a", "name": "shell", "input": {}}])
            },
            "ids must be unique",
        );
        assert_refused(
            |r| {
                r["messages"][3]["content"] =
                    json!([{"type": "tool_use", "id": "c", "name": "shell", "input": {}}])
            },
            "messages.3: `tool_use` ids were found without `tool_result`",
        );
        assert_refused(
            |r| r["messages"][0]["content"] = json!([{"type": "image"}]),
            "Input tag 'image'",
        );
    }

    #[test]
    fn info_counts_and_picks_the_script() {
        let mut request = valid();
        request["messages"][0]["content"] = json!(format!("go [script:x] {NO_STREAM_MARKER}"));
        let info = AnthropicInfo::of(&request);
        assert_eq!(info.script, "x");
        assert_eq!(info.step, 2);
        assert!(!info.stream);
        assert!(info.has_tools);
        assert_eq!(info.system_chars, 1);
        assert!(info.message_chars > 20);
    }
}
