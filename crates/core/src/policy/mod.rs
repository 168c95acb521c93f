//! The `Policy` trait, the batch builder a policy fills, and the factory that builds a policy from
//! its kind (the ordering) and its [`PolicyConfig`] (the settings). Each ordering lives in its
//! own file beside this one; the settings every ordering shares (aging, batch formation) are
//! wrappers in [`compose`].
//!
//! Policy vs mechanism (vLLM's split): the [`crate::Scheduler`] owns request state, KV accounting
//! and preemption mechanics; a policy only keeps its own ordering structures (heaps / ordered maps,
//! so decisions are O(log n)) and chooses who runs. Running requests it does not put in the batch
//! are preempted.

#[cfg(feature = "cli")]
pub mod args;
pub mod compose;
pub mod fcfs;
pub mod gittins;
pub mod laps_sd;
pub mod laps_sd_srpt;
pub mod las;
pub mod mlfq;
pub mod oracle;
pub(crate) mod queue;
pub mod sjf;
pub mod srpt;
pub mod trail;

use crate::request::IdMap;

use serde::{Deserialize, Serialize};

pub use crate::batch::{AddOutcome, BatchBuilder, MISS_BUDGET};
use crate::cost::StepCostModel;
use crate::error::CoreError;
use crate::request::{RequestId, RequestState};

/// Remaining execution time at batch 1 of `r` with `remaining_tokens` still to generate at
/// `tokens_per_step` tokens per SD step of speculation length `k`: the prefill it still owes,
/// if its KV must be computed (which yields the first of those tokens), plus its SD steps.
/// `oracle` calls it with the true length and acceptance, `laps-sd` without its LAS phase with
/// predicted ones.
pub fn execution_time_s(
    r: &RequestState,
    remaining_tokens: f64,
    tokens_per_step: f64,
    k: u32,
    cost: &dyn StepCostModel,
) -> f64 {
    let (prefill_s, decode_tokens) = if r.needs_prefill() {
        (
            cost.prefill_s(r.prefill_remaining_tokens()),
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

/// A scheduling policy. Called only by the [`crate::Scheduler`], always with the current time.
pub trait Policy: Send {
    /// The name it is selected by (`fcfs`, `laps-sd`, ...).
    fn name(&self) -> &str;
    /// A request arrived (called once, before it can be scheduled).
    fn on_arrival(&mut self, request: &RequestState, now_s: f64);
    /// A request took part in a step; `request` is its updated state (attained service,
    /// acceptance, generated tokens, perceptibility). Called for each batch member after each step.
    fn on_step(&mut self, request: &RequestState, now_s: f64);
    /// A request left: `request` is its final state, `phase` `Finished(reason)` (cancelled
    /// ones included). Forget it; learn from it if the policy learns.
    fn on_finish(&mut self, request: &RequestState);
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

/// Every ordering, by name. Settings (aging, batch formation, LAPS-SD's knobs) are fields of
/// [`PolicyConfig`], not names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Fcfs,
    Sjf,
    Srpt,
    Las,
    Mlfq,
    Trail,
    /// SRPT on the true remaining execution time (simulator only: needs the true length).
    Oracle,
    /// The paper's algorithm (arXiv 2505.17074), or with `las_phase = false` its estimate alone.
    LapsSd,
    /// Ours: the Gittins index of each request's posterior remaining time.
    Gittins,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 9] = [
        PolicyKind::Fcfs,
        PolicyKind::Sjf,
        PolicyKind::Srpt,
        PolicyKind::Las,
        PolicyKind::Mlfq,
        PolicyKind::Trail,
        PolicyKind::Oracle,
        PolicyKind::LapsSd,
        PolicyKind::Gittins,
    ];
    /// The baselines of the paper's comparison (no oracle, no LAPS-SD).
    pub const BASELINES: [PolicyKind; 6] = [
        PolicyKind::Fcfs,
        PolicyKind::Sjf,
        PolicyKind::Srpt,
        PolicyKind::Las,
        PolicyKind::Mlfq,
        PolicyKind::Trail,
    ];
    /// What the server runs when `--policy` is not given: the policy that wins the regime
    /// matrix (docs/scheduling.md).
    pub const SERVER_DEFAULT: PolicyKind = PolicyKind::Gittins;
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
            PolicyKind::Gittins => "gittins",
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

/// How a step's batch is formed from the ordering's offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum BatchFormation {
    /// Every offer that fits joins, up to the batch limits.
    #[default]
    Full,
    /// A short queue may run a smaller batch when the cost model says co-batching raises the
    /// total latency; full from `marginal_full_at_queue` requests on
    /// ([`BatchBuilder::use_marginal_formation`]).
    Marginal,
}

/// Gittins: how the posterior of a request's output length is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum SizePosterior {
    /// Log-normal around the regression of ln(actual) on ln(predicted), one spread for all.
    LogNormal,
    /// The finished requests of the same prediction (or prompt-length) bucket, as observed,
    /// capped at the request's max_tokens; log-normal while a bucket has too few
    /// ([`gittins::EmpiricalLengths`]).
    #[default]
    Empirical,
}

/// LAPS-SD's estimate of tokens per SD step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum TokensPerStep {
    /// The paper's `n*A + 1` from the measured acceptance rate A.
    #[default]
    AcceptanceRate,
    /// The measured mean accepted length (accepted + 1 per step).
    MeanAcceptedLength,
}

/// The settings of a policy (defaults documented per field); every field applies to the same
/// ordering the same way in `lapsd sim` and `lapsd serve`.
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
    /// Starvation bound (aging), any ordering: a request that has not run for this long is
    /// served first until it finishes. `None` = off (the default; the server's default bound is
    /// the relative one, [`SERVER_DEFAULT_MAX_WAIT_FACTOR`]).
    pub max_wait_s: Option<f64>,
    /// Relative starvation bound, any ordering: a request that has not run for this many times
    /// the mean latency of recently finished requests is served first until it finishes (scale
    /// free: the same setting bounds the tail on a GPU and on 2 CPU cores). `None` = off. With
    /// `max_wait_s` as well, whichever bound is shorter applies. Off by default; the server turns
    /// it on ([`SERVER_DEFAULT_MAX_WAIT_FACTOR`]).
    pub max_wait_factor: Option<f64>,
    /// Tail bound, any ordering: p99 latency within about this many times the p99 a shadow FCFS
    /// queue gives the same arrivals with their measured service times; the oldest request past
    /// the bound goes first while more than 0.5% of recent requests exceed it
    /// ([`compose::FcfsPromise`]). `None` = off.
    pub fcfs_slack: Option<f64>,
    /// How batches are formed (default full).
    pub batch_formation: BatchFormation,
    /// Marginal formation applies only below this many requests in the system (default 16).
    pub marginal_full_at_queue: usize,
    /// LAPS-SD: where perceptible requests rank (default: within their queue).
    pub perceptible_placement: laps_sd::PerceptiblePlacement,
    /// LAPS-SD: tokens per step from the acceptance rate (default) or the mean accepted length.
    pub tokens_per_step: TokensPerStep,
    /// LAPS-SD: least attained service until a request's acceptance rate is stable (the paper,
    /// default true); false ranks every request by the estimate from arrival, with the prefill
    /// still owed and the acceptance rate shrunk toward the finished requests' (`laps_sd_srpt`).
    pub las_phase: bool,
    /// Gittins: the output-length posterior (default empirical).
    pub size_posterior: SizePosterior,
}

/// The server's default starvation bound, relative: a request that has not run for 100x the
/// mean latency of recent requests goes first. Only a safety net against indefinite starvation
/// (an overloaded queue): the regime matrix shows that promoting starved requests does not bring
/// p99 near FCFS's and that tighter factors cost the mean dearly (10x: 1.22x the best policy on
/// average in heavy-tailed regimes, 100x: 1.03x; docs/scheduling.md). A fixed bound in seconds
/// is wrong on one machine or the other: 30 s turned a size-based policy into FCFS on 2 CPU
/// cores at 95% load, and never acts on a GPU.
pub const SERVER_DEFAULT_MAX_WAIT_FACTOR: f64 = 100.0;

/// The server's default tail bound: p99 latency within about this many times the p99 FCFS would
/// give the same requests ([`compose::FcfsPromise`]). From the regime matrix's trade-off between
/// mean and tail (docs/scheduling.md): at 3 the worst p99 against FCFS at load 0.9 falls from
/// 5.9x to 3.5x for about 1% of the mean up to load 0.8 and 7% at 0.9 (geometric means over the
/// regimes); 1.5 gets 2.1x for 4.4% and 15%.
pub const SERVER_DEFAULT_FCFS_SLACK: f64 = 3.0;

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            num_queues: 4,
            first_threshold_passes: 16,
            trail_no_preempt_fraction: 0.5,
            max_wait_s: None,
            max_wait_factor: None,
            fcfs_slack: None,
            batch_formation: BatchFormation::Full,
            marginal_full_at_queue: 16,
            perceptible_placement: laps_sd::PerceptiblePlacement::WithinQueue,
            tokens_per_step: TokensPerStep::AcceptanceRate,
            las_phase: true,
            size_posterior: SizePosterior::default(),
        }
    }
}

impl PolicyConfig {
    /// The settings `lapsd serve` starts from: the relative starvation bound
    /// ([`SERVER_DEFAULT_MAX_WAIT_FACTOR`]) and the tail bound ([`SERVER_DEFAULT_FCFS_SLACK`]).
    pub fn server_default() -> Self {
        Self {
            max_wait_factor: Some(SERVER_DEFAULT_MAX_WAIT_FACTOR),
            fcfs_slack: Some(SERVER_DEFAULT_FCFS_SLACK),
            ..Self::default()
        }
    }

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
            if !(w.is_finite() && w > 0.0) {
                return Err(CoreError::InvalidConfig {
                    field: "max_wait_s",
                    reason: format!("must be a finite number > 0, got {w}"),
                });
            }
        }
        if let Some(f) = self.max_wait_factor {
            if !(f.is_finite() && f > 0.0) {
                return Err(CoreError::InvalidConfig {
                    field: "max_wait_factor",
                    reason: format!("must be a finite number > 0, got {f}"),
                });
            }
        }
        if let Some(s) = self.fcfs_slack {
            if !(s.is_finite() && s >= 1.0) {
                return Err(CoreError::InvalidConfig {
                    field: "fcfs_slack",
                    reason: format!("must be a finite number >= 1, got {s}"),
                });
            }
        }
        if self.marginal_full_at_queue == 0 {
            return Err(CoreError::InvalidConfig {
                field: "marginal_full_at_queue",
                reason: "must be at least 1".to_string(),
            });
        }
        Ok(())
    }

    /// The settings that differ from the defaults, as `name=value` pairs (labels in reports).
    pub fn non_default_settings(&self) -> Vec<String> {
        let d = Self::default();
        let mut out = Vec::new();
        if let Some(w) = self.max_wait_s {
            out.push(format!("max-wait-s={w}"));
        }
        if let Some(f) = self.max_wait_factor {
            out.push(format!("max-wait-factor={f}"));
        }
        if let Some(s) = self.fcfs_slack {
            out.push(format!("fcfs-slack={s}"));
        }
        if self.batch_formation != d.batch_formation {
            out.push("batch-formation=marginal".to_string());
        }
        if self.marginal_full_at_queue != d.marginal_full_at_queue {
            out.push(format!(
                "marginal-full-at-queue={}",
                self.marginal_full_at_queue
            ));
        }
        if self.perceptible_placement != d.perceptible_placement {
            out.push(format!(
                "perceptible-placement={}",
                match self.perceptible_placement {
                    laps_sd::PerceptiblePlacement::WithinQueue => "within-queue",
                    laps_sd::PerceptiblePlacement::First => "first",
                    laps_sd::PerceptiblePlacement::Last => "last",
                }
            ));
        }
        if self.tokens_per_step != d.tokens_per_step {
            out.push("tokens-per-step=mean-accepted-length".to_string());
        }
        if !self.las_phase {
            out.push("las-phase=false".to_string());
        }
        if self.size_posterior != d.size_posterior {
            out.push(format!(
                "size-posterior={}",
                match self.size_posterior {
                    SizePosterior::LogNormal => "log-normal",
                    SizePosterior::Empirical => "empirical",
                }
            ));
        }
        if self.num_queues != d.num_queues {
            out.push(format!("num-queues={}", self.num_queues));
        }
        if self.first_threshold_passes != d.first_threshold_passes {
            out.push(format!(
                "first-threshold-passes={}",
                self.first_threshold_passes
            ));
        }
        if self.trail_no_preempt_fraction != d.trail_no_preempt_fraction {
            out.push(format!(
                "trail-no-preempt-fraction={}",
                self.trail_no_preempt_fraction
            ));
        }
        out
    }

    /// Applies one `name=value` setting (the names of [`Self::non_default_settings`]).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), CoreError> {
        fn parse<T: std::str::FromStr>(field: &'static str, value: &str) -> Result<T, CoreError> {
            value.trim().parse().map_err(|_| CoreError::InvalidConfig {
                field,
                reason: format!("cannot parse {value:?}"),
            })
        }
        let bad = |field: &'static str, expected: &str| CoreError::InvalidConfig {
            field,
            reason: format!("expected {expected}, got {value:?}"),
        };
        match name.trim() {
            "max-wait-s" => {
                let w: f64 = parse("max_wait_s", value)?;
                self.max_wait_s = (w > 0.0).then_some(w);
            }
            "max-wait-factor" => {
                let f: f64 = parse("max_wait_factor", value)?;
                self.max_wait_factor = (f > 0.0).then_some(f);
            }
            "fcfs-slack" => {
                let s: f64 = parse("fcfs_slack", value)?;
                self.fcfs_slack = (s > 0.0).then_some(s);
            }
            "batch-formation" => {
                self.batch_formation = match value.trim() {
                    "full" => BatchFormation::Full,
                    "marginal" => BatchFormation::Marginal,
                    _ => return Err(bad("batch_formation", "full or marginal")),
                }
            }
            "marginal-full-at-queue" => {
                self.marginal_full_at_queue = parse("marginal_full_at_queue", value)?
            }
            "perceptible-placement" => {
                use laps_sd::PerceptiblePlacement as P;
                self.perceptible_placement = match value.trim() {
                    "within-queue" => P::WithinQueue,
                    "first" => P::First,
                    "last" => P::Last,
                    _ => return Err(bad("perceptible_placement", "within-queue, first or last")),
                }
            }
            "tokens-per-step" => {
                self.tokens_per_step = match value.trim() {
                    "acceptance-rate" => TokensPerStep::AcceptanceRate,
                    "mean-accepted-length" => TokensPerStep::MeanAcceptedLength,
                    _ => {
                        return Err(bad(
                            "tokens_per_step",
                            "acceptance-rate or mean-accepted-length",
                        ))
                    }
                }
            }
            "las-phase" => self.las_phase = parse("las_phase", value)?,
            "size-posterior" => {
                self.size_posterior = match value.trim() {
                    "log-normal" => SizePosterior::LogNormal,
                    "empirical" => SizePosterior::Empirical,
                    _ => return Err(bad("size_posterior", "log-normal or empirical")),
                }
            }
            "num-queues" => self.num_queues = parse("num_queues", value)?,
            "first-threshold-passes" => {
                self.first_threshold_passes = parse("first_threshold_passes", value)?
            }
            "trail-no-preempt-fraction" => {
                self.trail_no_preempt_fraction = parse("trail_no_preempt_fraction", value)?
            }
            other => {
                return Err(CoreError::InvalidConfig {
                    field: "setting",
                    reason: format!(
                        "unknown setting {other:?} (expected max-wait-s, max-wait-factor, fcfs-slack, batch-formation, \
                         marginal-full-at-queue, perceptible-placement, tokens-per-step, \
                         las-phase, size-posterior, num-queues, first-threshold-passes, \
                         trail-no-preempt-fraction)"
                    ),
                })
            }
        }
        self.validate()
    }
}

/// One configured policy: an ordering and its settings, with the label reports show
/// (`gittins`, `laps-sd[las-phase=false]`, ...). Parsed from `name` or `name[setting=value,...]`
/// on top of a base configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    pub kind: PolicyKind,
    pub config: PolicyConfig,
}

impl PolicySpec {
    pub fn new(kind: PolicyKind, config: PolicyConfig) -> Self {
        Self { kind, config }
    }

    /// The name, with the settings that differ from the defaults in brackets.
    pub fn label(&self) -> String {
        let settings = self.config.non_default_settings();
        if settings.is_empty() {
            self.kind.name().to_string()
        } else {
            format!("{}[{}]", self.kind.name(), settings.join(","))
        }
    }

    /// Parses `name` or `name[setting=value,...]`, the settings applied on top of `base`.
    pub fn parse(text: &str, base: &PolicyConfig) -> Result<Self, CoreError> {
        let text = text.trim();
        let (name, settings) = match text.split_once('[') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix(']')
                    .ok_or_else(|| CoreError::InvalidConfig {
                        field: "policy",
                        reason: format!("{text:?}: settings must end with ']'"),
                    })?;
                (name, inner)
            }
            None => (text, ""),
        };
        let kind: PolicyKind = name.parse()?;
        let mut config = base.clone();
        for pair in settings.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| CoreError::InvalidConfig {
                    field: "policy",
                    reason: format!("{pair:?} in {text:?}: expected setting=value"),
                })?;
            config.set(key, value)?;
        }
        Ok(Self { kind, config })
    }

    /// Parses a comma-separated list of specs (commas inside brackets belong to the settings).
    pub fn parse_list(text: &str, base: &PolicyConfig) -> Result<Vec<Self>, CoreError> {
        let mut out = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        let bytes: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for (i, c) in bytes.iter().enumerate() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    pieces.push(bytes[start..i].iter().collect::<String>());
                    start = i + 1;
                }
                _ => {}
            }
        }
        pieces.push(bytes[start..].iter().collect::<String>());
        for piece in pieces.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let spec = Self::parse(piece, base)?;
            if !out.contains(&spec) {
                out.push(spec);
            }
        }
        Ok(out)
    }

    pub fn build(&self) -> Result<Box<dyn Policy>, CoreError> {
        build_policy(self.kind, &self.config)
    }
}

/// Builds a policy: the ordering `kind`, wrapped in the shared settings of `config` (vLLM's
/// `create_request_queue`). Errors: an invalid config.
pub fn build_policy(kind: PolicyKind, config: &PolicyConfig) -> Result<Box<dyn Policy>, CoreError> {
    config.validate()?;
    use laps_sd::{LapsSd, LapsSdConfig};
    let ordering: Box<dyn Policy> = match kind {
        PolicyKind::Fcfs => Box::new(fcfs::Fcfs::default()),
        PolicyKind::Sjf => Box::new(sjf::Sjf::default()),
        PolicyKind::Srpt => Box::new(srpt::Srpt::default()),
        PolicyKind::Las => Box::new(las::Las::default()),
        PolicyKind::Mlfq => Box::new(mlfq::Mlfq::new(
            config.num_queues,
            config.first_threshold_passes,
        )),
        PolicyKind::Trail => Box::new(trail::Trail::new(config.trail_no_preempt_fraction)),
        PolicyKind::Oracle => Box::new(oracle::Oracle::default()),
        PolicyKind::LapsSd if !config.las_phase => Box::new(laps_sd_srpt::LapsSdSrpt::new()),
        PolicyKind::LapsSd => Box::new(LapsSd::new(LapsSdConfig {
            num_queues: config.num_queues,
            first_threshold_passes: config.first_threshold_passes,
            placement: config.perceptible_placement,
            mean_accepted_length: config.tokens_per_step == TokensPerStep::MeanAcceptedLength,
        })),
        PolicyKind::Gittins => {
            Box::new(gittins::Gittins::with_size_posterior(config.size_posterior))
        }
    };
    let aged: Box<dyn Policy> = if config.max_wait_s.is_some() || config.max_wait_factor.is_some() {
        Box::new(compose::Aging::with_bounds(
            ordering,
            config.max_wait_s,
            config.max_wait_factor,
        ))
    } else {
        ordering
    };
    let aged: Box<dyn Policy> = match config.fcfs_slack {
        Some(slack) => Box::new(compose::FcfsPromise::new(aged, slack)),
        None => aged,
    };
    Ok(match config.batch_formation {
        BatchFormation::Full => aged,
        BatchFormation::Marginal => Box::new(compose::MarginalFormation::new(
            aged,
            config.marginal_full_at_queue,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Capacity;
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
        let cost = crate::testutil::test_cost();
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
        let mut b = BatchBuilder::new(cap, &requests, 4, &cost);
        assert_eq!(
            b.try_add(1),
            AddOutcome::Added,
            "an oversize prefill runs a chunk of the step budget"
        );
        assert_eq!(b.step_tokens(), 50);
        assert_eq!(
            b.kv_tokens(),
            50,
            "a chunk needs the KV it computes, no lookahead"
        );
        assert_eq!(
            b.try_add(2),
            AddOutcome::DoesNotFit,
            "step tokens: 50 + 5 > 50"
        );
        assert_eq!(b.try_add(1), AddOutcome::Rejected);
        assert_eq!(b.try_add(99), AddOutcome::Rejected);

        let mut b = BatchBuilder::new(cap, &requests, 4, &cost);
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
        let mut b = BatchBuilder::new(tight, &requests, 4, &cost);
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
    fn specs_parse_settings_and_label_what_differs() {
        let base = PolicyConfig::default();
        let specs = PolicySpec::parse_list(
            "gittins, laps-sd[las-phase=false,batch-formation=marginal], fcfs[max-wait-s=30]",
            &base,
        )
        .expect("valid list");
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].label(), "gittins");
        assert!(!specs[1].config.las_phase);
        assert_eq!(specs[1].config.batch_formation, BatchFormation::Marginal);
        assert_eq!(
            specs[1].label(),
            "laps-sd[batch-formation=marginal,las-phase=false]"
        );
        assert_eq!(specs[2].config.max_wait_s, Some(30.0));
        // Round trip: a label parses back to the same spec.
        for spec in &specs {
            assert_eq!(PolicySpec::parse(&spec.label(), &base).as_ref(), Ok(spec));
        }
        for bad in ["gittins[", "gittins[nope=1]", "gittins[max-wait-s]", "fifo"] {
            assert!(PolicySpec::parse(bad, &base).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_names_and_bad_configs_are_named() {
        let err = "lapsd".parse::<PolicyKind>().unwrap_err();
        assert!(matches!(&err, CoreError::UnknownPolicy { name, expected }
            if name == "lapsd" && expected.contains("gittins")));
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
