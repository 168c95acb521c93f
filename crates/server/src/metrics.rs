//! Prometheus metrics (`lapsd_` prefix), registered on a private registry and rendered in the text
//! exposition format by `GET /metrics`. Spec-decode counters are named as vLLM names them
//! (`lapsd_spec_decode_num_drafts_total`, ...). Updated by the engine worker and the handlers.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Unfinished requests by phase: waiting, running, preempted_kv_kept, preempted_kv_freed.
    pub requests: IntGaugeVec,
    /// Unfinished requests per multi-level queue level (attained-service thresholds).
    pub queue_requests: IntGaugeVec,
    /// Unfinished requests whose acceptance rate is stable (LAPS-SD's perceptible set).
    pub perceptible_requests: IntGauge,
    /// Finished requests by finish reason (stop, length, cancelled, error, never_fits).
    pub requests_finished: IntCounterVec,
    /// Requests refused before reaching the engine, by reason.
    pub requests_rejected: IntCounterVec,
    /// Preemptions by kind (keep_kv, free_kv).
    pub preemptions: IntCounterVec,
    /// KV tokens held by the engine.
    pub kv_tokens_in_use: IntGauge,
    /// KV tokens the scheduler has reserved.
    pub kv_tokens_reserved: IntGauge,
    /// KV tokens the engine holds / the KV budget, in [0, 1].
    pub kv_cache_usage_ratio: Gauge,
    /// Requests handed to the engine worker that it has not admitted yet (it admits between
    /// steps): counted as waiting, so the gauge is right while a step runs.
    pub pending_admission: AtomicI64,
    pub kv_budget_tokens: IntGauge,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub steps: IntCounter,
    pub step_batch_size: Histogram,
    pub step_duration_s: Histogram,
    pub spec_num_drafts: IntCounter,
    pub spec_num_draft_tokens: IntCounter,
    pub spec_num_accepted_tokens: IntCounter,
    pub spec_accepted_per_pos: IntCounterVec,
    /// Per finished request: accepted / drafted.
    pub request_acceptance_rate: Histogram,
    pub ttft_s: Histogram,
    pub tpot_s: Histogram,
    pub e2e_s: Histogram,
    pub queue_time_s: Histogram,
    /// Seconds since the server started (set on scrape).
    pub uptime_s: Gauge,
    /// Policy in use, as a label with value 1.
    pub policy_info: GaugeVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
    ]
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let requests = IntGaugeVec::new(
            Opts::new("lapsd_requests", "Unfinished requests by phase"),
            &["state"],
        )?;
        let queue_requests = IntGaugeVec::new(
            Opts::new(
                "lapsd_queue_requests",
                "Unfinished requests per multi-level queue level (by attained service)",
            ),
            &["level"],
        )?;
        let perceptible_requests = IntGauge::new(
            "lapsd_perceptible_requests",
            "Unfinished requests whose acceptance rate is stable (LAPS-SD perceptible)",
        )?;
        let requests_finished = IntCounterVec::new(
            Opts::new(
                "lapsd_requests_finished_total",
                "Finished requests by reason",
            ),
            &["finish_reason"],
        )?;
        let requests_rejected = IntCounterVec::new(
            Opts::new(
                "lapsd_requests_rejected_total",
                "Requests refused before the engine",
            ),
            &["reason"],
        )?;
        let preemptions = IntCounterVec::new(
            Opts::new("lapsd_preemptions_total", "Preemptions by kind"),
            &["kind"],
        )?;
        let kv_tokens_in_use =
            IntGauge::new("lapsd_kv_tokens_in_use", "KV tokens held by the engine")?;
        let kv_tokens_reserved = IntGauge::new(
            "lapsd_kv_tokens_reserved",
            "KV tokens reserved by the scheduler (with lookahead)",
        )?;
        let kv_budget_tokens = IntGauge::new("lapsd_kv_budget_tokens", "KV budget in tokens")?;
        let kv_cache_usage_ratio = Gauge::new(
            "lapsd_kv_cache_usage_ratio",
            "Fraction of the KV budget held by resident requests (engine KV tokens / budget)",
        )?;
        let prompt_tokens = IntCounter::new("lapsd_prompt_tokens_total", "Prompt tokens admitted")?;
        let generation_tokens =
            IntCounter::new("lapsd_generation_tokens_total", "Tokens generated")?;
        let steps = IntCounter::new("lapsd_engine_steps_total", "Engine steps run")?;
        let step_batch_size = Histogram::with_opts(
            HistogramOpts::new("lapsd_step_batch_size", "Requests per engine step")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        let step_duration_s = Histogram::with_opts(
            HistogramOpts::new("lapsd_step_duration_seconds", "Engine step duration")
                .buckets(latency_buckets()),
        )?;
        let spec_num_drafts = IntCounter::new(
            "lapsd_spec_decode_num_drafts_total",
            "Draft proposals verified (one per request per SD step with a non-empty draft)",
        )?;
        let spec_num_draft_tokens = IntCounter::new(
            "lapsd_spec_decode_num_draft_tokens_total",
            "Draft tokens proposed",
        )?;
        let spec_num_accepted_tokens = IntCounter::new(
            "lapsd_spec_decode_num_accepted_tokens_total",
            "Draft tokens accepted",
        )?;
        let spec_accepted_per_pos = IntCounterVec::new(
            Opts::new(
                "lapsd_spec_decode_num_accepted_tokens_per_pos_total",
                "Draft tokens accepted at each draft position (0-based)",
            ),
            &["position"],
        )?;
        let request_acceptance_rate = Histogram::with_opts(
            HistogramOpts::new(
                "lapsd_request_acceptance_rate",
                "Per finished request: accepted / drafted tokens",
            )
            .buckets(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        )?;
        let ttft_s = Histogram::with_opts(
            HistogramOpts::new("lapsd_time_to_first_token_seconds", "Time to first token")
                .buckets(latency_buckets()),
        )?;
        let tpot_s = Histogram::with_opts(
            HistogramOpts::new(
                "lapsd_time_per_output_token_seconds",
                "Mean time per output token after the first, per request",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
            ]),
        )?;
        let e2e_s = Histogram::with_opts(
            HistogramOpts::new("lapsd_e2e_request_latency_seconds", "End-to-end latency")
                .buckets(latency_buckets()),
        )?;
        let queue_time_s = Histogram::with_opts(
            HistogramOpts::new(
                "lapsd_request_queue_time_seconds",
                "Wait before the first step",
            )
            .buckets(latency_buckets()),
        )?;
        let uptime_s = Gauge::new("lapsd_uptime_seconds", "Seconds since the server started")?;
        let policy_info = GaugeVec::new(
            Opts::new(
                "lapsd_policy_info",
                "Scheduling policy and draft method in use",
            ),
            &["policy", "draft"],
        )?;
        reg(Box::new(requests.clone()))?;
        reg(Box::new(queue_requests.clone()))?;
        reg(Box::new(perceptible_requests.clone()))?;
        reg(Box::new(requests_finished.clone()))?;
        reg(Box::new(requests_rejected.clone()))?;
        reg(Box::new(preemptions.clone()))?;
        reg(Box::new(kv_tokens_in_use.clone()))?;
        reg(Box::new(kv_tokens_reserved.clone()))?;
        reg(Box::new(kv_budget_tokens.clone()))?;
        reg(Box::new(kv_cache_usage_ratio.clone()))?;
        reg(Box::new(prompt_tokens.clone()))?;
        reg(Box::new(generation_tokens.clone()))?;
        reg(Box::new(steps.clone()))?;
        reg(Box::new(step_batch_size.clone()))?;
        reg(Box::new(step_duration_s.clone()))?;
        reg(Box::new(spec_num_drafts.clone()))?;
        reg(Box::new(spec_num_draft_tokens.clone()))?;
        reg(Box::new(spec_num_accepted_tokens.clone()))?;
        reg(Box::new(spec_accepted_per_pos.clone()))?;
        reg(Box::new(request_acceptance_rate.clone()))?;
        reg(Box::new(ttft_s.clone()))?;
        reg(Box::new(tpot_s.clone()))?;
        reg(Box::new(e2e_s.clone()))?;
        reg(Box::new(queue_time_s.clone()))?;
        reg(Box::new(uptime_s.clone()))?;
        reg(Box::new(policy_info.clone()))?;
        // Zero the labelled series clients expect to find even before any traffic.
        for state in REQUEST_STATES {
            requests.with_label_values(&[state]).set(0);
        }
        for reason in ["stop", "length", "cancelled", "error", "never_fits"] {
            requests_finished.with_label_values(&[reason]);
        }
        for kind in ["keep_kv", "free_kv"] {
            preemptions.with_label_values(&[kind]);
        }
        requests_rejected.with_label_values(&["queue_full"]);
        Ok(Self {
            registry,
            requests,
            queue_requests,
            perceptible_requests,
            requests_finished,
            requests_rejected,
            preemptions,
            kv_tokens_in_use,
            kv_tokens_reserved,
            kv_cache_usage_ratio,
            pending_admission: AtomicI64::new(0),
            kv_budget_tokens,
            prompt_tokens,
            generation_tokens,
            steps,
            step_batch_size,
            step_duration_s,
            spec_num_drafts,
            spec_num_draft_tokens,
            spec_num_accepted_tokens,
            spec_accepted_per_pos,
            request_acceptance_rate,
            ttft_s,
            tpot_s,
            e2e_s,
            queue_time_s,
            uptime_s,
            policy_info,
        })
    }

    /// A handler handed a request to the worker: it is waiting from now on.
    pub fn request_submitted(&self) {
        self.pending_admission.fetch_add(1, Ordering::AcqRel);
        self.requests.with_label_values(&["waiting"]).inc();
    }

    /// A request counted by [`Metrics::request_submitted`] never reached the worker.
    pub fn request_not_submitted(&self) {
        self.pending_admission.fetch_sub(1, Ordering::AcqRel);
        self.requests.with_label_values(&["waiting"]).dec();
    }

    /// The worker took a submitted request off its channel (admitted or refused).
    pub fn request_received(&self) {
        self.pending_admission.fetch_sub(1, Ordering::AcqRel);
    }

    /// Submitted requests the worker has not taken yet.
    pub fn pending_admission(&self) -> i64 {
        self.pending_admission.load(Ordering::Acquire).max(0)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

impl Metrics {
    /// The load gauges under vLLM's names, in the text exposition format, for routers and
    /// autoscalers that read only those (the Gateway API Inference Extension's model-server
    /// protocol names `vllm:num_requests_waiting`, `vllm:num_requests_running` and
    /// `vllm:kv_cache_usage_perc`). Same values as the `lapsd_` gauges: waiting counts preempted
    /// requests too (vLLM puts them back in its waiting queue), and the KV usage is a fraction in
    /// [0, 1] as vLLM's is despite the name.
    pub fn render_vllm_compat(&self, model_name: &str) -> String {
        let state = |s: &str| self.requests.with_label_values(&[s]).get();
        let waiting = state("waiting") + state("preempted_kv_kept") + state("preempted_kv_freed");
        let running = state("running");
        let kv = self.kv_cache_usage_ratio.get();
        // Prometheus label values escape backslash, quote and newline.
        let label = model_name
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let mut out = String::new();
        for (name, help, value) in [
            (
                "vllm:num_requests_waiting",
                "Requests waiting (lapsd_requests waiting + preempted)",
                waiting as f64,
            ),
            (
                "vllm:num_requests_running",
                "Requests in the running batch (lapsd_requests running)",
                running as f64,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV cache usage, fraction in [0, 1] (lapsd_kv_cache_usage_ratio)",
                kv,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{label}\"}} {value}\n"
            ));
        }
        out
    }
}

/// Label values of `lapsd_requests{state}`.
pub const REQUEST_STATES: [&str; 4] = [
    "waiting",
    "running",
    "preempted_kv_kept",
    "preempted_kv_freed",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vllm_compat_gauges_mirror_lapsds() {
        let m = Metrics::new().expect("metrics register");
        m.requests.with_label_values(&["waiting"]).set(3);
        m.requests.with_label_values(&["preempted_kv_kept"]).set(1);
        m.requests.with_label_values(&["preempted_kv_freed"]).set(2);
        m.requests.with_label_values(&["running"]).set(5);
        m.kv_cache_usage_ratio.set(0.25);
        let text = m.render_vllm_compat("my \"model\"");
        assert!(
            text.contains("vllm:num_requests_waiting{model_name=\"my \\\"model\\\"\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"my \\\"model\\\"\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("vllm:kv_cache_usage_perc{"), "{text}");
        assert!(text.contains("} 0.25\n"), "{text}");
        assert!(
            text.contains("# TYPE vllm:num_requests_running gauge"),
            "{text}"
        );
    }

    #[test]
    fn renders_vllm_named_spec_decode_counters() {
        let m = Metrics::new().expect("metrics register");
        m.spec_num_drafts.inc_by(3);
        m.spec_accepted_per_pos.with_label_values(&["0"]).inc_by(2);
        let text = m.render().expect("renders");
        assert!(
            text.contains("lapsd_spec_decode_num_drafts_total 3"),
            "{text}"
        );
        assert!(
            text.contains("lapsd_spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lapsd_requests{state=\"waiting\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lapsd_time_to_first_token_seconds histogram"),
            "{text}"
        );
    }
}
