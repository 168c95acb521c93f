//! `lapsd sim` flags and glue: parse, build an [`Experiment`], run it with a progress bar, print a
//! table / JSON / CSV, optionally plot. The simulation itself lives in the library modules.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lapsd_core::cost::{CostProfile, MeasuredCost};
use lapsd_core::{Capacity, LinearCost, PolicyConfig, PolicyKind, SchedulerConfig, StabilityRule};

use crate::acceptance::AcceptanceModel;
use crate::arrivals::ArrivalProcess;
use crate::error::SimError;
use crate::prediction::PredictorChoice;
use crate::report::{to_csv, to_table, JsonReport, PolicyResult};
use crate::run::{ArrivalRate, Experiment, RequestSource};
use crate::trace::parse_trace;
use crate::workload::WorkloadKind;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

/// Length predictor for the policies that use predicted lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictorArg {
    /// True length times log-normal noise (`--predictor-sigma`).
    Noisy,
    /// Learnt online from finished requests (lapsd-core's OnlineQuantilePredictor).
    Online,
}

/// Where the simulated time of a step comes from, given a `--cost-profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StepTimeArg {
    /// The profile's measured samples, interpolated (its linear fit where it has none).
    Measured,
    /// The profile's linear fit, the model the policies use.
    Linear,
}

/// The default step costs when no `--cost-profile` is given: a linear model in the range of
/// SmolLM2-135M (Q4) as target on 2 CPU cores (~36 tok/s plain decoding measured here, i.e.
/// ~25 ms per target pass) with a draft ~5x cheaper. An assumption until `lapsd calibrate` writes a
/// measured profile: verify(b, k) = 20 ms + 1 ms * b * (k + 1); draft(b) = 4 ms + 1 ms * b;
/// prefill(n) = 10 ms + 0.2 ms * n.
pub fn default_cost() -> LinearCost {
    LinearCost {
        draft_base_s: 0.004,
        draft_per_seq_s: 0.001,
        verify_base_s: 0.020,
        verify_per_token_s: 0.001,
        prefill_base_s: 0.010,
        prefill_per_token_s: 0.0002,
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Built-in workload (ignored for sizes when --trace is given; its acceptance distribution
    /// still fills trace lines without `acceptance_rate`).
    #[arg(long, value_enum, default_value_t = WorkloadKind::Chatbot)]
    pub workload: WorkloadKind,
    /// Replay a JSONL trace: {"arrival_s", "prompt_tokens", "output_tokens", "acceptance_rate"?},
    /// or with a served request's SD counters {"drafted_tokens", "accepted_tokens",
    /// "verify_steps"} in place of "acceptance_rate" (the drafter's real draft length is kept).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Number of requests drawn from the workload.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Seed of every random draw (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Arrival rate in requests per second.
    #[arg(long, conflicts_with_all = ["load", "loads"])]
    pub rate: Option<f64>,
    /// Target utilisation; the rate is load / mean full-batch service time (see docs/sim-results.md).
    #[arg(long, conflicts_with = "loads")]
    pub load: Option<f64>,
    /// Comma-separated loads to sweep (e.g. 0.5,0.6,0.7,0.8,0.9).
    #[arg(long, value_delimiter = ',')]
    pub loads: Option<Vec<f64>>,
    /// Gamma shape of inter-arrival times (1 = Poisson; < 1 burstier, CV = 1/sqrt(shape)).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Policies to run side by side on the same arrivals: comma list of names, or `all`.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Most requests in one step.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Most tokens processed in one step (prefill tokens + (k+1) per decoding request).
    #[arg(long, default_value_t = 4096)]
    pub max_step_tokens: u64,
    /// KV cache budget in tokens (preempted requests beyond it lose their KV and recompute).
    #[arg(long, default_value_t = 65536)]
    pub kv_budget_tokens: u64,
    /// Draft tokens per SD step (0 turns speculative decoding off).
    #[arg(long, default_value_t = 4)]
    pub speculation_length: u32,
    /// Output-length predictor.
    #[arg(long, value_enum, default_value_t = PredictorArg::Noisy)]
    pub predictor: PredictorArg,
    /// Sigma of the noisy oracle's log-normal error.
    #[arg(long, default_value_t = 0.5)]
    pub predictor_sigma: f64,
    /// JSON cost profile written by `lapsd calibrate` (default: the built-in linear model).
    #[arg(long)]
    pub cost_profile: Option<PathBuf>,
    /// With --cost-profile: time each step from the measured samples (`measured`) or from the
    /// linear fit (`linear`). Policies always estimate with the linear fit.
    #[arg(long, value_enum, default_value_t = StepTimeArg::Measured)]
    pub step_time: StepTimeArg,
    /// Policies estimate with this profile's linear costs (what the server was started with,
    /// `lapsd serve --cost-profile`) while steps are timed by --cost-profile's (default: the
    /// same profile for both).
    #[arg(long)]
    pub policy_cost_profile: Option<PathBuf>,
    /// SD steps over which the early acceptance shift decays (0 = none).
    #[arg(long, default_value_t = 16)]
    pub transient_steps: u32,
    /// Size of the early acceptance shift (sign drawn per request).
    #[arg(long, default_value_t = 0.15)]
    pub transient_shift: f64,
    /// LAPS-SD stability test: minimum SD steps before a request can become perceptible.
    #[arg(long)]
    pub stable_min_steps: Option<u32>,
    /// LAPS-SD stability test: window of steps over which the rate must stay within epsilon.
    #[arg(long)]
    pub stable_window: Option<u32>,
    /// LAPS-SD stability test: largest allowed movement of the acceptance rate in the window.
    #[arg(long)]
    pub stable_epsilon: Option<f64>,
    /// MLFQ / LAPS-SD: number of priority queues.
    #[arg(long)]
    pub num_queues: Option<usize>,
    /// MLFQ / LAPS-SD: first queue's attained-service threshold (target passes), doubling per level.
    #[arg(long)]
    pub first_threshold_passes: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Write latency-vs-load plots (PNG + SVG) into this directory (needs --loads or --load).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Worker threads (default: available cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print each run's wall-clock time on stderr.
    #[arg(long)]
    pub timing: bool,
}

fn parse_policies(text: &str) -> Result<Vec<PolicyKind>, SimError> {
    if text.trim() == "all" {
        return Ok(PolicyKind::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind: PolicyKind = name.parse()?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    if out.is_empty() {
        return Err(SimError::InvalidArgument {
            field: "policy",
            reason: "no policy named".into(),
        });
    }
    Ok(out)
}

fn load_cost(path: &PathBuf) -> Result<CostProfile, SimError> {
    let err = |reason: String| SimError::CostProfile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}

fn positive(field: &'static str, value: f64) -> Result<(), SimError> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(SimError::InvalidArgument {
            field,
            reason: format!("must be a positive number, got {value}"),
        })
    }
}

/// Builds the experiment the flags describe.
pub fn experiment_from_args(args: &SimArgs) -> Result<Experiment, SimError> {
    if args.max_batch == 0 {
        return Err(SimError::InvalidArgument {
            field: "max-batch",
            reason: "must be at least 1".into(),
        });
    }
    if !(args.predictor_sigma >= 0.0 && args.predictor_sigma.is_finite()) {
        return Err(SimError::InvalidArgument {
            field: "predictor-sigma",
            reason: format!("must be >= 0, got {}", args.predictor_sigma),
        });
    }
    if !(0.0..=1.0).contains(&args.transient_shift) {
        return Err(SimError::InvalidArgument {
            field: "transient-shift",
            reason: format!("must be in [0, 1], got {}", args.transient_shift),
        });
    }
    let profile = args.workload.profile();
    let (source, rates) = match &args.trace {
        Some(path) => {
            if args.rate.is_some() || args.load.is_some() || args.loads.is_some() {
                return Err(SimError::InvalidArgument {
                    field: "trace",
                    reason: "a trace replays its own arrival times; drop --rate/--load/--loads"
                        .into(),
                });
            }
            let file = std::fs::File::open(path).map_err(|source| SimError::TraceIo {
                path: path.display().to_string(),
                source,
            })?;
            let records = parse_trace(BufReader::new(file))?;
            (
                RequestSource::Trace {
                    records,
                    profile: profile.clone(),
                },
                vec![ArrivalRate::Trace],
            )
        }
        None => {
            let rates = match (&args.rate, &args.load, &args.loads) {
                (Some(r), _, _) => {
                    positive("rate", *r)?;
                    vec![ArrivalRate::Rate(*r)]
                }
                (None, Some(l), _) => {
                    positive("load", *l)?;
                    vec![ArrivalRate::Load(*l)]
                }
                (None, None, Some(ls)) if !ls.is_empty() => {
                    for l in ls {
                        positive("loads", *l)?;
                    }
                    ls.iter().map(|&l| ArrivalRate::Load(l)).collect()
                }
                _ => vec![ArrivalRate::Load(0.8)],
            };
            let source = RequestSource::Workload {
                profile: profile.clone(),
                count: args.requests,
                arrivals: ArrivalProcess::from_burstiness(args.burstiness)?,
            };
            (source, rates)
        }
    };
    let (cost, step_cost) = match &args.cost_profile {
        Some(path) => {
            let profile = load_cost(path)?;
            let measured = match args.step_time {
                StepTimeArg::Measured => MeasuredCost::from_profile(&profile),
                StepTimeArg::Linear => None,
            };
            (profile.cost, measured)
        }
        None => (default_cost(), None),
    };
    let (cost, step_cost) = match &args.policy_cost_profile {
        Some(path) => {
            let policy_cost = load_cost(path)?.cost;
            let timing = step_cost.unwrap_or_else(|| MeasuredCost::linear_only(cost));
            (policy_cost, Some(timing))
        }
        None => (cost, step_cost),
    };
    let defaults = StabilityRule::default();
    let stability = StabilityRule {
        min_steps: args.stable_min_steps.unwrap_or(defaults.min_steps),
        window: args.stable_window.unwrap_or(defaults.window),
        epsilon: args.stable_epsilon.unwrap_or(defaults.epsilon),
    };
    let policy_defaults = PolicyConfig::default();
    let policy_config = PolicyConfig {
        num_queues: args.num_queues.unwrap_or(policy_defaults.num_queues),
        first_threshold_passes: args
            .first_threshold_passes
            .unwrap_or(policy_defaults.first_threshold_passes),
        ..policy_defaults
    };
    let predictor = match args.predictor {
        PredictorArg::Noisy => PredictorChoice::NoisyOracle {
            sigma: args.predictor_sigma,
        },
        PredictorArg::Online => PredictorChoice::Online {
            prior_tokens: profile.output.max_tokens().min(256),
            window: 1024,
        },
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Ok(Experiment {
        source,
        rates,
        policies: parse_policies(&args.policy)?,
        scheduler: SchedulerConfig {
            capacity: Capacity {
                max_batch: args.max_batch,
                max_step_tokens: args.max_step_tokens,
                kv_budget_tokens: args.kv_budget_tokens,
            },
            speculation_length: args.speculation_length,
            stability,
            cost,
        },
        policy_config,
        predictor,
        acceptance: AcceptanceModel {
            transient_steps: args.transient_steps,
            transient_shift: args.transient_shift,
            seed: args.seed,
        },
        step_cost,
        seed: args.seed,
        jobs: jobs.max(1),
    })
}

fn progress_bar(total: usize, format: OutputFormat) -> ProgressBar {
    let visible =
        format != OutputFormat::Json && std::io::stderr().is_terminal() && total >= 20_000;
    if !visible {
        return ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests ({eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Renders results in the chosen format.
pub fn render(args: &SimArgs, results: Vec<PolicyResult>) -> anyhow::Result<String> {
    Ok(match args.format {
        OutputFormat::Table => to_table(&results),
        OutputFormat::Csv => to_csv(&results),
        OutputFormat::Json => {
            let report = JsonReport {
                seed: args.seed,
                requests: results.first().map_or(0, |r| r.completed + r.never_fits),
                speculation_length: args.speculation_length,
                max_batch: args.max_batch,
                results,
            };
            let mut text = serde_json::to_string_pretty(&report)?;
            text.push('\n');
            text
        }
    })
}

/// `lapsd sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let experiment = experiment_from_args(&args)?;
    let bar = progress_bar(experiment.total_work(), args.format);
    let started = std::time::Instant::now();
    let results = experiment.run(Some(&bar))?;
    bar.finish_and_clear();
    if args.timing {
        eprintln!(
            "simulated {} policy x load runs of {} requests in {:.2} s wall",
            results.len(),
            experiment.total_work() / results.len().max(1),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(dir) = &args.plot {
        let name = format!("{}-latency-vs-load", args.workload.name());
        let title = format!(
            "{}: latency vs load (k={}, max batch {}, predictor {})",
            args.workload.name(),
            args.speculation_length,
            args.max_batch,
            experiment.predictor.label()
        );
        let files = crate::plot::plot_latency_vs_load(dir, &name, &title, &results)
            .with_context(|| format!("plotting into {}", dir.display()))?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    print!("{}", render(&args, results)?);
    Ok(())
}
