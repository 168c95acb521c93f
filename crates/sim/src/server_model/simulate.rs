//! The single server's event loop. Time advances step by step: admit the arrivals that have
//! happened, ask the scheduler for a batch (`schedule(now)`), charge the step's time from the cost
//! model, draw each member's accepted tokens, and feed the results back (`update`). An empty batch
//! with requests still to arrive jumps to the next arrival.
//!
//! The server and its step model (time, accepted tokens, ground truth) are `super::server`'s.

use indicatif::ProgressBar;
use lapsd_core::{MeasuredCost, PolicyConfig, PolicyKind, SchedulerConfig, SpeculationMode};
use serde::{Deserialize, Serialize};

use super::server::{Server, World};
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

/// Runs `requests` (sorted by arrival, `id` == index) through the policy of `config`.
pub fn simulate(
    requests: &[SimRequest],
    config: &SimConfig,
    progress: Option<&ProgressBar>,
) -> Result<SimOutcome, SimError> {
    let mut world = World::new(requests, config, progress)?;
    let mut server = Server::new(config)?;
    let mut next_arrival = 0usize;
    loop {
        while requests
            .get(next_arrival)
            .is_some_and(|r| r.arrival_s <= server.now_s)
        {
            server.admit(&mut world, next_arrival)?;
            next_arrival += 1;
        }
        if let Some(step) = server.start_step(&mut world)? {
            server.finish_step(&mut world, step);
            continue;
        }
        // Nothing to run now: wait for the next arrival, or end (a stall if requests remain).
        match requests.get(next_arrival) {
            Some(r) => server.now_s = server.now_s.max(r.arrival_s),
            None if server.scheduler.is_empty() => break,
            None => {
                return Err(SimError::Stalled {
                    now_s: server.now_s,
                    waiting: server.scheduler.len(),
                })
            }
        }
    }
    let mut outcome = world.outcome;
    outcome.steps = server.stats.steps;
    outcome.busy_s = server.stats.busy_s;
    outcome.end_s = server.now_s;
    Ok(outcome)
}
