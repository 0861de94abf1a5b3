//! `AnthropicClient` against the scripted Anthropic mock over loopback HTTP.
//! The mock checks every request the way the real Messages API does (roles
//! alternating from `user`, no blank text, tool results right after their
//! tool use...), so a mapping mistake shows up as an HTTP 400.

// Helpers outside #[test] functions may unwrap too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use flotilla_models::{
    AnthropicClient, AnthropicConfig, ChatMessage, ChatRequest, ModelClient, ModelError, Role,
    ToolCall, ToolSpec, Usage,
};
use flotilla_testkit::{
    script_marker, Failure, MockAnthropicServer, Script, ScriptedCall, Step, NO_STREAM_MARKER,
};
use serde_json::json;

const KEY: &str = "sk-ant-test-key";

fn config(server: &MockAnthropicServer) -> AnthropicConfig {
    AnthropicConfig {
        base_url: server.base_url(),
        api_key: Some(KEY.into()),
        ..AnthropicConfig::default()
    }
}

fn client(server: &MockAnthropicServer) -> AnthropicClient {
    AnthropicClient::new(config(server)).unwrap()
}

fn shell_tool() -> ToolSpec {
    ToolSpec {
        name: "shell".into(),
        description: "Runs a command.".into(),
        parameters: json!({"type": "object", "properties": {"command": {"type": "string"}}}),
    }
}

fn request(task: &str) -> ChatRequest {
    ChatRequest {
        model: "claude-mock".into(),
        messages: vec![
            ChatMessage::text(Role::System, "You are a test."),
            ChatMessage::text(Role::User, task),
        ],
        tools: vec![shell_tool()].into(),
        max_tokens: Some(256),
    }
}

fn assistant_with(calls: &[ToolCall]) -> ChatMessage {
    ChatMessage {
        role: Role::Assistant,
        content: String::new(),
        tool_calls: calls.to_vec(),
        tool_call_id: None,
    }
}

#[tokio::test]
async fn text_reply_with_usage_and_headers() {
    let server =
        MockAnthropicServer::start(Script::single(vec![Step::text("Hello, wörld! All done.")]))
            .await
            .unwrap();
    let reply = client(&server).chat(&request("say hi")).await.unwrap();
    assert_eq!(reply.text, "Hello, wörld! All done.");
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    // The mock counts 4 characters a token: input_tokens 6 / 4 for the
    // message, cache_read_input_tokens 15 / 4 for the system prompt;
    // output 23 / 4.
    assert_eq!(
        reply.usage,
        Usage {
            prompt_tokens: 1 + 3,
            completion_tokens: 5
        }
    );

    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("x-api-key"), Some(KEY));
    assert_eq!(sent[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(sent[0].header("authorization"), None);
    assert_eq!(
        sent[0].body,
        json!({
            "model": "claude-mock",
            "max_tokens": 256,
            "system": "You are a test.",
            "stream": true,
            "tools": [{
                "name": "shell",
                "description": "Runs a command.",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            }],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "say hi"}]}],
        })
    );
}

#[tokio::test]
async fn tool_use_is_reassembled_and_results_go_back_as_one_user_turn() {
    let script = Script::single(vec![
        Step::tools(vec![
            ScriptedCall::new(
                "shell",
                json!({"command": "cargo test --workspace", "timeout_secs": 600}),
            ),
            ScriptedCall::new("read_file", json!({"path": "src/lib.rs"})),
        ]),
        Step::text("ok"),
    ]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let first = client.chat(&request("run the tests")).await.unwrap();
    assert_eq!(first.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(first.text, "");
    assert_eq!(first.tool_calls.len(), 2);
    assert_eq!(first.tool_calls[0].id, "toolu_0_0");
    assert_eq!(first.tool_calls[0].name, "shell");
    // Streamed as an empty piece and three more; put back together verbatim.
    assert_eq!(
        first.tool_calls[0].arguments,
        json!({"command": "cargo test --workspace", "timeout_secs": 600}).to_string()
    );
    assert_eq!(
        first.tool_calls[1],
        ToolCall {
            id: "toolu_0_1".into(),
            name: "read_file".into(),
            arguments: r#"{"path":"src/lib.rs"}"#.into()
        }
    );
    assert!(first.usage.completion_tokens > 0);

    // The conversation goes back with the results and a nudge from the loop.
    let mut next = request("run the tests");
    next.messages.push(assistant_with(&first.tool_calls));
    next.messages
        .push(ChatMessage::tool_result("toolu_0_0", "test result: ok"));
    next.messages
        .push(ChatMessage::tool_result("toolu_0_1", "fn main() {}"));
    next.messages
        .push(ChatMessage::text(Role::User, "You have 3 turns left."));
    let second = client.chat(&next).await.unwrap();
    assert_eq!(second.text, "ok");

    let sent = server.bodies();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1]["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "run the tests"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_0_0", "name": "shell",
                 "input": {"command": "cargo test --workspace", "timeout_secs": 600}},
                {"type": "tool_use", "id": "toolu_0_1", "name": "read_file",
                 "input": {"path": "src/lib.rs"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0_0", "content": "test result: ok"},
                {"type": "tool_result", "tool_use_id": "toolu_0_1", "content": "fn main() {}"},
                {"type": "text", "text": "You have 3 turns left."},
            ]},
        ])
    );
}

#[tokio::test]
async fn multi_turn_conversation_passes_the_api_checks() {
    // Three model turns; the conversation also carries what the agent really
    // sends: the task and a compaction summary (two user messages), text
    // alongside tool calls, broken arguments, an empty tool output.
    let script = Script::single(vec![
        Step::tool_raw("shell", r#"{"command": "ls", "oops": }"#),
        Step::tool("shell", json!({"command": "pwd"})),
        Step::text("finished"),
    ]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let mut conversation = request("explore");
    conversation.messages.push(ChatMessage::text(
        Role::User,
        "Summary of the earlier part of this session: nothing yet.",
    ));

    let first = client.chat(&conversation).await.unwrap();
    assert_eq!(
        first.tool_calls[0].arguments,
        r#"{"command": "ls", "oops": }"#
    );
    conversation.messages.push(ChatMessage {
        content: "Listing.".into(),
        ..assistant_with(&first.tool_calls)
    });
    conversation.messages.push(ChatMessage::tool_result(
        &first.tool_calls[0].id,
        "error: the arguments are not valid JSON",
    ));

    let second = client.chat(&conversation).await.unwrap();
    conversation
        .messages
        .push(assistant_with(&second.tool_calls));
    conversation
        .messages
        .push(ChatMessage::tool_result(&second.tool_calls[0].id, ""));

    let third = client.chat(&conversation).await.unwrap();
    assert_eq!(third.text, "finished");

    let sent = server.bodies();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[2]["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "explore"},
                {"type": "text", "text": "Summary of the earlier part of this session: nothing yet."},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_0_0", "name": "shell",
                 "input": {"_raw": "{\"command\": \"ls\", \"oops\": }"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0_0",
                 "content": "error: the arguments are not valid JSON"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1_0", "name": "shell", "input": {"command": "pwd"}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1_0"}]},
        ])
    );
}

#[tokio::test]
async fn system_messages_are_joined_into_the_system_field() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::text("a"), Step::text("b")]))
        .await
        .unwrap();
    let client = client(&server);
    let mut two = request("go");
    two.messages
        .push(ChatMessage::text(Role::System, "Second instruction."));
    client.chat(&two).await.unwrap();
    let mut none = request("go");
    none.messages.remove(0);
    client.chat(&none).await.unwrap();
    let sent = server.bodies();
    assert_eq!(sent[0]["system"], "You are a test.\n\nSecond instruction.");
    assert!(sent[1].get("system").is_none(), "{}", sent[1]);
}

#[tokio::test]
async fn leading_assistant_message_and_summary_requests_pass_the_api_checks() {
    // The cut conversation below carries one assistant message: step 1.
    let script = Script::single(vec![Step::text("never"), Step::text("resumed")]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);

    // A conversation cut so that it starts with the model's turn.
    let call = ToolCall {
        id: "toolu_x".into(),
        name: "shell".into(),
        arguments: r#"{"command":"ls"}"#.into(),
    };
    let cut = ChatRequest {
        messages: vec![
            ChatMessage::text(Role::System, "sys"),
            assistant_with(std::slice::from_ref(&call)),
            ChatMessage::tool_result("toolu_x", "a.txt"),
        ],
        ..request("unused")
    };
    let reply = client.chat(&cut).await.unwrap();
    assert_eq!(reply.text, "resumed");
    let sent = &server.bodies()[0];
    assert_eq!(sent["messages"][0]["role"], "user");
    assert_eq!(sent["messages"][1]["role"], "assistant");

    // Compaction: no tools, the history's tool calls and results as text.
    let mut summarise = request("compact this");
    summarise.tools = Vec::new().into();
    summarise.max_tokens = None;
    summarise.messages.push(assistant_with(&[call]));
    summarise
        .messages
        .push(ChatMessage::tool_result("toolu_x", "a.txt"));
    summarise.messages.push(ChatMessage::text(
        Role::User,
        "Summarise the session above.",
    ));
    let reply = client.chat(&summarise).await.unwrap();
    assert_eq!(reply.text, "Summary of earlier work. [mock-turns:1]");
    let sent = &server.bodies()[1];
    assert!(sent.get("tools").is_none());
    assert_eq!(sent["max_tokens"], 8192, "the configured default");
    assert_eq!(
        sent["messages"][2]["content"][0]["text"],
        "[result of tool call toolu_x]\na.txt"
    );
}

#[tokio::test]
async fn rate_limit_with_retry_after_then_success() {
    let script = Script::single(vec![
        Step::text("after the wait").failing_first(vec![Failure::rate_limited(7)])
    ]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    match &error {
        ModelError::Status {
            status,
            body,
            retry_after,
        } => {
            assert_eq!(*status, 429);
            assert!(body.contains("rate_limit_error"), "{body}");
            assert_eq!(*retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        client.chat(&request("go")).await.unwrap().text,
        "after the wait"
    );
}

#[tokio::test]
async fn overloaded_is_retryable() {
    let script = Script::single(vec![
        Step::text("fine now").failing_first(vec![Failure::status(529)])
    ]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 529, body, retry_after: None }
            if body.contains("overloaded_error") && body.contains("Overloaded")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "fine now");
}

#[tokio::test]
async fn bad_request_is_not_retryable_and_says_why() {
    let too_long = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
    let script = Script::new()
        .with("default", vec![Step::status(400, too_long)])
        .with("short", vec![]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);

    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(&error, ModelError::Status { status: 400, .. }));
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("prompt is too long"), "{error}");

    // The mock's "script exhausted" answer is an Anthropic error too.
    let error = client
        .chat(&request(&script_marker("short")))
        .await
        .unwrap_err();
    assert!(!error.is_retryable());
    let text = error.to_string();
    assert!(text.contains("invalid_request_error"), "{text}");
    assert!(
        text.contains("mock script 'short' exhausted at step 0"),
        "{text}"
    );
}

#[tokio::test]
async fn missing_key_is_an_authentication_error() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::text("never")]))
        .await
        .unwrap();
    let client = AnthropicClient::new(AnthropicConfig {
        api_key: None,
        ..config(&server)
    })
    .unwrap();
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 401, body, .. } if body.contains("authentication_error")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.requests()[0].header("x-api-key"), None);
}

#[tokio::test]
async fn error_event_mid_stream() {
    let script = Script::new()
        .with(
            "default",
            vec![
                Step::text("whole").failing_first(vec![Failure::stream_error(
                    "overloaded_error",
                    "Overloaded",
                )]),
            ],
        )
        .with(
            "invalid",
            vec![
                Step::text("never").failing_first(vec![Failure::stream_error(
                    "invalid_request_error",
                    "bad tool schema",
                )]),
            ],
        );
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 529, body, .. } if body.contains("Overloaded")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");

    let error = client
        .chat(&request(&script_marker("invalid")))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 400, body, .. } if body.contains("bad tool schema")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn cut_stream_is_truncated() {
    let script = Script::single(vec![
        Step::text("whole").failing_first(vec![Failure::Truncate])
    ]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Truncated(message) if message.contains("message_stop")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn connection_reset_is_a_connection_error() {
    let script = Script::single(vec![Step::text("whole").failing_first(vec![Failure::Reset])]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(error, ModelError::Connection(_)), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn no_response_hits_the_first_byte_timeout() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::hang()]))
        .await
        .unwrap();
    let client = AnthropicClient::new(AnthropicConfig {
        first_byte_timeout: Duration::from_millis(300),
        ..config(&server)
    })
    .unwrap();
    let started = Instant::now();
    let error = client.chat(&request("go")).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, ModelError::Timeout(_)), "{error:?}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn stalled_stream_hits_the_idle_timeout() {
    let script = Script::single(vec![Step::text("whole").failing_first(vec![Failure::Stall])]);
    let server = MockAnthropicServer::start(script).await.unwrap();
    let client = AnthropicClient::new(AnthropicConfig {
        idle_timeout: Duration::from_millis(300),
        ..config(&server)
    })
    .unwrap();
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(error, ModelError::Timeout(_)), "{error:?}");
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn non_streaming_reply_is_accepted() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::tool(
        "shell",
        json!({"command": "pwd"}),
    )]))
    .await
    .unwrap();
    let reply = client(&server)
        .chat(&request(&format!("go {NO_STREAM_MARKER}")))
        .await
        .unwrap();
    assert_eq!(
        reply.tool_calls,
        vec![ToolCall {
            id: "toolu_0_0".into(),
            name: "shell".into(),
            arguments: r#"{"command":"pwd"}"#.into()
        }]
    );
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert!(reply.usage.prompt_tokens > 0);
}

#[tokio::test]
async fn debug_redacts_the_key() {
    let server = MockAnthropicServer::start(Script::new()).await.unwrap();
    let config = config(&server);
    let client = AnthropicClient::new(config.clone()).unwrap();
    for text in [format!("{config:?}"), format!("{client:?}")] {
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}

#[tokio::test]
async fn many_sessions_at_once() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::finish("done")]))
        .await
        .unwrap();
    let client = std::sync::Arc::new(client(&server));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    let reply = client
                        .chat(&request(&format!("session {i}")))
                        .await
                        .unwrap();
                    assert_eq!(reply.tool_calls[0].arguments, r#"{"answer":"done"}"#);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(server.request_count(), 60);
}
