//! `MockBedrockServer` over HTTP: what it checks before playing a script,
//! what it records, what its frames and errors look like.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_smithy_eventstream::frame::read_message_from;
use flotilla_testkit::{MockBedrockServer, Script, ScriptedCall, Step};
use serde_json::{json, Value};

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, \
    SignedHeaders=content-type;host;x-amz-date, \
    Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn body(text: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "toolConfig": {"tools": [{"toolSpec": {"name": "shell", "inputSchema": {"json": {"type": "object"}}}}]},
    })
}

async fn post(
    server: &MockBedrockServer,
    path: &str,
    signed: bool,
    body: String,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", server.endpoint_url()))
        .header("content-type", "application/json")
        .body(body);
    if signed {
        request = request
            .header("authorization", AUTH)
            .header("x-amz-date", "20250101T000000Z");
    }
    request.send().await.unwrap()
}

/// The headers and JSON payload of each frame of an event-stream body.
fn frames(mut bytes: &[u8]) -> Vec<(Vec<(String, String)>, Value)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let message = read_message_from(&mut bytes).unwrap();
        let headers = message
            .headers()
            .iter()
            .map(|h| {
                (
                    h.name().as_str().to_owned(),
                    h.value().as_string().unwrap().as_str().to_owned(),
                )
            })
            .collect();
        out.push((headers, serde_json::from_slice(message.payload()).unwrap()));
    }
    out
}

#[tokio::test]
async fn refuses_like_the_service_and_records_everything() {
    let server = MockBedrockServer::start(Script::single(vec![Step::text("hi there")]))
        .await
        .unwrap();
    let path = "/model/m%3A1/converse-stream";

    let response = post(&server, path, false, body("x").to_string()).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["x-amzn-errortype"].to_str().unwrap(),
        "MissingAuthenticationTokenException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    );

    let response = post(&server, path, true, "{not json".into()).await;
    assert_eq!(response.status(), 400);
    assert!(response.headers()["x-amzn-errortype"]
        .to_str()
        .unwrap()
        .starts_with("ValidationException:"));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["__type"], "com.amazon.bedrock#ValidationException");
    assert!(error["message"].as_str().unwrap().contains("Malformed"));

    let mut blank = body("x");
    blank["messages"][0]["content"][0]["text"] = json!(" ");
    let response = post(&server, path, true, blank.to_string()).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("is blank"),
        "{error}"
    );

    let response = post(&server, path, true, body("hello").to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    assert!(response.headers().contains_key("x-amzn-requestid"));
    let frames = frames(&response.bytes().await.unwrap());
    let kinds: Vec<&str> = frames
        .iter()
        .map(|(headers, _)| {
            assert!(headers.contains(&(":message-type".into(), "event".into())));
            assert!(headers.contains(&(":content-type".into(), "application/json".into())));
            headers
                .iter()
                .find(|(name, _)| name == ":event-type")
                .map(|(_, value)| value.as_str())
                .unwrap()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    let text: String = frames[1..4]
        .iter()
        .map(|(_, payload)| payload["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "hi there");
    assert_eq!(frames[5].1["stopReason"], "end_turn");
    assert!(frames[6].1["usage"]["inputTokens"].is_u64());

    let recorded = server.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].path, path);
    assert_eq!(recorded[0].header("authorization"), None);
    assert_eq!(recorded[3].header("Authorization"), Some(AUTH));
    assert_eq!(recorded[1].body, json!("{not json"));
    assert_eq!(recorded[3].body, body("hello"));
}

#[tokio::test]
async fn tool_calls_stream_and_converse_answers_json() {
    let server = MockBedrockServer::start(Script::single(vec![Step::tools(vec![
        ScriptedCall::new("shell", json!({"command": "ls -la"})),
        ScriptedCall::raw("shell", "{broken"),
    ])]))
    .await
    .unwrap();
    let response = post(
        &server,
        "/model/m/converse-stream",
        true,
        body("go").to_string(),
    )
    .await;
    let frames = frames(&response.bytes().await.unwrap());
    let starts: Vec<&Value> = frames
        .iter()
        .filter_map(|(_, payload)| payload.pointer("/start/toolUse"))
        .collect();
    assert_eq!(
        starts,
        [
            &json!({"toolUseId": "tooluse_mock_0_0", "name": "shell"}),
            &json!({"toolUseId": "tooluse_mock_0_1", "name": "shell"}),
        ]
    );
    let input = |index: u64| -> String {
        frames
            .iter()
            .filter(|(_, payload)| payload["contentBlockIndex"] == index)
            .filter_map(|(_, payload)| payload.pointer("/delta/toolUse/input")?.as_str())
            .collect()
    };
    assert_eq!(input(0), json!({"command": "ls -la"}).to_string());
    assert_eq!(input(1), "{broken");

    let response = post(&server, "/model/m/converse", true, body("go").to_string()).await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["stopReason"], "tool_use");
    assert_eq!(
        reply["output"]["message"]["content"][0]["toolUse"]["input"],
        json!({"command": "ls -la"})
    );
}
