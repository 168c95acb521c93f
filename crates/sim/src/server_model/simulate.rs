//! The event loop. Time advances step by step: admit the arrivals that have happened, ask the
//! scheduler for a batch (`schedule(now)`), charge the step's time from the cost model, draw each
//! member's accepted tokens, and feed the results back (`update`). An empty batch with requests
//! still to arrive jumps to the next arrival.
//!
//! Step time `d_max * t_draft(b) + t_verify(b, sum of (d_i + 1))` when the batch has
//! decoding members (b = their number, d_i = the draft tokens member i proposed this step, d_max
//! the largest: draft passes run for the longest draft, the verification covers every member's own
//! positions in one forward, as the engine does), plus `prefill_s(tokens)` of every prefill member
//! (prefills run in the same step, serially in time). A member drafts its speculation length k
//! unless its request has a draft length (`RequestSize::draft_length`, a prompt-lookup drafter
//! that drafts only when it finds a match), drawn per step by `AcceptanceModel::drafted_tokens`.
//!
//! Ground truth stays here: the scheduler is told `max_tokens` (a cap strictly above the true
//! length) and, only for the oracle policy, the true length and acceptance rate. A request ends
//! with `FinishReason::Stop` when it reaches its true length (the simulated EOS).

use indicatif::ProgressBar;
use lapsd_core::policy::build_policy;
use lapsd_core::FinishReason;
use lapsd_core::{
    CoreError, MeasuredCost, OnlineQuantilePredictor, PolicyConfig, PolicyKind, PolicySpec,
    RequestSpec, Scheduler, SchedulerConfig, SchedulerOutput, SpeculationMode, StepCostModel,
    StepKind, StepObservation, StepResult,
};
use serde::{Deserialize, Serialize};

use crate::acceptance::AcceptanceModel;
use crate::error::SimError;
use crate::prediction::PredictorChoice;
use crate::workload::SimRequest;

/// Everything one simulation run needs besides the requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub scheduler: SchedulerConfig,
    pub policy: PolicyKind,
    pub policy_config: PolicyConfig,
    pub predictor: PredictorChoice,
    pub acceptance: AcceptanceModel,
    /// What a step really takes (the measured samples of a cost profile); `None` = the
    /// scheduler's own cost model (`scheduler.cost`), which policies use for their estimates.
    #[serde(default)]
    pub step_cost: Option<MeasuredCost>,
    /// Fixed k for every request, or chosen per request and step (`--speculation-mode`).
    #[serde(default)]
    pub speculation_mode: SpeculationMode,
}

/// One finished request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompletedRequest {
    pub id: u64,
    pub arrival_s: f64,
    pub finish_s: f64,
    pub first_token_s: f64,
    /// Tokens the scheduler counted as generated (must equal the true output length).
    pub output_tokens: u32,
    pub preemptions: u32,
    pub recomputes: u32,
}

impl CompletedRequest {
    pub fn latency_s(&self) -> f64 {
        self.finish_s - self.arrival_s
    }
    pub fn ttft_s(&self) -> f64 {
        self.first_token_s - self.arrival_s
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimOutcome {
    pub policy: String,
    /// In finish order.
    pub completed: Vec<CompletedRequest>,
    /// Requests refused at admission because they can never fit the KV budget.
    pub never_fits: usize,
    /// Steps executed.
    pub steps: u64,
    /// Time the last request finished.
    pub end_s: f64,
    /// Total time the server spent in steps (busy time).
    pub busy_s: f64,
}

/// The scheduler's view of a request at arrival. The one place a `RequestSpec` is built, so the
/// oracle's ground-truth fields are set here and nowhere else.
pub(crate) fn request_spec(req: &SimRequest, predictor: &PredictorChoice) -> RequestSpec {
    RequestSpec {
        id: req.id,
        arrival_s: req.arrival_s,
        prompt_tokens: req.size.prompt_tokens,
        max_tokens: req.max_tokens,
        priority: None,
        // The noisy oracle's draw, or a served trace's text prediction (the online predictor
        // takes over once it is outgrown, as on the server).
        predicted_output_tokens: match predictor {
            PredictorChoice::NoisyOracle { .. } => req.predicted_output_tokens,
            PredictorChoice::Online { .. } => req.served_predicted_output_tokens,
        },
        max_tokens_bounds_prediction: true,
        true_output_tokens: Some(req.size.output_tokens),
        true_acceptance_rate: Some(req.size.acceptance_rate),
    }
}

/// Per-request progress the simulator tracks next to the scheduler.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    generated_tokens: u32,
    sd_steps: u32,
}

/// Seconds the batch takes (see the module header); `results` are the members' outcomes.
pub(crate) fn step_time_s(
    output: &SchedulerOutput,
    results: &[StepResult],
    cost: &dyn StepCostModel,
) -> f64 {
    let prefill_s: f64 = output
        .batch
        .iter()
        .filter_map(|member| match member.kind {
            // Each chunk of a chunked prefill pays the prefill cost of its own tokens.
            StepKind::Prefill { tokens } | StepKind::PrefillChunk { tokens } => {
                Some(cost.prefill_s(tokens))
            }
            StepKind::Decode { .. } => None,
        })
        .sum();
    let step = StepObservation::of_step(output, results, 0.0, 0.0);
    prefill_s
        + cost.decode_s(
            step.decode_members as usize,
            step.draft_passes,
            step.verified_tokens as usize,
        )
}

/// Checks that `requests` are sorted by arrival and that each `id` is its index.
pub(crate) fn validate_requests(requests: &[SimRequest]) -> Result<(), SimError> {
    for (index, r) in requests.iter().enumerate() {
        if r.id != index as u64 {
            return Err(SimError::InvalidArgument {
                field: "requests",
                reason: format!("request at index {index} has id {}", r.id),
            });
        }
        if index > 0 && r.arrival_s < requests[index - 1].arrival_s {
            return Err(SimError::InvalidArgument {
                field: "requests",
                reason: format!("request {index} arrives before request {}", index - 1),
            });
        }
    }
    Ok(())
}

/// Runs `requests` (sorted by arrival, `id` == index) through the policy of `config`.
pub fn simulate(
    requests: &[SimRequest],
    config: &SimConfig,
    progress: Option<&ProgressBar>,
) -> Result<SimOutcome, SimError> {
    validate_requests(requests)?;
    let policy = build_policy(config.policy, &config.policy_config)?;
    let mut scheduler = Scheduler::new(config.scheduler.clone(), policy)
        .with_speculation_mode(config.speculation_mode);
    if let PredictorChoice::Online {
        prior_tokens,
        window,
    } = config.predictor
    {
        scheduler =
            scheduler.with_predictor(Box::new(OnlineQuantilePredictor::new(prior_tokens, window)));
    }
    let cost: &dyn StepCostModel = match &config.step_cost {
        Some(measured) => measured,
        None => &config.scheduler.cost,
    };
    let mut state = vec![Progress::default(); requests.len()];
    let mut outcome = SimOutcome {
        policy: PolicySpec::new(config.policy, config.policy_config.clone()).label(),
        completed: Vec::with_capacity(requests.len()),
        never_fits: 0,
        steps: 0,
        end_s: 0.0,
        busy_s: 0.0,
    };
    let mut results: Vec<StepResult> = Vec::new();
    let mut next_arrival = 0usize;
    let mut now_s = 0.0f64;
    loop {
        while next_arrival < requests.len() && requests[next_arrival].arrival_s <= now_s {
            let req = &requests[next_arrival];
            match scheduler.add_request(request_spec(req, &config.predictor), req.arrival_s) {
                Ok(()) => {}
                Err(CoreError::NeverFits { .. }) => {
                    outcome.never_fits += 1;
                    if let Some(bar) = progress {
                        bar.inc(1);
                    }
                }
                Err(e) => return Err(e.into()),
            }
            next_arrival += 1;
        }
        if scheduler.is_empty() {
            match requests.get(next_arrival) {
                Some(r) => {
                    now_s = now_s.max(r.arrival_s);
                    continue;
                }
                None => break,
            }
        }
        let output = scheduler.schedule(now_s);
        if output.batch.is_empty() {
            match requests.get(next_arrival) {
                Some(r) => {
                    now_s = now_s.max(r.arrival_s);
                    continue;
                }
                None => {
                    return Err(SimError::Stalled {
                        now_s,
                        waiting: scheduler.len(),
                    })
                }
            }
        }
        results.clear();
        for member in &output.batch {
            results.push(step_member(
                requests,
                &mut state,
                &config.acceptance,
                member.id,
                member.kind,
            )?);
        }
        let dt_s = step_time_s(&output, &results, cost);
        now_s += dt_s;
        outcome.steps += 1;
        outcome.busy_s += dt_s;
        for done in scheduler.update(&output, &results, dt_s, now_s) {
            outcome.completed.push(CompletedRequest {
                id: done.spec.id,
                arrival_s: done.spec.arrival_s,
                finish_s: now_s,
                first_token_s: done.first_token_s.unwrap_or(now_s),
                output_tokens: done.generated_tokens,
                preemptions: done.preemptions,
                recomputes: done.recomputes,
            });
            if let Some(bar) = progress {
                bar.inc(1);
            }
        }
    }
    outcome.end_s = now_s;
    Ok(outcome)
}

/// What one batch member produces this step (the simulated model).
pub(crate) fn step_member(
    requests: &[SimRequest],
    state: &mut [Progress],
    acceptance: &AcceptanceModel,
    id: u64,
    kind: StepKind,
) -> Result<StepResult, SimError> {
    let index = usize::try_from(id).ok().filter(|&i| i < requests.len());
    let Some(index) = index else {
        return Err(SimError::InvalidArgument {
            field: "batch",
            reason: format!("scheduler returned unknown request {id}"),
        });
    };
    let req = &requests[index];
    let progress = &mut state[index];
    if let StepKind::PrefillChunk { .. } = kind {
        // A chunk that leaves part of the prefill for later computes KV only.
        return Ok(StepResult {
            id,
            drafted_tokens: 0,
            accepted_tokens: 0,
            new_tokens: 0,
            finished: None,
        });
    }
    let remaining = req
        .size
        .output_tokens
        .saturating_sub(progress.generated_tokens);
    let (drafted, accepted) = match kind {
        // A prefill (or the recompute after a freed preemption) yields the next token.
        StepKind::Prefill { .. } | StepKind::PrefillChunk { .. } => (0, 0),
        StepKind::Decode {
            speculation_length: 0,
        } => (0, 0),
        StepKind::Decode { speculation_length } => {
            let drafted = match &req.size.draft_length {
                Some(draft) => {
                    acceptance.drafted_tokens(id, draft, progress.sd_steps, speculation_length)
                }
                None => speculation_length,
            };
            let a = acceptance.accepted_tokens(
                id,
                req.size.acceptance_rate,
                progress.sd_steps,
                drafted,
            );
            progress.sd_steps += 1;
            (drafted, a)
        }
    };
    let new_tokens = (accepted + 1).min(remaining);
    progress.generated_tokens += new_tokens;
    let finished =
        (progress.generated_tokens >= req.size.output_tokens).then_some(FinishReason::Stop);
    Ok(StepResult {
        id,
        drafted_tokens: drafted,
        accepted_tokens: accepted,
        new_tokens,
        finished,
    })
}
