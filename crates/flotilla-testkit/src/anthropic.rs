//! [`MockAnthropicServer`]: the scripted mock speaking the Anthropic
//! Messages protocol.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::Value;

use crate::anthropic_wire::{self as wire, AnthropicInfo};
use crate::script::{Failure, Reply, Script};
use crate::serve::{
    lock, recorded_request, recording_mock_api, reset_connection, scripted_status, sse_response,
    ConnectionAbort, Running, Shared,
};
use crate::wire::{turns_marker, Answer};

/// A scripted model server speaking the Anthropic Messages protocol on
/// `127.0.0.1`.
///
/// Serves `POST /v1/messages`, streaming (real event sequences: text and
/// tool input split over several deltas, `ping`, `message_delta` with the
/// stop reason and usage, `message_stop`) and not. It plays the same
/// [`Script`]s as [`MockModelServer`](crate::MockModelServer), chosen and
/// stepped the same way (`[script:NAME]` in the first user message; the
/// step is the number of assistant messages plus `[mock-turns:N]`), with the
/// same failures, in Anthropic's format: an HTTP error with an empty body
/// gets Anthropic's error object with the type that goes with the status
/// (`rate_limit_error` for 429, `overloaded_error` for 529...),
/// [`Failure::StreamError`] sends an `error` event mid-stream,
/// [`Failure::Truncate`] ends the body without `message_stop`.
///
/// Before playing the script it checks the request as the real API does and
/// answers as it would: 401 `authentication_error` without `x-api-key`;
/// 400 `invalid_request_error` without `anthropic-version`, for a body that
/// is not JSON, an unknown top-level field, a missing `max_tokens`, roles
/// that do not alternate starting with `user`, blank text blocks, a
/// `tool_result` that answers no `tool_use` of the previous message, a
/// `tool_use` left unanswered in the next message, tool results not first in
/// their message, tool blocks in a request without tools, a final assistant
/// message ending in whitespace, invalid tool definitions. Every request is
/// recorded, headers included, in arrival order, valid or not.
///
/// A request without tools is a summarisation (compaction) request, as with
/// the OpenAI mock: it is answered `"Summary of earlier work.
/// [mock-turns:N]"` without using a step.
pub struct MockAnthropicServer {
    shared: Arc<Shared>,
    running: Running,
}

recording_mock_api!(MockAnthropicServer, "mock-anthropic", router);

impl MockAnthropicServer {
    /// `http://127.0.0.1:PORT`, the value for `ANTHROPIC_BASE_URL` (the
    /// client adds `/v1/messages`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .with_state(shared)
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(wire::error_body(wire::error_type(status.as_u16()), message)),
    )
        .into_response()
}

fn status_response(status: u16, retry_after_secs: Option<u64>, body: &str) -> Response {
    scripted_status(status, retry_after_secs, body, |code| {
        let message = match status {
            529 => "Overloaded".to_owned(),
            _ => format!("mock failure: HTTP {status}"),
        };
        error_response(code, &message)
    })
}

fn answer(info: &AnthropicInfo, answer: &Answer<'_>) -> Response {
    if info.stream {
        sse_response(futures::stream::iter(wire::stream_events(info, answer)).boxed())
    } else {
        Json(wire::message_json(info, answer)).into_response()
    }
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    abort: Option<Extension<ConnectionAbort>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Result<Value, String> =
        serde_json::from_slice(&body).map_err(|_| String::from_utf8_lossy(&body).into_owned());
    lock(&shared.requests).push(recorded_request(&uri, &headers, &parsed));
    let has_header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| !value.trim().is_empty())
    };
    if !has_header("x-api-key") {
        return error_response(StatusCode::UNAUTHORIZED, "x-api-key header is required");
    }
    if !has_header("anthropic-version") {
        return error_response(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    let request = match parsed {
        Ok(request) => request,
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "There was an error parsing the body of your request: it is not valid JSON",
            )
        }
    };
    if let Err(message) = wire::validate(&request) {
        return error_response(StatusCode::BAD_REQUEST, &message);
    }
    let info = AnthropicInfo::of(&request);

    if !info.has_tools {
        // A summarisation request: answer without consuming a step, and leave
        // a marker so later requests still land on the right step.
        let summary = format!("Summary of earlier work. {}", turns_marker(info.step));
        return answer(&info, &Answer::Text(&summary));
    }
    let (step, hit) = match shared.steps.pick(&info.script, info.step) {
        Ok(picked) => picked,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    if let Some(failure) = step.fail_first.get(hit) {
        let events = match failure {
            Failure::Status {
                status,
                retry_after_secs,
                body,
            } => return status_response(*status, *retry_after_secs, body),
            Failure::Reset => return reset_connection(abort).await,
            Failure::Truncate => futures::stream::iter(wire::partial_events(&info)).boxed(),
            Failure::Stall => futures::stream::iter(wire::partial_events(&info))
                .chain(futures::stream::pending())
                .boxed(),
            Failure::StreamError {
                error_type,
                message,
            } => futures::stream::iter(wire::error_events(&info, error_type, message)).boxed(),
        };
        return sse_response(events);
    }
    match &step.reply {
        Reply::Text(text) => answer(&info, &Answer::Text(text)),
        Reply::ToolCalls(calls) => answer(&info, &Answer::Calls(calls)),
        Reply::Hang => std::future::pending().await,
        Reply::Status {
            status,
            retry_after_secs,
            body,
        } => status_response(*status, *retry_after_secs, body),
    }
}
