//! JSONL traces: reading a request trace (`--trace`: one `{"prompt", "max_tokens", "arrival_s"}`
//! object per line) and writing the simulator's trace format (`--emit-sim-trace`: one
//! `{"arrival_s", "prompt_tokens", "output_tokens"}` per line) so `lapsd sim --trace` runs the same work.
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::BenchError;
use crate::workload::{Plan, WorkItem};

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

/// One line of the simulator's trace format.
#[derive(Debug, Serialize)]
struct SimTraceLine {
    arrival_s: f64,
    prompt_tokens: u32,
    output_tokens: u32,
}

/// Writes the plan in the simulator's trace format, in arrival order.
pub fn write_sim_trace(plan: &Plan, path: &Path) -> Result<(), BenchError> {
    let mut order: Vec<(f64, &WorkItem)> = plan
        .arrivals_s
        .iter()
        .copied()
        .zip(plan.items.iter())
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = Vec::new();
    for (arrival_s, item) in order {
        let line = SimTraceLine {
            arrival_s,
            // The simulator needs at least one token of each (an empty trace prompt still costs a step).
            prompt_tokens: item.prompt_tokens.max(1),
            output_tokens: item.max_tokens.max(1),
        };
        // Serializing a struct of numbers cannot fail.
        let json = serde_json::to_string(&line).expect("numbers serialize");
        out.extend_from_slice(json.as_bytes());
        out.push(b'\n');
    }
    let mut file = std::fs::File::create(path).map_err(|e| BenchError::io(path, e))?;
    file.write_all(&out).map_err(|e| BenchError::io(path, e))
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

    #[test]
    fn sim_trace_is_written_in_arrival_order() {
        let plan = Plan {
            items: vec![
                WorkItem {
                    prompt: "late".into(),
                    prompt_tokens: 3,
                    max_tokens: 30,
                },
                WorkItem {
                    prompt: "early".into(),
                    prompt_tokens: 1,
                    max_tokens: 10,
                },
            ],
            arrivals_s: vec![2.0, 0.5],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.jsonl");
        write_sim_trace(&plan, &path).unwrap();
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"arrival_s": 0.5, "prompt_tokens": 1, "output_tokens": 10}),
                serde_json::json!({"arrival_s": 2.0, "prompt_tokens": 3, "output_tokens": 30}),
            ]
        );
    }
}
