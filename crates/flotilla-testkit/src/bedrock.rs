//! [`MockBedrockServer`]: the scripted mock speaking the Amazon Bedrock
//! Runtime Converse protocol.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use serde_json::Value;

use crate::bedrock_wire::{self as wire, BedrockInfo};
use crate::script::{Failure, Reply, Script};
use crate::serve::{
    lock, recorded_request, recording_mock_api, reset_connection, scripted_status, ConnectionAbort,
    Running, Shared,
};
use crate::wire::{turns_marker, Answer};

/// The content type of an event-stream reply.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// A scripted model server speaking the Amazon Bedrock Runtime Converse
/// protocol on `127.0.0.1`: the endpoint to give the AWS SDK (e.g. as
/// `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`) is [`MockBedrockServer::endpoint_url`].
///
/// Serves `POST /model/{modelId}/converse-stream`, answering `200` with
/// `application/vnd.amazon.eventstream` frames as the service does
/// (`messageStart`; text in several `contentBlockDelta`s; each tool use as
/// a `contentBlockStart` naming it, its input split over several deltas,
/// `contentBlockStop`; `messageStop` with the stop reason; `metadata` with
/// the usage; payloads padded with a `p` field), and
/// `POST /model/{modelId}/converse`, the same answers as one JSON object.
/// It plays the same [`Script`]s as [`MockModelServer`](crate::MockModelServer),
/// chosen and stepped the same way (`[script:NAME]` in the first user
/// message; the step is the number of assistant messages plus
/// `[mock-turns:N]`), with the same failures, the way Bedrock fails: an
/// HTTP error with an empty body gets the exception that goes with the
/// status (`ThrottlingException` for 429, `ServiceUnavailableException` for
/// 503, `ValidationException` for 400...) as a JSON body with `__type` and
/// `message` and the `x-amzn-errortype` header; [`Failure::StreamError`]
/// sends an exception frame (its `error_type` is the `:exception-type`, e.g.
/// `throttlingException`, `modelStreamErrorException`) after a couple of
/// events; [`Failure::Truncate`] closes the connection in the middle of a
/// frame, after a couple of events, without `messageStop` (and without the
/// end of the chunked body); [`Failure::Stall`] stops sending after a couple
/// of events.
///
/// Before playing the script it checks the request as the service does:
/// 403 without an `authorization` header that is a SigV4 signature for the
/// service `bedrock` (`AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/bedrock/aws4_request,
/// SignedHeaders=...;x-amz-date..., Signature=<hex>`, with `x-amz-date`) or a
/// Bedrock API key (`Bearer ...`); 400 `ValidationException` for a body that
/// is not JSON, roles that do not alternate starting with `user`, blank
/// text, a `toolResult` that answers no `toolUse` of the previous message,
/// a `toolUse` left unanswered, tool blocks without a `toolConfig`, invalid
/// tool ids, names or schemas, a final assistant message ending in
/// whitespace. The signature itself is not verified. Every request is
/// recorded (path, headers, body), in arrival order, valid or not.
///
/// A request without `toolConfig` is a summarisation (compaction) request,
/// as with the other mocks: it is answered `"Summary of earlier work.
/// [mock-turns:N]"` without using a step.
pub struct MockBedrockServer {
    shared: Arc<Shared>,
    running: Running,
}

recording_mock_api!(MockBedrockServer, "mock-bedrock", router);

impl MockBedrockServer {
    /// `http://127.0.0.1:PORT`, the endpoint URL for the AWS SDK
    /// (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`; the SDK adds `/model/...`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/model/{model_id}/converse-stream", post(converse_stream))
        .route("/model/{model_id}/converse", post(converse))
        .with_state(shared)
}

/// A request id for `x-amzn-requestid`.
fn request_id(shared: &Shared) -> String {
    let n = lock(&shared.requests).len();
    format!("00000000-0000-4000-8000-{n:012}")
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// An error answer as the service sends it: the status, the exception's
/// name in `x-amzn-errortype`, `{"__type", "message"}`.
fn exception_response(status: StatusCode, name: &str, message: &str) -> Response {
    let mut response = (status, Json(wire::error_body(name, message))).into_response();
    if let Ok(value) = HeaderValue::from_str(&wire::error_type_header(name)) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

fn validation_error(message: &str) -> Response {
    exception_response(StatusCode::BAD_REQUEST, "ValidationException", message)
}

fn status_response(status: u16, retry_after_secs: Option<u64>, body: &str) -> Response {
    let name = wire::exception_name(status);
    let mut response = scripted_status(status, retry_after_secs, body, |code| {
        exception_response(code, name, &wire::default_message(status))
    });
    // A scripted body still names its exception, as the service does.
    if !body.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&wire::error_type_header(name)) {
            response.headers_mut().insert("x-amzn-errortype", value);
        }
    }
    response
}

/// A `200` event-stream reply with these frames.
fn event_stream_response(frames: BoxStream<'static, Bytes>) -> Response {
    let mut response = Response::new(Body::from_stream(frames.map(Ok::<_, Infallible>)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    response
}

/// Whether the request is signed the way the SDK signs Bedrock requests
/// (or carries a Bedrock API key); the message of the 403 otherwise.
fn check_auth(headers: &HeaderMap) -> Result<(), (&'static str, String)> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err((
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".into(),
        ));
    };
    if authorization
        .strip_prefix("Bearer ")
        .is_some_and(|key| !key.trim().is_empty())
    {
        return Ok(());
    }
    let incomplete = |why: &str| {
        Err((
            "IncompleteSignatureException",
            format!("Authorization header: {why} (got {authorization:?})"),
        ))
    };
    let Some(rest) = authorization.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return incomplete("expected AWS4-HMAC-SHA256 or Bearer");
    };
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|part| part.strip_prefix(name))
    };
    let scope: Vec<&str> = field("Credential=").unwrap_or("").split('/').collect();
    let scope_ok = scope.len() == 5
        && !scope[0].is_empty()
        && scope[1].len() == 8
        && scope[1].bytes().all(|b| b.is_ascii_digit())
        && !scope[2].is_empty()
        && scope[4] == "aws4_request";
    if !scope_ok {
        return incomplete("Credential must be KEY/YYYYMMDD/REGION/SERVICE/aws4_request");
    }
    if scope[3] != "bedrock" {
        return incomplete("the credential scope must name the service bedrock");
    }
    let signed = field("SignedHeaders=").unwrap_or("");
    if !signed.split(';').any(|name| name == "host")
        || !signed.split(';').any(|name| name == "x-amz-date")
    {
        return incomplete("SignedHeaders must include host and x-amz-date");
    }
    let signature = field("Signature=").unwrap_or("");
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return incomplete("Signature must be 64 hex digits");
    }
    if header("x-amz-date").is_none() {
        return incomplete("the x-amz-date header is missing");
    }
    Ok(())
}

async fn converse_stream(
    State(shared): State<Arc<Shared>>,
    abort: Option<Extension<ConnectionAbort>>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = request_id(&shared);
    let response = handle(&shared, abort, &model_id, &uri, &headers, &body, true).await;
    with_request_id(response, &id)
}

async fn converse(
    State(shared): State<Arc<Shared>>,
    abort: Option<Extension<ConnectionAbort>>,
    Path(model_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = request_id(&shared);
    let response = handle(&shared, abort, &model_id, &uri, &headers, &body, false).await;
    with_request_id(response, &id)
}

fn answer(info: &BedrockInfo, answer: &Answer<'_>, stream: bool) -> Response {
    if stream {
        event_stream_response(futures::stream::iter(wire::stream_frames(info, answer)).boxed())
    } else {
        Json(wire::converse_json(info, answer)).into_response()
    }
}

async fn handle(
    shared: &Shared,
    abort: Option<Extension<ConnectionAbort>>,
    model_id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    stream: bool,
) -> Response {
    let parsed: Result<Value, String> =
        serde_json::from_slice(body).map_err(|_| String::from_utf8_lossy(body).into_owned());
    lock(&shared.requests).push(recorded_request(uri, headers, &parsed));
    if let Err((name, message)) = check_auth(headers) {
        return exception_response(StatusCode::FORBIDDEN, name, &message);
    }
    if model_id.trim().is_empty() {
        return validation_error("The provided model identifier is invalid.");
    }
    let request = match parsed {
        Ok(request) => request,
        Err(_) => {
            return validation_error(
                "Malformed input request, please reformat your input and try again.",
            )
        }
    };
    if let Err(message) = wire::validate(&request) {
        return validation_error(&message);
    }
    let info = BedrockInfo::of(&request);

    if !info.has_tools {
        // A summarisation request: answer without consuming a step, and leave
        // a marker so later requests still land on the right step.
        let summary = format!("Summary of earlier work. {}", turns_marker(info.step));
        return answer(&info, &Answer::Text(&summary), stream);
    }
    let (step, hit) = match shared.steps.pick(&info.script, info.step) {
        Ok(picked) => picked,
        Err(message) => return validation_error(&message),
    };
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    if let Some(failure) = step.fail_first.get(hit) {
        let frames = match failure {
            Failure::Status {
                status,
                retry_after_secs,
                body,
            } => return status_response(*status, *retry_after_secs, body),
            Failure::Reset => return reset_connection(abort).await,
            Failure::Truncate if !stream => {
                let text = wire::converse_json(&info, &Answer::Text("cut")).to_string();
                return (
                    [(header::CONTENT_TYPE, "application/json")],
                    text[..text.len() / 2].to_owned(),
                )
                    .into_response();
            }
            Failure::Stall if !stream => {
                let mut response = Response::new(Body::from_stream(futures::stream::pending::<
                    Result<Bytes, Infallible>,
                >()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return response;
            }
            Failure::StreamError {
                error_type,
                message,
            } if !stream => {
                let status = match error_type.to_ascii_lowercase().as_str() {
                    "throttlingexception" => 429,
                    "validationexception" => 400,
                    "serviceunavailableexception" => 503,
                    "modelstreamerrorexception" => 424,
                    _ => 500,
                };
                return status_response(
                    status,
                    None,
                    &wire::error_body(wire::exception_name(status), message).to_string(),
                );
            }
            Failure::Truncate => {
                let closer = abort.map(|Extension(abort)| abort);
                futures::stream::iter(wire::truncated_frames())
                    .chain(futures::stream::unfold(closer, |closer| async move {
                        // Hyper flushes what came before while this waits;
                        // then the connection closes in the middle of a frame
                        // (no end of the chunked body).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let abort = closer?;
                        abort.close();
                        std::future::pending::<Option<(Bytes, Option<ConnectionAbort>)>>().await
                    }))
                    .boxed()
            }
            Failure::Stall => futures::stream::iter(wire::partial_frames())
                .chain(futures::stream::pending())
                .boxed(),
            Failure::StreamError {
                error_type,
                message,
            } => futures::stream::iter(wire::error_frames(error_type, message)).boxed(),
        };
        return event_stream_response(frames);
    }
    match &step.reply {
        Reply::Text(text) => answer(&info, &Answer::Text(text), stream),
        Reply::ToolCalls(calls) => answer(&info, &Answer::Calls(calls), stream),
        Reply::Hang => std::future::pending().await,
        Reply::Status {
            status,
            retry_after_secs,
            body,
        } => status_response(*status, *retry_after_secs, body),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const GOOD: &str = "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, \
        SignedHeaders=content-type;host;x-amz-date, \
        Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn auth_accepts_sigv4_for_bedrock_and_api_keys() {
        check_auth(&headers(&[
            ("authorization", GOOD),
            ("x-amz-date", "20250101T000000Z"),
        ]))
        .unwrap();
        check_auth(&headers(&[("authorization", "Bearer ABSK-key")])).unwrap();
        assert_eq!(
            check_auth(&headers(&[])).unwrap_err().0,
            "MissingAuthenticationTokenException"
        );
        for bad in [
            GOOD.replace("/bedrock/", "/s3/"),
            GOOD.replace("Signature=0123", "Signature=zz23"),
            GOOD.replace("host;", ""),
            GOOD.replace("/20250101/", "/2025/"),
            "Basic abc".to_owned(),
        ] {
            let error = check_auth(&headers(&[
                ("authorization", &bad),
                ("x-amz-date", "20250101T000000Z"),
            ]))
            .unwrap_err();
            assert_eq!(error.0, "IncompleteSignatureException", "{bad}");
        }
        assert!(check_auth(&headers(&[("authorization", GOOD)])).is_err());
    }
}
