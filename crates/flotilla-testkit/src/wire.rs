//! The OpenAI Chat Completions wire format as the mock reads and writes it.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::script::ScriptedCall;

/// `created` of every reply: fixed, so replies are deterministic.
const CREATED: u64 = 1_700_000_000;

/// The marker that makes a request play script `name`: put it in the task
/// (the first user message).
pub fn script_marker(name: &str) -> String {
    format!("[script:{name}]")
}

/// The marker that tells the mock `n` earlier turns were compacted away.
pub fn turns_marker(n: usize) -> String {
    format!("[mock-turns:{n}]")
}

/// The marker that makes the mock answer with plain JSON even when the
/// request asked for a stream (a server that ignores `stream`).
pub const NO_STREAM_MARKER: &str = "[mock-no-stream]";

/// The text of a message's `content`: a string, or the `text` of its parts.
pub(crate) fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn messages(request: &Value) -> &[Value] {
    request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The text between `prefix` and the next `]`, for each occurrence.
fn marker_values<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(prefix).filter_map(move |(at, _)| {
        let rest = &text[at + prefix.len()..];
        rest.find(']').map(|end| rest[..end].trim())
    })
}

/// The script a request asks for: the `[script:NAME]` marker of its first
/// user message that has one.
pub fn script_name(request: &Value) -> Option<String> {
    messages(request)
        .iter()
        .filter(|message| role(message) == "user")
        .find_map(|message| {
            let text = content_text(message);
            let name = marker_values(&text, "[script:").next().map(str::to_owned);
            name
        })
}

/// The step a request is at: its assistant messages plus the largest
/// `[mock-turns:N]` marker found in any message.
pub fn step_index(request: &Value) -> usize {
    let mut assistants = 0usize;
    let mut compacted = 0usize;
    for message in messages(request) {
        if role(message) == "assistant" {
            assistants += 1;
        }
        let text = content_text(message);
        for value in marker_values(&text, "[mock-turns:") {
            if let Ok(n) = value.parse::<usize>() {
                compacted = compacted.max(n);
            }
        }
    }
    assistants + compacted
}

/// What the server needs to know about one request.
pub(crate) struct RequestInfo {
    pub script: String,
    pub step: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub has_tools: bool,
    pub prompt_chars: usize,
    pub model: String,
}

impl RequestInfo {
    pub(crate) fn of(request: &Value) -> Self {
        let mut prompt_chars = 0usize;
        let mut no_stream = false;
        for message in messages(request) {
            let text = content_text(message);
            no_stream |= text.contains(NO_STREAM_MARKER);
            prompt_chars += text.chars().count();
            if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let function = call.get("function");
                    for field in ["name", "arguments"] {
                        if let Some(s) = function.and_then(|f| f.get(field)).and_then(Value::as_str)
                        {
                            prompt_chars += s.chars().count();
                        }
                    }
                }
            }
        }
        RequestInfo {
            script: script_name(request).unwrap_or_else(|| crate::DEFAULT_SCRIPT.to_owned()),
            step: step_index(request),
            stream: !no_stream
                && request
                    .get("stream")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            has_tools: request
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|tools| !tools.is_empty()),
            prompt_chars,
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock-model")
                .to_owned(),
        }
    }
}

/// The content of one successful answer.
pub(crate) enum Answer<'a> {
    Text(&'a str),
    Calls(&'a [ScriptedCall]),
}

impl Answer<'_> {
    pub(crate) fn completion_chars(&self) -> usize {
        match self {
            Answer::Text(text) => text.chars().count(),
            Answer::Calls(calls) => calls
                .iter()
                .map(|c| c.name.chars().count() + c.arguments.chars().count())
                .sum(),
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "stop",
            Answer::Calls(_) => "tool_calls",
        }
    }
}

fn usage(info: &RequestInfo, answer: &Answer<'_>) -> Value {
    let prompt = (info.prompt_chars / 4) as u64;
    let completion = (answer.completion_chars() / 4) as u64;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn completion_id(info: &RequestInfo) -> String {
    format!("chatcmpl-mock-{}-{}", info.script, info.step)
}

fn call_id(step: usize, index: usize) -> String {
    format!("call_{step}_{index}")
}

/// `text` cut into at most `pieces` non-empty parts on char boundaries.
pub(crate) fn split_pieces(text: &str, pieces: usize) -> Vec<&str> {
    let chars = text.chars().count();
    if chars == 0 {
        return Vec::new();
    }
    let pieces = pieces.clamp(1, chars);
    let per = chars.div_ceil(pieces);
    let mut out = Vec::with_capacity(pieces);
    let mut start = 0;
    let mut count = 0;
    for (at, _) in text.char_indices() {
        if count == per {
            out.push(&text[start..at]);
            start = at;
            count = 0;
        }
        count += 1;
    }
    out.push(&text[start..]);
    out
}

/// The non-streaming `chat.completion` object.
pub(crate) fn completion_json(info: &RequestInfo, answer: &Answer<'_>) -> Value {
    let message = match answer {
        Answer::Text(text) => json!({ "role": "assistant", "content": text }),
        Answer::Calls(calls) => json!({
            "role": "assistant",
            "content": Value::Null,
            "tool_calls": calls.iter().enumerate().map(|(i, call)| json!({
                "id": call_id(info.step, i),
                "type": "function",
                "function": { "name": call.name, "arguments": call.arguments },
            })).collect::<Vec<_>>(),
        }),
    };
    json!({
        "id": completion_id(info),
        "object": "chat.completion",
        "created": CREATED,
        "model": info.model,
        "choices": [{ "index": 0, "message": message, "finish_reason": answer.finish_reason() }],
        "usage": usage(info, answer),
    })
}

/// Builds `chat.completion.chunk` events.
struct Chunks<'a> {
    info: &'a RequestInfo,
    id: String,
    events: Vec<Bytes>,
}

impl<'a> Chunks<'a> {
    fn new(info: &'a RequestInfo) -> Self {
        Chunks {
            info,
            id: completion_id(info),
            events: Vec::new(),
        }
    }

    fn push(&mut self, choices: Value, usage: Option<Value>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.info.model,
            "choices": choices,
        });
        if let (Some(usage), Some(object)) = (usage, chunk.as_object_mut()) {
            object.insert("usage".to_owned(), usage);
        }
        self.events.push(sse_event(&chunk.to_string()));
    }

    fn delta(&mut self, delta: Value) {
        self.push(
            json!([{ "index": 0, "delta": delta, "finish_reason": Value::Null }]),
            None,
        );
    }

    fn role(&mut self) {
        self.delta(json!({ "role": "assistant", "content": "" }));
    }

    fn content(&mut self, text: &str) {
        for piece in split_pieces(text, 3) {
            self.delta(json!({ "content": piece }));
        }
    }

    fn call(&mut self, index: usize, call: &ScriptedCall) {
        self.delta(json!({ "tool_calls": [{
            "index": index,
            "id": call_id(self.info.step, index),
            "type": "function",
            "function": { "name": call.name, "arguments": "" },
        }]}));
        let pieces = if call.arguments.chars().count() >= 6 {
            3
        } else {
            2
        };
        for piece in split_pieces(&call.arguments, pieces) {
            self.delta(json!({ "tool_calls": [{
                "index": index,
                "function": { "arguments": piece },
            }]}));
        }
    }
}

fn sse_event(data: &str) -> Bytes {
    let mut event = String::with_capacity(data.len() + 8);
    event.push_str("data: ");
    event.push_str(data);
    event.push_str("\n\n");
    Bytes::from(event)
}

/// The SSE events of a complete streamed answer, `[DONE]` included.
pub(crate) fn stream_events(info: &RequestInfo, answer: &Answer<'_>) -> Vec<Bytes> {
    let mut chunks = Chunks::new(info);
    chunks.role();
    match answer {
        Answer::Text(text) => chunks.content(text),
        Answer::Calls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                chunks.call(index, call);
            }
        }
    }
    chunks.push(
        json!([{ "index": 0, "delta": {}, "finish_reason": answer.finish_reason() }]),
        None,
    );
    if info.include_usage {
        chunks.push(json!([]), Some(usage(info, answer)));
    }
    chunks.events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks.events
}

/// The first events of an answer that will never complete.
pub(crate) fn partial_events(info: &RequestInfo) -> Vec<Bytes> {
    let mut chunks = Chunks::new(info);
    chunks.role();
    chunks.delta(json!({ "content": "Partial ans" }));
    chunks.events
}

/// The first events of an answer, then an error chunk; the body ends there.
pub(crate) fn error_events(info: &RequestInfo, kind: &str, message: &str) -> Vec<Bytes> {
    let mut events = partial_events(info);
    events.push(sse_event(&error_body(message, kind).to_string()));
    events
}

/// An OpenAI-style error body.
pub(crate) fn error_body(message: &str, kind: &str) -> Value {
    json!({ "error": { "message": message, "type": kind } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pieces_keeps_text_and_char_boundaries() {
        for text in [
            "",
            "a",
            "ab",
            "abc",
            "héllo wörld",
            "{\"command\":\"ls -la\"}",
        ] {
            for n in 1..5 {
                let pieces = split_pieces(text, n);
                assert_eq!(pieces.concat(), text);
                assert!(pieces.len() <= n);
                assert!(pieces.iter().all(|p| !p.is_empty()));
                if text.chars().count() >= n {
                    assert_eq!(pieces.len(), n, "{text:?} into {n}");
                }
            }
        }
    }

    #[test]
    fn step_counts_assistant_messages_and_turn_markers() {
        let request = json!({"messages": [
            {"role": "system", "content": "you are a bot"},
            {"role": "user", "content": "do it [script:alpha]"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "x", "content": "ok"},
            {"role": "assistant", "content": "next"},
        ]});
        assert_eq!(step_index(&request), 2);
        assert_eq!(script_name(&request).as_deref(), Some("alpha"));

        let compacted = json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "task [script:beta] x"}]},
            {"role": "user", "content": "Summary of earlier work. [mock-turns:7]"},
            {"role": "assistant", "content": "more"},
        ]});
        assert_eq!(step_index(&compacted), 8);
        assert_eq!(script_name(&compacted).as_deref(), Some("beta"));

        let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(step_index(&plain), 0);
        assert_eq!(script_name(&plain), None);
        assert_eq!(step_index(&json!({})), 0);
    }

    #[test]
    fn script_marker_only_counts_in_user_messages() {
        let request = json!({"messages": [
            {"role": "system", "content": "[script:wrong]"},
            {"role": "user", "content": "first"},
            {"role": "user", "content": "[script:right] and [script:later]"},
        ]});
        assert_eq!(script_name(&request).as_deref(), Some("right"));
    }
}
