//! The scheduling mechanism: owns every unfinished request's state and the KV accounting, asks the
//! policy for the next batch, performs preemption (keep KV while the budget allows, otherwise free
//! it so the request recomputes its prefill on resume), and applies step results.
//!
//! A step is two calls (vLLM v1): [`Scheduler::schedule`] then [`Scheduler::update`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cost::{LinearCost, StepCostModel};
use crate::error::CoreError;
use crate::kv::KvAccountant;
use crate::policy::Policy;
use crate::predictor::LengthPredictor;
use crate::request::{FinishReason, RequestId, RequestSpec, RequestState, StabilityRule};

/// What one step may hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Most requests in one step.
    pub max_batch: usize,
    /// Most tokens processed in one step: prefill tokens plus (k + 1) per decoding request.
    /// A single prefill larger than this still runs, alone.
    pub max_step_tokens: u64,
    /// KV memory budget in tokens, summed over resident requests (with lookahead).
    pub kv_budget_tokens: u64,
}

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
    /// (Re)compute the KV of `tokens` context tokens (prompt, plus generated tokens after a freed
    /// preemption) and produce the next token.
    Prefill { tokens: u32 },
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

/// The scheduler: mechanism around a [`Policy`].
pub struct Scheduler {
    config: SchedulerConfig,
    policy: Box<dyn Policy>,
    predictor: Option<Box<dyn LengthPredictor>>,
    requests: HashMap<RequestId, RequestState>,
    running: Vec<RequestId>,
    kv: KvAccountant,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, policy: Box<dyn Policy>) -> Self {
        let kv = KvAccountant::new(config.capacity.kv_budget_tokens);
        Self {
            config,
            policy,
            predictor: None,
            requests: HashMap::new(),
            running: Vec::new(),
            kv,
        }
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

    /// Admits a request. Errors: a duplicate id, or a request that can never fit the KV budget
    /// (`NeverFits`: the caller reports it as finished with [`FinishReason::NeverFits`]).
    pub fn add_request(&mut self, spec: RequestSpec, now_s: f64) -> Result<(), CoreError> {
        let _ = (spec, now_s, &self.policy, &self.predictor, &self.kv);
        todo!("core helper")
    }

    /// Removes a request at once (client cancelled); returns its final state. Its KV is freed.
    pub fn cancel(&mut self, id: RequestId, now_s: f64) -> Option<RequestState> {
        let _ = (id, now_s);
        todo!("core helper")
    }

    /// Chooses the next step's batch (asking the policy) and preempts running requests it left
    /// out, freeing KV of preempted requests (victims named by the policy) when the batch needs it.
    /// Empty batch = nothing runnable.
    pub fn schedule(&mut self, now_s: f64) -> SchedulerOutput {
        let _ = now_s;
        todo!("core helper")
    }

    /// Applies a step's results; `step_time_s` is the step's duration (added to the attained
    /// service of every member), `now_s` the time at its end. Returns the requests that finished
    /// in this step (removed from the scheduler), with their final state.
    pub fn update(
        &mut self,
        output: &SchedulerOutput,
        results: &[StepResult],
        step_time_s: f64,
        now_s: f64,
    ) -> Vec<RequestState> {
        let _ = (output, results, step_time_s, now_s);
        let _ = self.config.cost.prefill_s(0);
        todo!("core helper")
    }
}
