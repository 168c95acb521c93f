//! lapsd scheduling core: request state, capacity/KV accounting, the `Policy` trait and every
//! policy, output-length predictors and the step-cost model.
//!
//! Pure and deterministic: no I/O, no async, no clocks. Time comes in as `now_s` arguments, so the
//! simulator (`lapsd-sim`) and the server (`lapsd-server`) drive exactly the same code.
//!
//! A step is two calls, as in vLLM's v1 scheduler: [`Scheduler::schedule`] returns what runs next
//! (and what is preempted), then [`Scheduler::update`] feeds back what the step produced.
//!
//! Client priority (`RequestSpec::priority`, lower first, vLLM's convention) is the first sort key
//! of every policy: a policy's own order applies within one priority class. Non-preemptive
//! policies (`fcfs`, `sjf`, and `trail` past its no-preemption point) keep a running request's
//! slot against equal or worse priorities only; a strictly more urgent request takes it.
//!
//! Orderings (one file each under [`policy`]): `fcfs`, `sjf`, `srpt`, `las`, `mlfq`, `trail`,
//! `oracle`, `laps-sd` (arXiv 2505.17074) and `gittins` (ours). Settings shared by every ordering
//! (aging, batch formation) and LAPS-SD's knobs are fields of [`PolicyConfig`]; a configured
//! policy is a [`PolicySpec`] (`laps-sd[las-phase=false]`).

pub mod batch;
pub mod cost;
pub mod error;
pub mod kv;
pub mod length_model;
pub mod policy;
pub mod predictor;
pub mod request;
pub mod scheduler;
pub mod speculation;
#[cfg(test)]
mod testutil;

pub use cost::{
    fit_calibration, fit_served_steps, LinearCost, MeasuredCost, StepCostModel, StepObservation,
};
pub use error::CoreError;
pub use kv::{KvAccountant, KvFit};
pub use policy::{
    BatchBuilder, BatchFormation, Policy, PolicyConfig, PolicyKind, PolicySpec, ScheduleContext,
    SizePosterior, TokensPerStep,
};
pub use predictor::{LengthPredictor, OnlineQuantilePredictor};
pub use request::{
    AcceptanceTracker, FinishReason, IdMap, IdSet, RequestId, RequestPhase, RequestSpec,
    RequestState, StabilityRule,
};
pub use scheduler::{
    Capacity, PreemptKind, Preemption, ScheduledRequest, Scheduler, SchedulerConfig,
    SchedulerOutput, StepKind, StepResult,
};
pub use speculation::SpeculationMode;
