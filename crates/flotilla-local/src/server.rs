//! The engine's HTTP face: `/v1/chat/completions` (whole or streamed,
//! with tools), `/v1/models`, `/health`, as OpenAI's clients expect them.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::chat::{self, ChatRequest, Choice};
use crate::engine::{Done, Engine, Finish, Job, Piece};

/// Tokens written when a request sets no `max_tokens`: until the slot's
/// context is full.
const DEFAULT_MAX_TOKENS: u32 = u32::MAX;

struct Served {
    engine: Engine,
    next_id: AtomicU64,
}

/// The routes over a loaded engine.
pub fn router(engine: Engine) -> Router {
    let state = Arc::new(Served {
        engine,
        next_id: AtomicU64::new(1),
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/chat/completions", post(completions))
        .route("/chat/completions", post(completions))
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An error as OpenAI sends them.
fn error(status: StatusCode, message: &str) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "code": Value::Null}})),
    )
        .into_response()
}

async fn health(State(s): State<Arc<Served>>) -> Response {
    if s.engine.is_alive() {
        Json(json!({
            "status": "ok",
            "model": s.engine.info().name,
            "slots": s.engine.info().parallel,
            "ctx": s.engine.info().ctx,
            "pid": std::process::id(),
        }))
        .into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped")
    }
}

async fn models(State(s): State<Arc<Served>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.engine.info().name,
            "object": "model",
            "created": now_secs(),
            "owned_by": "flotilla",
        }]
    }))
}

async fn completions(State(s): State<Arc<Served>>, body: axum::body::Bytes) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    if req.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages is empty");
    }
    let choice = match req.choice() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let grammar = match chat::grammar(&req, &choice, &|schema| {
        llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| e.to_string())
    }) {
        Ok(g) => g,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let prompt = match s
        .engine
        .apply_template(chat::template_messages(&req, &choice))
        .await
    {
        Ok(p) => p,
        Err(e) if e == "the engine is gone" => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    // What cannot be served is refused now, as a 400 a client does not retry.
    if let Err(r) = s.engine.check(&prompt, grammar.as_deref()).await {
        let status = if r.code == "engine_unavailable" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        return (
            status,
            Json(json!({"error": {"message": r.message, "type": "invalid_request_error", "code": r.code}})),
        )
            .into_response();
    }
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("chatcmpl-{n}");
    let call_id = format!("call_{n}");
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt,
        grammar,
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .max(1),
        temperature: req.temperature.unwrap_or(0.8),
        top_p: req.top_p.unwrap_or(0.95),
        seed: req.seed.map(|s| s as u32).unwrap_or_else(rand_seed),
        stop: req.stops(),
        out: tx,
    };
    if let Err(e) = s.engine.submit(job) {
        return error(StatusCode::SERVICE_UNAVAILABLE, &e);
    }
    let model = s.engine.info().name.clone();
    if req.stream {
        let usage = req.include_usage();
        stream(rx, id, model, choice, call_id, Arc::new(req.tools), usage)
    } else {
        whole(rx, id, model, choice, call_id, &req.tools).await
    }
}

fn rand_seed() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(42)
}

fn usage(d: &Done) -> Value {
    json!({
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "total_tokens": d.prompt_tokens + d.completion_tokens,
    })
}

fn finish_reason(d: &Done, calls: bool) -> &'static str {
    match (calls, d.finish) {
        (true, _) => "tool_calls",
        (false, Finish::Stop) => "stop",
        (false, Finish::Length) => "length",
    }
}

/// Timings llama.cpp's own server reports, for benchmarks.
fn timings(d: &Done) -> Value {
    let per_s = |n: u32, secs: f64| if secs > 0.0 { f64::from(n) / secs } else { 0.0 };
    json!({
        "prompt_n": d.prompt_tokens,
        "prompt_ms": d.prompt_secs * 1000.0,
        "prompt_per_second": per_s(d.prompt_tokens, d.prompt_secs),
        "predicted_n": d.completion_tokens,
        "predicted_ms": d.decode_secs * 1000.0,
        "predicted_per_second": per_s(d.completion_tokens, d.decode_secs),
    })
}

async fn whole(
    mut rx: mpsc::UnboundedReceiver<Piece>,
    id: String,
    model: String,
    choice: Choice,
    call_id: String,
    tools: &[chat::Tool],
) -> Response {
    let mut text = String::new();
    let done = loop {
        match rx.recv().await {
            Some(Piece::Text(t)) => text.push_str(&t),
            Some(Piece::Done(d)) => break d,
            Some(Piece::Error(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
            None => return error(StatusCode::INTERNAL_SERVER_ERROR, "the engine stopped"),
        }
    };
    let (content, calls) = chat::parse_reply(&text, &choice, &call_id, tools);
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(&done, !calls.is_empty()),
        }],
        "usage": usage(&done),
        "timings": timings(&done),
    }))
    .into_response()
}

fn stream(
    rx: mpsc::UnboundedReceiver<Piece>,
    id: String,
    model: String,
    choice: Choice,
    call_id: String,
    tools: Arc<Vec<chat::Tool>>,
    include_usage: bool,
) -> Response {
    let created = now_secs();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    // Text streams as it comes; a reply that may be a call is held until
    // it is whole (a call is sent in one piece, parsed).
    let may_call = choice != Choice::Text;
    let events = futures::stream::unfold(
        (rx, String::new(), false, false, chunk),
        move |(mut rx, mut held, mut streaming_text, finished, chunk)| {
            let call_id = call_id.clone();
            let choice = choice.clone();
            let tools = tools.clone();
            async move {
                if finished {
                    return None;
                }
                let mut out: Vec<Value> = Vec::new();
                let mut end = false;
                match rx.recv().await {
                    Some(Piece::Text(t)) => {
                        if may_call && !streaming_text {
                            held.push_str(&t);
                            // Text that cannot start a call streams from now.
                            if let Some(c) = held.trim_start().chars().next() {
                                if c != '{' {
                                    streaming_text = true;
                                    out.push(chunk(json!({"role": "assistant", "content": held.clone()}), None));
                                    held.clear();
                                }
                            }
                        } else {
                            out.push(chunk(json!({"role": "assistant", "content": t}), None));
                        }
                    }
                    Some(Piece::Done(d)) => {
                        let mut calls = Vec::new();
                        if !held.is_empty() {
                            let (content, c) = chat::parse_reply(&held, &choice, &call_id, &tools);
                            calls = c;
                            if let Some(text) = content {
                                out.push(chunk(json!({"role": "assistant", "content": text}), None));
                            }
                            if !calls.is_empty() {
                                let deltas: Vec<Value> = calls
                                    .iter()
                                    .enumerate()
                                    .map(|(i, c)| {
                                        json!({
                                            "index": i, "id": c.id, "type": "function",
                                            "function": {"name": c.function.name, "arguments": c.function.arguments},
                                        })
                                    })
                                    .collect();
                                out.push(chunk(json!({"role": "assistant", "tool_calls": deltas}), None));
                            }
                        }
                        let mut last = chunk(json!({}), Some(finish_reason(&d, !calls.is_empty())));
                        last["timings"] = timings(&d);
                        out.push(last);
                        if include_usage {
                            let mut u = chunk(json!({}), None);
                            u["choices"] = json!([]);
                            u["usage"] = usage(&d);
                            out.push(u);
                        }
                        end = true;
                    }
                    Some(Piece::Error(e)) => {
                        out.push(json!({"error": {"message": e, "type": "server_error"}}));
                        end = true;
                    }
                    None => {
                        out.push(json!({"error": {"message": "the engine stopped", "type": "server_error"}}));
                        end = true;
                    }
                }
                let mut events: Vec<Result<Event, Infallible>> = out
                    .into_iter()
                    .map(|v| Ok(Event::default().data(v.to_string())))
                    .collect();
                if end {
                    events.push(Ok(Event::default().data("[DONE]")));
                }
                Some((
                    futures::stream::iter(events),
                    (rx, held, streaming_text, end, chunk),
                ))
            }
        },
    )
    .flatten();
    // A held tool call, a queued request or a long prompt sends nothing for
    // a while: comments keep the connection from looking dead.
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10)))
        .into_response()
}
