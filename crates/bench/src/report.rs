//! The result of a run, in the shape of `vllm bench serve`'s report: latency summaries (TTFT, TPOT,
//! ITL, end-to-end), throughput, goodput under SLOs, errors by kind, acceptance statistics when the
//! server sent them, and one record per request (for CDF plots). Printed as a table and saved as JSON.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::client::{Endpoint, RequestResult, TokenCountSource};
use crate::error::BenchError;
use crate::runner::RunOutcome;
use crate::stats::{goodput_per_s, LatencySummary, Slo};
use crate::workload::{Plan, WorkloadSource};

/// The settings a run was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub workload: WorkloadSource,
    /// Requests per second; `None` = infinite (all at once) or taken from a trace.
    pub rate_per_s: Option<f64>,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub requests: usize,
    pub seed: u64,
    pub max_output_tokens: u32,
    /// `--output-scale` (datasets' reply lengths multiplied by it).
    #[serde(default = "one")]
    pub output_scale: f64,
    /// How workload lengths were counted ("chars/4" or "tokenizer.json").
    pub token_counter: String,
    pub temperature: f64,
    pub ignore_eos: bool,
    /// `--extra-body` fields sent with every request.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    pub slo: Slo,
}

/// One request's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub arrival_s: f64,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    pub output_tokens: u32,
    pub output_tokens_source: Option<TokenCountSource>,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: f64,
    /// Error tag (see `errors_by_kind`) when the request failed.
    pub error: Option<String>,
    pub error_message: Option<String>,
    pub acceptance_rate: Option<f64>,
    /// The server's count of the prompt (`usage.prompt_tokens`), when sent: `prompt_tokens` is
    /// the client's estimate (`--token-counter`), the server's count is what it computed.
    #[serde(default)]
    pub server_prompt_tokens: Option<u32>,
    /// Draft tokens the server proposed for this request, when sent.
    #[serde(default)]
    pub drafted_tokens: Option<u64>,
    /// Draft tokens the target accepted, when sent.
    #[serde(default)]
    pub accepted_tokens: Option<u64>,
    /// Target verification passes (SD steps), when sent; with `drafted_tokens` it gives the
    /// drafter's effective speculation length (`lapsd sim` traces take it, scripts/sim-vs-serve.sh).
    #[serde(default)]
    pub verify_steps: Option<u64>,
    /// Server-reported time to first token (from admission, no network), when sent.
    pub server_ttft_ms: Option<f64>,
    /// Server-reported end-to-end latency, when sent.
    pub server_e2e_ms: Option<f64>,
    /// Server-reported wait before the first step, when sent.
    pub server_queue_ms: Option<f64>,
    /// Server-reported preemptions, when sent.
    pub preemptions: Option<u64>,
    /// The server's prediction of the output length from the prompt's text (`lapsd serve
    /// --length-model`), when sent; `lapsd sim` traces replay it (scripts/sim-vs-serve.sh).
    #[serde(default)]
    pub predicted_output_tokens: Option<u64>,
    /// The stream's `finish_reason` (`length`, `stop`, ...), when sent.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// Speculative-decoding statistics over the requests that reported them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdSummary {
    pub requests_with_stats: usize,
    pub drafted_tokens: u64,
    pub accepted_tokens: u64,
    /// Total accepted / total drafted (token-weighted), when drafted counts were reported.
    pub acceptance_rate: Option<f64>,
    /// Mean over requests of the per-request acceptance rate.
    pub mean_request_acceptance_rate: Option<f64>,
    /// Mean over requests of the per-request mean acceptance length.
    pub mean_acceptance_length: Option<f64>,
}

/// The full result of one run (the `--out` JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Free label (e.g. the server's policy), used as the line name in vs-rate plots.
    pub label: Option<String>,
    pub settings: RunSettings,
    pub duration_s: f64,
    pub completed: usize,
    pub failed: usize,
    pub errors_by_kind: BTreeMap<String, usize>,
    /// Completed requests by the `finish_reason` the server sent (`none` when it sent none).
    #[serde(default)]
    pub finish_reasons: BTreeMap<String, usize>,
    /// Completed requests that produced fewer tokens than their `max_tokens` (with `--ignore-eos`
    /// these ran short: a server that ignored it, or cut streams).
    #[serde(default)]
    pub ended_before_max_tokens: usize,
    /// Prompt tokens of completed requests (server `usage` where sent, else the workload count).
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub request_throughput_per_s: f64,
    pub output_throughput_tokens_per_s: f64,
    pub total_token_throughput_tokens_per_s: f64,
    /// Completed requests per second meeting the SLO; `None` without `--slo-*`.
    pub goodput_per_s: Option<f64>,
    pub ttft: Option<LatencySummary>,
    pub tpot: Option<LatencySummary>,
    pub itl: Option<LatencySummary>,
    pub e2e: Option<LatencySummary>,
    /// Server-reported end-to-end latency of completed requests (`metrics.scheduling`), if sent.
    #[serde(default)]
    pub server_e2e: Option<LatencySummary>,
    /// Server-reported TTFT of completed requests, if sent.
    #[serde(default)]
    pub server_ttft: Option<LatencySummary>,
    pub speculative_decoding: Option<SdSummary>,
    pub requests: Vec<RequestRecord>,
}

impl BenchReport {
    /// Computes the report of a finished run.
    pub fn build(
        label: Option<String>,
        settings: RunSettings,
        plan: &Plan,
        outcome: &RunOutcome,
    ) -> Self {
        let ms = |s: f64| s * 1000.0;
        let mut errors_by_kind = BTreeMap::new();
        let mut finish_reasons = BTreeMap::new();
        let mut ended_before_max_tokens = 0;
        let (mut ttfts, mut tpots, mut itls, mut e2es) = (vec![], vec![], vec![], vec![]);
        let mut slo_inputs = Vec::new();
        let (mut server_e2es, mut server_ttfts) = (vec![], vec![]);
        let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
        let mut records = Vec::with_capacity(outcome.results.len());
        for ((result, item), &arrival_s) in outcome
            .results
            .iter()
            .zip(&plan.items)
            .zip(&plan.arrivals_s)
        {
            let tpot_ms = result.tpot_s().map(ms);
            match &result.error {
                Some(error) => *errors_by_kind.entry(error.kind.tag()).or_insert(0) += 1,
                None => {
                    if let Some(ttft_s) = result.ttft_s {
                        ttfts.push(ms(ttft_s));
                        slo_inputs.push((ms(ttft_s), tpot_ms));
                    } else {
                        // A successful stream without content: no first token, counts against goodput.
                        slo_inputs.push((f64::INFINITY, tpot_ms));
                    }
                    tpots.extend(tpot_ms);
                    itls.extend(result.itl_s.iter().copied().map(ms));
                    e2es.push(ms(result.e2e_s));
                    if let Some(timing) = &result.server_timing {
                        server_e2es.extend(timing.e2e_s.map(ms));
                        server_ttfts.extend(timing.ttft_s.map(ms));
                    }
                    input_tokens +=
                        u64::from(result.server_prompt_tokens.unwrap_or(item.prompt_tokens));
                    output_tokens += u64::from(result.output_tokens);
                    let reason = result.finish_reason.as_deref().unwrap_or("none");
                    *finish_reasons.entry(reason.to_string()).or_insert(0) += 1;
                    if result.output_tokens < item.max_tokens {
                        ended_before_max_tokens += 1;
                    }
                }
            }
            records.push(record(
                result,
                item.prompt_tokens,
                item.max_tokens,
                arrival_s,
                tpot_ms,
            ));
        }
        let completed = e2es.len();
        let duration_s = outcome.duration_s;
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        BenchReport {
            label,
            goodput_per_s: settings
                .slo
                .is_set()
                .then(|| goodput_per_s(&settings.slo, &slo_inputs, duration_s)),
            settings,
            duration_s,
            completed,
            failed: outcome.results.len() - completed,
            errors_by_kind,
            finish_reasons,
            ended_before_max_tokens,
            total_input_tokens: input_tokens,
            total_output_tokens: output_tokens,
            request_throughput_per_s: per_s(completed as f64),
            output_throughput_tokens_per_s: per_s(output_tokens as f64),
            total_token_throughput_tokens_per_s: per_s((input_tokens + output_tokens) as f64),
            ttft: LatencySummary::from_ms(&ttfts),
            tpot: LatencySummary::from_ms(&tpots),
            itl: LatencySummary::from_ms(&itls),
            e2e: LatencySummary::from_ms(&e2es),
            server_e2e: LatencySummary::from_ms(&server_e2es),
            server_ttft: LatencySummary::from_ms(&server_ttfts),
            speculative_decoding: summarize_sd(&outcome.results),
            requests: records,
        }
    }

    /// Writes the report as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), BenchError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| BenchError::ResultFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, json).map_err(|e| BenchError::io(path, e))
    }

    /// Reads a report written by [`BenchReport::save`].
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| BenchError::ResultFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The human-readable table (vLLM's layout).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, name: &str, value: String| {
            let _ = writeln!(out, "{name:<40}{value:>12}");
        };
        let _ = writeln!(out, "{:=^52}", " Serving Benchmark Result ");
        if let Some(label) = &self.label {
            line(&mut out, "Label:", label.clone());
        }
        line(&mut out, "Successful requests:", self.completed.to_string());
        line(&mut out, "Failed requests:", self.failed.to_string());
        for (kind, count) in &self.errors_by_kind {
            line(&mut out, &format!("  errors {kind}:"), count.to_string());
        }
        for (reason, count) in &self.finish_reasons {
            line(
                &mut out,
                &format!("  finish_reason {reason}:"),
                count.to_string(),
            );
        }
        line(
            &mut out,
            "Ended before max_tokens:",
            self.ended_before_max_tokens.to_string(),
        );
        line(
            &mut out,
            "Benchmark duration (s):",
            format!("{:.2}", self.duration_s),
        );
        line(
            &mut out,
            "Total input tokens:",
            self.total_input_tokens.to_string(),
        );
        line(
            &mut out,
            "Total generated tokens:",
            self.total_output_tokens.to_string(),
        );
        line(
            &mut out,
            "Request throughput (req/s):",
            format!("{:.2}", self.request_throughput_per_s),
        );
        if let Some(goodput) = self.goodput_per_s {
            line(
                &mut out,
                "Request goodput (req/s):",
                format!("{goodput:.2}"),
            );
        }
        line(
            &mut out,
            "Output token throughput (tok/s):",
            format!("{:.2}", self.output_throughput_tokens_per_s),
        );
        line(
            &mut out,
            "Total token throughput (tok/s):",
            format!("{:.2}", self.total_token_throughput_tokens_per_s),
        );
        for (title, short, summary) in [
            ("Time to First Token", "TTFT", &self.ttft),
            (
                "Time per Output Token (excl. 1st token)",
                "TPOT",
                &self.tpot,
            ),
            ("Inter-token Latency", "ITL", &self.itl),
            ("End-to-end Latency", "E2E", &self.e2e),
            ("Server-reported TTFT", "server TTFT", &self.server_ttft),
            (
                "Server-reported E2E Latency",
                "server E2E",
                &self.server_e2e,
            ),
        ] {
            if short.starts_with("server") && summary.is_none() {
                continue;
            }
            let _ = writeln!(out, "{:-^52}", format!(" {title} "));
            match summary {
                Some(s) => {
                    line(
                        &mut out,
                        &format!("Mean {short} (ms):"),
                        format!("{:.2}", s.mean_ms),
                    );
                    line(
                        &mut out,
                        &format!("Median {short} (ms):"),
                        format!("{:.2}", s.median_ms),
                    );
                    line(
                        &mut out,
                        &format!("P99 {short} (ms):"),
                        format!("{:.2}", s.p99_ms),
                    );
                }
                None => line(&mut out, "(no samples)", String::new()),
            }
        }
        if let Some(sd) = &self.speculative_decoding {
            let _ = writeln!(out, "{:-^52}", " Speculative Decoding ");
            line(
                &mut out,
                "Requests with SD stats:",
                sd.requests_with_stats.to_string(),
            );
            line(&mut out, "Drafted tokens:", sd.drafted_tokens.to_string());
            line(&mut out, "Accepted tokens:", sd.accepted_tokens.to_string());
            if let Some(rate) = sd.acceptance_rate {
                line(
                    &mut out,
                    "Acceptance rate (%):",
                    format!("{:.2}", rate * 100.0),
                );
            }
            if let Some(length) = sd.mean_acceptance_length {
                line(&mut out, "Mean acceptance length:", format!("{length:.2}"));
            }
        }
        let _ = writeln!(out, "{}", "=".repeat(52));
        out
    }
}

fn record(
    result: &RequestResult,
    prompt_tokens: u32,
    max_tokens: u32,
    arrival_s: f64,
    tpot_ms: Option<f64>,
) -> RequestRecord {
    RequestRecord {
        arrival_s,
        prompt_tokens,
        max_tokens,
        output_tokens: result.output_tokens,
        output_tokens_source: result.output_tokens_source,
        ttft_ms: result.ttft_s.map(|s| s * 1000.0),
        tpot_ms,
        e2e_ms: result.e2e_s * 1000.0,
        error: result.error.as_ref().map(|e| e.kind.tag()),
        error_message: result.error.as_ref().map(|e| e.message.clone()),
        acceptance_rate: result.sd.as_ref().and_then(|sd| sd.acceptance_rate),
        server_prompt_tokens: result.server_prompt_tokens,
        drafted_tokens: result.sd.as_ref().and_then(|sd| sd.drafted_tokens),
        accepted_tokens: result.sd.as_ref().and_then(|sd| sd.accepted_tokens),
        verify_steps: result.sd.as_ref().and_then(|sd| sd.verify_steps),
        server_ttft_ms: result
            .server_timing
            .as_ref()
            .and_then(|t| t.ttft_s)
            .map(|s| s * 1000.0),
        server_e2e_ms: result
            .server_timing
            .as_ref()
            .and_then(|t| t.e2e_s)
            .map(|s| s * 1000.0),
        server_queue_ms: result
            .server_timing
            .as_ref()
            .and_then(|t| t.queue_time_s)
            .map(|s| s * 1000.0),
        preemptions: result.server_timing.as_ref().and_then(|t| t.preemptions),
        predicted_output_tokens: result
            .server_timing
            .as_ref()
            .and_then(|t| t.text_predicted_output_tokens),
        finish_reason: result.finish_reason.clone(),
    }
}

fn summarize_sd(results: &[RequestResult]) -> Option<SdSummary> {
    let stats: Vec<_> = results
        .iter()
        .filter(|r| r.error.is_none())
        .filter_map(|r| r.sd.as_ref())
        .collect();
    if stats.is_empty() {
        return None;
    }
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let drafted: u64 = stats.iter().filter_map(|s| s.drafted_tokens).sum();
    let accepted: u64 = stats.iter().filter_map(|s| s.accepted_tokens).sum();
    Some(SdSummary {
        requests_with_stats: stats.len(),
        drafted_tokens: drafted,
        accepted_tokens: accepted,
        acceptance_rate: (drafted > 0).then(|| accepted as f64 / drafted as f64),
        mean_request_acceptance_rate: mean(
            stats.iter().filter_map(|s| s.acceptance_rate).collect(),
        ),
        mean_acceptance_length: mean(
            stats
                .iter()
                .filter_map(|s| s.mean_acceptance_length)
                .collect(),
        ),
    })
}

fn one() -> f64 {
    1.0
}
