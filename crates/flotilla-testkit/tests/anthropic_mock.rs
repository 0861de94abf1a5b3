//! `MockAnthropicServer` over HTTP: what it checks before playing a script,
//! what it records, what its events look like.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_testkit::{MockAnthropicServer, Script, Step};
use serde_json::{json, Value};

fn body(messages: Value) -> Value {
    json!({
        "model": "m",
        "max_tokens": 16,
        "tools": [{"name": "shell", "input_schema": {"type": "object"}}],
        "messages": messages,
    })
}

async fn post(
    server: &MockAnthropicServer,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base_url()))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

const HEADERS: &[(&str, &str)] = &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")];

#[tokio::test]
async fn refuses_like_the_api_and_records_everything() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::text("hi there")]))
        .await
        .unwrap();
    let valid = body(json!([{"role": "user", "content": "hi"}])).to_string();

    let (status, text) = post(
        &server,
        &[("anthropic-version", "2023-06-01")],
        valid.clone(),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("authentication_error"), "{text}");

    let (status, text) = post(&server, &[("x-api-key", "k")], valid.clone()).await;
    assert_eq!(status, 400);
    assert!(text.contains("anthropic-version"), "{text}");

    let (status, text) = post(&server, HEADERS, "{not json".into()).await;
    assert_eq!(status, 400);
    assert!(text.contains("invalid_request_error"), "{text}");

    let twice = body(json!([
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]));
    let (status, text) = post(&server, HEADERS, twice.to_string()).await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("roles must alternate"),
        "{text}"
    );

    let stray = body(json!([
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "?"}]},
    ]));
    let (status, text) = post(&server, HEADERS, stray.to_string()).await;
    assert_eq!(status, 400);
    assert!(text.contains("unexpected `tool_use_id`"), "{text}");

    let (status, text) = post(&server, HEADERS, valid).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"hi there\"") || text.contains("event: message_stop"),
        "{text}"
    );

    let recorded = server.requests();
    assert_eq!(recorded.len(), 6);
    assert_eq!(recorded[0].header("x-api-key"), None);
    assert_eq!(recorded[0].header("Anthropic-Version"), Some("2023-06-01"));
    assert_eq!(recorded[2].body, Value::String("{not json".into()));
    assert_eq!(recorded[5].body["messages"][0]["content"], "hi");
    assert_eq!(server.bodies().len(), 6);
}

#[tokio::test]
async fn streams_real_event_sequences() {
    let server = MockAnthropicServer::start(Script::single(vec![Step::tool(
        "shell",
        json!({"command": "ls -la"}),
    )]))
    .await
    .unwrap();
    let mut request = body(json!([{"role": "user", "content": "go"}]));
    request["stream"] = json!(true);
    let (status, text) = post(&server, HEADERS, request.to_string()).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let partial_json: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .filter_map(|event| event["delta"]["partial_json"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(partial_json, r#"{"command":"ls -la"}"#);
    assert!(text.contains(r#""stop_reason":"tool_use""#), "{text}");
}
