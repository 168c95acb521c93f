//! The scheduling mechanism: owns every unfinished request's state and the KV accounting, asks the
//! policy for the next batch, performs preemption (keep KV while the budget allows, otherwise free
//! it so the request recomputes its prefill on resume), and applies step results.
//!
//! A step is two calls (vLLM v1): [`Scheduler::schedule`] then [`Scheduler::update`].

use crate::request::{IdMap, IdSet};

use serde::{Deserialize, Serialize};

pub use crate::batch::Capacity;
use crate::cost::{LinearCost, StepObservation};
use crate::error::CoreError;
use crate::kv::KvAccountant;
use crate::policy::{BatchBuilder, Policy, ScheduleContext};
use crate::predictor::LengthPredictor;
use crate::request::{
    FinishReason, RequestId, RequestPhase, RequestSpec, RequestState, StabilityRule,
};
use crate::speculation::{self, DecodeMember, FixedWork, SpeculationMode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub capacity: Capacity,
    /// Speculation length n (draft tokens per SD step); 0 turns speculative decoding off.
    pub speculation_length: u32,
    /// LAPS-SD's perceptibility test.
    pub stability: StabilityRule,
    /// Step costs (LAPS-SD's T_SSM, T_LLM; the oracle's true remaining time).
    pub cost: LinearCost,
}

/// What a batch member does this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// (Re)compute the KV of the last `tokens` context tokens still missing (prompt, plus
    /// generated tokens after a freed preemption; all of them unless earlier chunks computed the
    /// rest) and produce the next token.
    Prefill { tokens: u32 },
    /// A chunk of a prefill too long for one step: compute the KV of the next `tokens` context
    /// tokens; no token is produced (a later step continues, and its last chunk is a `Prefill`).
    PrefillChunk { tokens: u32 },
    /// One SD step with this speculation length (0 = plain decoding): produces 1..=k+1 tokens.
    Decode { speculation_length: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRequest {
    pub id: RequestId,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreemptKind {
    /// Paused; its KV stays resident.
    KeepKv,
    /// Its KV is freed (the engine must drop it); it will be re-prefilled on resume.
    FreeKv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub id: RequestId,
    pub kind: PreemptKind,
}

/// What to run next, and what changed for requests not in the batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerOutput {
    pub now_s: f64,
    pub batch: Vec<ScheduledRequest>,
    /// Requests removed from the batch this step (newly preempted) and residents whose KV was
    /// freed to make room (kind `FreeKv`).
    pub preempted: Vec<Preemption>,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// What one batch member's step produced (filled by the engine or the simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub id: RequestId,
    /// Draft tokens proposed (0 for a prefill or plain decoding).
    pub drafted_tokens: u32,
    /// Draft tokens accepted (a prefix of the draft).
    pub accepted_tokens: u32,
    /// Tokens appended to the output (accepted + 1, cut at max_tokens or a stop).
    pub new_tokens: u32,
    /// Set when the request ended in this step (EOS / stop). Reaching `max_tokens` is detected by
    /// the scheduler itself.
    pub finished: Option<FinishReason>,
}

// The step-log record is the cost model's; how a scheduled step maps onto it is the scheduler's
// (so `cost` does not depend on `scheduler`).
impl StepObservation {
    /// A step in the cost model's terms: the scheduled `output` and what its members drafted
    /// (`results`, matched by id; a member without a result drafted nothing). The server logs
    /// this; the simulator charges it, so both count a step the same way.
    pub fn of_step(
        output: &SchedulerOutput,
        results: &[StepResult],
        duration_s: f64,
        t_s: f64,
    ) -> Self {
        let drafted_of = |id| {
            results
                .iter()
                .find(|r| r.id == id)
                .map_or(0, |r| r.drafted_tokens)
        };
        let mut observation = Self {
            t_s,
            decode_members: 0,
            verified_tokens: 0,
            draft_passes: 0,
            prefills: 0,
            prefill_tokens: 0,
            duration_s,
        };
        for member in &output.batch {
            match member.kind {
                StepKind::Prefill { tokens } | StepKind::PrefillChunk { tokens } => {
                    observation.prefills += 1;
                    observation.prefill_tokens += tokens;
                }
                StepKind::Decode { .. } => {
                    let drafted = drafted_of(member.id);
                    observation.decode_members += 1;
                    observation.verified_tokens += drafted + 1;
                    observation.draft_passes = observation.draft_passes.max(drafted);
                }
            }
        }
        observation
    }
}

/// The scheduler: mechanism around a [`Policy`].
pub struct Scheduler {
    config: SchedulerConfig,
    policy: Box<dyn Policy>,
    predictor: Option<Box<dyn LengthPredictor>>,
    requests: IdMap<RequestState>,
    running: Vec<RequestId>,
    kv: KvAccountant,
    /// The request whose chunked prefill is under way (at most one, see
    /// [`BatchBuilder::prefill_chunk_tokens`]).
    partial_prefill: Option<RequestId>,
    speculation_mode: SpeculationMode,
    /// Finished requests' per-position acceptance (the prior of [`SpeculationMode::Auto`]'s
    /// estimates).
    acceptance_population: speculation::AcceptancePopulation,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, policy: Box<dyn Policy>) -> Self {
        let kv = KvAccountant::new(config.capacity.kv_budget_tokens);
        Self {
            config,
            policy,
            predictor: None,
            requests: Default::default(),
            running: Vec::new(),
            kv,
            partial_prefill: None,
            speculation_mode: SpeculationMode::Fixed,
            acceptance_population: speculation::AcceptancePopulation::default(),
        }
    }

    /// Chooses each decoding member's speculation length this way (default
    /// [`SpeculationMode::Fixed`]: the configured length for all).
    pub fn with_speculation_mode(mut self, mode: SpeculationMode) -> Self {
        self.speculation_mode = mode;
        self
    }

    /// Uses `predictor` to fill `predicted_output_tokens` of requests that arrive without one,
    /// re-predict (conditionally) when a request outgrows its prediction, and learn from finishes.
    pub fn with_predictor(mut self, predictor: Box<dyn LengthPredictor>) -> Self {
        self.predictor = Some(predictor);
        self
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
    pub fn policy_name(&self) -> &str {
        self.policy.name()
    }
    pub fn request(&self, id: RequestId) -> Option<&RequestState> {
        self.requests.get(&id)
    }
    pub fn requests(&self) -> impl Iterator<Item = &RequestState> {
        self.requests.values()
    }
    /// Unfinished requests (waiting, running or preempted).
    pub fn len(&self) -> usize {
        self.requests.len()
    }
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
    pub fn running(&self) -> &[RequestId] {
        &self.running
    }
    pub fn kv_tokens_in_use(&self) -> u64 {
        self.kv.in_use_tokens()
    }

    /// The KV accountant (what each request holds).
    pub fn kv(&self) -> &KvAccountant {
        &self.kv
    }

    /// Admits a request. Errors: a duplicate id, or a request that can never fit the KV budget
    /// (`NeverFits`: prompt + max_tokens + k + 1 > budget; the caller reports it as finished with
    /// [`FinishReason::NeverFits`]). Fills `predicted_output_tokens` from the predictor when the
    /// spec has none.
    pub fn add_request(&mut self, mut spec: RequestSpec, now_s: f64) -> Result<(), CoreError> {
        if self.requests.contains_key(&spec.id) {
            return Err(CoreError::DuplicateRequest { id: spec.id });
        }
        let needed_tokens = u64::from(spec.prompt_tokens)
            + u64::from(spec.max_tokens)
            + u64::from(self.config.speculation_length)
            + 1;
        if needed_tokens > self.kv.budget_tokens() {
            return Err(CoreError::NeverFits {
                id: spec.id,
                needed_tokens,
                budget_tokens: self.kv.budget_tokens(),
            });
        }
        if spec.predicted_output_tokens.is_none() {
            if let Some(predictor) = &self.predictor {
                spec.predicted_output_tokens =
                    Some(predictor.predict_output_tokens(spec.prompt_tokens, 0));
            }
        }
        let state = RequestState::new(spec);
        self.policy.on_arrival(&state, now_s);
        self.requests.insert(state.id(), state);
        Ok(())
    }

    /// Removes a request at once (client cancelled); returns its final state. Its KV is freed,
    /// including what a chunked prefill under way had computed.
    pub fn cancel(&mut self, id: RequestId, _now_s: f64) -> Option<RequestState> {
        let mut state = self.requests.remove(&id)?;
        self.kv.free(id);
        self.running.retain(|&r| r != id);
        state.prefill_progress_tokens = 0;
        if self.partial_prefill == Some(id) {
            self.partial_prefill = None;
        }
        state.phase = RequestPhase::Finished(FinishReason::Cancelled);
        self.policy.on_finish(&state);
        Some(state)
    }

    /// Chooses the next step's batch (asking the policy) and preempts running requests it left
    /// out, freeing KV of preempted requests (victims named by the policy) when the batch needs it.
    /// Empty batch = nothing runnable.
    ///
    /// Steps: select (the policy fills a [`BatchBuilder`]), preempt (running requests left out
    /// keep their KV), evict (while the batch's KV need does not fit next to the other residents,
    /// the policy's `kv_victim` loses its KV), commit (chosen requests are `Running` and hold
    /// context + k + 1 KV tokens: the step's lookahead).
    pub fn schedule(&mut self, now_s: f64) -> SchedulerOutput {
        let k = self.config.speculation_length;
        let (chosen, chosen_set, prefill_chunks, victims) = {
            let ctx = ScheduleContext {
                now_s,
                requests: &self.requests,
                running: &self.running,
                speculation_length: k,
                cost: &self.config.cost,
            };
            let mut batch =
                BatchBuilder::new(self.config.capacity, &self.requests, k, &self.config.cost);
            batch.partial_prefill = self.partial_prefill.map(|id| (id, self.kv.held_tokens(id)));
            self.policy.select(&ctx, &mut batch);
            if let (true, Some(id)) = (batch.is_empty(), self.partial_prefill) {
                // Nothing the policy offered fits beside the chunked prefill under way (whose KV
                // cannot be evicted): continue that prefill rather than stall.
                batch.try_add(id);
            }
            let chosen = std::mem::take(&mut batch.chosen);
            let chosen_set = std::mem::take(&mut batch.chosen_set);
            let prefill_chunks = std::mem::take(&mut batch.prefill_chunks);
            let need_tokens = batch.kv_tokens;
            let victims = self.kv_victims(&ctx, &chosen_set, need_tokens);
            (chosen, chosen_set, prefill_chunks, victims)
        };
        let mut output = SchedulerOutput {
            now_s,
            batch: Vec::with_capacity(chosen.len()),
            preempted: Vec::new(),
        };
        self.preempt_left_out(&chosen_set, &victims, &mut output);
        for &id in &victims {
            if !output.preempted.iter().any(|p| p.id == id) {
                output.preempted.push(Preemption {
                    id,
                    kind: PreemptKind::FreeKv,
                });
            }
            self.kv.free(id);
            if let Some(r) = self.requests.get_mut(&id) {
                r.phase = RequestPhase::Preempted { kv_resident: false };
                // A chunked prefill under way starts over: its chunks' KV is gone.
                r.prefill_progress_tokens = 0;
            }
        }
        self.commit(&chosen, &prefill_chunks, now_s, &mut output);
        self.running = chosen;
        output
    }

    /// Residents not in the batch whose KV must be freed so that the batch's `need_tokens` fit,
    /// in the order the policy names them.
    fn kv_victims(
        &self,
        ctx: &ScheduleContext<'_>,
        chosen: &IdSet,
        need_tokens: u64,
    ) -> Vec<RequestId> {
        let held_by_chosen: u64 = chosen.iter().map(|&id| self.kv.held_tokens(id)).sum();
        let others_tokens = self.kv.in_use_tokens() - held_by_chosen;
        let budget = self.kv.budget_tokens();
        if others_tokens + need_tokens <= budget {
            return Vec::new();
        }
        let mut candidates: Vec<RequestId> = self
            .kv
            .resident_ids()
            .filter(|id| !chosen.contains(id) && self.partial_prefill != Some(*id))
            .collect();
        candidates.sort_unstable(); // deterministic order for the policy to choose from
        let mut victims = Vec::new();
        let mut remaining = others_tokens;
        while remaining + need_tokens > budget && !candidates.is_empty() {
            let named = self.policy.kv_victim(ctx, &candidates);
            // A policy naming nobody (or a stranger) still must not break the budget: fall back
            // to the last candidate.
            let pos = named
                .and_then(|v| candidates.iter().position(|&c| c == v))
                .unwrap_or(candidates.len() - 1);
            let victim = candidates.swap_remove(pos);
            remaining -= self.kv.held_tokens(victim);
            victims.push(victim);
        }
        victims
    }

    /// Running requests the policy left out become preempted (keeping their KV unless evicted).
    fn preempt_left_out(
        &mut self,
        chosen_set: &IdSet,
        victims: &[RequestId],
        output: &mut SchedulerOutput,
    ) {
        for &id in &self.running {
            if chosen_set.contains(&id) {
                continue;
            }
            let Some(r) = self.requests.get_mut(&id) else {
                continue;
            };
            let freed = victims.contains(&id);
            r.preemptions += 1;
            r.phase = RequestPhase::Preempted {
                kv_resident: self.kv.is_resident(id) && !freed,
            };
            output.preempted.push(Preemption {
                id,
                kind: if freed {
                    PreemptKind::FreeKv
                } else {
                    PreemptKind::KeepKv
                },
            });
        }
    }

    /// Chosen requests run: step kinds (a prefill's chunk as the batch builder cut it),
    /// recompute accounting, KV reservation.
    fn commit(
        &mut self,
        chosen: &[RequestId],
        prefill_chunks: &IdMap<u32>,
        now_s: f64,
        output: &mut SchedulerOutput,
    ) {
        let k = self.config.speculation_length;
        for &id in chosen {
            let Some(r) = self.requests.get_mut(&id) else {
                continue;
            };
            r.first_scheduled_s.get_or_insert(now_s);
            let (kind, kv_need) = if r.needs_prefill() || !self.kv.is_resident(id) {
                if r.prefilled && r.prefill_progress_tokens == 0 {
                    r.recomputes += 1;
                }
                // Not resident without needing a prefill cannot happen through this scheduler;
                // if it did, the whole context would have to be recomputed.
                let remaining = if r.needs_prefill() {
                    r.prefill_remaining_tokens()
                } else {
                    r.context_tokens()
                }
                .max(1);
                let tokens = prefill_chunks
                    .get(&id)
                    .copied()
                    .unwrap_or(remaining)
                    .clamp(1, remaining);
                let kind = if tokens < remaining {
                    StepKind::PrefillChunk { tokens }
                } else {
                    StepKind::Prefill { tokens }
                };
                (kind, BatchBuilder::kv_need_of_prefill(r, tokens, k))
            } else {
                let kind = StepKind::Decode {
                    speculation_length: r.step_speculation_length(k),
                };
                (kind, BatchBuilder::kv_need_of(r, k))
            };
            r.phase = RequestPhase::Running;
            self.kv.set(id, kv_need);
            output.batch.push(ScheduledRequest { id, kind });
        }
        if self.speculation_mode == SpeculationMode::Auto {
            self.choose_speculation_lengths(output);
        }
    }

    /// [`SpeculationMode::Auto`]: replaces each decoding member's length with the one that
    /// maximises the step's expected tokens per second (see [`crate::speculation`]). The KV
    /// lookahead stays reserved for the configured length, the longest any member may take.
    fn choose_speculation_lengths(&self, output: &mut SchedulerOutput) {
        let prior = self.acceptance_population.prior();
        let cost = &self.config.cost;
        let mut members = Vec::new();
        let mut slots = Vec::new();
        for (slot, scheduled) in output.batch.iter().enumerate() {
            // Prefills in the step are not counted as work the drafts amortize: their time is
            // spent whatever the members draft, and counting it made steps that carry a prompt
            // draft longer, delaying that prompt's first token and every member (mean latency
            // 0.8-1% above the best fixed k on the GPU-shaped profile; without it, equal or
            // below: docs/speculative-decoding.md).
            let StepKind::Decode { speculation_length } = scheduled.kind else {
                continue;
            };
            let Some(r) = self.requests.get(&scheduled.id) else {
                continue;
            };
            let tracker = &r.acceptance;
            members.push(DecodeMember {
                alpha: speculation::optimistic_acceptance(tracker, prior),
                max_k: speculation_length,
            });
            slots.push(slot);
        }
        let lengths = speculation::choose_speculation_lengths(&members, FixedWork::default(), cost);
        for (slot, k) in slots.into_iter().zip(lengths) {
            output.batch[slot].kind = StepKind::Decode {
                speculation_length: k,
            };
        }
    }

    /// Applies a step's results; `step_time_s` is the step's duration (added to the attained
    /// service of every member), `now_s` the time at its end. Returns the requests that finished
    /// in this step (removed from the scheduler), with their final state.
    ///
    /// Batch members without a result count the step as service but gain no token; results for
    /// requests not in the batch (or cancelled meanwhile) are ignored. After the step a member's
    /// KV is its context (the lookahead is reserved again by the next `schedule`).
    pub fn update(
        &mut self,
        output: &SchedulerOutput,
        results: &[StepResult],
        step_time_s: f64,
        now_s: f64,
    ) -> Vec<RequestState> {
        // Results usually come in batch order: look there first, search only when they do not.
        let mut by_id: Option<IdMap<&StepResult>> = None;
        let mut finished = Vec::new();
        for (i, scheduled) in output.batch.iter().enumerate() {
            let id = scheduled.id;
            let Some(r) = self.requests.get_mut(&id) else {
                continue;
            };
            let result = match results.get(i) {
                Some(x) if x.id == id => Some(x),
                _ => by_id
                    .get_or_insert_with(|| results.iter().map(|x| (x.id, x)).collect())
                    .get(&id)
                    .copied(),
            };
            let reason = apply_step(
                r,
                scheduled.kind,
                result,
                step_time_s,
                now_s,
                &self.config.stability,
            );
            if r.prefill_progress_tokens > 0 {
                self.partial_prefill = Some(id);
            } else if self.partial_prefill == Some(id) {
                self.partial_prefill = None;
            }
            if let Some(reason) = reason {
                if self.partial_prefill == Some(id) {
                    self.partial_prefill = None;
                }
                let Some(mut state) = self.requests.remove(&id) else {
                    continue;
                };
                state.phase = RequestPhase::Finished(reason);
                self.kv.free(id);
                self.acceptance_population.observe(&state.acceptance);
                self.policy.on_finish(&state);
                if let Some(p) = &mut self.predictor {
                    p.observe(state.spec.prompt_tokens, state.generated_tokens);
                }
                finished.push(state);
                continue;
            }
            if let Some(p) = &self.predictor {
                let outgrown = match r.spec.predicted_output_tokens {
                    Some(pred) => r.generated_tokens >= pred,
                    None => true,
                };
                if outgrown {
                    r.spec.predicted_output_tokens =
                        Some(p.predict_output_tokens(r.spec.prompt_tokens, r.generated_tokens));
                }
            }
            let held_tokens = if r.prefill_progress_tokens > 0 {
                r.prefill_progress_tokens
            } else {
                r.context_tokens()
            };
            self.kv.set(id, u64::from(held_tokens));
            self.policy.on_step(r, now_s);
        }
        if !finished.is_empty() {
            self.running.retain(|id| self.requests.contains_key(id));
        }
        finished
    }
}

/// Applies one member's step to its state; returns the finish reason if it ended.
fn apply_step(
    r: &mut RequestState,
    kind: StepKind,
    result: Option<&StepResult>,
    step_time_s: f64,
    now_s: f64,
    stability: &StabilityRule,
) -> Option<FinishReason> {
    let new_tokens = result.map_or(0, |x| x.new_tokens.min(r.remaining_max_tokens()));
    match kind {
        // A chunk that produced a token means the engine completed the prefill (an engine
        // without chunked prefill computes it whole): trust it rather than count a chunk.
        StepKind::PrefillChunk { tokens } if new_tokens == 0 => {
            r.prefill_progress_tokens = r.prefill_progress_tokens.saturating_add(tokens);
        }
        StepKind::Prefill { .. } | StepKind::PrefillChunk { .. } => {
            r.prefill_progress_tokens = 0;
            r.prefilled = true;
        }
        StepKind::Decode { .. } => r.prefilled = true,
    }
    if let (StepKind::Decode { .. }, Some(x)) = (kind, result) {
        if x.drafted_tokens > 0 {
            r.acceptance.record_step(
                x.drafted_tokens,
                x.accepted_tokens.min(x.drafted_tokens),
                stability.window,
            );
        }
    }
    r.generated_tokens += new_tokens;
    r.attained_service_passes += 1;
    r.attained_service_s += step_time_s;
    r.last_scheduled_s = now_s;
    if new_tokens > 0 && r.first_token_s.is_none() {
        r.first_token_s = Some(now_s);
    }
    if !r.perceptible && r.acceptance.is_stable(stability) {
        r.perceptible = true;
        r.perceptible_at_s = Some(now_s);
    }
    match result.and_then(|x| x.finished) {
        Some(reason) => Some(reason),
        None if r.generated_tokens >= r.spec.max_tokens => Some(FinishReason::Length),
        None => None,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
