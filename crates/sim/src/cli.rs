//! `lapsd sim` flags and glue: parse, build an [`Experiment`], run it with a progress bar, print a
//! table / JSON / CSV, optionally plot. The simulation itself lives in the library modules.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lapsd_core::cost::{CostProfile, MeasuredCost};
use lapsd_core::policy::args::PolicyArgs;
use lapsd_core::{
    Capacity, LinearCost, PolicyConfig, PolicyKind, PolicySpec, SchedulerConfig, SpeculationMode,
};

use crate::acceptance::AcceptanceModel;
use crate::dispatch::Dispatch;
use crate::error::SimError;
use crate::prediction::PredictorChoice;
use crate::report::{to_csv, to_table, JsonReport, PolicyResult};
use crate::run::{ArrivalRate, Experiment, RequestSource};
use crate::trace::parse_trace;
use crate::workload::WorkloadKind;
use lapsd_workload::arrivals::ArrivalProcess;

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

/// The default step costs when no `--cost-profile` is given: [`LinearCost::BUILT_IN`], the one
/// built-in SmolLM2-on-2-cores default the server shares.
pub fn default_cost() -> LinearCost {
    LinearCost::BUILT_IN
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
    /// Draw request sizes by resampling the (prompt, output) lengths of this `--trace`-format
    /// file (e.g. the ShareGPT lengths of `lapsd bench --dataset sharegpt PATH --dry-run
    /// --emit-sim-trace F`) instead of --workload's distributions; acceptance still from
    /// --workload; arrivals and load as for a workload (the file's times are ignored).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["trace", "matrix"])]
    pub lengths: Option<PathBuf>,
    /// Number of requests drawn from the workload.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Seed of every random draw (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Arrival rate in requests per second.
    #[arg(long, conflicts_with_all = ["load", "loads"])]
    pub rate: Option<f64>,
    /// Target utilisation; the rate is load / mean full-batch service time (see docs/scheduling.md).
    #[arg(long, conflicts_with = "loads")]
    pub load: Option<f64>,
    /// Comma-separated loads to sweep (e.g. 0.5,0.6,0.7,0.8,0.9).
    #[arg(long, value_delimiter = ',')]
    pub loads: Option<Vec<f64>>,
    /// Gamma shape of inter-arrival times (1 = Poisson; < 1 burstier, CV = 1/sqrt(shape)).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Policies to run side by side on the same arrivals: `all` (every ordering), or a comma
    /// list of names, each optionally with settings that override the flags below for it alone:
    /// `gittins,laps-sd,laps-sd[las-phase=false,batch-formation=marginal],fcfs[max-wait-s=30]`.
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
    /// Draft tokens per SD step (0 turns speculative decoding off). With --speculation-mode
    /// auto, the longest draft a request may take.
    #[arg(long, default_value_t = 4)]
    pub speculation_length: u32,
    /// `fixed`: every request drafts --speculation-length tokens per step; `auto`: each
    /// request's k is chosen every step from its acceptance so far and the cost model, for the
    /// most tokens per second of step time (lapsd-core's `speculation` module).
    #[arg(long, value_enum, default_value = "fixed")]
    pub speculation_mode: SpeculationMode,
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
    /// Policy settings (every policy in --policy), shared with `lapsd serve`.
    #[command(flatten)]
    pub policy_settings: PolicyArgs,
    /// Replicas behind one dispatcher, each with its own scheduler running every --policy; the
    /// arrival rate is multiplied by R so --load/--loads stay the utilisation of each replica
    /// (--rate is the total rate). 1 with no --dispatch is the plain single server.
    #[arg(long, default_value_t = 1, conflicts_with = "matrix")]
    pub replicas: usize,
    /// How arrivals are assigned to replicas (no migration); a comma list compares rules on the
    /// same arrivals: round-robin, jsq (fewest unfinished requests), power-of-two (the fewer of
    /// two drawn at random), least-work (least estimated outstanding work from the policies'
    /// cost model and acceptance estimates). Default with --replicas > 1: round-robin.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "matrix")]
    pub dispatch: Vec<Dispatch>,
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
    /// Run the regime matrix instead of one experiment and write regimes.csv, summary.md and a
    /// plot into this folder: every --policy on the same arrivals over cost profiles x workloads
    /// x loads (--loads, default 0.5,0.7,0.8,0.9,0.95) x batch 1 and the profile's batch x
    /// predictors x acceptance spreads (docs/scheduling.md).
    #[arg(long, value_name = "DIR")]
    pub matrix: Option<PathBuf>,
    /// Matrix cost profiles (JSON files; default: the three shipped in profiles/, built in).
    #[arg(long, value_delimiter = ',', requires = "matrix")]
    pub matrix_profiles: Vec<PathBuf>,
    /// Matrix workloads (default: every built-in one).
    #[arg(long, value_enum, value_delimiter = ',', requires = "matrix")]
    pub matrix_workloads: Vec<WorkloadKind>,
    /// Add a workload of real (prompt, output) lengths, resampled: a `--trace` file such as the
    /// ShareGPT lengths `lapsd bench --dataset sharegpt PATH --dry-run --emit-sim-trace F` writes.
    #[arg(long, value_name = "FILE", requires = "matrix")]
    pub matrix_lengths: Option<PathBuf>,
    /// Matrix predictors: `online` and `noisy:SIGMA` (default online,noisy:0.5,noisy:1.5).
    #[arg(long, value_delimiter = ',', requires = "matrix")]
    pub matrix_predictors: Vec<String>,
    /// Matrix: only each profile's own batch size (skip batch 1).
    #[arg(long, requires = "matrix")]
    pub matrix_no_batch_one: bool,
    /// Matrix: independent runs per regime (seeds --seed, --seed + 1, ...), pooled: latencies
    /// averaged, the lowest throughput share kept. Near saturation one run's mean moves by a few
    /// percent with any change to a policy's arithmetic; N runs shrink that by sqrt(N).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), requires = "matrix")]
    pub matrix_replications: u32,
}

/// Parses one `--matrix-predictors` entry.
fn parse_matrix_predictor(text: &str) -> Result<PredictorChoice, SimError> {
    let text = text.trim();
    if text == "online" {
        return Ok(PredictorChoice::Online {
            prior_tokens: 128,
            window: 1024,
        });
    }
    if let Some(sigma) = text.strip_prefix("noisy:") {
        if let Ok(sigma) = sigma.parse::<f64>() {
            if sigma >= 0.0 && sigma.is_finite() {
                return Ok(PredictorChoice::NoisyOracle { sigma });
            }
        }
    }
    Err(SimError::InvalidArgument {
        field: "matrix-predictors",
        reason: format!("expected online or noisy:SIGMA (SIGMA >= 0), got {text:?}"),
    })
}

/// The regime matrix the flags describe.
pub fn matrix_from_args(args: &SimArgs) -> Result<crate::matrix::MatrixConfig, SimError> {
    use crate::matrix::{AcceptanceSpread, MatrixConfig, MatrixProfile, MatrixWorkload};
    let profiles = if args.matrix_profiles.is_empty() {
        MatrixProfile::shipped()?
    } else {
        args.matrix_profiles
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|e| SimError::CostProfile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let name = path.file_stem().map_or_else(
                    || path.display().to_string(),
                    |s| s.to_string_lossy().into(),
                );
                MatrixProfile::from_json(&name, &text)
            })
            .collect::<Result<_, _>>()?
    };
    let kinds = if args.matrix_workloads.is_empty() {
        WorkloadKind::ALL.to_vec()
    } else {
        args.matrix_workloads.clone()
    };
    let mut workloads: Vec<MatrixWorkload> =
        kinds.into_iter().map(MatrixWorkload::Builtin).collect();
    if let Some(path) = &args.matrix_lengths {
        workloads.push(MatrixWorkload::Lengths {
            name: path
                .file_stem()
                .map_or_else(|| "lengths".into(), |s| s.to_string_lossy().into()),
            pairs: crate::matrix::read_length_pairs(path)?,
        });
    }
    let predictors = if args.matrix_predictors.is_empty() {
        vec!["online".to_string(), "noisy:0.5".into(), "noisy:1.5".into()]
    } else {
        args.matrix_predictors.clone()
    };
    let loads = match (&args.loads, args.load) {
        (Some(ls), _) if !ls.is_empty() => ls.clone(),
        (_, Some(l)) => vec![l],
        _ => vec![0.5, 0.7, 0.8, 0.9, 0.95],
    };
    for &l in &loads {
        positive("loads", l)?;
    }
    let policy_config = args
        .policy_settings
        .policy_config(PolicyConfig::default())?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Ok(MatrixConfig {
        profiles,
        workloads,
        loads,
        batch_one: !args.matrix_no_batch_one,
        predictors: predictors
            .iter()
            .map(|p| parse_matrix_predictor(p))
            .collect::<Result<_, _>>()?,
        spreads: vec![AcceptanceSpread::Narrow, AcceptanceSpread::Wide],
        policies: parse_policies(&args.policy, &policy_config)?,
        requests: args.requests,
        seed: args.seed,
        replications: args.matrix_replications as usize,
        speculation_length: args.speculation_length,
        jobs: jobs.max(1),
    })
}

/// `lapsd sim --matrix DIR`.
fn run_matrix(args: &SimArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let matrix = matrix_from_args(args)?;
    let total = matrix.regime_count();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden())
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} regimes ({eta})",
    ) {
        bar.set_style(style);
    }
    let rows = matrix.run(|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let flags = match argv.first() {
        Some(first) if first == "sim" => &argv[1..],
        _ => &argv[..],
    };
    let command = format!("lapsd sim {}", flags.join(" "));
    for f in crate::matrix::write_outputs(dir, &rows, total, &command)? {
        eprintln!("wrote {}", f.display());
    }
    let summaries = crate::matrix::summarize_matrix(&rows);
    print!(
        "{}",
        crate::matrix::to_markdown(&summaries, total, &command)
    );
    Ok(())
}

/// The `--policy` list over the `base` settings.
pub fn parse_policies(text: &str, base: &PolicyConfig) -> Result<Vec<PolicySpec>, SimError> {
    if text.trim() == "all" {
        return Ok(PolicyKind::ALL
            .iter()
            .map(|&kind| PolicySpec::new(kind, base.clone()))
            .collect());
    }
    let out = PolicySpec::parse_list(text, base)?;
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
            let arrivals = ArrivalProcess::from_burstiness(args.burstiness)?;
            let source = match &args.lengths {
                None => RequestSource::Workload {
                    profile: profile.clone(),
                    count: args.requests,
                    arrivals,
                },
                Some(path) => RequestSource::Lengths {
                    name: path
                        .file_stem()
                        .map_or_else(|| "lengths".into(), |s| s.to_string_lossy().into()),
                    pairs: crate::matrix::read_length_pairs(path)?,
                    profile: profile.clone(),
                    count: args.requests,
                    arrivals,
                },
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
    let stability = args.policy_settings.stability()?;
    let policy_config = args
        .policy_settings
        .policy_config(PolicyConfig::default())?;
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
        policies: parse_policies(&args.policy, &policy_config)?,
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
        predictor,
        acceptance: AcceptanceModel {
            transient_steps: args.transient_steps,
            transient_shift: args.transient_shift,
            seed: args.seed,
        },
        step_cost,
        speculation_mode: args.speculation_mode,
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

/// The replica count and dispatch rules the flags ask for; `None` = the plain single server
/// (one replica and no `--dispatch`).
pub fn replicas_from_args(args: &SimArgs) -> Result<Option<(usize, Vec<Dispatch>)>, SimError> {
    if args.replicas == 0 {
        return Err(SimError::InvalidArgument {
            field: "replicas",
            reason: "must be at least 1".into(),
        });
    }
    if args.replicas == 1 && args.dispatch.is_empty() {
        return Ok(None);
    }
    let mut rules: Vec<Dispatch> = Vec::with_capacity(args.dispatch.len());
    for &rule in &args.dispatch {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    if rules.is_empty() {
        rules.push(Dispatch::RoundRobin);
    }
    Ok(Some((args.replicas, rules)))
}

/// Runs what the flags describe (everything but the matrix): one experiment, on one server or
/// on replicas behind a dispatcher.
pub fn results_from_args(
    args: &SimArgs,
    experiment: &Experiment,
    progress: Option<&ProgressBar>,
) -> Result<Vec<PolicyResult>, SimError> {
    match replicas_from_args(args)? {
        None => experiment.run(progress),
        Some((replicas, rules)) => experiment.run_replicas(replicas, &rules, progress),
    }
}

/// `lapsd sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.matrix.clone() {
        return run_matrix(&args, &dir);
    }
    let experiment = experiment_from_args(&args)?;
    let rules = replicas_from_args(&args)?.map_or(1, |(_, rules)| rules.len());
    let bar = progress_bar(experiment.total_work() * rules, args.format);
    let started = std::time::Instant::now();
    let results = results_from_args(&args, &experiment, Some(&bar))?;
    bar.finish_and_clear();
    if args.timing {
        eprintln!(
            "simulated {} policy x load runs of {} requests in {:.2} s wall",
            results.len(),
            experiment.total_work() * rules / results.len().max(1),
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
        // One curve per policy, or per policy and dispatch rule.
        let curves: Vec<PolicyResult> = results
            .iter()
            .cloned()
            .map(|mut r| {
                if let Some(rule) = &r.dispatch {
                    r.policy = format!("{} {rule}", r.policy);
                }
                r
            })
            .collect();
        let files = crate::plot::plot_latency_vs_load(dir, &name, &title, &curves)
            .with_context(|| format!("plotting into {}", dir.display()))?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    print!("{}", render(&args, results)?);
    Ok(())
}
