//! One simulated server, what the single-server loop (`simulate`) and the replicas' loop
//! (`replicas`) share: a `Scheduler` with its policy and predictor, the step model, and what a
//! step's end records. The loops differ only in when they admit arrivals and start steps.
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
use lapsd_core::{
    CoreError, FinishReason, OnlineQuantilePredictor, PolicySpec, RequestSpec, Scheduler,
    SchedulerOutput, StepCostModel, StepKind, StepObservation, StepResult,
};

use super::replicas::ReplicaStats;
use super::simulate::{CompletedRequest, SimConfig, SimOutcome};
use crate::error::SimError;
use crate::prediction::PredictorChoice;
use crate::workload::SimRequest;

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
struct Progress {
    generated_tokens: u32,
    sd_steps: u32,
}

/// Seconds the batch takes (see the module header); `results` are the members' outcomes.
fn step_time_s(output: &SchedulerOutput, results: &[StepResult], cost: &dyn StepCostModel) -> f64 {
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
fn validate_requests(requests: &[SimRequest]) -> Result<(), SimError> {
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

/// What every server of a run shares: the requests, their progress, the simulated model and the
/// outcome being built (completions in finish order and the requests that never fit; the loop
/// fills in its totals).
pub(crate) struct World<'a> {
    requests: &'a [SimRequest],
    config: &'a SimConfig,
    /// What a step really takes: the measured profile, else the policies' own cost model.
    step_cost: &'a dyn StepCostModel,
    state: Vec<Progress>,
    progress: Option<&'a ProgressBar>,
    pub outcome: SimOutcome,
}

impl<'a> World<'a> {
    /// Fails unless `requests` are sorted by arrival with `id` == index.
    pub fn new(
        requests: &'a [SimRequest],
        config: &'a SimConfig,
        progress: Option<&'a ProgressBar>,
    ) -> Result<Self, SimError> {
        validate_requests(requests)?;
        let step_cost: &dyn StepCostModel = match &config.step_cost {
            Some(measured) => measured,
            None => &config.scheduler.cost,
        };
        Ok(Self {
            requests,
            config,
            step_cost,
            state: vec![Progress::default(); requests.len()],
            progress,
            outcome: SimOutcome {
                policy: PolicySpec::new(config.policy, config.policy_config.clone()).label(),
                completed: Vec::with_capacity(requests.len()),
                never_fits: 0,
                steps: 0,
                end_s: 0.0,
                busy_s: 0.0,
            },
        })
    }

    /// One request done (finished, or refused as never fitting).
    fn tick(&self) {
        if let Some(bar) = self.progress {
            bar.inc(1);
        }
    }

    /// What one batch member produces this step (the simulated model).
    fn step_member(&mut self, id: u64, kind: StepKind) -> Result<StepResult, SimError> {
        let index = usize::try_from(id)
            .ok()
            .filter(|&i| i < self.requests.len());
        let Some(index) = index else {
            return Err(SimError::InvalidArgument {
                field: "batch",
                reason: format!("scheduler returned unknown request {id}"),
            });
        };
        let req = &self.requests[index];
        let progress = &mut self.state[index];
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
        let acceptance = &self.config.acceptance;
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
}

/// A step under way: the batch, what its members produced, and when it ends.
pub(crate) struct InFlight {
    output: SchedulerOutput,
    results: Vec<StepResult>,
    dt_s: f64,
    pub end_s: f64,
}

/// One server: its own scheduler (policy and predictor), clock and totals.
pub(crate) struct Server {
    pub scheduler: Scheduler,
    /// Time of the last event this server took part in.
    pub now_s: f64,
    /// `requests` is the dispatcher's to count.
    pub stats: ReplicaStats,
    /// Drafted and accepted tokens of its finished requests (the `least-work` prior).
    finished_drafted: u64,
    finished_accepted: u64,
}

impl Server {
    pub fn new(config: &SimConfig) -> Result<Self, SimError> {
        let policy = build_policy(config.policy, &config.policy_config)?;
        let mut scheduler = Scheduler::new(config.scheduler.clone(), policy)
            .with_speculation_mode(config.speculation_mode);
        if let PredictorChoice::Online {
            prior_tokens,
            window,
        } = config.predictor
        {
            scheduler = scheduler
                .with_predictor(Box::new(OnlineQuantilePredictor::new(prior_tokens, window)));
        }
        Ok(Self {
            scheduler,
            now_s: 0.0,
            stats: ReplicaStats {
                requests: 0,
                completed: 0,
                steps: 0,
                busy_s: 0.0,
            },
            finished_drafted: 0,
            finished_accepted: 0,
        })
    }

    /// Pooled acceptance rate of the requests it finished (0 before any drafted token), the
    /// prior `laps-sd[las-phase=false]` uses too.
    pub fn prior_acceptance_rate(&self) -> f64 {
        if self.finished_drafted == 0 {
            0.0
        } else {
            self.finished_accepted as f64 / self.finished_drafted as f64
        }
    }

    /// Admits request `index`; one that can never fit the KV budget is counted and dropped.
    pub fn admit(&mut self, world: &mut World, index: usize) -> Result<(), SimError> {
        let req = &world.requests[index];
        match self
            .scheduler
            .add_request(request_spec(req, &world.config.predictor), req.arrival_s)
        {
            Ok(()) => Ok(()),
            Err(CoreError::NeverFits { .. }) => {
                world.outcome.never_fits += 1;
                world.tick();
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Starts a step at `now_s`: `None` when nothing is admitted or the policy runs nothing now
    /// (the caller decides whether that is waiting for an arrival or a stall).
    pub fn start_step(&mut self, world: &mut World) -> Result<Option<InFlight>, SimError> {
        if self.scheduler.is_empty() {
            return Ok(None);
        }
        let output = self.scheduler.schedule(self.now_s);
        if output.batch.is_empty() {
            return Ok(None);
        }
        let mut results = Vec::with_capacity(output.batch.len());
        for member in &output.batch {
            results.push(world.step_member(member.id, member.kind)?);
        }
        let dt_s = step_time_s(&output, &results, world.step_cost);
        self.stats.steps += 1;
        self.stats.busy_s += dt_s;
        Ok(Some(InFlight {
            output,
            results,
            dt_s,
            end_s: self.now_s + dt_s,
        }))
    }

    /// Ends `step`: the clock moves to its end, the scheduler takes the results, and the requests
    /// it finished are recorded.
    pub fn finish_step(&mut self, world: &mut World, step: InFlight) {
        self.now_s = step.end_s;
        for done in self
            .scheduler
            .update(&step.output, &step.results, step.dt_s, step.end_s)
        {
            self.finished_drafted += done.acceptance.drafted_tokens;
            self.finished_accepted += done.acceptance.accepted_tokens;
            self.stats.completed += 1;
            world.outcome.completed.push(CompletedRequest {
                id: done.spec.id,
                arrival_s: done.spec.arrival_s,
                finish_s: step.end_s,
                first_token_s: done.first_token_s.unwrap_or(step.end_s),
                output_tokens: done.generated_tokens,
                preemptions: done.preemptions,
                recomputes: done.recomputes,
            });
            world.tick();
        }
    }
}
