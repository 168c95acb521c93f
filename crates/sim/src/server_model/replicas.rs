//! R replicas behind a dispatcher (`lapsd sim --replicas R --dispatch RULE`): each replica is the
//! server of [`super::simulate`] (a `super::server::Server`: its own `Scheduler`, policy and
//! predictor, the same step model), and a [`Dispatcher`] assigns every request to one replica when it arrives; it stays
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
use lapsd_core::policy::laps_sd_srpt::estimated_remaining_with_prefill_s;
use lapsd_core::{RequestState, StepCostModel};
use serde::{Deserialize, Serialize};

use super::server::{request_spec, InFlight, Server, World};
use super::simulate::{SimConfig, SimOutcome};
use crate::dispatch::{Dispatch, Dispatcher, ReplicaLoad};
use crate::error::SimError;
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

/// One server of `super::server` with what dispatching adds: requests that reached it mid-step.
struct Replica {
    server: Server,
    /// Requests (indices) dispatched while a step was running, admitted when it ends.
    inbox: Vec<usize>,
    step: Option<InFlight>,
}

impl Replica {
    /// What the dispatcher sees (module header); `with_work` computes the work estimate.
    fn load(&self, requests: &[SimRequest], config: &SimConfig, with_work: bool) -> ReplicaLoad {
        let count = self.server.scheduler.len() + self.inbox.len();
        if !with_work {
            return ReplicaLoad {
                requests: count,
                work_s: 0.0,
            };
        }
        let k = config.scheduler.speculation_length;
        let cost: &dyn StepCostModel = &config.scheduler.cost;
        let prior = self.server.prior_acceptance_rate();
        let admitted: f64 = self
            .server
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
    let mut world = World::new(requests, config, progress)?;
    if setup.replicas == 0 {
        return Err(SimError::InvalidArgument {
            field: "replicas",
            reason: "must be at least 1".into(),
        });
    }
    let mut replicas = (0..setup.replicas)
        .map(|_| {
            Server::new(config).map(|server| Replica {
                server,
                inbox: Vec::new(),
                step: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut dispatcher = Dispatcher::new(setup.dispatch, setup.seed);
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
            if let Some(step) = replica.step.take_if(|s| s.end_s <= now_s) {
                replica.server.finish_step(&mut world, step);
                woken[index] = true;
            }
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
            replica.server.stats.requests += 1;
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
            replica.server.now_s = now_s;
            for i in std::mem::take(&mut replica.inbox) {
                replica.server.admit(&mut world, i)?;
            }
            // Nothing to run leaves the replica free until a request reaches it (the single
            // server waits for the next arrival the same way); a stall is reported at the end.
            replica.step = replica.server.start_step(&mut world)?;
        }
    }
    let servers = || replicas.iter().map(|r| &r.server);
    if let Some(stuck) = servers().find(|s| !s.scheduler.is_empty()) {
        return Err(SimError::Stalled {
            now_s: stuck.now_s,
            waiting: stuck.scheduler.len(),
        });
    }
    let mut merged = world.outcome;
    merged.steps = servers().map(|s| s.stats.steps).sum();
    merged.busy_s = servers().map(|s| s.stats.busy_s).sum::<f64>() / setup.replicas as f64;
    merged.end_s = servers().map(|s| s.now_s).fold(0.0, f64::max);
    Ok(ReplicaOutcome {
        merged,
        per_replica: servers().map(|s| s.stats).collect(),
        replica_of,
        decisions,
    })
}
