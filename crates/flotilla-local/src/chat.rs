//! The OpenAI chat wire format as the local server speaks it: requests,
//! the prompt built from them, the grammar that makes tool calls valid,
//! and replies.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// Ignored beyond echoing: the server serves one model.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// `none`, `auto`, `required` or `{"type":"function","function":{"name":...}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Stream the reply as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// `{"include_usage": true}` adds a usage chunk to a stream.
    #[serde(default)]
    pub stream_options: Option<Value>,
    /// Most tokens to write.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature (0: greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Value>,
}

/// One message.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    /// system, user, assistant, tool (developer counts as system).
    pub role: String,
    /// Text, or parts of which the text ones are read.
    #[serde(default)]
    pub content: Option<Value>,
    /// An assistant's calls.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// A tool result's call.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A tool offered.
#[derive(Clone, Debug, Deserialize)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The function.
    pub function: Function,
}

/// A function tool.
#[derive(Clone, Debug, Deserialize)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of its arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// A call, as in an assistant message and a reply.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ToolCall {
    /// Its id.
    #[serde(default)]
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Name and arguments.
    pub function: CalledFunction,
}

fn function_kind() -> String {
    "function".into()
}

/// A called function.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct CalledFunction {
    /// Its name.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// What the reply may be.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Text only (no tools, or `tool_choice: none`).
    Text,
    /// Text or a call of one of the tools.
    Auto,
    /// A call of one of the tools.
    Required,
    /// A call of this tool.
    Named(String),
}

impl ChatRequest {
    /// What the reply may be, or why the request is wrong.
    pub fn choice(&self) -> Result<Choice, String> {
        if self.tools.is_empty() {
            return Ok(Choice::Text);
        }
        for t in &self.tools {
            if t.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(format!(
                    "tool type {:?}: only function tools are served",
                    t.kind
                ));
            }
        }
        match &self.tool_choice {
            None => Ok(Choice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "none" => Ok(Choice::Text),
                "auto" => Ok(Choice::Auto),
                "required" => Ok(Choice::Required),
                other => Err(format!(
                    "tool_choice {other:?}: use none, auto, required or a function"
                )),
            },
            Some(v) => {
                let name = v["function"]["name"].as_str().ok_or(
                    "tool_choice: give {\"type\": \"function\", \"function\": {\"name\": NAME}}",
                )?;
                if !self.tools.iter().any(|t| t.function.name == name) {
                    return Err(format!(
                        "tool_choice names {name:?}, which is not among the tools"
                    ));
                }
                Ok(Choice::Named(name.to_owned()))
            }
        }
    }

    /// Stop strings.
    pub fn stops(&self) -> Vec<String> {
        match &self.stop {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a stream ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o["include_usage"].as_bool() == Some(true))
    }
}

/// The text of a message's content.
fn text_of(content: &Option<Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A call as the model writes it under the grammar: `name` first (the
/// model commits to a tool, then writes its arguments).
pub fn call_json(name: &str, arguments: &Value) -> String {
    format!(
        "{{\"name\":{},\"arguments\":{}}}",
        Value::String(name.to_owned()),
        arguments
    )
}

/// The conversation as (role, content) for the chat template. Tools are
/// described in a system message; an assistant's calls are written as the
/// JSON the grammar makes it write; tool results are user turns (many
/// templates know no `tool` role).
pub fn template_messages(req: &ChatRequest, choice: &Choice) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if *choice != Choice::Text {
        let mut s = String::from(
            "You can call tools. To call one, reply with only a JSON object {\"name\": TOOL, \"arguments\": {...}} and nothing else. The tools:\n",
        );
        for t in &req.tools {
            s.push_str(&format!(
                "- {}: {} Arguments (JSON schema): {}\n",
                t.function.name,
                t.function.description.as_deref().unwrap_or(""),
                t.function.parameters.clone().unwrap_or(json!({}))
            ));
        }
        out.push(("system".into(), s));
    }
    for m in &req.messages {
        let role = match m.role.as_str() {
            "developer" | "system" => "system",
            "assistant" => "assistant",
            "tool" => "tool",
            _ => "user",
        };
        match role {
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let args: Value = serde_json::from_str(&c.function.arguments)
                            .unwrap_or(Value::String(c.function.arguments.clone()));
                        call_json(&c.function.name, &args)
                    })
                    .collect();
                out.push(("assistant".into(), calls.join("\n")));
            }
            "tool" => out.push((
                "user".into(),
                format!(
                    "Result of tool call {}:\n{}",
                    m.tool_call_id.as_deref().unwrap_or("?"),
                    text_of(&m.content)
                ),
            )),
            r => out.push((r.into(), text_of(&m.content))),
        }
    }
    // Templates that allow one system message want it first.
    let (mut sys, rest): (Vec<_>, Vec<_>) = out.into_iter().partition(|(r, _)| r == "system");
    if sys.len() > 1 {
        let joined = sys
            .iter()
            .map(|(_, c)| c.as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        sys = vec![("system".into(), joined)];
    }
    sys.into_iter().chain(rest).collect()
}

/// The JSON schema a call must match, as text: one object per allowed
/// tool, `name` before `arguments` (written by hand: serde_json would sort
/// the keys, and llama.cpp's converter keeps the order it is given).
fn call_schema(req: &ChatRequest, choice: &Choice) -> String {
    let alternatives: Vec<String> = req
        .tools
        .iter()
        .filter(|t| match choice {
            Choice::Named(n) => &t.function.name == n,
            _ => true,
        })
        .map(|t| {
            let params = t
                .function
                .parameters
                .clone()
                .unwrap_or(json!({"type": "object", "properties": {}}));
            format!(
                "{{\"type\":\"object\",\"properties\":{{\"name\":{{\"const\":{}}},\"arguments\":{}}},\"required\":[\"name\",\"arguments\"],\"additionalProperties\":false}}",
                Value::String(t.function.name.clone()),
                params
            )
        })
        .collect();
    if alternatives.len() == 1 {
        alternatives.into_iter().next().unwrap_or_default()
    } else {
        format!("{{\"oneOf\":[{}]}}", alternatives.join(","))
    }
}

/// The grammar of the reply: none for text; for tools, a call of an
/// offered tool whose arguments match its schema, or (`auto`) that or
/// text that does not start like a call. `to_gbnf` is llama.cpp's own
/// JSON-schema converter.
pub fn grammar(
    req: &ChatRequest,
    choice: &Choice,
    to_gbnf: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Option<String>, String> {
    if *choice == Choice::Text {
        return Ok(None);
    }
    let schema = call_schema(req, choice);
    let gbnf = to_gbnf(&schema).map_err(|e| {
        format!("the tools' parameter schemas cannot be turned into a grammar: {e}")
    })?;
    if *choice != Choice::Auto {
        return Ok(Some(gbnf));
    }
    // The converter's top rule is `root`; rename it and offer text beside.
    let renamed = rename_root(&gbnf).ok_or("the tool grammar has no root rule")?;
    Ok(Some(format!(
        "root ::= tool-call | free-text\nfree-text ::= [^{{\\x00] [^\\x00]*\n{renamed}"
    )))
}

/// The grammar with its `root` rule renamed `tool-call`.
fn rename_root(gbnf: &str) -> Option<String> {
    let mut found = false;
    let out: Vec<String> = gbnf
        .lines()
        .map(|l| {
            if !found && l.trim_start().starts_with("root ::=") {
                found = true;
                l.replacen("root ::=", "tool-call ::=", 1)
            } else {
                l.to_owned()
            }
        })
        .collect();
    found.then(|| out.join("\n"))
}

/// A reply read back: a call (text that starts with `{`, as the grammar's
/// call branch does, and names an offered tool) or text.
pub fn parse_reply(
    text: &str,
    choice: &Choice,
    call_id: &str,
    tools: &[Tool],
) -> (Option<String>, Vec<ToolCall>) {
    if *choice != Choice::Text && text.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(text.trim_end()) {
            let offered = |n: &str| tools.iter().any(|t| t.function.name == n);
            if let (Some(name), Some(args)) = (
                v["name"].as_str().filter(|n| offered(n)),
                v.get("arguments"),
            ) {
                return (
                    None,
                    vec![ToolCall {
                        id: call_id.to_owned(),
                        kind: "function".into(),
                        function: CalledFunction {
                            name: name.to_owned(),
                            arguments: args.to_string(),
                        },
                    }],
                );
            }
        }
    }
    (Some(text.to_owned()), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tool_choice_is_read_and_checked() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let r = req(json!({"messages": [], "tools": tools}));
        assert_eq!(r.choice(), Ok(Choice::Auto));
        let r = req(json!({"messages": [], "tools": tools, "tool_choice": "required"}));
        assert_eq!(r.choice(), Ok(Choice::Required));
        let r = req(
            json!({"messages": [], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        );
        assert_eq!(r.choice(), Ok(Choice::Named("f".into())));
        let r = req(
            json!({"messages": [], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
        );
        assert!(r.choice().is_err());
        let r = req(json!({"messages": [], "tool_choice": "required"}));
        assert_eq!(r.choice(), Ok(Choice::Text));
    }

    #[test]
    fn calls_and_results_become_template_turns() {
        let r = req(json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}]
        }));
        let m = template_messages(&r, &Choice::Auto);
        assert_eq!(m[0].0, "system");
        assert!(m[0].1.contains("be brief") && m[0].1.contains("- f:"));
        assert_eq!(m[1], ("user".into(), "hi".into()));
        assert_eq!(
            m[2],
            (
                "assistant".into(),
                "{\"name\":\"f\",\"arguments\":{\"a\":1}}".into()
            )
        );
        assert_eq!(m[3], ("user".into(), "Result of tool call c1:\n42".into()));
    }

    #[test]
    fn replies_are_read_as_calls_or_text() {
        let tools: Vec<Tool> =
            serde_json::from_value(json!([{"type": "function", "function": {"name": "f"}}]))
                .unwrap();
        let (text, calls) = parse_reply(
            r#"{"name":"f","arguments":{"a":1}}"#,
            &Choice::Auto,
            "call_1",
            &tools,
        );
        assert_eq!(text, None);
        assert_eq!(calls[0].function.name, "f");
        assert_eq!(calls[0].function.arguments, r#"{"a":1}"#);
        let (text, calls) = parse_reply("hello", &Choice::Auto, "call_1", &tools);
        assert_eq!(text.as_deref(), Some("hello"));
        assert!(calls.is_empty());
        // Free text that merely contains a call, or a call of a tool not
        // offered, is text.
        for t in [
            r#" {"name":"f","arguments":{}}"#,
            r#"{"name":"g","arguments":{}}"#,
        ] {
            let (text, calls) = parse_reply(t, &Choice::Auto, "call_1", &tools);
            assert!(calls.is_empty() && text.is_some(), "{t}");
        }
    }

    #[test]
    fn auto_offers_text_beside_the_call() {
        let r = req(
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}),
        );
        let g = grammar(&r, &Choice::Auto, &|_| {
            Ok("root ::= \"{}\"\nx ::= \"y\"".into())
        })
        .unwrap()
        .unwrap();
        assert!(g.starts_with("root ::= tool-call | free-text"));
        assert!(g.contains("tool-call ::= \"{}\""));
        assert!(grammar(&r, &Choice::Text, &|_| unreachable!())
            .unwrap()
            .is_none());
    }
}
