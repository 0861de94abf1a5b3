//! `BedrockClient` against the scripted Bedrock mock over loopback HTTP,
//! with static test credentials and an explicit region and endpoint. The
//! requests go through the real AWS SDK (SigV4 signing, restJson1, binary
//! event streams); the mock checks every request the way the Converse API
//! does (roles alternating from `user`, no blank text, tool results right
//! after their tool use, `toolConfig` with tool blocks...), so a mapping
//! mistake shows up as a `ValidationException`.

// Helpers outside #[test] functions may unwrap too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime as sdk;
use flotilla_models::{
    BedrockClient, BedrockConfig, ChatMessage, ChatRequest, ModelClient, ModelError, Role,
    ToolCall, ToolSpec, Usage,
};
use flotilla_testkit::{script_marker, Failure, MockBedrockServer, Script, ScriptedCall, Step};
use serde_json::{json, Value};

const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const REGION: &str = "us-west-2";
const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn config(server: &MockBedrockServer) -> BedrockConfig {
    BedrockConfig {
        region: Some(REGION.into()),
        endpoint_url: Some(server.endpoint_url()),
        ..BedrockConfig::default()
    }
}

fn client_with(config: BedrockConfig) -> BedrockClient {
    BedrockClient::with_static_credentials(config, ACCESS_KEY, SECRET_KEY).unwrap()
}

fn client(server: &MockBedrockServer) -> BedrockClient {
    client_with(config(server))
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
        model: MODEL.into(),
        messages: vec![
            ChatMessage::text(Role::System, "You are a test."),
            ChatMessage::text(Role::User, task),
        ],
        tools: vec![shell_tool()].into(),
        max_tokens: Some(256),
    }
}

fn assistant_with(text: &str, calls: &[ToolCall]) -> ChatMessage {
    ChatMessage {
        role: Role::Assistant,
        content: text.into(),
        tool_calls: calls.to_vec(),
        tool_call_id: None,
    }
}

#[track_caller]
fn assert_secret_free(text: &str) {
    assert!(!text.contains(SECRET_KEY), "secret key in {text}");
    assert!(!text.contains(ACCESS_KEY), "access key in {text}");
}

#[tokio::test]
async fn text_reply_with_usage_over_a_signed_request() {
    let server =
        MockBedrockServer::start(Script::single(vec![Step::text("Hello, wörld! All done.")]))
            .await
            .unwrap();
    let client = client(&server);
    let reply = client.chat(&request("say hi")).await.unwrap();
    assert_eq!(reply.text, "Hello, wörld! All done.");
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    // The mock counts 4 characters a token: inputTokens 6 / 4 for the
    // message, cacheReadInputTokens 15 / 4 for the system prompt; output
    // 23 / 4.
    assert_eq!(
        reply.usage,
        Usage {
            prompt_tokens: 1 + 3,
            completion_tokens: 5
        }
    );

    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    // The model id is a URI label: its `:` is percent-encoded.
    assert_eq!(
        sent[0].path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
    );
    let authorization = sent[0].header("authorization").unwrap();
    assert!(
        authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")),
        "{authorization}"
    );
    assert!(
        authorization.contains(&format!("/{REGION}/bedrock/aws4_request")),
        "{authorization}"
    );
    assert!(authorization.contains("Signature="), "{authorization}");
    assert!(!authorization.contains(SECRET_KEY));
    assert!(sent[0].header("x-amz-date").is_some());
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].body,
        json!({
            "system": [{"text": "You are a test."}],
            "messages": [{"role": "user", "content": [{"text": "say hi"}]}],
            "inferenceConfig": {"maxTokens": 256},
            "toolConfig": {"tools": [{"toolSpec": {
                "name": "shell",
                "description": "Runs a command.",
                "inputSchema": {"json": {"type": "object", "properties": {"command": {"type": "string"}}}},
            }}]},
        })
    );
    assert_secret_free(&format!("{client:?}"));
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
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client(&server);

    let mut chat = request("run the tests");
    let reply = client.chat(&chat).await.unwrap();
    assert_eq!(reply.text, "");
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        reply.tool_calls,
        vec![
            ToolCall {
                id: "tooluse_mock_0_0".into(),
                name: "shell".into(),
                arguments: json!({"command": "cargo test --workspace", "timeout_secs": 600})
                    .to_string(),
            },
            ToolCall {
                id: "tooluse_mock_0_1".into(),
                name: "read_file".into(),
                arguments: json!({"path": "src/lib.rs"}).to_string(),
            },
        ]
    );

    // The results come back in the other order, with a user note between
    // them and an empty one; they become one user turn, results first.
    chat.messages
        .push(assistant_with("Running both.", &reply.tool_calls));
    chat.messages
        .push(ChatMessage::tool_result("tooluse_mock_0_1", ""));
    chat.messages
        .push(ChatMessage::text(Role::User, "3 turns left"));
    chat.messages.push(ChatMessage::tool_result(
        "tooluse_mock_0_0",
        "test result: ok",
    ));
    let reply = client.chat(&chat).await.unwrap();
    assert_eq!(reply.text, "ok");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));

    let bodies = server.bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[1]["messages"],
        json!([
            {"role": "user", "content": [{"text": "run the tests"}]},
            {"role": "assistant", "content": [
                {"text": "Running both."},
                {"toolUse": {"toolUseId": "tooluse_mock_0_0", "name": "shell",
                    "input": {"command": "cargo test --workspace", "timeout_secs": 600}}},
                {"toolUse": {"toolUseId": "tooluse_mock_0_1", "name": "read_file",
                    "input": {"path": "src/lib.rs"}}},
            ]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "tooluse_mock_0_0", "content": [{"text": "test result: ok"}]}},
                {"toolResult": {"toolUseId": "tooluse_mock_0_1", "content": [{"text": "(no output)"}]}},
                {"text": "3 turns left"},
            ]},
        ])
    );
}

#[tokio::test]
async fn broken_history_is_repaired_and_compaction_writes_tools_as_text() {
    let server = MockBedrockServer::start(Script::single(vec![
        Step::text("unused"),
        Step::text("repaired"),
    ]))
    .await
    .unwrap();
    let client = client(&server);
    // Starts with the assistant; a call with a broken argument text and no
    // result; a stray result; ids from another provider.
    let calls = [ToolCall {
        id: "functions.shell:0".into(),
        name: "shell".into(),
        arguments: "{\"command\": ".into(),
    }];
    let broken = ChatRequest {
        model: MODEL.into(),
        messages: vec![
            assistant_with("", &calls),
            ChatMessage::tool_result("elsewhere", "stray"),
        ],
        tools: vec![shell_tool()].into(),
        max_tokens: None,
    };
    let reply = client.chat(&broken).await.unwrap();
    assert_eq!(reply.text, "repaired");
    let body = &server.bodies()[0];
    assert_eq!(body["inferenceConfig"]["maxTokens"], 8192);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"text": "(continued)"}]},
            {"role": "assistant", "content": [{"toolUse": {
                "toolUseId": "functions_shell_0", "name": "shell",
                "input": {"_raw": "{\"command\": "}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "functions_shell_0",
                    "content": [{"text": "No result was recorded for this tool call."}]}},
                {"text": "[result of tool call elsewhere]\nstray"},
            ]},
        ])
    );

    // A compaction request (no tools) with the same history.
    let mut compaction = broken.clone();
    compaction.tools = Vec::new().into();
    compaction
        .messages
        .push(ChatMessage::text(Role::User, "Summarise."));
    let reply = client.chat(&compaction).await.unwrap();
    assert!(
        reply.text.starts_with("Summary of earlier work."),
        "{}",
        reply.text
    );
    let body = &server.bodies()[1];
    assert!(body.get("toolConfig").is_none());
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": [
            {"text": "[tool call functions.shell:0: shell {\"command\": ]"}]})
    );
}

#[tokio::test]
async fn system_prompts_are_system_blocks() {
    let server = MockBedrockServer::start(Script::single(vec![Step::text("a"), Step::text("b")]))
        .await
        .unwrap();
    let client = client(&server);
    let mut chat = request("task");
    chat.messages
        .insert(1, ChatMessage::text(Role::System, "Second rule."));
    chat.messages.push(ChatMessage::text(Role::System, " "));
    client.chat(&chat).await.unwrap();
    assert_eq!(
        server.bodies()[0]["system"],
        json!([{"text": "You are a test."}, {"text": "Second rule."}])
    );

    let plain = ChatRequest {
        messages: vec![
            ChatMessage::text(Role::User, "task"),
            assistant_with("a", &[]),
            ChatMessage::text(Role::User, "go on"),
        ],
        ..request("x")
    };
    assert_eq!(client.chat(&plain).await.unwrap().text, "b");
    assert!(server.bodies()[1].get("system").is_none());
}

#[tokio::test]
async fn throttling_is_a_retryable_429_and_the_sdk_does_not_retry() {
    let script = Script::single(vec![
        Step::text("finally").failing_first(vec![Failure::rate_limited(3)])
    ]);
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("x")).await.unwrap_err();
    match &error {
        ModelError::Status {
            status: 429,
            body,
            retry_after,
        } => {
            assert!(
                body.starts_with("ThrottlingException: Too many requests"),
                "{body}"
            );
            assert!(body.contains("request id"), "{body}");
            assert_eq!(*retry_after, Some(Duration::from_secs(3)));
        }
        other => panic!("{other:?}"),
    }
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(server.request_count(), 1, "the SDK must not retry");
    assert_secret_free(&format!("{error} {error:?}"));
    // The loop's next attempt gets through.
    assert_eq!(client.chat(&request("x")).await.unwrap().text, "finally");
}

#[tokio::test]
async fn service_unavailable_is_retryable() {
    let script = Script::single(vec![
        Step::text("up").failing_first(vec![Failure::status(503), Failure::status(500)])
    ]);
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("x")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 503, body, .. }
            if body.starts_with("ServiceUnavailableException")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    let error = client.chat(&request("x")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 500, body, .. }
            if body.starts_with("InternalServerException")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(server.request_count(), 2);
    assert_eq!(client.chat(&request("x")).await.unwrap().text, "up");
}

#[tokio::test]
async fn validation_errors_are_not_retryable_and_carry_the_message() {
    // No script named `missing`: the mock answers a ValidationException
    // naming it, as for any request it refuses.
    let server = MockBedrockServer::start(Script::single(vec![Step::status(403, "")]))
        .await
        .unwrap();
    let client = client(&server);
    let error = client
        .chat(&request(&format!("go {}", script_marker("missing"))))
        .await
        .unwrap_err();
    match &error {
        ModelError::Status {
            status: 400, body, ..
        } => {
            assert!(
                body.starts_with("ValidationException: mock script 'missing' not found"),
                "{body}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!error.is_retryable());
    let error = client.chat(&request("x")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Status { status: 403, body, .. }
            if body.starts_with("AccessDeniedException")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn exception_events_mid_stream_map_to_statuses() {
    let script = Script::single(vec![Step::text("after").failing_first(vec![
        Failure::stream_error("throttlingException", "Too many tokens, please wait."),
        Failure::stream_error("modelStreamErrorException", "The model stream broke."),
        Failure::stream_error("validationException", "Input is too long."),
        Failure::stream_error("internalServerException", "Oops."),
    ])]);
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client(&server);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let error = client.chat(&request("x")).await.unwrap_err();
        let ModelError::Status { status, body, .. } = &error else {
            panic!("{error:?}")
        };
        outcomes.push((*status, error.is_retryable(), body.clone()));
    }
    assert_eq!(outcomes[0].0, 429);
    assert!(outcomes[0].1);
    assert!(
        outcomes[0].2.contains("Too many tokens"),
        "{:?}",
        outcomes[0]
    );
    assert_eq!(outcomes[1].0, 502);
    assert!(outcomes[1].1);
    assert!(
        outcomes[1].2.contains("The model stream broke."),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(outcomes[2].0, 400);
    assert!(!outcomes[2].1);
    assert!(
        outcomes[2].2.contains("Input is too long."),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(outcomes[3].0, 500);
    assert!(outcomes[3].1);
    assert_eq!(client.chat(&request("x")).await.unwrap().text, "after");
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_truncated() {
    let script = Script::single(vec![
        Step::text("whole").failing_first(vec![Failure::Truncate])
    ]);
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client(&server);
    // The mock sends two events and half of a third, then closes the
    // connection.
    let error = client.chat(&request("x")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Truncated(message) if message.contains("after 2 events") && message.contains("broke")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("x")).await.unwrap().text, "whole");
}

#[tokio::test]
async fn first_byte_and_idle_timeouts() {
    let script = Script::new()
        .with("slow", vec![Step::text("late").with_delay_ms(5_000)])
        .with(
            "stall",
            vec![Step::text("never").failing_first(vec![Failure::Stall])],
        );
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client_with(BedrockConfig {
        first_byte_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..config(&server)
    });
    let started = Instant::now();
    let error = client
        .chat(&request(&script_marker("slow")))
        .await
        .unwrap_err();
    assert!(matches!(error, ModelError::Timeout(_)), "{error:?}");
    assert!(error.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let error = client
        .chat(&request(&script_marker("stall")))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ModelError::Timeout(message) if message.contains("no stream event")),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn refused_and_reset_connections_are_connection_errors() {
    let script = Script::single(vec![Step::text("fine").failing_first(vec![Failure::Reset])]);
    let server = MockBedrockServer::start(script).await.unwrap();
    let client = client(&server);
    let error = client.chat(&request("x")).await.unwrap_err();
    assert!(matches!(error, ModelError::Connection(_)), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(client.chat(&request("x")).await.unwrap().text, "fine");

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = client_with(BedrockConfig {
        endpoint_url: Some(format!("http://{closed}")),
        ..config(&server)
    });
    let error = client.chat(&request("x")).await.unwrap_err();
    assert!(matches!(error, ModelError::Connection(_)), "{error:?}");
    assert_secret_free(&format!("{error} {error:?}"));
}

/// The mock's non-streaming `Converse` and its errors, read by the SDK's own
/// parsers.
#[tokio::test]
async fn the_mock_converse_operation_speaks_the_sdk_protocol() {
    let script = Script::single(vec![Step::tools(vec![ScriptedCall::new(
        "shell",
        json!({"command": "ls"}),
    )])
    .failing_first(vec![Failure::rate_limited(1)])]);
    let server = MockBedrockServer::start(script).await.unwrap();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .region(sdk::config::Region::new(REGION))
        .endpoint_url(server.endpoint_url())
        .credentials_provider(sdk::config::Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "test",
        ))
        .retry_config(sdk::config::retry::RetryConfig::disabled())
        .http_client(http)
        .build();
    let client = sdk::Client::from_conf(conf);
    let tool = sdk::types::Tool::ToolSpec(
        sdk::types::ToolSpecification::builder()
            .name("shell")
            .input_schema(sdk::types::ToolInputSchema::Json(
                aws_smithy_types::Document::Object(
                    [(
                        "type".to_owned(),
                        aws_smithy_types::Document::String("object".into()),
                    )]
                    .into(),
                ),
            ))
            .build()
            .unwrap(),
    );
    let converse = || {
        client
            .converse()
            .model_id(MODEL)
            .messages(
                sdk::types::Message::builder()
                    .role(sdk::types::ConversationRole::User)
                    .content(sdk::types::ContentBlock::Text("go".into()))
                    .build()
                    .unwrap(),
            )
            .tool_config(
                sdk::types::ToolConfiguration::builder()
                    .tools(tool.clone())
                    .build()
                    .unwrap(),
            )
            .send()
    };
    let error = converse().await.unwrap_err().into_service_error();
    assert!(error.is_throttling_exception(), "{error:?}");
    let output = converse().await.unwrap();
    assert_eq!(output.stop_reason, sdk::types::StopReason::ToolUse);
    let Some(sdk::types::ConverseOutput::Message(message)) = output.output else {
        panic!("no message")
    };
    let sdk::types::ContentBlock::ToolUse(call) = &message.content[0] else {
        panic!("{:?}", message.content)
    };
    assert_eq!(call.name, "shell");
    assert_eq!(call.tool_use_id, "tooluse_mock_0_0");
    let input: Value = match &call.input {
        aws_smithy_types::Document::Object(map) => json!({
            "command": map["command"].as_string().unwrap(),
        }),
        other => panic!("{other:?}"),
    };
    assert_eq!(input, json!({"command": "ls"}));
    assert!(output.usage.is_some());
    assert_eq!(
        server.requests()[1].path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
}
