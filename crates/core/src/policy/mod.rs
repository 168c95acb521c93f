//! The `Policy` trait, the batch builder a policy fills, and the factory that builds a policy by
//! name. Each policy lives in its own file beside this one.
//!
//! Policy vs mechanism (vLLM's split): the [`crate::Scheduler`] owns request state, KV accounting
//! and preemption mechanics; a policy only keeps its own ordering structures (heaps / ordered maps,
//! so decisions are O(log n)) and chooses who runs. Running requests it does not put in the batch
//! are preempted.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cost::StepCostModel;
use crate::error::CoreError;
use crate::request::{RequestId, RequestState};
use crate::scheduler::Capacity;

/// Read-only view a policy gets when choosing a batch.
pub struct ScheduleContext<'a> {
    pub now_s: f64,
    /// Every unfinished request, by id.
    pub requests: &'a HashMap<RequestId, RequestState>,
    /// Requests in the previous step's batch (candidates for preemption).
    pub running: &'a [RequestId],
    /// Speculation length n (draft tokens per step) the engine will use.
    pub speculation_length: u32,
    /// Step costs, for policies that estimate execution time (LAPS-SD, oracle).
    pub cost: &'a dyn StepCostModel,
}

/// Why [`BatchBuilder::try_add`] did not add a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    /// The batch is at `max_batch`: stop offering.
    BatchFull,
    /// This request does not fit the step-token or KV budget next to those already chosen;
    /// a smaller one might.
    DoesNotFit,
    /// Already in the batch, or not a runnable request.
    Rejected,
}

/// The batch being built for the next step; enforces [`Capacity`] (max batch, step-token budget,
/// KV budget including the lookahead of k+1 tokens).
pub struct BatchBuilder<'a> {
    pub(crate) capacity: Capacity,
    pub(crate) requests: &'a HashMap<RequestId, RequestState>,
    pub(crate) speculation_length: u32,
    pub(crate) chosen: Vec<RequestId>,
    pub(crate) step_tokens: u64,
    pub(crate) kv_tokens: u64,
}

impl<'a> BatchBuilder<'a> {
    /// Offers `id` for the next step. Policies call this in their priority order.
    pub fn try_add(&mut self, id: RequestId) -> AddOutcome {
        let _ = id;
        todo!("core helper: check batch size, step tokens (prefill tokens or k+1), KV (context + k + 1)")
    }
    pub fn is_full(&self) -> bool {
        self.chosen.len() >= self.capacity.max_batch
    }
    pub fn len(&self) -> usize {
        self.chosen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }
    pub fn contains(&self, id: RequestId) -> bool {
        self.chosen.contains(&id)
    }
    pub fn chosen(&self) -> &[RequestId] {
        &self.chosen
    }
}

/// A scheduling policy. Called only by the [`crate::Scheduler`], always with the current time.
pub trait Policy: Send {
    /// The name it is selected by (`fcfs`, `laps-sd`, ...).
    fn name(&self) -> &str;
    /// A request arrived (called once, before it can be scheduled).
    fn on_arrival(&mut self, request: &RequestState, now_s: f64);
    /// A request took part in a step; `request` is its updated state (attained service,
    /// acceptance, generated tokens, perceptibility). Called for each batch member after each step.
    fn on_step(&mut self, request: &RequestState, now_s: f64);
    /// A request left (finished or cancelled): forget it.
    fn on_finish(&mut self, id: RequestId);
    /// Fill `batch` for the next step by offering requests in priority order.
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>);
    /// When KV must be freed, which of these preempted requests holding KV loses it first.
    /// Default: the one that arrived last (vLLM's recompute-the-newest).
    fn kv_victim(
        &self,
        ctx: &ScheduleContext<'_>,
        resident_preempted: &[RequestId],
    ) -> Option<RequestId> {
        resident_preempted.iter().copied().max_by(|a, b| {
            let ta = ctx.requests.get(a).map_or(0.0, |r| r.spec.arrival_s);
            let tb = ctx.requests.get(b).map_or(0.0, |r| r.spec.arrival_s);
            ta.total_cmp(&tb).then(a.cmp(b))
        })
    }
}

/// Every policy, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    Fcfs,
    Sjf,
    Srpt,
    Las,
    Mlfq,
    Trail,
    /// SRPT on the true remaining execution time (simulator only: needs the true length).
    Oracle,
    LapsSd,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::Fcfs,
        PolicyKind::Sjf,
        PolicyKind::Srpt,
        PolicyKind::Las,
        PolicyKind::Mlfq,
        PolicyKind::Trail,
        PolicyKind::Oracle,
        PolicyKind::LapsSd,
    ];
    pub fn name(&self) -> &'static str {
        match self {
            PolicyKind::Fcfs => "fcfs",
            PolicyKind::Sjf => "sjf",
            PolicyKind::Srpt => "srpt",
            PolicyKind::Las => "las",
            PolicyKind::Mlfq => "mlfq",
            PolicyKind::Trail => "trail",
            PolicyKind::Oracle => "oracle",
            PolicyKind::LapsSd => "laps-sd",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| CoreError::UnknownPolicy {
                name: s.to_string(),
                expected: PolicyKind::ALL.map(|k| k.name()).join(", "),
            })
    }
}

/// Parameters of every policy (defaults documented per field); the factory reads the ones it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// FastServe MLFQ / LAPS-SD: number of priority queues.
    pub num_queues: usize,
    /// Attained-service threshold of the first queue, in target forward passes; doubling per level.
    pub first_threshold_passes: u64,
    /// TRAIL: no preemption once a request has done this fraction of its predicted length.
    pub trail_no_preempt_fraction: f64,
    /// Starvation bound (aging): a request waiting longer than this is served first. `None` = off.
    pub max_wait_s: Option<f64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            num_queues: 4,
            first_threshold_passes: 16,
            trail_no_preempt_fraction: 0.5,
            max_wait_s: None,
        }
    }
}

/// Builds a policy by kind (vLLM's `create_request_queue`).
pub fn build_policy(kind: PolicyKind, config: &PolicyConfig) -> Result<Box<dyn Policy>, CoreError> {
    let _ = (kind, config);
    todo!("core helper: one file per policy")
}
