//! `OpenAiClient` against the scripted mock model server over loopback HTTP.

// Helpers outside #[test] functions may unwrap too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use flotilla_models::{
    ChatMessage, ChatRequest, ModelClient, ModelError, OpenAiClient, OpenAiConfig, Role, ToolCall,
    ToolSpec,
};
use flotilla_testkit::{
    script_marker, Failure, MockModelServer, Script, ScriptedCall, Step, NO_STREAM_MARKER,
};
use serde_json::json;

fn client(server: &MockModelServer) -> OpenAiClient {
    OpenAiClient::new(OpenAiConfig {
        base_url: server.base_url(),
        api_key: Some("sk-test".into()),
        ..OpenAiConfig::default()
    })
    .unwrap()
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
        model: "mock-model".into(),
        messages: vec![
            ChatMessage::text(Role::System, "You are a test."),
            ChatMessage::text(Role::User, task),
        ],
        tools: vec![shell_tool()].into(),
        max_tokens: Some(256),
    }
}

#[tokio::test]
async fn text_reply_with_usage() {
    let server =
        MockModelServer::start(Script::single(vec![Step::text("Hello, wörld! All done.")]))
            .await
            .unwrap();
    let reply = client(&server).chat(&request("say hi")).await.unwrap();
    assert_eq!(reply.text, "Hello, wörld! All done.");
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    // The mock counts 4 characters a token: (15 + 6) / 4 and 23 / 4.
    assert_eq!(reply.usage.prompt_tokens, 5);
    assert_eq!(reply.usage.completion_tokens, 5);
}

#[tokio::test]
async fn streamed_tool_calls_are_reassembled_and_the_request_is_in_openai_format() {
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
    let server = MockModelServer::start(script).await.unwrap();
    let client = client(&server);
    let first = client.chat(&request("run the tests")).await.unwrap();
    assert_eq!(first.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(first.text, "");
    assert_eq!(first.tool_calls.len(), 2);
    assert_eq!(first.tool_calls[0].id, "call_0_0");
    assert_eq!(first.tool_calls[0].name, "shell");
    let arguments: serde_json::Value =
        serde_json::from_str(&first.tool_calls[0].arguments).unwrap();
    assert_eq!(
        arguments,
        json!({"command": "cargo test --workspace", "timeout_secs": 600})
    );
    assert_eq!(first.tool_calls[1].id, "call_0_1");
    assert_eq!(first.tool_calls[1].arguments, r#"{"path":"src/lib.rs"}"#);

    // Send the conversation back with the tool results.
    let mut next = request("run the tests");
    next.messages.push(ChatMessage {
        role: Role::Assistant,
        content: String::new(),
        tool_calls: first.tool_calls.clone(),
        tool_call_id: None,
    });
    next.messages
        .push(ChatMessage::tool_result("call_0_0", "test result: ok"));
    next.messages
        .push(ChatMessage::tool_result("call_0_1", "fn main() {}"));
    let second = client.chat(&next).await.unwrap();
    assert_eq!(second.text, "ok");

    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["model"], "mock-model");
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent[0]["max_tokens"], 256);
    assert_eq!(
        sent[0]["tools"],
        json!([{"type": "function", "function": {
            "name": "shell",
            "description": "Runs a command.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        }}])
    );
    assert_eq!(
        sent[1]["messages"],
        json!([
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": "run the tests"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0_0", "type": "function", "function": {"name": "shell", "arguments": first.tool_calls[0].arguments}},
                {"id": "call_0_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"src/lib.rs\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_0_0", "content": "test result: ok"},
            {"role": "tool", "tool_call_id": "call_0_1", "content": "fn main() {}"},
        ])
    );
}

#[tokio::test]
async fn malformed_arguments_are_kept_verbatim() {
    let raw = r#"{"command": "ls", "oops": }"#;
    let server = MockModelServer::start(Script::single(vec![Step::tool_raw("shell", raw)]))
        .await
        .unwrap();
    let reply = client(&server).chat(&request("go")).await.unwrap();
    assert_eq!(
        reply.tool_calls,
        vec![ToolCall {
            id: "call_0_0".into(),
            name: "shell".into(),
            arguments: raw.into()
        }]
    );
}

#[tokio::test]
async fn rate_limit_with_retry_after_then_success() {
    let script = Script::single(vec![Step::text("after the wait").failing_first(vec![
        Failure::Status {
            status: 429,
            retry_after_secs: Some(7),
            body: r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#.into(),
        },
    ])]);
    let server = MockModelServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    match &error {
        ModelError::Status {
            status,
            body,
            retry_after,
        } => {
            assert_eq!(*status, 429);
            assert!(body.contains("Rate limit reached"), "{body}");
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
async fn server_errors_are_retryable_and_bad_requests_are_not() {
    let long_body = "x".repeat(10_000);
    let script = Script::new()
        .with("default", vec![Step::status(500, "internal kaboom")])
        .with("big", vec![Step::status(502, &long_body)])
        .with("short", vec![]);
    let server = MockModelServer::start(script).await.unwrap();
    let client = client(&server);

    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 500, body, retry_after: None } if body == "internal kaboom"),
        "{error:?}"
    );
    assert!(error.is_retryable());

    let error = client
        .chat(&request(&script_marker("big")))
        .await
        .unwrap_err();
    let ModelError::Status {
        status: 502, body, ..
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(body.len(), 2048, "only the start of the body is kept");

    // The mock's "script exhausted" answer: HTTP 400, not retryable, says why.
    let error = client
        .chat(&request(&script_marker("short")))
        .await
        .unwrap_err();
    assert!(!error.is_retryable());
    assert!(
        error
            .to_string()
            .contains("mock script 'short' exhausted at step 0"),
        "{error}"
    );
}

#[tokio::test]
async fn truncated_stream_is_truncated() {
    let script = Script::single(vec![
        Step::text("whole").failing_first(vec![Failure::Truncate])
    ]);
    let server = MockModelServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(error, ModelError::Truncated(_)), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn error_chunk_mid_stream_is_a_retryable_status() {
    let script = Script::single(vec![Step::text("whole").failing_first(vec![
        Failure::stream_error("server_error", "The server had an error"),
    ])]);
    let server = MockModelServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 500, body, .. } if body.contains("The server had an error")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn connection_reset_is_a_connection_error() {
    let script = Script::single(vec![Step::text("whole").failing_first(vec![Failure::Reset])]);
    let server = MockModelServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(error, ModelError::Connection(_)), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn refused_connection_is_a_connection_error() {
    let server = MockModelServer::start(Script::new()).await.unwrap();
    let base_url = server.base_url();
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = OpenAiClient::new(OpenAiConfig {
        base_url,
        ..OpenAiConfig::default()
    })
    .unwrap();
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(error, ModelError::Connection(_)), "{error:?}");
}

#[tokio::test]
async fn stalled_stream_hits_the_idle_timeout() {
    let script = Script::single(vec![Step::text("whole").failing_first(vec![Failure::Stall])]);
    let server = MockModelServer::start(script).await.unwrap();
    let client = OpenAiClient::new(OpenAiConfig {
        base_url: server.base_url(),
        idle_timeout: Duration::from_millis(300),
        ..OpenAiConfig::default()
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
    assert_eq!(client.chat(&request("go")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn no_response_hits_the_first_byte_timeout() {
    let server = MockModelServer::start(Script::single(vec![Step::hang()]))
        .await
        .unwrap();
    let client = OpenAiClient::new(OpenAiConfig {
        base_url: server.base_url(),
        first_byte_timeout: Duration::from_millis(300),
        ..OpenAiConfig::default()
    })
    .unwrap();
    let error = client.chat(&request("go")).await.unwrap_err();
    assert!(matches!(error, ModelError::Timeout(_)), "{error:?}");
}

#[tokio::test]
async fn non_streaming_reply_is_accepted() {
    let server = MockModelServer::start(Script::single(vec![Step::tool_raw(
        "shell",
        "{\"command\":\"pwd\"}",
    )]))
    .await
    .unwrap();
    let reply = client(&server)
        .chat(&request(&format!("go {NO_STREAM_MARKER}")))
        .await
        .unwrap();
    assert_eq!(reply.tool_calls[0].name, "shell");
    assert_eq!(reply.tool_calls[0].arguments, "{\"command\":\"pwd\"}");
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert!(reply.usage.prompt_tokens > 0);
}

#[tokio::test]
async fn summary_request_without_tools() {
    let server = MockModelServer::start(Script::single(vec![]))
        .await
        .unwrap();
    let mut summarise = request("compact this");
    summarise.tools = Vec::new().into();
    summarise
        .messages
        .push(ChatMessage::text(Role::Assistant, "did a thing"));
    let reply = client(&server).chat(&summarise).await.unwrap();
    assert_eq!(reply.text, "Summary of earlier work. [mock-turns:1]");
    assert!(
        server.requests()[0].get("tools").is_none(),
        "no empty tools list is sent"
    );
}

#[tokio::test]
async fn many_sessions_at_once() {
    let server = MockModelServer::start(Script::single(vec![Step::finish("done")]))
        .await
        .unwrap();
    let client = std::sync::Arc::new(client(&server));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..4 {
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
    assert_eq!(server.request_count(), 200);
}
