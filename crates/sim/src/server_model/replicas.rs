//! R replicas behind a dispatcher (`lapsd sim --replicas R --dispatch RULE`): each replica is the
//! single server of [`super::simulate`] (its own `Scheduler`, policy and predictor, the same step
//! model), and a [`Dispatcher`] assigns every request to one replica when it arrives; it stays
//! there (no migration).
//!
//! One event loop advances every replica in time order. The next event is the earliest of the
//! next arrival and the end of each replica's step in flight; at one instant, steps that end are
//! applied first (replica order), then the arrivals of that instant are dispatched (arrival
//! order), then every replica that became free or received a request while free starts its next
//! step. A request sent to a replica in the middle of a step waits in its inbox and is admitted
//! when the step ends, exactly when the single server admits arrivals; so with one replica every
//! call the scheduler sees is the one [`super::simulate`] makes, and the outcome is the same to
//! the bit (tested). Deterministic for a fixed seed: no clocks, no threads, ties broken by index.
//!
//! The dispatcher reads each replica's unfinished requests (admitted or in its inbox) and, for
//! `least-work`, their estimated remaining execution time (`crate::dispatch`) from the policies'
//! cost model (`SchedulerConfig::cost`, not the step-timing profile) and speculation length.

use indicatif::ProgressBar;
use lapsd_core::policy::build_policy;
use lapsd_core::policy::laps_sd_srpt::estimated_remaining_with_prefill_s;
use lapsd_core::{
    CoreError, OnlineQuantilePredictor, PolicySpec, RequestState, Scheduler, SchedulerOutput,
    StepCostModel, StepResult,
};
use serde::{Deserialize, Serialize};

use super::simulate::{
    request_spec, step_member, step_time_s, validate_requests, CompletedRequest, Progress,
    SimConfig, SimOutcome,
};
use crate::dispatch::{Dispatch, Dispatcher, ReplicaLoad};
use crate::error::SimError;
use crate::prediction::PredictorChoice;
use crate::workload::SimRequest;

/// How many replicas and how requests reach them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSetup {
    /// Number of identical replicas (>= 1).
    pub replicas: usize,
    pub dispatch: Dispatch,
    /// Seed of the dispatcher's own draws (`power-of-two`).
    pub seed: u64,
    /// Keep every dispatch decision with the loads it saw (tests, diagnostics).
    pub record_decisions: bool,
}

/// One dispatch decision: the loads the dispatcher saw and the replica it chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchDecision {
    pub request_id: u64,
    pub arrival_s: f64,
    pub loads: Vec<ReplicaLoad>,
    pub chosen: usize,
}

/// Per-replica totals of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStats {
    /// Requests dispatched to it (including any refused as never fitting).
    pub requests: usize,
    pub completed: usize,
    pub steps: u64,
    pub busy_s: f64,
}

/// What a multi-replica run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaOutcome {
    /// Every replica together: completions in finish order (replica order at equal times),
    /// steps summed, `end_s` the last event of any replica, and `busy_s` the MEAN busy time per
    /// replica (so busy / span is the mean utilisation of a replica, as for one server).
    pub merged: SimOutcome,
    pub per_replica: Vec<ReplicaStats>,
    /// The replica each request was sent to, by request id.
    pub replica_of: Vec<usize>,
    /// Every decision, when `ReplicaSetup::record_decisions`.
    pub decisions: Vec<DispatchDecision>,
}

/// A step under way on one replica.
struct InFlight {
    output: SchedulerOutput,
    results: Vec<StepResult>,
    dt_s: f64,
    end_s: f64,
}

struct Replica {
    scheduler: Scheduler,
    /// Requests (indices) dispatched while a step was running, admitted when it ends.
    inbox: Vec<usize>,
    step: Option<InFlight>,
    /// Time of the last event this replica took part in (the single server's clock).
    now_s: f64,
    stats: ReplicaStats,
    /// Drafted and accepted tokens of its finished requests (the `least-work` prior).
    finished_drafted: u64,
    finished_accepted: u64,
}

impl Replica {
    fn new(config: &SimConfig) -> Result<Self, SimError> {
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
            inbox: Vec::new(),
            step: None,
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
    fn prior_acceptance_rate(&self) -> f64 {
        if self.finished_drafted == 0 {
            0.0
        } else {
            self.finished_accepted as f64 / self.finished_drafted as f64
        }
    }

    /// What the dispatcher sees (module header); `with_work` computes the work estimate.
    fn load(&self, requests: &[SimRequest], config: &SimConfig, with_work: bool) -> ReplicaLoad {
        let count = self.scheduler.len() + self.inbox.len();
        if !with_work {
            return ReplicaLoad {
                requests: count,
                work_s: 0.0,
            };
        }
        let k = config.scheduler.speculation_length;
        let cost: &dyn StepCostModel = &config.scheduler.cost;
        let prior = self.prior_acceptance_rate();
        let admitted: f64 = self
            .scheduler
            .requests()
            .map(|r| estimated_remaining_with_prefill_s(r, k, cost, prior))
            .sum();
        // Not admitted yet: the prediction it arrives with (the online predictor fills one in
        // only at admission, so until then such a request counts as `max_tokens` long).
        let waiting: f64 = self
            .inbox
            .iter()
            .map(|&i| {
                let state = RequestState::new(request_spec(&requests[i], &config.predictor));
                estimated_remaining_with_prefill_s(&state, k, cost, prior)
            })
            .sum();
        ReplicaLoad {
            requests: count,
            work_s: admitted + waiting,
        }
    }
}

/// Runs `requests` (sorted by arrival, `id` == index) through `setup.replicas` replicas running
/// the policy of `config`, dispatched by `setup.dispatch`.
pub fn simulate_replicas(
    requests: &[SimRequest],
    config: &SimConfig,
    setup: &ReplicaSetup,
    progress: Option<&ProgressBar>,
) -> Result<ReplicaOutcome, SimError> {
    validate_requests(requests)?;
    if setup.replicas == 0 {
        return Err(SimError::InvalidArgument {
            field: "replicas",
            reason: "must be at least 1".into(),
        });
    }
    let mut replicas = (0..setup.replicas)
        .map(|_| Replica::new(config))
        .collect::<Result<Vec<_>, _>>()?;
    let mut dispatcher = Dispatcher::new(setup.dispatch, setup.seed);
    let step_cost: &dyn StepCostModel = match &config.step_cost {
        Some(measured) => measured,
        None => &config.scheduler.cost,
    };
    let mut state = vec![Progress::default(); requests.len()];
    let mut merged = SimOutcome {
        policy: PolicySpec::new(config.policy, config.policy_config.clone()).label(),
        completed: Vec::with_capacity(requests.len()),
        never_fits: 0,
        steps: 0,
        end_s: 0.0,
        busy_s: 0.0,
    };
    let mut replica_of = vec![0usize; requests.len()];
    let mut decisions = Vec::new();
    let with_work = setup.dispatch.needs_work() || setup.record_decisions;
    let mut loads: Vec<ReplicaLoad> = Vec::with_capacity(setup.replicas);
    let mut woken = vec![false; setup.replicas];
    let mut next_arrival = 0usize;
    loop {
        let next_step_end_s = replicas
            .iter()
            .filter_map(|r| r.step.as_ref().map(|s| s.end_s))
            .min_by(f64::total_cmp);
        let now_s = match (requests.get(next_arrival), next_step_end_s) {
            (None, None) => break,
            (Some(r), None) => r.arrival_s,
            (None, Some(t)) => t,
            (Some(r), Some(t)) => r.arrival_s.min(t),
        };
        woken.iter_mut().for_each(|w| *w = false);
        // Steps that end now.
        for (index, replica) in replicas.iter_mut().enumerate() {
            let ends_now = replica.step.as_ref().is_some_and(|s| s.end_s <= now_s);
            if !ends_now {
                continue;
            }
            let Some(step) = replica.step.take() else {
                continue;
            };
            replica.now_s = step.end_s;
            for done in replica
                .scheduler
                .update(&step.output, &step.results, step.dt_s, step.end_s)
            {
                replica.finished_drafted += done.acceptance.drafted_tokens;
                replica.finished_accepted += done.acceptance.accepted_tokens;
                replica.stats.completed += 1;
                merged.completed.push(CompletedRequest {
                    id: done.spec.id,
                    arrival_s: done.spec.arrival_s,
                    finish_s: step.end_s,
                    first_token_s: done.first_token_s.unwrap_or(step.end_s),
                    output_tokens: done.generated_tokens,
                    preemptions: done.preemptions,
                    recomputes: done.recomputes,
                });
                if let Some(bar) = progress {
                    bar.inc(1);
                }
            }
            woken[index] = true;
        }
        // Arrivals of this instant.
        while let Some(req) = requests.get(next_arrival).filter(|r| r.arrival_s <= now_s) {
            loads.clear();
            loads.extend(replicas.iter().map(|r| r.load(requests, config, with_work)));
            let chosen = dispatcher.choose(&loads);
            if setup.record_decisions {
                decisions.push(DispatchDecision {
                    request_id: req.id,
                    arrival_s: req.arrival_s,
                    loads: loads.clone(),
                    chosen,
                });
            }
            let replica = &mut replicas[chosen];
            replica.inbox.push(next_arrival);
            replica.stats.requests += 1;
            replica_of[next_arrival] = chosen;
            if replica.step.is_none() {
                woken[chosen] = true;
            }
            next_arrival += 1;
        }
        // Free replicas with something new start their next step.
        for (index, replica) in replicas.iter_mut().enumerate() {
            if !woken[index] {
                continue;
            }
            replica.now_s = now_s;
            for i in std::mem::take(&mut replica.inbox) {
                let req = &requests[i];
                match replica
                    .scheduler
                    .add_request(request_spec(req, &config.predictor), req.arrival_s)
                {
                    Ok(()) => {}
                    Err(CoreError::NeverFits { .. }) => {
                        merged.never_fits += 1;
                        if let Some(bar) = progress {
                            bar.inc(1);
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if replica.scheduler.is_empty() {
                continue;
            }
            // An empty batch leaves the replica free until a request reaches it (the single
            // server waits for the next arrival the same way); a stall is reported at the end.
            let output = replica.scheduler.schedule(now_s);
            if output.batch.is_empty() {
                continue;
            }
            let mut results = Vec::with_capacity(output.batch.len());
            for member in &output.batch {
                results.push(step_member(
                    requests,
                    &mut state,
                    &config.acceptance,
                    member.id,
                    member.kind,
                )?);
            }
            let dt_s = step_time_s(&output, &results, step_cost);
            let end_s = now_s + dt_s;
            replica.stats.steps += 1;
            replica.stats.busy_s += dt_s;
            replica.step = Some(InFlight {
                output,
                results,
                dt_s,
                end_s,
            });
        }
    }
    if let Some(stuck) = replicas.iter().find(|r| !r.scheduler.is_empty()) {
        return Err(SimError::Stalled {
            now_s: stuck.now_s,
            waiting: stuck.scheduler.len(),
        });
    }
    merged.steps = replicas.iter().map(|r| r.stats.steps).sum();
    merged.busy_s = replicas.iter().map(|r| r.stats.busy_s).sum::<f64>() / setup.replicas as f64;
    merged.end_s = replicas.iter().map(|r| r.now_s).fold(0.0, f64::max);
    Ok(ReplicaOutcome {
        merged,
        per_replica: replicas.iter().map(|r| r.stats).collect(),
        replica_of,
        decisions,
    })
}
