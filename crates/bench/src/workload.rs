//! The work a benchmark run sends: which prompts, how many output tokens each asks for, and when
//! each is sent. Built deterministically from a source (profile, dataset, trace) and a seed.
//! A plan can also be written in the simulator's trace format, so `lapsd sim --trace` runs the
//! same work.
use std::io::Write;
use std::path::{Path, PathBuf};

use lapsd_workload::arrivals::ArrivalProcess;
use lapsd_workload::trace::{write_trace, TraceLine};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::datasets::{self, PromptReply};
use crate::error::BenchError;
use crate::profiles::{Profile, MIN_OUTPUT_TOKENS};
use crate::tokens::TokenCounter;
use crate::trace;

/// vLLM's ShareGPT filter (`sample_sharegpt_requests`): drop prompts over this many tokens ...
pub const SHAREGPT_MAX_PROMPT_TOKENS: u32 = 1024;
/// ... and pairs whose prompt + reply exceed this many tokens (before the output cap).
pub const SHAREGPT_MAX_TOTAL_TOKENS: u32 = 2048;

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum WorkloadSource {
    /// Built-in prompts with a profile's length distribution.
    Profile { profile: Profile },
    /// vLLM's ShareGPT JSON (possibly cut off).
    ShareGpt { path: PathBuf },
    /// GSM8K `test.jsonl` (question prompts, reference-answer lengths).
    Gsm8k { path: PathBuf },
    /// A request trace with its own arrival times.
    Trace { path: PathBuf },
}

/// One request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub prompt: String,
    /// Prompt length as counted by the [`TokenCounter`].
    pub prompt_tokens: u32,
    /// `max_tokens` sent to the server (the workload's output length).
    pub max_tokens: u32,
}

/// The requests of a run and their send times (same length, same order).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub items: Vec<WorkItem>,
    /// Seconds after the start of the run at which each item is sent.
    pub arrivals_s: Vec<f64>,
}

/// Everything that determines a plan.
pub struct PlanConfig<'a> {
    pub source: &'a WorkloadSource,
    /// Number of requests; `None` takes a whole trace.
    pub requests: Option<usize>,
    /// Arrival process; ignored for traces (they carry their arrival times).
    pub arrivals: ArrivalProcess,
    /// Mean send rate; `f64::INFINITY` sends everything at t = 0. Ignored for traces.
    pub rate_per_s: f64,
    pub seed: u64,
    /// Cap on `max_tokens` for profiles and datasets (not for traces, which say what they want).
    pub max_output_tokens: u32,
    /// Datasets only: each reply's token count is multiplied by this (rounded up) before the cap,
    /// keeping the length distribution's shape at a fraction of its work (1.0 = as recorded).
    pub output_scale: f64,
    pub tokens: &'a TokenCounter,
}

/// Builds the plan. Prompts and arrivals use independent RNG streams of the same seed, so changing
/// the rate does not change which prompts are sent.
pub fn build_plan(config: &PlanConfig<'_>) -> Result<Plan, BenchError> {
    let mut prompt_rng = ChaCha8Rng::seed_from_u64(config.seed);
    prompt_rng.set_stream(1);
    let mut arrival_rng = ChaCha8Rng::seed_from_u64(config.seed);
    arrival_rng.set_stream(2);
    let n_requests = config.requests.unwrap_or(0);
    let is_trace = matches!(config.source, WorkloadSource::Trace { .. });
    if !(config.output_scale.is_finite() && config.output_scale > 0.0) {
        return Err(BenchError::InvalidArgument {
            flag: "output-scale",
            message: format!("must be a positive number, got {}", config.output_scale),
        });
    }
    if n_requests == 0 && !is_trace {
        return Err(BenchError::InvalidArgument {
            flag: "requests",
            message: "must be >= 1".into(),
        });
    }
    let items = match config.source {
        WorkloadSource::Profile { profile } => (0..n_requests)
            .map(|_| {
                let (prompt, max_tokens) = profile.sample(
                    &mut prompt_rng,
                    config.max_output_tokens,
                    config.output_scale,
                );
                WorkItem {
                    prompt: prompt.to_string(),
                    prompt_tokens: config.tokens.count(prompt),
                    max_tokens,
                }
            })
            .collect(),
        WorkloadSource::ShareGpt { path } => {
            let data = datasets::load_sharegpt(path)?;
            tracing::info!(
                complete_conversations = data.complete_conversations,
                pairs = data.pairs.len(),
                truncated = data.truncated,
                "loaded ShareGPT"
            );
            sample_pairs(&data.pairs, n_requests, &mut prompt_rng, config, true)?
        }
        WorkloadSource::Gsm8k { path } => {
            let pairs = datasets::load_gsm8k(path)?;
            sample_pairs(&pairs, n_requests, &mut prompt_rng, config, false)?
        }
        WorkloadSource::Trace { path } => {
            let mut requests = trace::load_trace(path)?;
            if let Some(n) = config.requests {
                requests.truncate(n);
            }
            if requests.is_empty() {
                return Err(BenchError::EmptyWorkload(format!(
                    "{} has no request",
                    path.display()
                )));
            }
            let arrivals_s = requests.iter().map(|r| r.arrival_s).collect();
            let items = requests
                .into_iter()
                .map(|r| WorkItem {
                    prompt_tokens: config.tokens.count(&r.prompt),
                    prompt: r.prompt,
                    max_tokens: r.max_tokens,
                })
                .collect();
            return Ok(Plan { items, arrivals_s });
        }
    };
    let arrivals_s = config
        .arrivals
        .offsets_s(config.rate_per_s, n_requests, &mut arrival_rng)?;
    Ok(Plan { items, arrivals_s })
}

impl Plan {
    /// The plan as simulator trace lines, in arrival order.
    pub fn sim_trace_lines(&self) -> Vec<TraceLine> {
        let mut order: Vec<(f64, &WorkItem)> = self
            .arrivals_s
            .iter()
            .copied()
            .zip(self.items.iter())
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        order
            .into_iter()
            .map(|(arrival_s, item)| TraceLine {
                arrival_s,
                // The simulator needs at least one token of each (an empty trace prompt still
                // costs a step).
                prompt_tokens: item.prompt_tokens.max(1),
                output_tokens: item.max_tokens.max(1),
                acceptance_rate: None,
                speculation: None,
                predicted_output_tokens: None,
            })
            .collect()
    }

    /// Writes the plan in the simulator's trace format (`--emit-sim-trace`), in arrival order.
    pub fn write_sim_trace(&self, path: &Path) -> Result<(), BenchError> {
        let mut out = Vec::new();
        write_trace(&self.sim_trace_lines(), &mut out).map_err(|e| BenchError::io(path, e))?;
        let mut file = std::fs::File::create(path).map_err(|e| BenchError::io(path, e))?;
        file.write_all(&out).map_err(|e| BenchError::io(path, e))
    }
}

/// Whether a dataset pair passes vLLM's ShareGPT length filter.
pub fn passes_sharegpt_filter(prompt_tokens: u32, reply_tokens: u32) -> bool {
    prompt_tokens >= 4
        && reply_tokens >= 4
        && prompt_tokens <= SHAREGPT_MAX_PROMPT_TOKENS
        && prompt_tokens + reply_tokens <= SHAREGPT_MAX_TOTAL_TOKENS
}

/// The `max_tokens` a dataset reply of `reply_tokens` becomes: scaled (rounded up), capped, and at
/// least the profiles' minimum (or the cap, if smaller).
pub fn served_output_tokens(reply_tokens: u32, output_scale: f64, max_output_tokens: u32) -> u32 {
    let scaled = (f64::from(reply_tokens) * output_scale).ceil();
    (scaled.min(f64::from(u32::MAX)) as u32)
        .min(max_output_tokens)
        .max(MIN_OUTPUT_TOKENS.min(max_output_tokens).max(1))
}

/// Samples `n` prompt/reply pairs as vLLM does for ShareGPT: shuffle with the seed, walk the
/// shuffled list keeping pairs that pass the length filter, until `n` are taken (starting over with
/// a new shuffle if the dataset has fewer than `n` usable pairs). The output length is the reply's
/// token count capped at `max_output_tokens`.
fn sample_pairs(
    pairs: &[PromptReply],
    n: usize,
    rng: &mut ChaCha8Rng,
    config: &PlanConfig<'_>,
    vllm_sharegpt_filter: bool,
) -> Result<Vec<WorkItem>, BenchError> {
    let mut items = Vec::with_capacity(n);
    let mut indices: Vec<usize> = (0..pairs.len()).collect();
    while items.len() < n {
        indices.shuffle(rng);
        let before = items.len();
        for &index in &indices {
            if items.len() == n {
                break;
            }
            let pair = &pairs[index];
            let prompt_tokens = config.tokens.count(&pair.prompt);
            let reply_tokens = config.tokens.count(&pair.reply);
            if vllm_sharegpt_filter && !passes_sharegpt_filter(prompt_tokens, reply_tokens) {
                continue;
            }
            items.push(WorkItem {
                prompt: pair.prompt.clone(),
                prompt_tokens,
                max_tokens: served_output_tokens(
                    reply_tokens,
                    config.output_scale,
                    config.max_output_tokens,
                ),
            });
        }
        if items.len() == before {
            return Err(BenchError::EmptyWorkload(
                "no prompt in the dataset passes the length filter".into(),
            ));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        source: &WorkloadSource,
        rate_per_s: f64,
        seed: u64,
        requests: usize,
    ) -> Result<Plan, BenchError> {
        build_plan(&PlanConfig {
            source,
            requests: Some(requests),
            arrivals: ArrivalProcess::Poisson,
            rate_per_s,
            seed,
            max_output_tokens: 256,
            output_scale: 1.0,
            tokens: &TokenCounter::CharsPerFour,
        })
    }

    fn sharegpt_file(dir: &Path) -> PathBuf {
        let long = "x".repeat(4 * 3000); // 3000 tokens: over the prompt filter
        let text = format!(
            r#"[{{"conversations":[{{"from":"human","value":"{long}"}},{{"from":"gpt","value":"a fine long reply here"}}]}},
               {{"conversations":[{{"from":"human","value":"hi"}},{{"from":"gpt","value":"a reply that is long enough"}}]}},
               {{"conversations":[{{"from":"human","value":"what is a good prompt?"}},{{"from":"gpt","value":"{reply}"}}]}},
               {{"conversations":[{{"from":"human","value":"second usable prompt"}},{{"from":"gpt","value":"short-ish reply text"}}]}},
               {{"conversations":[{{"from":"human","value":"cut off"#,
            reply = "y".repeat(4 * 1000)
        );
        let path = dir.join("sharegpt.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn same_seed_same_plan_and_rate_does_not_change_prompts() {
        let source = WorkloadSource::Profile {
            profile: Profile::Mbpp,
        };
        let a = plan(&source, 2.0, 9, 50).unwrap();
        assert_eq!(a, plan(&source, 2.0, 9, 50).unwrap());
        let faster = plan(&source, 8.0, 9, 50).unwrap();
        assert_eq!(a.items, faster.items);
        assert_ne!(a.arrivals_s, faster.arrivals_s);
        assert_ne!(a.items, plan(&source, 2.0, 10, 50).unwrap().items);
        assert!(a
            .items
            .iter()
            .all(|i| i.max_tokens <= 256 && i.prompt_tokens > 0));
    }

    #[test]
    fn sharegpt_sampling_filters_caps_and_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let source = WorkloadSource::ShareGpt {
            path: sharegpt_file(dir.path()),
        };
        let p = plan(&source, 1.0, 0, 6).unwrap();
        assert_eq!(p.items.len(), 6);
        let mut prompts: Vec<&str> = p.items.iter().map(|i| i.prompt.as_str()).collect();
        prompts.sort();
        prompts.dedup();
        // "hi" (1 token) and the 3000-token prompt fail vLLM's filter; the cut element is dropped.
        assert_eq!(prompts, ["second usable prompt", "what is a good prompt?"]);
        for item in &p.items {
            let expected = if item.prompt.starts_with("what") {
                256
            } else {
                5
            };
            assert_eq!(item.max_tokens, expected, "{}", item.prompt);
        }
    }

    #[test]
    fn output_scale_shrinks_dataset_lengths_before_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let source = WorkloadSource::ShareGpt {
            path: sharegpt_file(dir.path()),
        };
        let scaled = |scale: f64| {
            build_plan(&PlanConfig {
                source: &source,
                requests: Some(6),
                arrivals: ArrivalProcess::Poisson,
                rate_per_s: 1.0,
                seed: 0,
                max_output_tokens: 256,
                output_scale: scale,
                tokens: &TokenCounter::CharsPerFour,
            })
        };
        let p = scaled(0.125).unwrap();
        for item in &p.items {
            // Replies of 1000 and 5 tokens: ceil(1000 / 8) = 125 (under the cap); 5 -> 1 -> the
            // 4-token floor.
            let expected = if item.prompt.starts_with("what") {
                125
            } else {
                4
            };
            assert_eq!(item.max_tokens, expected, "{}", item.prompt);
        }
        for bad in [0.0, -1.0, f64::NAN] {
            match scaled(bad) {
                Err(BenchError::InvalidArgument { flag, .. }) => assert_eq!(flag, "output-scale"),
                other => panic!("scale {bad}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn zero_requests_is_an_argument_error() {
        let source = WorkloadSource::Profile {
            profile: Profile::Chatbot,
        };
        match plan(&source, 1.0, 0, 0) {
            Err(BenchError::InvalidArgument { flag, .. }) => assert_eq!(flag, "requests"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
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
        plan.write_sim_trace(&path).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
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
