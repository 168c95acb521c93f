//! `lapsd bench`: flags and command glue (anyhow lives here only). `lapsd bench --url ...` runs a
//! benchmark; `lapsd bench plot --inputs a.json b.json --out DIR` draws latency-vs-rate plots from
//! result files.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use lapsd_workload::arrivals::{validate_open_loop_rate, ArrivalProcess};

use crate::client::{self, ClientConfig, Endpoint};
use crate::length_model;
use crate::plot;
use crate::profiles::Profile;
use crate::report::{BenchReport, RunSettings};
use crate::runner::{self, RunConfig};
use crate::stats::Slo;
use crate::tokens::TokenCounter;
use crate::workload::{self, PlanConfig, WorkloadSource};

/// `lapsd bench` flags.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Modes other than running a benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Draw mean/p99 latency vs request rate from several result files (one line per --label).
    Plot(PlotArgs),
    /// Train the prompt-text length model `lapsd serve --length-model` reads, on a dataset's
    /// reply lengths as a benchmark with the same --output-scale/--max-output-tokens sends them,
    /// leaving out the prompts of the benchmark runs named by --exclude-seed/--exclude-requests.
    TrainLengthModel(TrainLengthModelArgs),
}

/// `lapsd bench train-length-model` flags.
#[derive(clap::Args, Debug)]
pub struct TrainLengthModelArgs {
    /// The dataset: `sharegpt PATH` or `gsm8k PATH`.
    #[arg(long, num_args = 2, value_names = ["KIND", "PATH"], required = true)]
    pub dataset: Vec<String>,
    /// As `lapsd bench --output-scale`.
    #[arg(long, default_value_t = 1.0)]
    pub output_scale: f64,
    /// As `lapsd bench --max-output-tokens`.
    #[arg(long, default_value_t = 512)]
    pub max_output_tokens: u32,
    /// Seeds of the benchmark runs whose prompts must not be trained on (repeatable).
    #[arg(long)]
    pub exclude_seed: Vec<u64>,
    /// Requests per excluded benchmark run.
    #[arg(long, default_value_t = 100)]
    pub exclude_requests: usize,
    /// Share of the other pairs held out to measure the rank correlation.
    #[arg(long, default_value_t = 0.1)]
    pub holdout_fraction: f64,
    /// Seed of the shuffles (training order, holdout split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Count tokens with this tokenizer.json instead of characters/4 (as `lapsd bench`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Where to write the model (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// `lapsd bench plot` flags.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Result JSON files written by `lapsd bench --out`.
    #[arg(long, num_args = 1.., required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder for the PNG and SVG files.
    #[arg(long)]
    pub out: PathBuf,
    /// Also draw each input's latency CDF.
    #[arg(long)]
    pub cdf: bool,
}

/// Where the prompts come from: exactly one of these.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// Built-in profile: prompts of real text, output lengths from the profile's distribution.
    #[arg(long, value_enum)]
    pub workload: Option<Profile>,
    /// A dataset file: `sharegpt PATH` (vLLM's ShareGPT JSON) or `gsm8k PATH` (test.jsonl or its folder).
    #[arg(long, num_args = 2, value_names = ["KIND", "PATH"])]
    pub dataset: Option<Vec<String>>,
    /// JSONL trace, one {"prompt", "max_tokens", "arrival_s"} per line (its arrival times are used).
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// Flags of a benchmark run.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080 (the /v1/... path is added).
    #[arg(long, required_unless_present = "dry_run")]
    pub url: Option<String>,
    #[arg(long, value_enum, default_value = "completions")]
    pub endpoint: Endpoint,
    /// Model name to send; default: the first id of GET /v1/models, else "default".
    #[arg(long)]
    pub model: Option<String>,
    /// API key sent as `Authorization: Bearer KEY` (a server started with `--api-key`);
    /// default: the `LAPSD_API_KEY` environment variable's first key, if set.
    #[arg(long)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Mean request rate in requests/s ("inf" sends everything at once). Not used with --trace.
    #[arg(long, required_unless_present = "trace")]
    pub rate: Option<f64>,
    /// Gamma shape of inter-arrival gaps (1 = Poisson; < 1 burstier).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// At most this many requests in flight.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Number of requests (with --trace: the first N lines; default all).
    #[arg(long, required_unless_present = "trace")]
    pub requests: Option<usize>,
    /// Seed of prompt choice and arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cap on max_tokens for profiles and datasets.
    #[arg(long, default_value_t = 512)]
    pub max_output_tokens: u32,
    /// Multiply each output length (dataset reply or profile draw) by this before the cap, e.g.
    /// 0.125 for ShareGPT's length distribution at an eighth of its work on a slow machine.
    /// Traces are sent as written.
    #[arg(long, default_value_t = 1.0)]
    pub output_scale: f64,
    /// Label stored in the result (e.g. the server's policy); names the line in vs-rate plots.
    #[arg(long)]
    pub label: Option<String>,
    /// Write the result JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw this run's latency CDF (PNG + SVG) into this folder.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// TTFT bound for goodput, in ms.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// TPOT bound for goodput, in ms.
    #[arg(long)]
    pub slo_tpot_ms: Option<f64>,
    /// Write the workload in `lapsd sim --trace` format ({"arrival_s", "prompt_tokens", "output_tokens"}).
    #[arg(long)]
    pub emit_sim_trace: Option<PathBuf>,
    /// Count workload tokens with this Hugging Face tokenizer.json instead of characters/4.
    #[arg(long, conflicts_with = "tokenizer_free")]
    pub tokenizer: Option<PathBuf>,
    /// Count workload tokens as ceil(characters / 4) (the default without --tokenizer).
    #[arg(long)]
    pub tokenizer_free: bool,
    /// Sampling temperature sent with each request.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Send ignore_eos: true so servers that support it generate exactly max_tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// A JSON object merged into every request body (its fields win), e.g.
    /// '{"logit_bias": {"2": -100}}' to ban EOS on servers without ignore_eos.
    #[arg(long, value_parser = parse_json_object)]
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    /// A request unfinished after this many seconds counts as a timeout.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout_s: f64,
    /// Build the workload (and --emit-sim-trace) without sending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Entry point of `lapsd bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Plot(plot_args)) => run_plot(plot_args),
        Some(BenchCommand::TrainLengthModel(train_args)) => run_train_length_model(train_args),
        None => run_bench(args.run),
    }
}

fn run_plot(args: PlotArgs) -> anyhow::Result<()> {
    let reports = args
        .inputs
        .iter()
        .map(|path| BenchReport::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut files = plot::plot_vs_rate(&reports, &args.out)?;
    if args.cdf {
        for report in &reports {
            files.extend(plot::plot_latency_cdf(report, &args.out)?);
        }
    }
    for file in files {
        println!("wrote {}", file.display());
    }
    Ok(())
}

fn run_train_length_model(args: TrainLengthModelArgs) -> anyhow::Result<()> {
    let source = dataset_source(&args.dataset)?;
    let tokens = TokenCounter::from_flag(args.tokenizer.as_deref())?;
    let mut excluded_prompts = std::collections::HashSet::new();
    for &seed in &args.exclude_seed {
        let plan = workload::build_plan(&PlanConfig {
            source: &source,
            requests: Some(args.exclude_requests),
            // Only the prompts matter here; arrival times are not used.
            arrivals: ArrivalProcess::Poisson,
            rate_per_s: f64::INFINITY,
            seed,
            max_output_tokens: args.max_output_tokens,
            output_scale: args.output_scale,
            tokens: &tokens,
        })?;
        excluded_prompts.extend(plan.items.into_iter().map(|item| item.prompt));
    }
    let outcome = length_model::train_length_model(&length_model::TrainSettings {
        source: &source,
        output_scale: args.output_scale,
        max_output_tokens: args.max_output_tokens,
        tokens: &tokens,
        excluded_prompts: &excluded_prompts,
        holdout_fraction: args.holdout_fraction,
        seed: args.seed,
        train: lapsd_core::length_model::TrainConfig::default(),
    })?;
    let mut model = outcome.model;
    model.description = format!(
        "{} {}, output scale {}, cap {}, {} tokens; trained on {} pairs, {} held out, {} benchmark prompts left out (seeds {:?} x {} requests)",
        args.dataset[0],
        args.dataset[1],
        args.output_scale,
        args.max_output_tokens,
        tokens.describe(),
        outcome.train_examples,
        outcome.holdout_examples,
        outcome.excluded_examples,
        args.exclude_seed,
        args.exclude_requests,
    );
    create_parent_dir(&args.out)?;
    let json = serde_json::to_vec(&model).context("serialising the model")?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    let show = |s: Option<f64>| s.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    println!("{}", model.description);
    println!(
        "Spearman (predicted vs served length): held out {}, benchmark prompts {}; residual sigma {:.2} (ln tokens)",
        show(model.holdout_spearman),
        show(outcome.excluded_spearman),
        model.residual_sigma
    );
    println!("wrote {}", args.out.display());
    Ok(())
}

fn dataset_source(dataset: &[String]) -> anyhow::Result<WorkloadSource> {
    match dataset {
        [kind, path] => match kind.as_str() {
            "sharegpt" => Ok(WorkloadSource::ShareGpt { path: path.into() }),
            "gsm8k" => Ok(WorkloadSource::Gsm8k { path: path.into() }),
            other => bail!("--dataset KIND must be sharegpt or gsm8k, got {other:?}"),
        },
        _ => bail!("--dataset takes KIND PATH"),
    }
}

fn workload_source(source: &SourceArgs) -> anyhow::Result<WorkloadSource> {
    if let Some(profile) = source.workload {
        return Ok(WorkloadSource::Profile { profile });
    }
    if let Some(trace) = &source.trace {
        return Ok(WorkloadSource::Trace {
            path: trace.clone(),
        });
    }
    match source.dataset.as_deref() {
        Some(dataset) => dataset_source(dataset),
        None => bail!("one of --workload, --dataset KIND PATH or --trace is required"),
    }
}

fn run_bench(args: RunArgs) -> anyhow::Result<()> {
    let source = workload_source(&args.source)?;
    let is_trace = matches!(source, WorkloadSource::Trace { .. });
    let rate_per_s = args.rate.unwrap_or(f64::INFINITY);
    validate_open_loop_rate(rate_per_s)?;
    let arrivals = ArrivalProcess::from_burstiness(args.burstiness)?;
    let tokens = TokenCounter::from_flag(args.tokenizer.as_deref())?;
    let plan = workload::build_plan(&PlanConfig {
        source: &source,
        requests: args.requests,
        arrivals,
        rate_per_s,
        seed: args.seed,
        max_output_tokens: args.max_output_tokens,
        output_scale: args.output_scale,
        tokens: &tokens,
    })?;
    if let Some(path) = &args.emit_sim_trace {
        plan.write_sim_trace(path)?;
        eprintln!(
            "wrote simulator trace {} ({} requests)",
            path.display(),
            plan.items.len()
        );
    }
    if args.dry_run {
        let output_tokens: u64 = plan.items.iter().map(|i| u64::from(i.max_tokens)).sum();
        let prompt_tokens: u64 = plan.items.iter().map(|i| u64::from(i.prompt_tokens)).sum();
        let last_arrival_s = plan.arrivals_s.iter().copied().fold(0.0, f64::max);
        println!(
            "dry run: {} requests, {prompt_tokens} prompt tokens, {output_tokens} max output tokens ({}), last arrival at {last_arrival_s:.2} s",
            plan.items.len(),
            tokens.describe()
        );
        return Ok(());
    }
    let Some(url) = args.url.clone() else {
        bail!("--url is required unless --dry-run");
    };
    if !(args.request_timeout_s.is_finite() && args.request_timeout_s > 0.0) {
        bail!(
            "--request-timeout-s must be a positive number, got {}",
            args.request_timeout_s
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let api_key = args.api_key.clone().or_else(|| {
        std::env::var("LAPSD_API_KEY").ok().and_then(|keys| {
            keys.split(',')
                .map(str::trim)
                .find(|k| !k.is_empty())
                .map(String::from)
        })
    });
    let http = client::build_http_client(api_key.as_deref()).context("building the HTTP client")?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => runtime
            .block_on(client::discover_model(&http, &url))
            .unwrap_or_else(|| "default".to_string()),
    };
    let config = RunConfig {
        client: ClientConfig {
            base_url: url.clone(),
            endpoint: args.endpoint,
            model: model.clone(),
            temperature: args.temperature,
            ignore_eos: args.ignore_eos,
            extra_body: args.extra_body.clone().unwrap_or_default(),
            request_timeout: Duration::from_secs_f64(args.request_timeout_s),
        },
        max_concurrency: args.max_concurrency,
        show_progress: !args.no_progress,
    };
    eprintln!(
        "lapsd bench: {} requests to {url}{} (model {model}), rate {}",
        plan.items.len(),
        args.endpoint.path(),
        if is_trace {
            "from trace".to_string()
        } else {
            format!("{rate_per_s} req/s")
        }
    );
    let outcome = runtime.block_on(runner::run_plan(&plan, http, &config));
    let settings = RunSettings {
        url,
        endpoint: args.endpoint,
        model,
        workload: source,
        rate_per_s: (!is_trace && rate_per_s.is_finite()).then_some(rate_per_s),
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency,
        requests: plan.items.len(),
        seed: args.seed,
        max_output_tokens: args.max_output_tokens,
        output_scale: args.output_scale,
        token_counter: tokens.describe().to_string(),
        temperature: args.temperature,
        ignore_eos: args.ignore_eos,
        extra_body: args.extra_body.clone().unwrap_or_default(),
        slo: Slo {
            ttft_ms: args.slo_ttft_ms,
            tpot_ms: args.slo_tpot_ms,
        },
    };
    let report = BenchReport::build(args.label.clone(), settings, &plan, &outcome);
    print!("{}", report.table());
    if let Some(path) = &args.out {
        create_parent_dir(path)?;
        report.save(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.plot {
        for file in plot::plot_latency_cdf(&report, dir)? {
            eprintln!("wrote {}", file.display());
        }
    }
    Ok(())
}

/// Creates the folder an output file goes into, if it names one.
fn create_parent_dir(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// `--extra-body`: a JSON object.
fn parse_json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("--extra-body must be a JSON object, got {other}")),
        Err(e) => Err(format!("--extra-body is not valid JSON ({e}): {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_json_object;

    #[test]
    fn extra_body_must_be_a_json_object() {
        let map = parse_json_object(r#"{"logit_bias": {"2": -100}}"#).expect("an object");
        assert_eq!(map["logit_bias"]["2"], -100);
        let err = parse_json_object("[1, 2]").unwrap_err();
        assert!(err.contains("must be a JSON object"), "{err}");
        let err = parse_json_object("{logit_bias").unwrap_err();
        assert!(
            err.contains("not valid JSON") && err.contains("{logit_bias"),
            "{err}"
        );
    }
}
