//! The simulator's trace format: one JSON object per line,
//! `{"arrival_s": f, "prompt_tokens": n, "output_tokens": n, "acceptance_rate": f}`
//! (`acceptance_rate` optional: the per-token acceptance probability alpha). `lapsd bench
//! --emit-sim-trace` writes it and `lapsd sim --trace` reads it, both through [`TraceLine`], so
//! the writer and the reader cannot disagree on a field.
//!
//! A line may instead carry a served request's speculative-decoding counters, `drafted_tokens`,
//! `accepted_tokens` and `verify_steps` (all three or none; what `lapsd serve` reports and
//! `lapsd bench` records; `verify_steps` counts the steps that drafted at least one token). When
//! they show at least one drafting step they replace `acceptance_rate`, which is then not read.
//! What they mean for a simulated request (a draft length and alpha) is the simulator's business.
//!
//! A line may also carry `predicted_output_tokens`: the length the server predicted from the
//! prompt's text (`lapsd serve --length-model`).
//!
//! Lines are read field by field rather than with a serde derive so that an error names the
//! 1-based line and the field (serde's type errors name neither), and nothing panics on input.

use std::io::Write;

use serde::Serialize;
use serde_json::{Map, Value};

/// A trace line that is not valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("trace line {line}: field `{field}`: {reason}")]
pub struct TraceLineError {
    /// 1-based line number.
    pub line: usize,
    /// The offending field, or `<json>` when the line is not a JSON object.
    pub field: &'static str,
    pub reason: String,
}

/// A served request's speculative-decoding counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpeculationCounters {
    pub drafted_tokens: u64,
    /// At most `drafted_tokens`.
    pub accepted_tokens: u64,
    /// Decode steps that drafted at least one token.
    pub verify_steps: u64,
}

/// One line of the simulator's trace format (module header). Optional fields are left out when
/// written, so a line with only the three required fields is exactly
/// `{"arrival_s":..,"prompt_tokens":..,"output_tokens":..}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TraceLine {
    /// Seconds after the start of the trace; >= 0.
    pub arrival_s: f64,
    /// >= 1.
    pub prompt_tokens: u32,
    /// >= 1.
    pub output_tokens: u32,
    /// Latent acceptance probability in [0, 1]; `None` when absent, null, or replaced by
    /// counters with at least one drafting step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpeculationCounters>,
    /// The length the server predicted from the prompt's text; >= 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_output_tokens: Option<u32>,
}

fn field_err(line: usize, field: &'static str, reason: impl Into<String>) -> TraceLineError {
    TraceLineError {
        line,
        field,
        reason: reason.into(),
    }
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<&'a Value, TraceLineError> {
    obj.get(field)
        .ok_or_else(|| field_err(line, field, "missing"))
}

fn get_f64(
    obj: &Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<f64, TraceLineError> {
    let v = required(obj, line, field)?;
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| field_err(line, field, format!("expected a number, got {v}")))
}

fn get_tokens(
    obj: &Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<u32, TraceLineError> {
    let v = required(obj, line, field)?;
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

/// An optional non-negative integer field.
fn get_count(
    obj: &Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<Option<u64>, TraceLineError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            field_err(
                line,
                field,
                format!("expected a non-negative integer, got {v}"),
            )
        }),
    }
}

/// The SD counters of a line: all three or none.
fn get_speculation(
    obj: &Map<String, Value>,
    line: usize,
) -> Result<Option<SpeculationCounters>, TraceLineError> {
    let drafted = get_count(obj, line, "drafted_tokens")?;
    let accepted = get_count(obj, line, "accepted_tokens")?;
    let steps = get_count(obj, line, "verify_steps")?;
    let together = "missing (the SD counters come together)";
    let counters = match (drafted, accepted, steps) {
        (None, None, None) => return Ok(None),
        (Some(drafted_tokens), Some(accepted_tokens), Some(verify_steps)) => SpeculationCounters {
            drafted_tokens,
            accepted_tokens,
            verify_steps,
        },
        (None, _, _) => return Err(field_err(line, "drafted_tokens", together)),
        (_, None, _) => return Err(field_err(line, "accepted_tokens", together)),
        (_, _, None) => return Err(field_err(line, "verify_steps", together)),
    };
    if counters.accepted_tokens > counters.drafted_tokens {
        return Err(field_err(
            line,
            "accepted_tokens",
            format!(
                "{} accepted of {} drafted",
                counters.accepted_tokens, counters.drafted_tokens
            ),
        ));
    }
    Ok(Some(counters))
}

impl TraceLine {
    /// Parses one line (`line` is 1-based, for messages). Fields are checked in a fixed order
    /// (arrival, prompt, output, prediction, counters, acceptance), so a line with several bad
    /// fields always names the same one.
    pub fn parse(text: &str, line: usize) -> Result<TraceLine, TraceLineError> {
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
        let predicted_output_tokens = match obj.get("predicted_output_tokens") {
            None | Some(Value::Null) => None,
            Some(_) => Some(get_tokens(obj, line, "predicted_output_tokens")?),
        };
        let speculation = get_speculation(obj, line)?;
        let counters_replace_acceptance = speculation.is_some_and(|c| c.verify_steps > 0);
        let acceptance_rate = match obj.get("acceptance_rate") {
            _ if counters_replace_acceptance => None,
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
        Ok(TraceLine {
            arrival_s,
            prompt_tokens,
            output_tokens,
            acceptance_rate,
            speculation,
            predicted_output_tokens,
        })
    }
}

/// Writes `lines` as JSONL, one compact object per line, in the order given.
pub fn write_trace<W: Write>(lines: &[TraceLine], mut out: W) -> std::io::Result<()> {
    for line in lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(arrival_s: f64, prompt_tokens: u32, output_tokens: u32) -> TraceLine {
        TraceLine {
            arrival_s,
            prompt_tokens,
            output_tokens,
            acceptance_rate: None,
            speculation: None,
            predicted_output_tokens: None,
        }
    }

    fn written(lines: &[TraceLine]) -> String {
        let mut out = Vec::new();
        write_trace(lines, &mut out).expect("writing to memory");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn a_minimal_line_is_written_as_the_benchmark_always_wrote_it() {
        // Byte for byte what `lapsd bench --emit-sim-trace` wrote before this type was shared.
        assert_eq!(
            written(&[minimal(0.5, 1, 10), minimal(2.0, 3, 30)]),
            "{\"arrival_s\":0.5,\"prompt_tokens\":1,\"output_tokens\":10}\n\
             {\"arrival_s\":2.0,\"prompt_tokens\":3,\"output_tokens\":30}\n"
        );
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let lines = [
            minimal(0.0, 5, 7),
            TraceLine {
                acceptance_rate: Some(0.8),
                predicted_output_tokens: Some(12),
                ..minimal(1.25, 9, 40)
            },
            TraceLine {
                speculation: Some(SpeculationCounters {
                    drafted_tokens: 30,
                    accepted_tokens: 6,
                    verify_steps: 20,
                }),
                ..minimal(3.0, 2, 40)
            },
        ];
        let text = written(&lines);
        let back: Vec<TraceLine> = text
            .lines()
            .enumerate()
            .map(|(i, l)| TraceLine::parse(l, i + 1).expect("valid line"))
            .collect();
        assert_eq!(back, lines);
    }

    #[test]
    fn counters_with_a_drafting_step_replace_the_acceptance_rate() {
        let with_steps = TraceLine::parse(
            r#"{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 40, "acceptance_rate": 7, "drafted_tokens": 30, "accepted_tokens": 6, "verify_steps": 20}"#,
            1,
        )
        .expect("acceptance_rate is not read");
        assert_eq!(with_steps.acceptance_rate, None);
        let no_steps = TraceLine::parse(
            r#"{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 1, "acceptance_rate": 0.5, "drafted_tokens": 0, "accepted_tokens": 0, "verify_steps": 0}"#,
            1,
        )
        .expect("valid line");
        assert_eq!(no_steps.acceptance_rate, Some(0.5));
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let field_of = |text: &str| match TraceLine::parse(text, 4) {
            Err(e) => {
                assert_eq!(e.line, 4);
                e.field
            }
            Ok(line) => panic!("expected an error, got {line:?}"),
        };
        assert_eq!(field_of("not json"), "<json>");
        assert_eq!(field_of("[1]"), "<json>");
        assert_eq!(
            field_of(r#"{"arrival_s": -1, "prompt_tokens": 5, "output_tokens": 7}"#),
            "arrival_s"
        );
        assert_eq!(
            field_of(r#"{"arrival_s": 1, "prompt_tokens": 0, "output_tokens": 7}"#),
            "prompt_tokens"
        );
        assert_eq!(
            field_of(
                r#"{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 7, "verify_steps": 1}"#
            ),
            "drafted_tokens"
        );
        let err = TraceLine::parse(
            r#"{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 7, "acceptance_rate": 1.5}"#,
            2,
        )
        .expect_err("out of range");
        assert_eq!(
            err.to_string(),
            "trace line 2: field `acceptance_rate`: must be in [0, 1], got 1.5"
        );
    }
}
