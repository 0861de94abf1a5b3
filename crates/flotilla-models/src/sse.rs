//! Server-sent events: the byte-level parser both streaming clients use, and
//! the [`EventSink`] each protocol's reply accumulator implements.

use crate::ModelError;

/// Takes the `data` of each event of one streamed reply.
pub(crate) trait EventSink {
    /// One event's `data`.
    fn event(&mut self, data: &str) -> Result<(), ModelError>;
    /// Whether the reply is complete (the protocol's end marker came), so
    /// reading can stop.
    fn complete(&self) -> bool;
}

/// Splits a server-sent-events byte stream into the `data` of each event.
///
/// Bytes may be split anywhere: a line (or a `\r\n`) cut between two
/// chunks is kept until its end arrives. Lines end in `\n`, `\r\n` or `\r`;
/// lines starting with `:` are comments; fields other than `data` are
/// ignored; an event ends at an empty line.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for a line end.
    scanned: usize,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Adds bytes; pushes the data of every event they complete onto `events`.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        events: &mut Vec<String>,
    ) -> Result<(), ModelError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(bytes);
        let result = self.split_lines(&buffer, events);
        if let Ok(start) = result {
            buffer.drain(..start);
        }
        self.buffer = buffer;
        result.map(|_| ())
    }

    /// Handles every complete line of `buffer`; returns where the rest starts.
    fn split_lines(
        &mut self,
        buffer: &[u8],
        events: &mut Vec<String>,
    ) -> Result<usize, ModelError> {
        let mut start = 0;
        let mut at = self.scanned;
        while at < buffer.len() {
            match buffer[at] {
                b'\n' => {
                    self.line(&buffer[start..at], events)?;
                    at += 1;
                    start = at;
                }
                b'\r' => {
                    if at + 1 == buffer.len() {
                        // Might be the first half of a `\r\n`: wait for more.
                        break;
                    }
                    self.line(&buffer[start..at], events)?;
                    at += if buffer[at + 1] == b'\n' { 2 } else { 1 };
                    start = at;
                }
                _ => at += 1,
            }
        }
        self.scanned = at - start;
        Ok(start)
    }

    /// The stream ended: handles a last line without its line end and an
    /// event without its closing empty line.
    pub(crate) fn finish(&mut self, events: &mut Vec<String>) -> Result<(), ModelError> {
        let mut rest = std::mem::take(&mut self.buffer);
        self.scanned = 0;
        if rest.last() == Some(&b'\r') {
            rest.pop();
        }
        if !rest.is_empty() {
            self.line(&rest, events)?;
        }
        self.line(b"", events)
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<String>) -> Result<(), ModelError> {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let value = std::str::from_utf8(value).map_err(|error| {
                ModelError::Protocol(format!("stream data is not UTF-8: {error}"))
            })?;
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut events).unwrap();
        }
        parser.finish(&mut events).unwrap();
        events
    }

    #[test]
    fn sse_events_survive_any_split() {
        let stream: &[u8] = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\ndata: h\xc3\xa9\r\rdata: [DONE]\n\n";
        let expected = vec!["{\"a\":1}", "line1\nline2", "h\u{e9}", "[DONE]"];
        assert_eq!(parse_all(&[stream]), expected);
        for cut in 0..=stream.len() {
            assert_eq!(
                parse_all(&[&stream[..cut], &stream[cut..]]),
                expected,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytes), expected);
    }

    #[test]
    fn sse_last_event_without_blank_line_is_kept() {
        assert_eq!(
            parse_all(&[b"data: a\n\ndata: [DONE]"]),
            vec!["a", "[DONE]"]
        );
        assert_eq!(parse_all(&[b"data: a\r"]), vec!["a"]);
        assert!(parse_all(&[b": only a comment\n\n"]).is_empty());
    }

    #[test]
    fn sse_rejects_invalid_utf8() {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let error = parser.feed(b"data: \xff\n\n", &mut events).unwrap_err();
        assert!(matches!(error, ModelError::Protocol(_)), "{error:?}");
    }
}
