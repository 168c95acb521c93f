//! Random request lists, and the SD server and experiments the end-to-end tests
//! (`server_model.rs`, `replicas.rs`) run them on.

use std::ops::Range;

use lapsd_core::{Capacity, PolicySpec, SchedulerConfig, StabilityRule};
use lapsd_sim::acceptance::{AcceptanceModel, DraftLength};
use lapsd_sim::prediction::PredictorChoice;
use lapsd_sim::run::{ArrivalRate, Experiment, RequestSource};
use lapsd_sim::server_model::SimConfig;
use lapsd_sim::workload::{LengthDist, RequestSize, SimRequest};
use lapsd_workload::arrivals::ArrivalProcess;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What differs between the tests' random request lists.
pub struct Mix {
    /// Prompts drawn from `1..prompt_below` tokens.
    pub prompt_below: u32,
    /// Acceptance rates drawn uniformly from this range.
    pub acceptance: Range<f64>,
    /// Arrivals rounded to a 50 ms grid, so many requests arrive at the same instant (and at the
    /// instant a step ends).
    pub on_grid: bool,
    /// A quarter of the requests get a prompt-lookup drafter.
    pub prompt_lookup: bool,
}

impl Mix {
    /// Prompts up to 200 tokens, any acceptance rate, no prompt-lookup drafters.
    pub const PLAIN: Mix = Mix {
        prompt_below: 200,
        acceptance: 0.0..1.0,
        on_grid: false,
        prompt_lookup: false,
    };
    /// Arrivals on the grid, prompts up to 600 tokens, acceptance 0.2 to 0.95, some prompt-lookup
    /// drafters: the instants and request kinds where replicas could part from the single server.
    pub const MIXED: Mix = Mix {
        prompt_below: 600,
        acceptance: 0.2..0.95,
        on_grid: true,
        prompt_lookup: true,
    };
}

/// `count` requests arriving as a Poisson process at `rate_rps`, log-normal output lengths
/// (median 40, 1 to 400 tokens), a `max_tokens` cap a little above the length, a prediction off
/// by a factor 0.5 to 2; the rest as `mix` says. One generator seeded by `seed` draws everything
/// in a fixed order, so a seed always gives the same list.
pub fn random_requests(seed: u64, count: usize, rate_rps: f64, mix: &Mix) -> Vec<SimRequest> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let times = ArrivalProcess::Poisson.unit_rate_times_s(count, &mut rng);
    let out = LengthDist::log_normal(40.0, 1.0, 1, 400);
    (0..count)
        .map(|i| {
            let output_tokens = out.sample(&mut rng);
            let draft_length = if mix.prompt_lookup {
                (rng.gen_range(0..4) == 0).then(|| DraftLength {
                    match_probability: rng.gen_range(0.2..0.9),
                    tokens_when_matched: rng.gen_range(1.0..4.0),
                })
            } else {
                None
            };
            let arrival_s = times[i] / rate_rps;
            SimRequest {
                id: i as u64,
                arrival_s: if mix.on_grid {
                    (arrival_s * 20.0).round() / 20.0
                } else {
                    arrival_s
                },
                size: RequestSize {
                    prompt_tokens: rng.gen_range(1..mix.prompt_below),
                    output_tokens,
                    acceptance_rate: rng.gen_range(mix.acceptance.clone()),
                    draft_length,
                },
                max_tokens: output_tokens + 1 + rng.gen_range(0..50),
                predicted_output_tokens: Some(
                    (f64::from(output_tokens) * rng.gen_range(0.5..2.0)) as u32 + 1,
                ),
                served_predicted_output_tokens: None,
            }
        })
        .collect()
}

/// The policy of `spec` on a server with k = 4, the default step costs, noisy-oracle predictions
/// (sigma 0.5) and the default acceptance model.
pub fn sd_config(
    spec: &PolicySpec,
    max_batch: usize,
    max_step_tokens: u64,
    kv_budget_tokens: u64,
) -> SimConfig {
    SimConfig {
        scheduler: SchedulerConfig {
            capacity: Capacity {
                max_batch,
                max_step_tokens,
                kv_budget_tokens,
            },
            speculation_length: 4,
            stability: StabilityRule::default(),
            cost: lapsd_sim::cli::default_cost(),
        },
        policy: spec.kind,
        policy_config: spec.config.clone(),
        predictor: PredictorChoice::NoisyOracle { sigma: 0.5 },
        acceptance: AcceptanceModel::default(),
        step_cost: None,
        speculation_mode: lapsd_core::SpeculationMode::Fixed,
    }
}

/// `policies` on the server of `config` (its scheduler, predictor, acceptance and step model),
/// requests from `source` at each of `rates`, on two worker threads.
pub fn experiment(
    config: SimConfig,
    policies: Vec<PolicySpec>,
    source: RequestSource,
    rates: Vec<ArrivalRate>,
    seed: u64,
) -> Experiment {
    Experiment {
        source,
        rates,
        policies,
        scheduler: config.scheduler,
        predictor: config.predictor,
        acceptance: config.acceptance,
        step_cost: config.step_cost,
        speculation_mode: config.speculation_mode,
        seed,
        jobs: 2,
    }
}
