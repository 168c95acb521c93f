//! The `Policy` trait, the batch builder a policy fills, and the factory that builds a policy by
//! name. Each policy lives in its own file beside this one.
//!
//! Policy vs mechanism (vLLM's split): the [`crate::Scheduler`] owns request state, KV accounting
//! and preemption mechanics; a policy only keeps its own ordering structures (heaps / ordered maps,
//! so decisions are O(log n)) and chooses who runs. Running requests it does not put in the batch
//! are preempted.

pub mod fcfs;
pub mod laps_sd;
pub mod laps_sd_srpt;
pub mod las;
pub mod mlfq;
pub mod oracle;
pub(crate) mod queue;
pub mod sjf;
pub mod srpt;
pub mod trail;

use crate::request::{IdMap, IdSet};

use serde::{Deserialize, Serialize};

use crate::cost::StepCostModel;
use crate::error::CoreError;
use crate::request::{RequestId, RequestState};
use crate::scheduler::Capacity;

/// Remaining execution time at batch 1 of `r` with `remaining_tokens` still to generate at
/// `tokens_per_step` tokens per SD step of speculation length `k`: the prefill it still owes,
/// if its KV must be computed (which yields the first of those tokens), plus its SD steps.
/// `oracle` calls it with the true length and acceptance, `laps-sd-srpt` with predicted ones.
pub fn execution_time_s(
    r: &RequestState,
    remaining_tokens: f64,
    tokens_per_step: f64,
    k: u32,
    cost: &dyn StepCostModel,
) -> f64 {
    let (prefill_s, decode_tokens) = if r.needs_prefill() {
        (
            cost.prefill_s(r.context_tokens()),
            (remaining_tokens - 1.0).max(0.0),
        )
    } else {
        (0.0, remaining_tokens)
    };
    prefill_s + decode_tokens / tokens_per_step * cost.sd_step_s(1, k)
}

/// Read-only view a policy gets when choosing a batch.
pub struct ScheduleContext<'a> {
    pub now_s: f64,
    /// Every unfinished request, by id.
    pub requests: &'a IdMap<RequestState>,
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

/// How many `DoesNotFit` answers one selection may collect before [`BatchBuilder::should_stop`]
/// says stop. Bounds the work of a decision when memory is tight (without it, a policy could scan
/// the whole queue every step looking for something small enough). Work conservation is not
/// affected: the first request offered to an empty batch always fits.
pub const MISS_BUDGET: usize = 64;

/// The batch being built for the next step; enforces [`Capacity`] (max batch, step-token budget,
/// KV budget including the lookahead of k+1 tokens).
pub struct BatchBuilder<'a> {
    pub(crate) capacity: Capacity,
    pub(crate) requests: &'a IdMap<RequestState>,
    pub(crate) speculation_length: u32,
    pub(crate) chosen: Vec<RequestId>,
    pub(crate) chosen_set: IdSet,
    pub(crate) step_tokens: u64,
    pub(crate) kv_tokens: u64,
    pub(crate) misses: usize,
}

impl<'a> BatchBuilder<'a> {
    pub fn new(
        capacity: Capacity,
        requests: &'a IdMap<RequestState>,
        speculation_length: u32,
    ) -> Self {
        Self {
            capacity,
            requests,
            speculation_length,
            chosen: Vec::with_capacity(capacity.max_batch.min(1024)),
            chosen_set: IdSet::with_capacity_and_hasher(
                capacity.max_batch.min(1024),
                Default::default(),
            ),
            step_tokens: 0,
            kv_tokens: 0,
            misses: 0,
        }
    }

    /// Tokens `request` processes in its next step: its whole context for a (re)prefill, else
    /// `min(k, remaining - 1) + 1` for an SD step.
    pub fn step_tokens_of(request: &RequestState, speculation_length: u32) -> u64 {
        if request.needs_prefill() {
            u64::from(request.context_tokens())
        } else {
            u64::from(request.step_speculation_length(speculation_length)) + 1
        }
    }

    /// KV tokens `request` needs for its next step: context + k + 1 (the lookahead).
    pub fn kv_need_of(request: &RequestState, speculation_length: u32) -> u64 {
        u64::from(request.context_tokens()) + u64::from(speculation_length) + 1
    }

    /// Offers `id` for the next step. Policies call this in their priority order.
    ///
    /// Checks, in order: already chosen or unknown/finished (`Rejected`), batch size
    /// (`BatchFull`), step tokens (a lone request in an empty batch is always allowed, so an
    /// oversize prefill still runs, alone), and KV: the needs of everything chosen must fit the
    /// whole budget (residents not chosen can be evicted by the scheduler, so they do not count).
    pub fn try_add(&mut self, id: RequestId) -> AddOutcome {
        let Some(request) = self.requests.get(&id) else {
            return AddOutcome::Rejected;
        };
        if request.is_finished() || self.contains(id) {
            return AddOutcome::Rejected;
        }
        if self.is_full() {
            return AddOutcome::BatchFull;
        }
        let step_tokens = Self::step_tokens_of(request, self.speculation_length);
        let kv_need = Self::kv_need_of(request, self.speculation_length);
        let fits_tokens = self.chosen.is_empty()
            || self.step_tokens + step_tokens <= self.capacity.max_step_tokens;
        let fits_kv = self.kv_tokens + kv_need <= self.capacity.kv_budget_tokens;
        if !(fits_tokens && fits_kv) {
            self.misses += 1;
            return AddOutcome::DoesNotFit;
        }
        self.chosen.push(id);
        self.chosen_set.insert(id);
        self.step_tokens += step_tokens;
        self.kv_tokens += kv_need;
        AddOutcome::Added
    }
    pub fn is_full(&self) -> bool {
        self.chosen.len() >= self.capacity.max_batch
    }
    /// Full, or [`MISS_BUDGET`] offers did not fit: a policy should stop offering.
    pub fn should_stop(&self) -> bool {
        self.is_full() || self.misses >= MISS_BUDGET
    }
    pub fn len(&self) -> usize {
        self.chosen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }
    pub fn contains(&self, id: RequestId) -> bool {
        self.chosen_set.contains(&id)
    }
    pub fn chosen(&self) -> &[RequestId] {
        &self.chosen
    }
    /// Step tokens of the chosen requests.
    pub fn step_tokens(&self) -> u64 {
        self.step_tokens
    }
    /// KV tokens the chosen requests need (context + lookahead each).
    pub fn kv_tokens(&self) -> u64 {
        self.kv_tokens
    }
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
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
    /// Ablation: every perceptible request ahead of every non-perceptible one.
    LapsSdPerceptibleFirst,
    /// Ablation: every perceptible request behind every non-perceptible one.
    LapsSdPerceptibleLast,
    /// Ours: tokens per step from the measured mean accepted length instead of n*A+1.
    LapsSdMal,
    /// Ours: LAPS-SD with an aging bound (a request waiting longer than `max_wait_s` goes first).
    LapsSdAging,
    /// Ours: `laps-sd-mal` and `laps-sd-aging` together.
    LapsSdPlus,
    /// Ours: LAPS-SD's estimate (with the prefill still owed, and the acceptance rate shrunk
    /// toward the finished requests' rate) from arrival, shortest first, no LAS phase.
    LapsSdSrpt,
    /// Ours: `laps-sd-srpt` with marginal batching (a request joins the batch only when the cost
    /// model says co-batching it lowers the total latency).
    LapsSdSrptMb,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 15] = [
        PolicyKind::Fcfs,
        PolicyKind::Sjf,
        PolicyKind::Srpt,
        PolicyKind::Las,
        PolicyKind::Mlfq,
        PolicyKind::Trail,
        PolicyKind::Oracle,
        PolicyKind::LapsSd,
        PolicyKind::LapsSdPerceptibleFirst,
        PolicyKind::LapsSdPerceptibleLast,
        PolicyKind::LapsSdMal,
        PolicyKind::LapsSdAging,
        PolicyKind::LapsSdPlus,
        PolicyKind::LapsSdSrpt,
        PolicyKind::LapsSdSrptMb,
    ];
    /// The baselines of the paper's comparison (no oracle, no LAPS-SD variant).
    pub const BASELINES: [PolicyKind; 6] = [
        PolicyKind::Fcfs,
        PolicyKind::Sjf,
        PolicyKind::Srpt,
        PolicyKind::Las,
        PolicyKind::Mlfq,
        PolicyKind::Trail,
    ];
    /// The paper's comparison: baselines, the oracle bound and `laps-sd`.
    pub const MAIN: [PolicyKind; 8] = [
        PolicyKind::Fcfs,
        PolicyKind::Sjf,
        PolicyKind::Srpt,
        PolicyKind::Las,
        PolicyKind::Mlfq,
        PolicyKind::Trail,
        PolicyKind::Oracle,
        PolicyKind::LapsSd,
    ];
    /// `laps-sd` and its ablations / our variants.
    pub const LAPS_SD_VARIANTS: [PolicyKind; 8] = [
        PolicyKind::LapsSd,
        PolicyKind::LapsSdPerceptibleFirst,
        PolicyKind::LapsSdPerceptibleLast,
        PolicyKind::LapsSdMal,
        PolicyKind::LapsSdAging,
        PolicyKind::LapsSdPlus,
        PolicyKind::LapsSdSrpt,
        PolicyKind::LapsSdSrptMb,
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
            PolicyKind::LapsSdPerceptibleFirst => "laps-sd-perceptible-first",
            PolicyKind::LapsSdPerceptibleLast => "laps-sd-perceptible-last",
            PolicyKind::LapsSdMal => "laps-sd-mal",
            PolicyKind::LapsSdAging => "laps-sd-aging",
            PolicyKind::LapsSdPlus => "laps-sd+",
            PolicyKind::LapsSdSrpt => "laps-sd-srpt",
            PolicyKind::LapsSdSrptMb => "laps-sd-srpt-mb",
        }
    }
    /// Whether it needs the simulator-only truth (`RequestSpec::true_output_tokens`).
    pub fn needs_truth(&self) -> bool {
        matches!(self, PolicyKind::Oracle)
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| CoreError::UnknownPolicy {
                name: s.to_string(),
                expected: PolicyKind::ALL.map(|k| k.name()).join(", "),
            })
    }
}

/// Default starvation bound of `laps-sd-aging` / `laps-sd+` when `max_wait_s` is `None`.
pub const DEFAULT_AGING_MAX_WAIT_S: f64 = 30.0;

/// Parameters of every policy (defaults documented per field); the factory reads the ones it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// FastServe MLFQ / LAPS-SD: number of priority queues (default 4).
    pub num_queues: usize,
    /// Attained-service threshold of the first queue, in target forward passes; doubling per level
    /// (default 16). LAPS-SD: cumulative thresholds 16, 32, 64, ...; MLFQ: quanta 16, 32, 64, ...
    pub first_threshold_passes: u64,
    /// TRAIL: no preemption once a request has done this fraction of its predicted length
    /// (default 0.5).
    pub trail_no_preempt_fraction: f64,
    /// Starvation bound (aging): a request waiting longer than this is served first. `None` = off
    /// for `srpt` (its starvation counter) and 30 s for `laps-sd-aging` / `laps-sd+`; plain
    /// `laps-sd` ignores it.
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

impl PolicyConfig {
    /// Checks the ranges; messages name the field and the value.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.num_queues == 0 || self.num_queues > 32 {
            return Err(CoreError::InvalidConfig {
                field: "num_queues",
                reason: format!("must be in 1..=32, got {}", self.num_queues),
            });
        }
        if self.first_threshold_passes == 0 {
            return Err(CoreError::InvalidConfig {
                field: "first_threshold_passes",
                reason: "must be at least 1".to_string(),
            });
        }
        if !(0.0..=1.0).contains(&self.trail_no_preempt_fraction) {
            return Err(CoreError::InvalidConfig {
                field: "trail_no_preempt_fraction",
                reason: format!("must be in [0, 1], got {}", self.trail_no_preempt_fraction),
            });
        }
        if let Some(w) = self.max_wait_s {
            if !(w.is_finite() && w >= 0.0) {
                return Err(CoreError::InvalidConfig {
                    field: "max_wait_s",
                    reason: format!("must be a finite number >= 0, got {w}"),
                });
            }
        }
        Ok(())
    }
}

/// Builds a policy by kind (vLLM's `create_request_queue`). Errors: an invalid config.
pub fn build_policy(kind: PolicyKind, config: &PolicyConfig) -> Result<Box<dyn Policy>, CoreError> {
    config.validate()?;
    use laps_sd::{LapsSd, LapsSdConfig, PerceptiblePlacement};
    let laps = |placement, mean_accepted_length, max_wait_s| -> Box<dyn Policy> {
        Box::new(LapsSd::new(LapsSdConfig {
            name: kind.name(),
            num_queues: config.num_queues,
            first_threshold_passes: config.first_threshold_passes,
            placement,
            mean_accepted_length,
            max_wait_s,
        }))
    };
    let aging_wait_s = Some(config.max_wait_s.unwrap_or(DEFAULT_AGING_MAX_WAIT_S));
    Ok(match kind {
        PolicyKind::Fcfs => Box::new(fcfs::Fcfs::default()),
        PolicyKind::Sjf => Box::new(sjf::Sjf::default()),
        PolicyKind::Srpt => Box::new(srpt::Srpt::new(config.max_wait_s)),
        PolicyKind::Las => Box::new(las::Las::default()),
        PolicyKind::Mlfq => Box::new(mlfq::Mlfq::new(
            config.num_queues,
            config.first_threshold_passes,
        )),
        PolicyKind::Trail => Box::new(trail::Trail::new(config.trail_no_preempt_fraction)),
        PolicyKind::Oracle => Box::new(oracle::Oracle::default()),
        PolicyKind::LapsSd => laps(PerceptiblePlacement::WithinQueue, false, None),
        PolicyKind::LapsSdPerceptibleFirst => laps(PerceptiblePlacement::First, false, None),
        PolicyKind::LapsSdPerceptibleLast => laps(PerceptiblePlacement::Last, false, None),
        PolicyKind::LapsSdMal => laps(PerceptiblePlacement::WithinQueue, true, None),
        PolicyKind::LapsSdAging => laps(PerceptiblePlacement::WithinQueue, false, aging_wait_s),
        PolicyKind::LapsSdPlus => laps(PerceptiblePlacement::WithinQueue, true, aging_wait_s),
        PolicyKind::LapsSdSrpt => Box::new(laps_sd_srpt::LapsSdSrpt::new(config.max_wait_s)),
        PolicyKind::LapsSdSrptMb => Box::new(laps_sd_srpt::LapsSdSrpt::with_marginal_batching(
            config.max_wait_s,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{RequestPhase, RequestSpec};

    fn table(specs: &[(RequestId, u32, u32, bool)]) -> IdMap<RequestState> {
        specs
            .iter()
            .map(|&(id, prompt, generated, prefilled)| {
                let mut r = RequestState::new(RequestSpec::new(id, 0.0, prompt, 1000));
                r.generated_tokens = generated;
                r.prefilled = prefilled;
                if prefilled {
                    r.phase = RequestPhase::Preempted { kv_resident: true };
                }
                (id, r)
            })
            .collect()
    }

    #[test]
    fn builder_enforces_batch_step_tokens_and_kv() {
        // k = 4: a decode step is 5 tokens, KV need = context + 5.
        let requests = table(&[
            (1, 100, 0, false),
            (2, 10, 5, true),
            (3, 10, 5, true),
            (4, 40, 0, false),
        ]);
        let cap = Capacity {
            max_batch: 3,
            max_step_tokens: 50,
            kv_budget_tokens: 160,
        };
        let mut b = BatchBuilder::new(cap, &requests, 4);
        assert_eq!(
            b.try_add(1),
            AddOutcome::Added,
            "a lone oversize prefill runs alone"
        );
        assert_eq!(b.step_tokens(), 100);
        assert_eq!(b.kv_tokens(), 105);
        assert_eq!(
            b.try_add(2),
            AddOutcome::DoesNotFit,
            "step tokens: 100 + 5 > 50"
        );
        assert_eq!(b.try_add(1), AddOutcome::Rejected);
        assert_eq!(b.try_add(99), AddOutcome::Rejected);

        let mut b = BatchBuilder::new(cap, &requests, 4);
        assert_eq!(b.try_add(2), AddOutcome::Added);
        assert_eq!(b.try_add(3), AddOutcome::Added);
        assert_eq!((b.step_tokens(), b.kv_tokens()), (10, 40));
        assert_eq!(
            b.try_add(4),
            AddOutcome::Added,
            "40 + 10 = 50 step tokens; 85 KV"
        );
        assert_eq!(b.try_add(1), AddOutcome::BatchFull);
        assert_eq!(b.chosen(), &[2, 3, 4]);

        let tight = Capacity {
            kv_budget_tokens: 60,
            ..cap
        };
        let mut b = BatchBuilder::new(tight, &requests, 4);
        assert_eq!(b.try_add(4), AddOutcome::Added);
        assert_eq!(b.try_add(2), AddOutcome::DoesNotFit, "KV: 45 + 20 > 60");
        assert!(!b.should_stop());
        for _ in 1..MISS_BUDGET {
            b.try_add(3);
        }
        assert!(b.should_stop(), "miss budget spent");
    }

    #[test]
    fn every_kind_builds_under_its_own_name_and_parses_back() {
        for kind in PolicyKind::ALL {
            let policy = build_policy(kind, &PolicyConfig::default()).expect("default config");
            assert_eq!(policy.name(), kind.name());
            assert_eq!(kind.name().parse::<PolicyKind>(), Ok(kind));
        }
        assert_eq!("LAPS-SD".parse::<PolicyKind>(), Ok(PolicyKind::LapsSd));
    }

    #[test]
    fn unknown_names_and_bad_configs_are_named() {
        let err = "lapsd".parse::<PolicyKind>().unwrap_err();
        assert!(matches!(&err, CoreError::UnknownPolicy { name, expected }
            if name == "lapsd" && expected.contains("laps-sd+")));
        let bad = PolicyConfig {
            num_queues: 0,
            ..PolicyConfig::default()
        };
        assert!(matches!(
            build_policy(PolicyKind::Mlfq, &bad),
            Err(CoreError::InvalidConfig {
                field: "num_queues",
                ..
            })
        ));
    }
}
