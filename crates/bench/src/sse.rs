//! Incremental Server-Sent Events parser (the `text/event-stream` framing used by OpenAI-style
//! streaming): bytes go in as they arrive, split anywhere (even inside a UTF-8 character or a
//! `\r\n` pair); complete events come out. Only `data:` fields matter to us; comments and other
//! fields (`event:`, `id:`, `retry:`) are ignored.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The event's data (several `data:` lines joined with `\n`, as the SSE spec says).
    Data(String),
    /// The OpenAI end-of-stream sentinel `data: [DONE]`.
    Done,
}

/// Parser state: the bytes of an unfinished line and the data lines of the unfinished event.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes received after the last complete line.
    pending_line: Vec<u8>,
    /// `data:` values of the event being assembled.
    data_lines: Vec<String>,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next chunk belongs to it.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes; returns the events completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => self.pending_line.push(byte),
            }
        }
        events
    }

    /// Ends the stream. The spec drops an event not closed by a blank line; we are lenient and
    /// dispatch it (some servers end with `data: [DONE]\n` and close), so no data is lost.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.pending_line.is_empty() {
            self.end_line(&mut events);
        }
        self.dispatch(&mut events);
        events
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let line = String::from_utf8_lossy(&self.pending_line).into_owned();
        self.pending_line.clear();
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        if field == "data" {
            self.data_lines.push(value.to_string());
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        if self.data_lines.is_empty() {
            return;
        }
        let data = self.data_lines.join("\n");
        self.data_lines.clear();
        if data.trim() == "[DONE]" {
            events.push(SseEvent::Done);
        } else {
            events.push(SseEvent::Data(data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"choices\":[{\"text\":\"héllo\"}]}\r\n\r\n",
        "event: message\n",
        "data: {\"a\":\n",
        "data: 1}\n\n",
        "id: 7\n",
        "data:{\"choices\":[{\"text\":\" wörld ✓\"}]}\r\r",
        "data: [DONE]\n\n",
    );

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent::Data("{\"choices\":[{\"text\":\"héllo\"}]}".into()),
            SseEvent::Data("{\"a\":\n1}".into()),
            SseEvent::Data("{\"choices\":[{\"text\":\" wörld ✓\"}]}".into()),
            SseEvent::Done,
        ]
    }

    fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            events.extend(parser.push(&bytes[start..cut]));
            start = cut;
        }
        events.extend(parser.finish());
        events
    }

    #[test]
    fn whole_stream_parses() {
        assert_eq!(parse_in_pieces(STREAM.as_bytes(), &[]), expected());
    }

    #[test]
    fn every_single_split_point_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(parse_in_pieces(bytes, &[cut]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_in_pieces(bytes, &cuts), expected());
    }

    #[test]
    fn every_pair_of_split_points_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for first in (0..bytes.len()).step_by(3) {
            for second in (first..bytes.len()).step_by(5) {
                assert_eq!(parse_in_pieces(bytes, &[first, second]), expected());
            }
        }
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_finish() {
        let mut parser = SseParser::new();
        assert_eq!(
            parser.push(b"data: x\n\ndata: [DONE]"),
            vec![SseEvent::Data("x".into())]
        );
        assert_eq!(parser.finish(), vec![SseEvent::Done]);
    }
}
