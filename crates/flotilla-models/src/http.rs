//! The HTTP side both clients share: building the reqwest client (loopback
//! without proxy), one request under the first-byte timeout, body chunks
//! under the idle timeout, error bodies, `Retry-After`, reading a stream of
//! server-sent events into an [`EventSink`].

use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use futures::StreamExt as _;

use crate::sse::{EventSink, SseParser};
use crate::ModelError;

/// How much of an error response body is kept.
pub(crate) const ERROR_BODY_LIMIT: usize = 2048;
/// The largest non-streaming reply accepted.
const JSON_BODY_LIMIT: usize = 32 << 20;
/// How long to wait for the end of the body after the stream's end marker,
/// so the connection can go back to the pool.
const DRAIN_AFTER_END: Duration = Duration::from_millis(200);

/// A response body, chunk by chunk.
pub(crate) type Body = BoxStream<'static, reqwest::Result<bytes::Bytes>>;

/// A successful (2xx) response, by content type.
pub(crate) enum Reply {
    /// `application/json`: the whole body.
    Json(Vec<u8>),
    /// `text/event-stream` (or no content type): the body, unread.
    Events(Body),
}

/// Builds the HTTP client for `base_url`; fails on a base URL that is not
/// http(s). `example` shows a valid base URL in the error message.
pub(crate) fn http_client(
    base_url: &str,
    connect_timeout: Duration,
    example: &str,
) -> Result<reqwest::Client, ModelError> {
    let url = reqwest::Url::parse(base_url.trim()).map_err(|error| {
        ModelError::Config(format!(
            "base URL {base_url:?} is not a URL ({error}); expected e.g. {example}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ModelError::Config(format!(
            "base URL {base_url:?} must start with http:// or https://"
        )));
    }
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")));
    if loopback {
        // A local model server is never behind the user's HTTP proxy.
        builder = builder.no_proxy();
    }
    builder.build().map_err(|error| {
        ModelError::Config(format!("building the HTTP client: {}", error_chain(&error)))
    })
}

/// One URL and the time limits of talking to it.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// Where requests go.
    pub(crate) url: String,
    /// Limit from sending the request to receiving the response headers.
    pub(crate) first_byte_timeout: Duration,
    /// Longest silence allowed between two chunks of the response body.
    pub(crate) idle_timeout: Duration,
}

impl Endpoint {
    /// Sends `request` (built for [`Endpoint::url`]): the body of a 2xx
    /// response, or `ModelError::Status` with the start of the error body
    /// and the server's `Retry-After`.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, ModelError> {
        let response = match tokio::time::timeout(self.first_byte_timeout, request.send()).await {
            Err(_) => {
                return Err(ModelError::Timeout(format!(
                    "no response from {} within {:?}",
                    self.url, self.first_byte_timeout
                )))
            }
            Ok(Err(error)) => return Err(transport_error(&error)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers().clone();
        let mut body: Body = response.bytes_stream().boxed();
        if !status.is_success() {
            let retry_after = retry_after(&headers, SystemTime::now());
            let text = read_error_body(&mut body, self.idle_timeout).await;
            return Err(ModelError::Status {
                status: status.as_u16(),
                body: text,
                retry_after,
            });
        }
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            Ok(Reply::Json(self.read_all(&mut body).await?))
        } else if content_type.is_empty() || content_type.starts_with("text/event-stream") {
            Ok(Reply::Events(body))
        } else {
            Err(ModelError::Protocol(format!(
                "{} answered with content type {content_type:?}; expected text/event-stream or application/json",
                self.url
            )))
        }
    }

    /// The next body chunk, within the idle timeout.
    async fn next_chunk(
        &self,
        body: &mut Body,
        received: usize,
    ) -> Result<Option<bytes::Bytes>, ModelError> {
        match tokio::time::timeout(self.idle_timeout, body.next()).await {
            Err(_) => Err(ModelError::Timeout(format!(
                "no data from {} for {:?} (after {received} bytes of the reply)",
                self.url, self.idle_timeout
            ))),
            Ok(None) => Ok(None),
            Ok(Some(Err(error))) => Err(transport_error(&error)),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        }
    }

    async fn read_all(&self, body: &mut Body) -> Result<Vec<u8>, ModelError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = self.next_chunk(body, bytes.len()).await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > JSON_BODY_LIMIT {
                return Err(ModelError::Protocol(format!(
                    "reply from {} is larger than {JSON_BODY_LIMIT} bytes",
                    self.url
                )));
            }
        }
        Ok(bytes)
    }

    /// Feeds the events of a streamed body to `sink` until it is complete or
    /// the body ends; returns the number of bytes received. The caller then
    /// asks the sink whether the reply is whole.
    pub(crate) async fn read_events(
        &self,
        body: &mut Body,
        sink: &mut impl EventSink,
    ) -> Result<usize, ModelError> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut received = 0usize;
        loop {
            let chunk = self.next_chunk(body, received).await?;
            match &chunk {
                Some(bytes) => {
                    received += bytes.len();
                    parser.feed(bytes, &mut events)?;
                }
                None => parser.finish(&mut events)?,
            }
            for data in events.drain(..) {
                sink.event(&data)?;
            }
            if sink.complete() {
                // Read the end of the body so the connection can be reused.
                let _ = tokio::time::timeout(DRAIN_AFTER_END, async {
                    while let Some(Ok(_)) = body.next().await {}
                })
                .await;
                return Ok(received);
            }
            if chunk.is_none() {
                return Ok(received);
            }
        }
    }
}

/// A reqwest error with its causes, which is where the useful part is
/// ("connection refused", "connection reset by peer").
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Maps a reqwest error (its text names the URL) to the error kinds.
pub(crate) fn transport_error(error: &reqwest::Error) -> ModelError {
    let detail = error_chain(error);
    if error.is_timeout() {
        ModelError::Timeout(detail)
    } else if error.is_builder() {
        ModelError::Config(detail)
    } else {
        ModelError::Connection(detail)
    }
}

/// The delay a server asks for: OpenAI's `retry-after-ms`, else
/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms.min(1e12) / 1000.0));
        }
    }
    header("retry-after").and_then(|value| parse_retry_after(value, now))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
        return None;
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

async fn read_error_body(body: &mut Body, idle: Duration) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let cut = bytes.len().min(ERROR_BODY_LIMIT);
    let mut text = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if text.ends_with('\u{FFFD}') && cut == ERROR_BODY_LIMIT {
        // A character cut in half at the limit.
        text.pop();
    }
    text.trim_end().to_owned()
}

/// `text` cut to at most [`ERROR_BODY_LIMIT`] bytes, on a char boundary.
pub(crate) fn clip_error_body(mut text: String) -> String {
    if text.len() > ERROR_BODY_LIMIT {
        let mut cut = ERROR_BODY_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The start of `text`, for error messages.
pub(crate) fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let now = SystemTime::UNIX_EPOCH;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "9".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(9)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(250)));
    }

    #[test]
    fn clipping_keeps_char_boundaries() {
        let text = "é".repeat(ERROR_BODY_LIMIT);
        let clipped = clip_error_body(text);
        assert!(clipped.len() <= ERROR_BODY_LIMIT && clipped.len() >= ERROR_BODY_LIMIT - 1);
        assert_eq!(clip_error_body("short".into()), "short");
        assert_eq!(snippet(&"x".repeat(300)).len(), 203);
    }
}
