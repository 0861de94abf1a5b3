//! The mock model server over real loopback HTTP.

// Helpers outside #[test] functions may unwrap too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use flotilla_testkit::{
    script_marker, turns_marker, Failure, MockModelServer, Script, ScriptedCall, Step,
};
use serde_json::{json, Value};

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "shell", "description": "run", "parameters": {"type": "object"}}}])
}

fn request(messages: Value, stream: bool) -> Value {
    json!({
        "model": "test-model",
        "messages": messages,
        "tools": tools(),
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn post(server: &MockModelServer, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The JSON chunks of an SSE body, and whether it ended with `[DONE]`.
fn sse_chunks(body: &str) -> (Vec<Value>, bool) {
    let mut chunks = Vec::new();
    let mut done = false;
    for event in body.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .expect("every event is one data line");
        if data == "[DONE]" {
            done = true;
        } else {
            assert!(!done, "data after [DONE]");
            chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    (chunks, done)
}

#[tokio::test]
async fn streams_text_and_tool_calls_in_the_openai_chunk_format() {
    let script = Script::single(vec![
        Step::tools(vec![
            ScriptedCall::new("shell", json!({"command": "ls -la"})),
            ScriptedCall::raw("read", "{broken"),
        ]),
        Step::text("All done here."),
    ]);
    let server = MockModelServer::start(script).await.unwrap();

    let response = post(
        &server,
        &request(json!([{"role": "user", "content": "go"}]), true),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (chunks, done) = sse_chunks(&response.text().await.unwrap());
    assert!(done);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["model"], "test-model");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // Rebuild the calls the way a client does.
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut argument_pieces = [0usize; 2];
    for chunk in &chunks {
        for delta in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = delta["index"].as_u64().unwrap() as usize;
            if let Some(id) = delta["id"].as_str() {
                assert_eq!(index, calls.len());
                assert_eq!(delta["type"], "function");
                assert_eq!(delta["function"]["arguments"], "");
                calls.push((
                    id.into(),
                    delta["function"]["name"].as_str().unwrap().into(),
                    String::new(),
                ));
            } else {
                calls[index]
                    .2
                    .push_str(delta["function"]["arguments"].as_str().unwrap());
                argument_pieces[index] += 1;
            }
        }
    }
    assert_eq!(
        calls,
        vec![
            (
                "call_0_0".into(),
                "shell".into(),
                r#"{"command":"ls -la"}"#.into()
            ),
            ("call_0_1".into(), "read".into(), "{broken".into()),
        ]
    );
    assert!(
        argument_pieces.iter().all(|&n| n >= 2),
        "{argument_pieces:?}"
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 0); // "go" is 2 chars
    let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(completion, ((5 + 20 + 4 + 7) / 4) as u64);

    // Second step: one assistant message in the request.
    let messages = json!([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0_0", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0_0", "content": "file"},
    ]);
    let body = post(&server, &request(messages, true))
        .await
        .text()
        .await
        .unwrap();
    let (chunks, done) = sse_chunks(&body);
    assert!(done);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "All done here.");
    let content_deltas = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert!(content_deltas >= 2, "text is split into several deltas");
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(server.request_count(), 2);
    assert_eq!(server.requests()[1]["messages"][2]["content"], "file");
}

#[tokio::test]
async fn answers_plain_json_without_stream() {
    let server = MockModelServer::start(Script::single(vec![Step::finish("42")]))
        .await
        .unwrap();
    let response = post(
        &server,
        &request(json!([{"role": "user", "content": "12345678"}]), false),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["function"]["name"], "finish");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        r#"{"answer":"42"}"#
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(body["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn picks_the_script_by_marker_and_the_step_by_the_conversation() {
    let script = Script::new()
        .with("default", vec![Step::text("default-0")])
        .with(
            "alpha",
            vec![
                Step::text("alpha-0"),
                Step::text("alpha-1"),
                Step::text("alpha-2"),
            ],
        );
    let server = MockModelServer::start(script).await.unwrap();
    let text_of = |body: Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let task = format!("fix it {}", script_marker("alpha"));
    let reply = post(
        &server,
        &request(json!([{"role": "user", "content": task}]), false),
    )
    .await;
    assert_eq!(text_of(reply.json().await.unwrap()), "alpha-0");

    // The same request again (a retry) gets the same step.
    let reply = post(
        &server,
        &request(json!([{"role": "user", "content": task}]), false),
    )
    .await;
    assert_eq!(text_of(reply.json().await.unwrap()), "alpha-0");

    // After compaction: a summary carrying the marker, plus one new assistant turn.
    let messages = json!([
        {"role": "system", "content": "rules"},
        {"role": "user", "content": task},
        {"role": "user", "content": format!("Summary. {}", turns_marker(1))},
        {"role": "assistant", "content": "x"},
    ]);
    let reply = post(&server, &request(messages, false)).await;
    assert_eq!(text_of(reply.json().await.unwrap()), "alpha-2");

    let reply = post(
        &server,
        &request(json!([{"role": "user", "content": "plain"}]), false),
    )
    .await;
    assert_eq!(text_of(reply.json().await.unwrap()), "default-0");

    // Off the end of the script: a loud 400.
    let messages =
        json!([{"role": "user", "content": "plain"}, {"role": "assistant", "content": "a"}]);
    let reply = post(&server, &request(messages, false)).await;
    assert_eq!(reply.status(), 400);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "mock script 'default' exhausted at step 1 (it has 1 steps)"
    );

    let task = format!("x {}", script_marker("nope"));
    let reply = post(
        &server,
        &request(json!([{"role": "user", "content": task}]), false),
    )
    .await;
    assert_eq!(reply.status(), 400);
    let message = reply.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("'nope'"), "{message}");
}

#[tokio::test]
async fn summarisation_requests_do_not_consume_a_step() {
    let server = MockModelServer::start(Script::single(vec![Step::text("a"), Step::text("b")]))
        .await
        .unwrap();
    let messages = json!([
        {"role": "user", "content": format!("task, earlier {}", turns_marker(3))},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "Summarise the conversation."},
    ]);
    let body = json!({"model": "m", "messages": messages, "stream": true});
    let text = post(&server, &body).await.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let summary: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(summary, "Summary of earlier work. [mock-turns:5]");
    // No usage chunk without stream_options.include_usage.
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    // Empty tools list counts as no tools too; the default script is untouched.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "s"}], "tools": []});
    let reply: Value = post(&server, &body).await.json().await.unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "Summary of earlier work. [mock-turns:0]"
    );
    let reply: Value = post(
        &server,
        &request(json!([{"role": "user", "content": "s"}]), false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], "a");
}

#[tokio::test]
async fn fail_first_failures_come_in_order_then_the_reply() {
    let script = Script::single(vec![Step::text("finally").failing_first(vec![
        Failure::rate_limited(3),
        Failure::Status {
            status: 503,
            retry_after_secs: None,
            body: "busy".into(),
        },
        Failure::Truncate,
        Failure::Reset,
    ])]);
    let server = MockModelServer::start(script).await.unwrap();
    let body = request(json!([{"role": "user", "content": "go"}]), true);

    let reply = post(&server, &body).await;
    assert_eq!(reply.status(), 429);
    assert_eq!(reply.headers()["retry-after"], "3");
    let error: Value = reply.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("429"));

    let reply = post(&server, &body).await;
    assert_eq!(reply.status(), 503);
    assert!(reply.headers().get("retry-after").is_none());
    assert_eq!(reply.text().await.unwrap(), "busy");

    let reply = post(&server, &body).await;
    assert_eq!(reply.status(), 200);
    let (chunks, done) = sse_chunks(&reply.text().await.unwrap());
    assert!(!done);
    assert!(!chunks.is_empty());
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    let error = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .expect_err("the connection is reset without a response");
    assert!(!error.is_status(), "{error:?}");

    let text = post(&server, &body).await.text().await.unwrap();
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let answer: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "finally");
    // And from then on, always the reply.
    assert_eq!(post(&server, &body).await.status(), 200);
    assert_eq!(server.request_count(), 6);
}

#[tokio::test]
async fn delay_and_hang() {
    let script = Script::new()
        .with("default", vec![Step::text("slow").with_delay_ms(150)])
        .with("idle", vec![Step::hang()]);
    let server = MockModelServer::start(script).await.unwrap();
    let started = Instant::now();
    assert_eq!(
        post(
            &server,
            &request(json!([{"role": "user", "content": "a"}]), false)
        )
        .await
        .status(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    let body = request(
        json!([{"role": "user", "content": script_marker("idle")}]),
        true,
    );
    let url = format!("{}/chat/completions", server.base_url());
    let pending =
        tokio::spawn(async move { reqwest::Client::new().post(url).json(&body).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "a hanging step never answers");
    server.shutdown();
    let result = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "shutdown closes hanging connections");
}

#[tokio::test]
async fn serves_models_and_many_concurrent_clients() {
    let server = MockModelServer::start(Script::single(vec![Step::text("hi")]))
        .await
        .unwrap();
    let models: Value = reqwest::get(format!("{}/models", server.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mock-model");

    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    let body = request(
                        json!([{"role": "user", "content": format!("client {i}")}]),
                        true,
                    );
                    let text = client
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    assert!(text.ends_with("data: [DONE]\n\n"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(server.request_count(), 500);
}

#[test]
fn start_blocking_serves_synchronous_callers() {
    let server = MockModelServer::start_blocking(Script::single(vec![Step::text("sync")])).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body: Value = runtime.block_on(async {
        post(
            &server,
            &request(json!([{"role": "user", "content": "a"}]), false),
        )
        .await
        .json()
        .await
        .unwrap()
    });
    assert_eq!(body["choices"][0]["message"]["content"], "sync");
    let addr = server.addr();
    drop(server);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server stopped listening"
    );
}

#[test]
fn script_round_trips_through_json() {
    let script = Script::new().with(
        "default",
        vec![
            Step::tool("shell", json!({"command": "ls"}))
                .failing_first(vec![Failure::rate_limited(1), Failure::Reset]),
            Step::text("x").failing_first(vec![Failure::stream_error("api_error", "boom")]),
            Step::hang(),
            Step::status(500, "boom"),
            Step::text("t").with_delay_ms(5),
        ],
    );
    let text = serde_json::to_string(&script).unwrap();
    assert_eq!(serde_json::from_str::<Script>(&text).unwrap(), script);
    let malformed = json!({"scripts": {"default": [{"reply": {"speak": "x"}}]}});
    assert!(serde_json::from_value::<Script>(malformed).is_err());
    let ok: Script = serde_json::from_value(json!({"scripts": {"default": [
        {"reply": {"tool_calls": [{"name": "shell", "arguments": "{\"command\":\"ls\"}"}]},
         "fail_first": [{"status": {"status": 429, "retry_after_secs": 1}}, "reset"]},
        {"reply": "hang"},
        {"reply": {"text": "done"}, "delay_ms": 50}
    ]}}))
    .unwrap();
    assert_eq!(
        ok.scripts["default"][0].fail_first,
        vec![Failure::rate_limited(1), Failure::Reset]
    );
    assert_eq!(ok.scripts["default"][1], Step::hang());
}

/// `cargo test -p flotilla-testkit --release -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    let server = MockModelServer::start(Script::single(vec![Step::tool(
        "shell",
        json!({"command": "ls"}),
    )]))
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());
    let per_client = 100;
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let body = request(
                    json!([{"role": "user", "content": format!("client {i}")}]),
                    true,
                );
                for _ in 0..per_client {
                    let text = client
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    assert!(text.ends_with("data: [DONE]\n\n"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = 100 * per_client;
    println!(
        "{total} streamed requests from 100 clients in {elapsed:?}: {:.0} req/s",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(server.request_count(), total);
}
