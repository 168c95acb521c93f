//! Trace replay: one JSON object per line,
//! `{"arrival_s": f, "prompt_tokens": n, "output_tokens": n, "acceptance_rate": f}`
//! (`acceptance_rate` optional). Blank lines are skipped. A malformed line is an error naming its
//! 1-based line number and the field; nothing panics on input.

use std::io::BufRead;

use serde_json::{Map, Value};

use crate::error::SimError;

/// One parsed trace line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRecord {
    pub arrival_s: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Latent acceptance probability; `None` = draw it from the workload's distribution.
    pub acceptance_rate: Option<f64>,
}

fn field_err(line: usize, field: &'static str, reason: impl Into<String>) -> SimError {
    SimError::TraceLine {
        line,
        field,
        reason: reason.into(),
    }
}

fn get_f64(obj: &Map<String, Value>, line: usize, field: &'static str) -> Result<f64, SimError> {
    let v = obj
        .get(field)
        .ok_or_else(|| field_err(line, field, "missing"))?;
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| field_err(line, field, format!("expected a number, got {v}")))
}

fn get_tokens(obj: &Map<String, Value>, line: usize, field: &'static str) -> Result<u32, SimError> {
    let v = obj
        .get(field)
        .ok_or_else(|| field_err(line, field, "missing"))?;
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            field_err(
                line,
                field,
                format!("expected an integer between 1 and {}, got {v}", u32::MAX),
            )
        })
}

/// Parses one line (`line` is 1-based, for messages).
pub fn parse_line(text: &str, line: usize) -> Result<TraceRecord, SimError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| field_err(line, "<json>", format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| field_err(line, "<json>", "expected a JSON object"))?;
    let arrival_s = get_f64(obj, line, "arrival_s")?;
    if arrival_s < 0.0 {
        return Err(field_err(
            line,
            "arrival_s",
            format!("must be >= 0, got {arrival_s}"),
        ));
    }
    let prompt_tokens = get_tokens(obj, line, "prompt_tokens")?;
    let output_tokens = get_tokens(obj, line, "output_tokens")?;
    let acceptance_rate = match obj.get("acceptance_rate") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let a = get_f64(obj, line, "acceptance_rate")?;
            if !(0.0..=1.0).contains(&a) {
                return Err(field_err(
                    line,
                    "acceptance_rate",
                    format!("must be in [0, 1], got {a}"),
                ));
            }
            Some(a)
        }
    };
    Ok(TraceRecord {
        arrival_s,
        prompt_tokens,
        output_tokens,
        acceptance_rate,
    })
}

/// Parses a whole trace; records are returned sorted by arrival time (stable).
pub fn parse_trace<R: BufRead>(reader: R) -> Result<Vec<TraceRecord>, SimError> {
    let mut records = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let text = line.map_err(|source| SimError::TraceRead {
            line: index + 1,
            source,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        records.push(parse_line(&text, index + 1)?);
    }
    if records.is_empty() {
        return Err(SimError::EmptyTrace);
    }
    records.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(text: &str) -> (usize, &'static str) {
        match parse_trace(text.as_bytes()) {
            Err(SimError::TraceLine { line, field, .. }) => (line, field),
            other => panic!("expected a trace-line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_lines_sorts_by_arrival_and_skips_blanks() {
        let text = "{\"arrival_s\": 2.0, \"prompt_tokens\": 5, \"output_tokens\": 7}\n\n\
                    {\"arrival_s\": 1.5, \"prompt_tokens\": 3, \"output_tokens\": 9, \"acceptance_rate\": 0.8}\n";
        let recs = parse_trace(text.as_bytes()).expect("valid trace");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].arrival_s, 1.5);
        assert_eq!(recs[0].acceptance_rate, Some(0.8));
        assert_eq!(recs[1].output_tokens, 7);
        assert_eq!(recs[1].acceptance_rate, None);
    }

    #[test]
    fn malformed_lines_name_line_and_field() {
        let ok = "{\"arrival_s\": 0, \"prompt_tokens\": 5, \"output_tokens\": 7}\n";
        assert_eq!(err_of(&format!("{ok}not json\n")), (2, "<json>"));
        assert_eq!(err_of(&format!("{ok}{ok}[1,2]\n")), (3, "<json>"));
        assert_eq!(
            err_of("{\"prompt_tokens\": 5, \"output_tokens\": 7}"),
            (1, "arrival_s")
        );
        assert_eq!(
            err_of("{\"arrival_s\": -1, \"prompt_tokens\": 5, \"output_tokens\": 7}"),
            (1, "arrival_s")
        );
        assert_eq!(
            err_of(&format!(
                "{ok}{{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": -3}}"
            )),
            (2, "output_tokens")
        );
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": \"5\", \"output_tokens\": 3}"),
            (1, "prompt_tokens")
        );
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 0}"),
            (1, "output_tokens")
        );
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 3, \"acceptance_rate\": 1.5}"),
            (1, "acceptance_rate")
        );
        assert!(matches!(
            parse_trace("\n\n".as_bytes()),
            Err(SimError::EmptyTrace)
        ));
    }
}
