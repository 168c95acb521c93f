//! Shared harness of the queueing-theory tests: a single server (batch 1, SD off, every step and
//! the prefill cost one unit `STEP_S`, so a job of L tokens needs exactly L * STEP_S of service)
//! fed with Poisson arrivals, plus the statistics the tests need (batch means, control variate).
//! The other tests' shared helpers are in `requests` (request lists, the SD server) and `cli`.
#![allow(dead_code)]

pub mod cli;
pub mod requests;

use lapsd_core::{Capacity, LinearCost, PolicyConfig, PolicyKind, SchedulerConfig, StabilityRule};
use lapsd_sim::acceptance::AcceptanceModel;
use lapsd_sim::prediction::PredictorChoice;
use lapsd_sim::server_model::{simulate, SimConfig};
use lapsd_sim::theory::DiscreteDist;
use lapsd_sim::workload::{LengthDist, RequestSize, SimRequest};
use lapsd_workload::arrivals::ArrivalProcess;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Seconds per token (per step) in the theory runs.
pub const STEP_S: f64 = 0.005;

/// Every step (decode or prefill) costs STEP_S, whatever its size.
pub fn unit_cost() -> LinearCost {
    LinearCost {
        draft_base_s: 0.0,
        draft_per_seq_s: 0.0,
        verify_base_s: STEP_S,
        verify_per_token_s: 0.0,
        prefill_base_s: STEP_S,
        prefill_per_token_s: 0.0,
    }
}

pub fn single_server(policy: PolicyKind) -> SimConfig {
    SimConfig {
        scheduler: SchedulerConfig {
            capacity: Capacity {
                max_batch: 1,
                max_step_tokens: 1 << 20,
                kv_budget_tokens: 1 << 60,
            },
            speculation_length: 0,
            stability: StabilityRule::default(),
            cost: unit_cost(),
        },
        policy,
        policy_config: PolicyConfig::default(),
        predictor: PredictorChoice::NoisyOracle { sigma: 0.0 },
        acceptance: AcceptanceModel {
            transient_steps: 0,
            transient_shift: 0.0,
            seed: 0,
        },
        step_cost: None,
        speculation_mode: lapsd_core::SpeculationMode::Fixed,
    }
}

/// Poisson arrivals at `lambda` with job sizes (tokens) from `dist`.
pub fn poisson_requests(
    dist: &LengthDist,
    lambda: f64,
    count: usize,
    seed: u64,
) -> Vec<SimRequest> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let times = ArrivalProcess::Poisson.unit_rate_times_s(count, &mut rng);
    (0..count)
        .map(|i| {
            let output_tokens = dist.sample(&mut rng);
            SimRequest {
                id: i as u64,
                arrival_s: times[i] / lambda,
                size: RequestSize {
                    prompt_tokens: 1,
                    output_tokens,
                    acceptance_rate: 0.5,
                    draft_length: None,
                },
                // Uninformative: a cap tied to the length would tell `gittins` the size.
                max_tokens: u32::MAX,
                predicted_output_tokens: Some(output_tokens),
                served_predicted_output_tokens: None,
            }
        })
        .collect()
}

/// One run: per request (in arrival order) its latency and the unfinished work it found at
/// arrival (Lindley's recursion, computed here independently of the simulator).
pub struct Run {
    pub latency_s: Vec<f64>,
    pub work_at_arrival_s: Vec<f64>,
}

pub fn run(policy: PolicyKind, requests: &[SimRequest]) -> Run {
    let outcome = simulate(requests, &single_server(policy), None).expect("simulation runs");
    assert_eq!(
        outcome.completed.len(),
        requests.len(),
        "every request finishes"
    );
    let mut latency_s = vec![f64::NAN; requests.len()];
    for c in &outcome.completed {
        let r = &requests[c.id as usize];
        assert_eq!(c.output_tokens, r.size.output_tokens, "exact output length");
        latency_s[c.id as usize] = c.latency_s();
    }
    let mut work_at_arrival_s = Vec::with_capacity(requests.len());
    let mut v = 0.0f64;
    let mut prev: Option<&SimRequest> = None;
    for r in requests {
        if let Some(p) = prev {
            let s = f64::from(p.size.output_tokens) * STEP_S;
            v = (v + s - (r.arrival_s - p.arrival_s)).max(0.0);
        }
        work_at_arrival_s.push(v);
        prev = Some(r);
    }
    Run {
        latency_s,
        work_at_arrival_s,
    }
}

/// Mean and standard error from batch means (contiguous batches in arrival order; the first
/// `warmup` requests are dropped).
pub struct Estimate {
    pub mean: f64,
    pub se: f64,
}

fn batch_means(x: &[f64], batches: usize) -> Vec<f64> {
    let size = x.len() / batches;
    (0..batches)
        .map(|b| x[b * size..(b + 1) * size].iter().sum::<f64>() / size as f64)
        .collect()
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// Plain batch-means estimate over several runs (batches pooled).
pub fn plain_estimate(runs: &[Run], warmup: usize, batches_per_run: usize) -> Estimate {
    let means: Vec<f64> = runs
        .iter()
        .flat_map(|r| batch_means(&r.latency_s[warmup..], batches_per_run))
        .collect();
    let (m, sd) = mean_sd(&means);
    Estimate {
        mean: m,
        se: sd / (means.len() as f64).sqrt(),
    }
}

/// Control-variate estimate: the work found at arrival W has a known mean for every
/// work-conserving single-server policy, E[W] = lambda E[S^2] / (2 (1 - rho)) (it does not depend
/// on the order of service), and is strongly correlated with the latency of the same batch. The
/// estimate is mean(Y) - beta (mean(W) - E[W]) with beta fitted over the batch means; its standard
/// error comes from the residuals. This removes most of the noise of busy-period fluctuations.
pub fn cv_estimate(
    runs: &[Run],
    warmup: usize,
    batches_per_run: usize,
    expected_w: f64,
) -> Estimate {
    let ys: Vec<f64> = runs
        .iter()
        .flat_map(|r| batch_means(&r.latency_s[warmup..], batches_per_run))
        .collect();
    let ws: Vec<f64> = runs
        .iter()
        .flat_map(|r| batch_means(&r.work_at_arrival_s[warmup..], batches_per_run))
        .collect();
    let (my, _) = mean_sd(&ys);
    let (mw, _) = mean_sd(&ws);
    let cov: f64 = ys.iter().zip(&ws).map(|(y, w)| (y - my) * (w - mw)).sum();
    let var: f64 = ws.iter().map(|w| (w - mw) * (w - mw)).sum();
    let beta = cov / var;
    let residuals: Vec<f64> = ys.iter().zip(&ws).map(|(y, w)| y - beta * w).collect();
    let (_, sd) = mean_sd(&residuals);
    let n = ys.len() as f64;
    Estimate {
        mean: my - beta * (mw - expected_w),
        // One degree of freedom more is used by beta.
        se: sd / n.sqrt() * ((n - 1.0) / (n - 2.0)).sqrt(),
    }
}

/// Sizes of `dist` in seconds, as the theory formulas take them.
pub fn size_dist(dist: &LengthDist) -> DiscreteDist {
    DiscreteDist::from_length_dist(dist, STEP_S).expect("closed-form pmf")
}

/// E[W] = lambda E[S^2] / (2 (1 - rho)).
pub fn expected_work_s(lambda: f64, d: &DiscreteDist) -> f64 {
    lambda * d.second_moment_s2() / (2.0 * (1.0 - lambda * d.mean_s()))
}

/// Asserts |estimate - theory| <= tol * theory, and that the test is sharp: tol * theory >= 4 SE.
pub fn assert_matches(name: &str, est: &Estimate, theory: f64, tol: f64) {
    let err = (est.mean - theory).abs() / theory;
    eprintln!(
        "{name}: sim {:.4} s (SE {:.4}) vs theory {:.4} s: error {:.2}% (tolerance {:.0}%, {:.1} SE)",
        est.mean,
        est.se,
        theory,
        err * 100.0,
        tol * 100.0,
        tol * theory / est.se
    );
    assert!(
        tol * theory >= 4.0 * est.se,
        "{name}: too noisy to test a {tol} tolerance: SE {} vs theory {theory}",
        est.se
    );
    assert!(
        err <= tol,
        "{name}: {} vs {theory} ({:.2}% > {:.0}%)",
        est.mean,
        err * 100.0,
        tol * 100.0
    );
}
