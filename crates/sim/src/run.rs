//! An experiment: one request list (workload draw or trace), replayed under several policies and
//! several loads on the SAME requests and arrival pattern, in parallel worker threads. Both the
//! CLI and the tests go through here, so what `lapsd sim` prints is what the tests check.
//!
//! Randomness: one ChaCha8 seed, split into independent streams (sizes, arrivals, predictions);
//! acceptance draws are a hash of (seed, request, step). Results do not depend on thread count.
//!
//! Load -> rate: `rate = load / E[S]`, where E[S] is the mean per-request share of server time
//! when every step runs a full batch of `max_batch`: `prefill_s(prompt) + (L - 1) / tau(alpha) *
//! sd_step_s(B, k) / B`, with tau(alpha) = (1 - alpha^(k+1)) / (1 - alpha) tokens per SD step
//! (averaged over the drawn requests). With B = 1 this is the plain utilisation rho = lambda E[S]
//! of a single server; with B > 1 it is the load relative to the full-batch throughput. With R
//! replicas behind a dispatcher (`run_replicas`) the rate is R times that: the load is each
//! replica's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::ProgressBar;
use lapsd_core::{MeasuredCost, PolicySpec, SchedulerConfig, SpeculationMode, StepCostModel};

use crate::acceptance::{expected_accepted_per_step, expected_tokens_per_step, AcceptanceModel};
use crate::dispatch::Dispatch;
use crate::error::SimError;
use crate::prediction::{assign_predictions, PredictorChoice};
use crate::report::{summarize, PolicyResult, RunLabel};
use crate::rng::stream_rng;
use crate::server_model::{simulate, simulate_replicas, ReplicaSetup, SimConfig};
use crate::trace::TraceRecord;
use crate::workload::{
    longest_output, max_tokens_cap, resample_pairs, sample_sizes, RequestSize, SimRequest,
    WorkloadProfile,
};
use lapsd_workload::arrivals::{scale_to_rate, ArrivalProcess};

/// One simulation: a sweep point (index into the prepared runs), a policy and, on replicas, the
/// dispatch rule.
type Task<'a> = (usize, &'a PolicySpec, Option<Dispatch>);

/// Where requests come from.
#[derive(Debug, Clone)]
pub enum RequestSource {
    /// Draw sizes from a workload profile; arrivals from `arrivals` at each load/rate.
    Workload {
        profile: WorkloadProfile,
        count: usize,
        arrivals: ArrivalProcess,
    },
    /// Replay a trace; missing acceptance rates are drawn from `profile.acceptance`.
    Trace {
        records: Vec<TraceRecord>,
        profile: WorkloadProfile,
    },
    /// Resample `count` (prompt, output) length pairs of a real dataset (as the matrix's
    /// `--matrix-lengths`); acceptance from `profile.acceptance`, `max_tokens` the longest
    /// output; arrivals from `arrivals` at each load/rate, like a workload.
    Lengths {
        name: String,
        pairs: Vec<(u32, u32)>,
        profile: WorkloadProfile,
        count: usize,
        arrivals: ArrivalProcess,
    },
}

/// How fast requests arrive, one entry per sweep point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalRate {
    /// Requests per second.
    Rate(f64),
    /// Target utilisation (see the module header).
    Load(f64),
    /// The trace's own arrival times.
    Trace,
}

/// Everything an experiment needs.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub source: RequestSource,
    pub rates: Vec<ArrivalRate>,
    /// Configured policies (an ordering and its settings each), run side by side.
    pub policies: Vec<PolicySpec>,
    pub scheduler: SchedulerConfig,
    pub predictor: PredictorChoice,
    /// Transient parameters (its `seed` is replaced by `seed`).
    pub acceptance: AcceptanceModel,
    /// Ground-truth step times (see `SimConfig::step_cost`).
    pub step_cost: Option<MeasuredCost>,
    /// How each decoding member's k is chosen (see `SimConfig::speculation_mode`).
    pub speculation_mode: SpeculationMode,
    pub seed: u64,
    /// Worker threads (>= 1).
    pub jobs: usize,
}

/// Mean per-request server time at full batch (the denominator of the load; module header).
pub fn mean_service_s(sizes: &[RequestSize], scheduler: &SchedulerConfig) -> Result<f64, SimError> {
    if sizes.is_empty() {
        return Err(SimError::InvalidArgument {
            field: "requests",
            reason: "no requests".into(),
        });
    }
    let k = scheduler.speculation_length;
    let b = scheduler.capacity.max_batch.max(1);
    let cost = &scheduler.cost;
    let total: f64 = sizes
        .iter()
        .map(|s| {
            let (tau, step_share_s) = match s.draft_length {
                // A drafter proposing fewer than k tokens: its draft length sets both.
                Some(draft) => {
                    let matched = draft.tokens_when_matched.clamp(0.0, f64::from(k));
                    let p = draft.match_probability.clamp(0.0, 1.0);
                    let mean = p * matched;
                    let verified = (b as f64 * (mean + 1.0)).round() as usize;
                    (
                        1.0 + p * expected_accepted_per_step(s.acceptance_rate, matched),
                        (mean * cost.draft_s(b) + cost.verify_tokens_s(b, verified)) / b as f64,
                    )
                }
                None => (
                    expected_tokens_per_step(s.acceptance_rate, k),
                    cost.sd_step_s(b, k) / b as f64,
                ),
            };
            cost.prefill_s(s.prompt_tokens)
                + f64::from(s.output_tokens.saturating_sub(1)) / tau * step_share_s
        })
        .sum();
    Ok(total / sizes.len() as f64)
}

/// The requests of one sweep point, and its label's load and rate.
pub struct PreparedRun {
    pub requests: Vec<SimRequest>,
    pub load: Option<f64>,
    pub rate_rps: f64,
}

impl Experiment {
    fn workload_name(&self) -> &str {
        match &self.source {
            RequestSource::Workload { profile, .. } | RequestSource::Trace { profile, .. } => {
                profile.name
            }
            RequestSource::Lengths { name, .. } => name,
        }
    }

    /// Builds the request lists of every sweep point.
    pub fn prepare(&self) -> Result<Vec<PreparedRun>, SimError> {
        self.prepare_for(1)
    }

    /// The request lists of every sweep point for `replicas` replicas behind one dispatcher:
    /// one arrival stream whose rate is `replicas` times the load's, so a load is the
    /// utilisation of each replica (a `--rate` stays the total rate; a trace keeps its times).
    pub fn prepare_for(&self, replicas: usize) -> Result<Vec<PreparedRun>, SimError> {
        if replicas == 0 {
            return Err(SimError::InvalidArgument {
                field: "replicas",
                reason: "must be at least 1".into(),
            });
        }
        let (sizes, unit_times, cap) = match &self.source {
            RequestSource::Workload {
                profile,
                count,
                arrivals,
            } => {
                profile.validate()?;
                if *count == 0 {
                    return Err(SimError::InvalidArgument {
                        field: "requests",
                        reason: "must be at least 1".into(),
                    });
                }
                let sizes = sample_sizes(profile, *count, &mut stream_rng(self.seed, 1));
                let times = arrivals.unit_rate_times_s(*count, &mut stream_rng(self.seed, 2));
                (sizes, Some(times), profile.max_tokens)
            }
            RequestSource::Trace { records, profile } => {
                profile.validate()?;
                let mut rng = stream_rng(self.seed, 1);
                let sizes = records
                    .iter()
                    .map(|r| RequestSize {
                        prompt_tokens: r.prompt_tokens,
                        output_tokens: r.output_tokens,
                        acceptance_rate: r
                            .acceptance_rate
                            .unwrap_or_else(|| profile.acceptance.sample(&mut rng)),
                        draft_length: r.draft_length,
                    })
                    .collect();
                (sizes, None, profile.max_tokens)
            }
            RequestSource::Lengths {
                pairs,
                profile,
                count,
                arrivals,
                ..
            } => {
                profile.acceptance.validate()?;
                if pairs.is_empty() {
                    return Err(SimError::EmptyTrace);
                }
                if *count == 0 {
                    return Err(SimError::InvalidArgument {
                        field: "requests",
                        reason: "must be at least 1".into(),
                    });
                }
                let sizes = resample_pairs(
                    pairs,
                    &profile.acceptance,
                    *count,
                    &mut stream_rng(self.seed, 1),
                );
                let times = arrivals.unit_rate_times_s(*count, &mut stream_rng(self.seed, 2));
                (sizes, Some(times), longest_output(pairs))
            }
        };
        // A served trace's length predictions (`lapsd serve --length-model`), replayed as given.
        let trace_predictions: Vec<Option<u32>> = match &self.source {
            RequestSource::Trace { records, .. } => {
                records.iter().map(|r| r.predicted_output_tokens).collect()
            }
            _ => Vec::new(),
        };
        let mean_s = mean_service_s(&sizes, &self.scheduler)?;
        let mut runs = Vec::new();
        for rate in &self.rates {
            let (times, load, rate_rps) = match (rate, &unit_times, &self.source) {
                (ArrivalRate::Trace, _, RequestSource::Trace { records, .. }) => {
                    let times: Vec<f64> = records.iter().map(|r| r.arrival_s).collect();
                    let (first, last) = match (times.first(), times.last()) {
                        (Some(&f), Some(&l)) => (f, l),
                        _ => return Err(SimError::EmptyTrace),
                    };
                    let span = last - first;
                    let rate = if span > 0.0 {
                        (times.len() - 1) as f64 / span
                    } else {
                        0.0
                    };
                    (times, None, rate)
                }
                (ArrivalRate::Rate(r), Some(unit), _) => (scale_to_rate(unit, *r)?, None, *r),
                (ArrivalRate::Load(l), Some(unit), _) => {
                    if !(*l > 0.0 && l.is_finite()) {
                        return Err(SimError::InvalidArgument {
                            field: "load",
                            reason: format!("must be a positive utilisation, got {l}"),
                        });
                    }
                    // Times 1 is exact: one replica gets the plain rate to the bit.
                    let r = l / mean_s * replicas as f64;
                    (scale_to_rate(unit, r)?, Some(*l), r)
                }
                _ => {
                    return Err(SimError::InvalidArgument {
                        field: "rate",
                        reason: "a trace replays its own arrival times; --rate/--load/--loads \
                                 apply to synthetic workloads only"
                            .into(),
                    })
                }
            };
            let mut requests: Vec<SimRequest> = sizes
                .iter()
                .zip(&times)
                .enumerate()
                .map(|(i, (size, &arrival_s))| SimRequest {
                    id: i as u64,
                    arrival_s,
                    size: *size,
                    max_tokens: max_tokens_cap(cap, size.output_tokens),
                    predicted_output_tokens: None,
                    served_predicted_output_tokens: trace_predictions.get(i).copied().flatten(),
                })
                .collect();
            assign_predictions(
                &mut requests,
                &self.predictor,
                &mut stream_rng(self.seed, 3),
            );
            runs.push(PreparedRun {
                requests,
                load,
                rate_rps,
            });
        }
        Ok(runs)
    }

    /// Total requests that will be simulated (for a progress bar).
    pub fn total_work(&self) -> usize {
        let n = match &self.source {
            RequestSource::Workload { count, .. } | RequestSource::Lengths { count, .. } => *count,
            RequestSource::Trace { records, .. } => records.len(),
        };
        n * self.rates.len() * self.policies.len()
    }

    /// Runs every (sweep point, policy) pair; results ordered by sweep point, then policy.
    pub fn run(&self, progress: Option<&ProgressBar>) -> Result<Vec<PolicyResult>, SimError> {
        let runs = self.prepare()?;
        let tasks: Vec<Task<'_>> = (0..runs.len())
            .flat_map(|r| self.policies.iter().map(move |p| (r, p, None)))
            .collect();
        self.run_tasks(&runs, &tasks, 1, progress)
    }

    /// Runs every (sweep point, policy, dispatch rule) on `replicas` replicas behind a
    /// dispatcher (`crate::server_model::replicas`), every rule on the same arrivals; results ordered
    /// by sweep point, then policy, then rule, labelled with the rule and the replica count.
    pub fn run_replicas(
        &self,
        replicas: usize,
        rules: &[Dispatch],
        progress: Option<&ProgressBar>,
    ) -> Result<Vec<PolicyResult>, SimError> {
        if rules.is_empty() {
            return Err(SimError::InvalidArgument {
                field: "dispatch",
                reason: "no dispatch rule named".into(),
            });
        }
        let runs = self.prepare_for(replicas)?;
        let tasks: Vec<Task<'_>> = (0..runs.len())
            .flat_map(|r| {
                self.policies
                    .iter()
                    .flat_map(move |p| rules.iter().map(move |&d| (r, p, Some(d))))
            })
            .collect();
        self.run_tasks(&runs, &tasks, replicas, progress)
    }

    /// Runs `tasks` on the worker threads; results in task order.
    fn run_tasks(
        &self,
        runs: &[PreparedRun],
        tasks: &[Task<'_>],
        replicas: usize,
        progress: Option<&ProgressBar>,
    ) -> Result<Vec<PolicyResult>, SimError> {
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<Result<PolicyResult, SimError>>>> =
            Mutex::new((0..tasks.len()).map(|_| None).collect());
        let acceptance = AcceptanceModel {
            seed: self.seed,
            ..self.acceptance
        };
        let workload = self.workload_name().to_string();
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.clamp(1, tasks.len().max(1)) {
                scope.spawn(|| loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(run_index, spec, dispatch)) = tasks.get(t) else {
                        break;
                    };
                    let run = &runs[run_index];
                    let config = SimConfig {
                        scheduler: self.scheduler.clone(),
                        policy: spec.kind,
                        policy_config: spec.config.clone(),
                        predictor: self.predictor,
                        acceptance,
                        step_cost: self.step_cost.clone(),
                        speculation_mode: self.speculation_mode,
                    };
                    let outcome = match dispatch {
                        None => simulate(&run.requests, &config, progress),
                        Some(rule) => {
                            let setup = ReplicaSetup {
                                replicas,
                                dispatch: rule,
                                seed: self.seed,
                                record_decisions: false,
                            };
                            simulate_replicas(&run.requests, &config, &setup, progress)
                                .map(|o| o.merged)
                        }
                    };
                    let result = outcome.map(|outcome| {
                        let label = RunLabel {
                            workload: workload.clone(),
                            load: run.load,
                            rate_rps: run.rate_rps,
                            predictor: self.predictor.label(),
                        };
                        let first = run.requests.first().map_or(0.0, |r| r.arrival_s);
                        let mut result = summarize(&outcome, &label, first);
                        if let Some(rule) = dispatch {
                            result.dispatch = Some(rule.name().to_string());
                            result.replicas = Some(replicas);
                        }
                        result
                    });
                    // A poisoned lock means another worker panicked; its panic propagates from
                    // the scope, so recovering the data here is safe.
                    let mut guard = slots.lock().unwrap_or_else(|e| e.into_inner());
                    guard[t] = Some(result);
                });
            }
        });
        let slots = slots.into_inner().unwrap_or_else(|e| e.into_inner());
        slots
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    Err(SimError::InvalidArgument {
                        field: "jobs",
                        reason: "a simulation task was not run".into(),
                    })
                })
            })
            .collect()
    }
}
