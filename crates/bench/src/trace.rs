//! Request traces (`--trace`: one `{"prompt", "max_tokens", "arrival_s"}` object per line). The
//! simulator's trace format, which `--emit-sim-trace` writes, is `lapsd_workload::trace`'s
//! (`workload::Plan::write_sim_trace`).
use std::path::Path;

use serde_json::Value;

use crate::error::BenchError;

/// A request read from a `--trace` file.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    pub prompt: String,
    pub max_tokens: u32,
    /// Seconds after the start of the run at which the request is sent.
    pub arrival_s: f64,
}

/// Parses a request trace; blank lines are skipped. Errors name the 1-based line and the field.
pub fn parse_trace(text: &str, path: &Path) -> Result<Vec<TraceRequest>, BenchError> {
    let mut requests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let error = |field: &'static str, message: String| BenchError::TraceLine {
            path: path.to_path_buf(),
            line: line_no,
            field,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| error("(line)", format!("not JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| error("(line)", "not a JSON object".into()))?;
        let prompt = match object.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(error("prompt", format!("expected a string, got {other}"))),
            None => return Err(error("prompt", "missing".into())),
        };
        let max_tokens = match object.get("max_tokens") {
            Some(v) => v
                .as_u64()
                .filter(|&n| n >= 1 && n <= u32::MAX as u64)
                .ok_or_else(|| error("max_tokens", format!("expected an integer >= 1, got {v}")))?
                as u32,
            None => return Err(error("max_tokens", "missing".into())),
        };
        let arrival_s = match object.get("arrival_s") {
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| error("arrival_s", format!("expected a number >= 0, got {v}")))?,
            None => return Err(error("arrival_s", "missing".into())),
        };
        requests.push(TraceRequest {
            prompt,
            max_tokens,
            arrival_s,
        });
    }
    Ok(requests)
}

/// Reads and parses a request trace file.
pub fn load_trace(path: &Path) -> Result<Vec<TraceRequest>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    parse_trace(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_error(text: &str) -> (usize, &'static str) {
        match parse_trace(text, Path::new("t.jsonl")) {
            Err(BenchError::TraceLine { line, field, .. }) => (line, field),
            other => panic!("expected TraceLine error, got {other:?}"),
        }
    }

    #[test]
    fn good_trace_parses_and_skips_blank_lines() {
        let text = "{\"prompt\": \"hi\", \"max_tokens\": 5, \"arrival_s\": 0}\n\n{\"prompt\": \"yo\", \"max_tokens\": 7, \"arrival_s\": 1.5, \"extra\": true}\n";
        let requests = parse_trace(text, Path::new("t.jsonl")).unwrap();
        assert_eq!(
            requests,
            vec![
                TraceRequest {
                    prompt: "hi".into(),
                    max_tokens: 5,
                    arrival_s: 0.0
                },
                TraceRequest {
                    prompt: "yo".into(),
                    max_tokens: 7,
                    arrival_s: 1.5
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_name_line_and_field() {
        let ok = "{\"prompt\": \"a\", \"max_tokens\": 1, \"arrival_s\": 0}\n";
        assert_eq!(
            line_error(&format!("{ok}{{\"max_tokens\": 1, \"arrival_s\": 0}}")),
            (2, "prompt")
        );
        assert_eq!(
            line_error(&format!(
                "{ok}\n{{\"prompt\": 3, \"max_tokens\": 1, \"arrival_s\": 0}}"
            )),
            (3, "prompt")
        );
        assert_eq!(
            line_error("{\"prompt\": \"a\", \"max_tokens\": 0, \"arrival_s\": 0}"),
            (1, "max_tokens")
        );
        assert_eq!(
            line_error("{\"prompt\": \"a\", \"max_tokens\": 2.5, \"arrival_s\": 0}"),
            (1, "max_tokens")
        );
        assert_eq!(
            line_error("{\"prompt\": \"a\", \"max_tokens\": 2}"),
            (1, "arrival_s")
        );
        assert_eq!(
            line_error("{\"prompt\": \"a\", \"max_tokens\": 2, \"arrival_s\": -1}"),
            (1, "arrival_s")
        );
        assert_eq!(line_error(&format!("{ok}{{not json")), (2, "(line)"));
        assert_eq!(line_error("[1, 2]"), (1, "(line)"));
    }
}
