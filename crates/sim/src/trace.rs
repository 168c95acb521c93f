//! Trace replay: the lines of `lapsd_workload::trace` (its header has the format), turned into
//! simulated requests. Blank lines are skipped. A malformed line is an error naming its 1-based
//! line number and the field; nothing panics on input.
//!
//! A line's served speculative-decoding counters (`drafted_tokens`, `accepted_tokens`,
//! `verify_steps`) replace `acceptance_rate` and give the request a `DraftLength`, as a
//! prompt-lookup drafter behaves: of its `output_tokens - 1 - accepted` decode steps (each yields
//! its accepted drafts plus one token; the prefill yields the first), `verify_steps` drafted,
//! `drafted / verify_steps` tokens each on average. Alpha is the value whose prefix acceptance
//! yields `accepted / verify_steps` tokens per drafting step at that length
//! (`acceptance::alpha_for_accepted_per_step`): the served accepted/drafted ratio is not alpha,
//! since draft positions after the first rejection count as drafted but can never be accepted.
//!
//! With `--predictor online` a request with `predicted_output_tokens` (the server's prediction
//! from the prompt's text, `lapsd serve --length-model`) starts with that prediction, as it did on
//! the server.

use std::io::BufRead;

use lapsd_workload::trace::{SpeculationCounters, TraceLine};

use crate::acceptance::{alpha_for_accepted_per_step, DraftLength};
use crate::error::SimError;

/// One parsed trace line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRecord {
    pub arrival_s: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Latent acceptance probability; `None` = draw it from the workload's distribution.
    pub acceptance_rate: Option<f64>,
    /// The drafter's draft length, from served counters; `None` = the speculation length.
    pub draft_length: Option<DraftLength>,
    /// The length the server predicted from the prompt's text at admission
    /// (`predicted_output_tokens`, from `lapsd serve --length-model`), used with
    /// `--predictor online` in place of the online predictor's first guess.
    pub predicted_output_tokens: Option<u32>,
}

/// Parses one line (`line` is 1-based, for messages).
pub fn parse_line(text: &str, line: usize) -> Result<TraceRecord, SimError> {
    let parsed = TraceLine::parse(text, line)?;
    let served = parsed
        .speculation
        .and_then(|c| served_counters(c, parsed.output_tokens));
    let (acceptance_rate, draft_length) = match served {
        Some((draft_length, alpha)) => (Some(alpha), Some(draft_length)),
        None => (parsed.acceptance_rate, None),
    };
    Ok(TraceRecord {
        arrival_s: parsed.arrival_s,
        prompt_tokens: parsed.prompt_tokens,
        output_tokens: parsed.output_tokens,
        acceptance_rate,
        draft_length,
        predicted_output_tokens: parsed.predicted_output_tokens,
    })
}

/// `(draft length, alpha)` from a served request's SD counters (module header), when the request
/// drafted at least once.
fn served_counters(
    counters: SpeculationCounters,
    output_tokens: u32,
) -> Option<(DraftLength, f64)> {
    let SpeculationCounters {
        drafted_tokens: drafted,
        accepted_tokens: accepted,
        verify_steps: steps,
    } = counters;
    if steps == 0 {
        return None;
    }
    // A recompute after preemption also yields a token, so this can undercount: never below
    // the drafting steps.
    let decode_steps = u64::from(output_tokens)
        .saturating_sub(1)
        .saturating_sub(accepted)
        .max(steps);
    let tokens_when_matched = drafted as f64 / steps as f64;
    let accepted_per_step = accepted as f64 / steps as f64;
    Some((
        DraftLength {
            match_probability: steps as f64 / decode_steps as f64,
            tokens_when_matched,
        },
        alpha_for_accepted_per_step(tokens_when_matched, accepted_per_step),
    ))
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
        assert_eq!(recs[1].predicted_output_tokens, None);
    }

    #[test]
    fn a_served_text_prediction_is_kept_and_checked() {
        let text = concat!(
            r#"{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 7, "predicted_output_tokens": 12}"#,
            "\n",
            r#"{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 40, "drafted_tokens": 30, "accepted_tokens": 6, "verify_steps": 20, "predicted_output_tokens": 33}"#,
            "\n",
            r#"{"arrival_s": 2, "prompt_tokens": 5, "output_tokens": 7, "predicted_output_tokens": null}"#,
            "\n",
        );
        let recs = parse_trace(text.as_bytes()).expect("valid trace");
        assert_eq!(
            recs.iter()
                .map(|r| r.predicted_output_tokens)
                .collect::<Vec<_>>(),
            vec![Some(12), Some(33), None]
        );
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 3, \"predicted_output_tokens\": 0}"),
            (1, "predicted_output_tokens")
        );
    }

    #[test]
    fn served_counters_give_the_draft_length_and_alpha() {
        let text = "{\"arrival_s\": 0, \"prompt_tokens\": 5, \"output_tokens\": 40, \"acceptance_rate\": 0.2, \"drafted_tokens\": 30, \"accepted_tokens\": 6, \"verify_steps\": 20}\n\
                    {\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 1, \"acceptance_rate\": null, \"drafted_tokens\": 0, \"accepted_tokens\": 0, \"verify_steps\": 0}\n";
        let recs = parse_trace(text.as_bytes()).expect("valid trace");
        // 40 tokens = the prefill's + 33 decode steps + 6 accepted; 20 of the 33 drafted.
        let draft = recs[0]
            .draft_length
            .expect("draft length from the counters");
        assert_eq!(draft.tokens_when_matched, 1.5);
        assert!((draft.match_probability - 20.0 / 33.0).abs() < 1e-12);
        let alpha = recs[0].acceptance_rate.expect("alpha from the counters");
        let back = crate::acceptance::expected_accepted_per_step(alpha, 1.5);
        assert!((back - 6.0 / 20.0).abs() < 1e-9);
        // The served ratio (6 / 30 = 0.2) is not alpha: later positions are rarely reachable.
        assert!(alpha > 0.2);
        // No SD step taken: nothing to learn from, the usual fields apply.
        assert_eq!(recs[1].draft_length, None);
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
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 3, \"drafted_tokens\": 4, \"verify_steps\": 2}"),
            (1, "accepted_tokens")
        );
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 3, \"drafted_tokens\": 4, \"accepted_tokens\": 5, \"verify_steps\": 2}"),
            (1, "accepted_tokens")
        );
        assert_eq!(
            err_of("{\"arrival_s\": 1, \"prompt_tokens\": 5, \"output_tokens\": 3, \"drafted_tokens\": -4, \"accepted_tokens\": 0, \"verify_steps\": 2}"),
            (1, "drafted_tokens")
        );
        assert!(matches!(
            parse_trace("\n\n".as_bytes()),
            Err(SimError::EmptyTrace)
        ));
    }
}
