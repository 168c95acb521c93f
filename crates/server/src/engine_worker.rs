//! The engine worker: ONE blocking thread owns the engine ([`Backend`]) and the scheduling core
//! ([`Scheduler`]); handlers talk to it only through a bounded command channel and per-request
//! event channels (TGI's router shape; no model work on the async runtime).
//!
//! Each iteration is named steps: admit arrivals, drop requests whose client went away, ask the
//! policy for the batch (`schedule`), free the KV of requests preempted with `FreeKv`, run one SD
//! step, stream the new text (stop strings checked on decoded text), feed the results back
//! (`update`: acceptance and attained service), and finish requests. When nothing is in flight
//! the worker blocks on the command channel.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapsd_core::{
    CoreError, FinishReason, PolicyConfig, PreemptKind, RequestId, RequestPhase, RequestSpec,
    RequestState, Scheduler, SchedulerOutput, StepKind, StepObservation, StepResult,
};
use tokio::sync::mpsc;

use crate::backend::{
    Backend, EngineError, SamplingParams, SeqFinish, SeqStepOutput, StepMember, TokenLogprob,
};
use crate::error::{ApiError, ServerError};
use crate::inflight::{GenerateCommand, Inflight, LogprobEntry, ResponseEvent};
use crate::metrics::{Metrics, REQUEST_STATES};
use crate::model_text::ModelText;
use lapsd_core::policy::laps_sd::attained_service_level;

/// Commands from handlers to the worker.
pub enum WorkerCommand {
    Generate(Box<GenerateCommand>),
}

/// Everything the worker needs besides the engine and the scheduler.
pub struct WorkerContext {
    pub text: Arc<dyn ModelText>,
    pub metrics: Arc<Metrics>,
    pub eos_token_ids: Vec<u32>,
    /// See [`crate::server::ServerConfig::max_tokens_bounds_prediction`].
    pub max_tokens_bounds_prediction: bool,
    /// `--step-log`: one line per step.
    pub step_log: Option<StepLog>,
    /// Thresholds used to report queue levels.
    pub policy_config: PolicyConfig,
    /// Set on shutdown once the drain timeout passed: every request still in flight is ended.
    pub cancel_all: Arc<AtomicBool>,
    /// The server's clock origin: `now_s` is seconds since this instant.
    pub start: Instant,
}

/// `lapsd serve --step-log`: appends one [`StepObservation`] JSON line per engine step, flushed
/// at once so that a killed server leaves whole lines.
pub struct StepLog {
    writer: BufWriter<File>,
    failed: bool,
}

impl StepLog {
    pub fn create(path: &Path) -> Result<Self, ServerError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ServerError::StepLog {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            writer: BufWriter::new(file),
            failed: false,
        })
    }

    fn write(&mut self, observation: &StepObservation) {
        if self.failed {
            return;
        }
        let written = serde_json::to_writer(&mut self.writer, observation)
            .map_err(std::io::Error::from)
            .and_then(|()| self.writer.write_all(b"\n"))
            .and_then(|()| self.writer.flush());
        if let Err(e) = written {
            // Serving goes on; the log is only a measurement.
            tracing::error!(error = %e, "step log write failed: no more steps will be logged");
            self.failed = true;
        }
    }
}

/// The worker's state; [`EngineWorker::run`] is its loop.
pub struct EngineWorker {
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    ctx: WorkerContext,
    commands_rx: mpsc::Receiver<WorkerCommand>,
    inflight: HashMap<RequestId, Inflight>,
    next_id: RequestId,
}

impl EngineWorker {
    pub fn new(
        backend: Box<dyn Backend>,
        scheduler: Scheduler,
        ctx: WorkerContext,
        commands_rx: mpsc::Receiver<WorkerCommand>,
    ) -> Self {
        Self {
            backend,
            scheduler,
            ctx,
            commands_rx,
            inflight: HashMap::new(),
            next_id: 1,
        }
    }

    fn now_s(&self) -> f64 {
        self.ctx.start.elapsed().as_secs_f64()
    }

    /// Runs until every command sender is gone and nothing is in flight.
    pub fn run(mut self) {
        tracing::info!(
            policy = self.scheduler.policy_name(),
            "engine worker started"
        );
        loop {
            if self.inflight.is_empty() {
                // Idle: block (no busy loop) until a command arrives or every sender is dropped.
                match self.commands_rx.blocking_recv() {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                }
            }
            while let Ok(cmd) = self.commands_rx.try_recv() {
                self.handle(cmd);
            }
            if self.ctx.cancel_all.load(Ordering::Acquire) {
                self.cancel_everything();
            }
            self.reap_disconnected();
            if !self.inflight.is_empty() {
                self.step();
            }
            self.refresh_gauges();
        }
        tracing::info!("engine worker stopped");
    }

    fn handle(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Generate(cmd) => {
                self.ctx.metrics.request_received();
                self.admit(*cmd);
                // Admission shows in the gauges at once, not after the next step.
                self.refresh_gauges();
            }
        }
    }

    /// Registers a request with the engine and the scheduler.
    fn admit(&mut self, cmd: GenerateCommand) {
        if cmd.events_tx.is_closed() {
            return; // The client left before admission.
        }
        if self.ctx.cancel_all.load(Ordering::Acquire) {
            let _ = cmd
                .events_tx
                .send(ResponseEvent::Error(ApiError::ShuttingDown));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        // The request arrived when its handler submitted it, which may be a whole step before
        // the worker admits it: queue time and TTFT count from there.
        let now_s = self.now_s();
        let arrival_s = cmd
            .received_at
            .saturating_duration_since(self.ctx.start)
            .as_secs_f64()
            .min(now_s);
        let req = &cmd.request;
        let prompt_tokens = req.prompt_ids.len() as u32;
        let seed = req.sampling.seed.unwrap_or_else(|| {
            id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.ctx.start.elapsed().as_nanos() as u64
        });
        let params = SamplingParams {
            temperature: req.sampling.temperature,
            top_p: req.sampling.top_p,
            seed,
            max_tokens: req.max_tokens,
            stop_token_ids: if req.ignore_eos {
                Vec::new()
            } else {
                self.ctx.eos_token_ids.clone()
            },
            ignore_eos: req.ignore_eos,
            logit_adjustments: req.sampling.logit_adjustments.clone(),
            logprobs: req.logprobs.map(|top| top as usize),
        };
        let mut spec = RequestSpec::new(id, arrival_s, prompt_tokens, req.max_tokens)
            .with_priority(req.priority)
            .with_max_tokens_bounds_prediction(self.ctx.max_tokens_bounds_prediction);
        // A text prediction replaces the online predictor's first guess (which uses only the
        // prompt's length); the online predictor still re-predicts once it is outgrown.
        spec.predicted_output_tokens = req.predicted_output_tokens;
        let queued_s = cmd.received_at.elapsed().as_secs_f64();
        if let Err(e) = self
            .backend
            .add_sequence(id, req.prompt_ids.clone(), params)
        {
            tracing::error!(id, kind = e.kind(), error = %e, "engine refused a sequence");
            let _ = cmd.events_tx.send(ResponseEvent::Error(engine_failure(&e)));
            self.ctx
                .metrics
                .requests_finished
                .with_label_values(&["error"])
                .inc();
            return;
        }
        if let Err(e) = self.scheduler.add_request(spec, now_s) {
            self.backend.remove(id);
            let (label, error) = match e {
                CoreError::NeverFits { .. } => (
                    "never_fits",
                    ApiError::invalid(
                        "max_tokens",
                        format!("the request can never fit the KV budget: {e}"),
                    ),
                ),
                other => (
                    "error",
                    ApiError::Internal {
                        detail: other.to_string(),
                    },
                ),
            };
            self.ctx
                .metrics
                .requests_finished
                .with_label_values(&[label])
                .inc();
            let _ = cmd.events_tx.send(ResponseEvent::Error(error));
            return;
        }
        tracing::debug!(
            id,
            prompt_tokens,
            max_tokens = req.max_tokens,
            queued_s,
            "admitted"
        );
        self.ctx
            .metrics
            .prompt_tokens
            .inc_by(u64::from(prompt_tokens));
        self.inflight.insert(id, Inflight::new(cmd, arrival_s));
    }

    /// Cancels requests whose handler dropped its event receiver (client gone).
    fn reap_disconnected(&mut self) {
        let gone: Vec<RequestId> = self
            .inflight
            .iter()
            .filter(|(_, r)| r.events_tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        let any_gone = !gone.is_empty();
        for id in gone {
            tracing::info!(id, "client disconnected: cancelling");
            self.cancel(id, "cancelled");
        }
        if any_gone {
            // The freed KV shows at once, not after the next step.
            self.refresh_gauges();
        }
    }

    fn cancel_everything(&mut self) {
        let ids: Vec<RequestId> = self.inflight.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.inflight.get(&id) {
                r.send(ResponseEvent::Error(ApiError::ShuttingDown));
            }
            self.cancel(id, "cancelled");
        }
    }

    /// Removes a request from the scheduler, the engine and the worker (frees its KV).
    fn cancel(&mut self, id: RequestId, label: &str) {
        let now_s = self.now_s();
        self.scheduler.cancel(id, now_s);
        self.backend.remove(id);
        self.inflight.remove(&id);
        self.ctx
            .metrics
            .requests_finished
            .with_label_values(&[label])
            .inc();
    }

    /// One scheduling decision and one engine step.
    fn step(&mut self) {
        let output = self.scheduler.schedule(self.now_s());
        for p in &output.preempted {
            let kind = match p.kind {
                PreemptKind::KeepKv => "keep_kv",
                PreemptKind::FreeKv => {
                    self.backend.free_kv(p.id);
                    "free_kv"
                }
            };
            self.ctx
                .metrics
                .preemptions
                .with_label_values(&[kind])
                .inc();
        }
        if output.batch.is_empty() {
            // Requests are in flight but none is runnable (should not happen with a correct
            // core); wait briefly for a command instead of spinning.
            tracing::warn!(
                in_flight = self.inflight.len(),
                "scheduler returned an empty batch"
            );
            std::thread::sleep(Duration::from_millis(5));
            return;
        }
        // Prefill members get the configured k: the core names k for decode steps only and
        // leaves a prefill's to the engine.
        let prefill_k = self.scheduler.config().speculation_length;
        let batch: Vec<StepMember> = output
            .batch
            .iter()
            .map(|s| {
                let (k, max_prefill_tokens) = match s.kind {
                    StepKind::Decode { speculation_length } => (speculation_length, None),
                    // The last (or only) part of a prefill: whatever is missing, so that the
                    // engine always ends it with a token, as the scheduler expects.
                    StepKind::Prefill { .. } => (prefill_k, None),
                    StepKind::PrefillChunk { tokens } => (prefill_k, Some(tokens as usize)),
                };
                StepMember {
                    id: s.id,
                    speculation_length: k as usize,
                    max_prefill_tokens,
                }
            })
            .collect();
        // Running requests show as running while their step runs.
        self.refresh_gauges();
        let started = Instant::now();
        let step = self.backend.step_members(&batch);
        let step_time_s = started.elapsed().as_secs_f64();
        let now_s = self.now_s();
        self.ctx.metrics.steps.inc();
        self.ctx.metrics.step_batch_size.observe(batch.len() as f64);
        self.ctx.metrics.step_duration_s.observe(step_time_s);
        let outputs = match step {
            Ok(outputs) => outputs,
            Err(e) => {
                tracing::error!(kind = e.kind(), error = %e, batch = ?batch, "engine step failed: failing its batch");
                for id in batch.iter().map(|m| m.id) {
                    if let Some(r) = self.inflight.get(&id) {
                        r.send(ResponseEvent::Error(engine_failure(&e)));
                    }
                    self.cancel(id, "error");
                }
                return;
            }
        };
        let results = self.apply_outputs(&output, &outputs, now_s);
        if let Some(log) = self.ctx.step_log.as_mut() {
            log.write(&StepObservation::of_step(
                &output,
                &results,
                step_time_s,
                now_s,
            ));
        }
        let finished = self.scheduler.update(&output, &results, step_time_s, now_s);
        self.record_levels(&output);
        for state in finished {
            self.finish(state, now_s);
        }
    }

    /// Streams each member's new text and builds the step results for the scheduler.
    fn apply_outputs(
        &mut self,
        output: &SchedulerOutput,
        outputs: &[SeqStepOutput],
        now_s: f64,
    ) -> Vec<StepResult> {
        let by_id: HashMap<u64, &SeqStepOutput> = outputs.iter().map(|o| (o.id, o)).collect();
        let mut results = Vec::with_capacity(output.batch.len());
        for member in &output.batch {
            let Some(o) = by_id.get(&member.id) else {
                tracing::warn!(
                    id = member.id,
                    "engine returned no output for a batch member"
                );
                results.push(StepResult {
                    id: member.id,
                    drafted_tokens: 0,
                    accepted_tokens: 0,
                    new_tokens: 0,
                    finished: None,
                });
                continue;
            };
            self.record_spec_counters(o);
            let Some(r) = self.inflight.get_mut(&member.id) else {
                continue;
            };
            let mut consumed = 0u32;
            let mut text = String::new();
            let mut logprobs = Vec::new();
            for (index, &token) in o.new_tokens.iter().enumerate() {
                consumed += 1;
                if self.ctx.eos_token_ids.contains(&token) {
                    continue;
                }
                if let Some(lp) = o.logprobs.get(index) {
                    logprobs.push(logprob_entry(self.ctx.text.as_ref(), lp));
                }
                let model_text = self.ctx.text.as_ref();
                let piece = match r.decoder.push_with(|ids| model_text.decode(ids), token) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(id = member.id, error = %e, "detokenization failed");
                        String::new()
                    }
                };
                let out = r.stop.push(&piece);
                text.push_str(&out.emit);
                if out.stopped {
                    r.stopped_by_string = true;
                    break;
                }
            }
            if consumed > 0 {
                r.first_token_s.get_or_insert(now_s);
            }
            r.completion_tokens += consumed;
            self.ctx
                .metrics
                .generation_tokens
                .inc_by(u64::from(consumed));
            if !text.is_empty() || !logprobs.is_empty() {
                r.send(ResponseEvent::Text { text, logprobs });
            }
            let finished = if r.stopped_by_string {
                Some(FinishReason::Stop)
            } else {
                match o.finished {
                    Some(SeqFinish::Eos) => Some(FinishReason::Stop),
                    Some(SeqFinish::Length) => Some(FinishReason::Length),
                    None => None,
                }
            };
            let (drafted_tokens, accepted_tokens) = draft_counts(o);
            results.push(StepResult {
                id: member.id,
                drafted_tokens,
                accepted_tokens,
                new_tokens: consumed,
                finished,
            });
        }
        results
    }

    fn record_spec_counters(&self, o: &SeqStepOutput) {
        let (drafted, accepted) = draft_counts(o);
        if drafted == 0 {
            return;
        }
        let m = &self.ctx.metrics;
        m.spec_num_drafts.inc();
        m.spec_num_draft_tokens.inc_by(u64::from(drafted));
        m.spec_num_accepted_tokens.inc_by(u64::from(accepted));
        // Accepted drafts are a prefix: positions 0..accepted were each accepted once.
        for pos in 0..accepted {
            m.spec_accepted_per_pos
                .with_label_values(&[&pos.to_string()])
                .inc();
        }
    }

    fn record_levels(&mut self, output: &SchedulerOutput) {
        let cfg = &self.ctx.policy_config;
        for member in &output.batch {
            if let (Some(state), Some(r)) = (
                self.scheduler.request(member.id),
                self.inflight.get_mut(&member.id),
            ) {
                r.visit_level(attained_service_level(
                    state.attained_service_passes,
                    cfg.first_threshold_passes,
                    cfg.num_queues,
                ));
            }
        }
    }

    /// Sends the rest of the text and the final statistics; frees everything the request held.
    fn finish(&mut self, state: RequestState, now_s: f64) {
        let id = state.id();
        self.backend.remove(id);
        let Some(mut r) = self.inflight.remove(&id) else {
            return;
        };
        let cfg = &self.ctx.policy_config;
        r.visit_level(attained_service_level(
            state.attained_service_passes,
            cfg.first_threshold_passes,
            cfg.num_queues,
        ));
        if !r.stopped_by_string {
            let text = self.ctx.text.as_ref();
            let rest = r
                .decoder
                .flush_with(|ids| text.decode(ids))
                .unwrap_or_default();
            let out = r.stop.push(&rest);
            let mut text = out.emit;
            if out.stopped {
                r.stopped_by_string = true;
            } else {
                text.push_str(&r.stop.finish());
            }
            if !text.is_empty() {
                r.send(ResponseEvent::Text {
                    text,
                    logprobs: Vec::new(),
                });
            }
        }
        let info = r.finished_info(&state, self.scheduler.policy_name(), now_s);
        let m = &self.ctx.metrics;
        m.requests_finished
            .with_label_values(&[info.finish_reason])
            .inc();
        let s = &info.metrics.scheduling;
        m.e2e_s.observe(s.e2e_s);
        if let Some(ttft) = s.ttft_s {
            m.ttft_s.observe(ttft);
            if info.usage.completion_tokens > 1 {
                m.tpot_s
                    .observe((s.e2e_s - ttft) / f64::from(info.usage.completion_tokens - 1));
            }
        }
        if let Some(q) = s.queue_time_s {
            m.queue_time_s.observe(q);
        }
        if let Some(rate) = info.metrics.speculative_decoding.acceptance_rate {
            m.request_acceptance_rate.observe(rate);
        }
        tracing::debug!(
            id,
            reason = info.finish_reason,
            tokens = info.usage.completion_tokens,
            "finished"
        );
        // Gauges first: a client that reads /metrics right after its response must not still
        // see its request running.
        self.refresh_gauges();
        r.send(ResponseEvent::Finished(Box::new(info)));
    }

    /// Requests by phase, per queue level, perceptible count, KV in use.
    fn refresh_gauges(&self) {
        let m = &self.ctx.metrics;
        let mut by_state = [0i64; REQUEST_STATES.len()];
        let num_queues = self.ctx.policy_config.num_queues.max(1);
        let mut by_level = vec![0i64; num_queues];
        let mut perceptible = 0;
        for r in self.scheduler.requests() {
            let slot = match r.phase {
                RequestPhase::Waiting => 0,
                RequestPhase::Running => 1,
                RequestPhase::Preempted { kv_resident: true } => 2,
                RequestPhase::Preempted { kv_resident: false } => 3,
                RequestPhase::Finished(_) => continue,
            };
            by_state[slot] += 1;
            let level = attained_service_level(
                r.attained_service_passes,
                self.ctx.policy_config.first_threshold_passes,
                num_queues,
            );
            by_level[level.min(num_queues - 1)] += 1;
            perceptible += i64::from(r.perceptible);
        }
        // Requests handed over by handlers but not yet taken off the channel are waiting too.
        by_state[0] += m.pending_admission();
        for (state, n) in REQUEST_STATES.iter().zip(by_state) {
            m.requests.with_label_values(&[state]).set(n);
        }
        for (level, n) in by_level.iter().enumerate() {
            m.queue_requests
                .with_label_values(&[&level.to_string()])
                .set(*n);
        }
        m.perceptible_requests.set(perceptible);
        m.kv_tokens_reserved
            .set(self.scheduler.kv_tokens_in_use() as i64);
        let held_tokens = self.backend.kv_tokens_in_use();
        m.kv_tokens_in_use.set(held_tokens as i64);
        let budget_tokens = self.scheduler.config().capacity.kv_budget_tokens;
        m.kv_cache_usage_ratio.set(if budget_tokens == 0 {
            0.0
        } else {
            (held_tokens as f64 / budget_tokens as f64).clamp(0.0, 1.0)
        });
    }
}

/// A step output's drafted and accepted token counts as the core counts them (u32; accepted
/// never above drafted, whatever a backend reports).
fn draft_counts(o: &SeqStepOutput) -> (u32, u32) {
    let drafted = u32::try_from(o.drafted_tokens).unwrap_or(u32::MAX);
    let accepted = u32::try_from(o.accepted_tokens).unwrap_or(u32::MAX);
    (drafted, accepted.min(drafted))
}

/// The 500 a request gets when the engine fails it; the detail (with the engine's kind tag) is
/// logged, never sent.
fn engine_failure(e: &EngineError) -> ApiError {
    ApiError::Internal {
        detail: format!("engine error ({}): {e}", e.kind()),
    }
}

/// A token's logprobs with the token texts decoded one token at a time (a token that is part of
/// a multi-byte character decodes to U+FFFD on its own, as in vLLM).
fn logprob_entry(text: &dyn ModelText, lp: &TokenLogprob) -> LogprobEntry {
    let piece = |token: u32| text.decode(&[token]).unwrap_or_default();
    LogprobEntry {
        token: piece(lp.token),
        logprob: lp.logprob,
        top: lp.top.iter().map(|&(t, l)| (piece(t), l)).collect(),
    }
}
