//! `lapsd calibrate`: the engine measures step costs on this machine
//! (`lapsd_engine::spec::calibrate`), the core fits them and shapes the cost profile
//! (`lapsd_core::cost`), and this glue writes it; `--from-step-log` fits a served run's steps
//! instead. The glue lives in the binary so that the engine does not depend on the core.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lapsd_core::cost::{CostProfile, CostSample, PrefillSample};
use lapsd_core::{LinearCost, StepObservation};
use lapsd_engine::model::{LoadOptions, Model, WeightMode};
use lapsd_engine::spec::calibrate::{calibrate, Calibration, CalibrationDrafter, CalibrationPlan};
use lapsd_engine::spec::{load_draft_model, DraftSpec, DEFAULT_DRAFT};
use lapsd_server::cli::resolve_model_path;

/// Flags of `lapsd calibrate`.
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// Target model: a GGUF file or a Hugging Face folder (config.json, tokenizer.json,
    /// *.safetensors). Default: $LAPSD_MODEL, else the embedded SmolLM2-135M-Instruct,
    /// looked for where `lapsd serve` looks for it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Draft method whose cost is measured (none, ngram[:N], self:N, or a draft .gguf path or
    /// model:PATH with optional :vocab=N and :exact).
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: DraftSpec,
    /// Target arithmetic: `fast` (Q5_0/Q5_1/Q8_1 projections re-quantized to Q8_0 at load,
    /// prompts of 16+ tokens through an f32 copy of the weights candle's kernels serve; for
    /// Q8_0/Q4_1/Q4_K/Q6_K files the same as `exact`) or `exact` (the file's own
    /// quantized weights for every position). Measured: docs/speculative-decoding.md, "Exact or
    /// fast weights".
    #[arg(long, default_value = "fast")]
    pub weights: WeightMode,
    /// Largest batch size measured (1..=B).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Largest speculation length measured (0..=K).
    #[arg(long, default_value_t = 8)]
    pub max_k: usize,
    /// Context tokens each sequence holds during the measured steps.
    #[arg(long, default_value_t = 128)]
    pub context_tokens: usize,
    /// Repeats per point (the median is kept).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Where to write the JSON cost profile.
    #[arg(long)]
    pub out: PathBuf,
    /// Fit the profile to the steps a server really ran (`lapsd serve --step-log`) instead of
    /// measuring here: in situ, with the server's HTTP threads and its clients on the same cores.
    #[arg(long, conflicts_with_all = ["model", "draft", "weights"])]
    pub from_step_log: Option<PathBuf>,
}

/// Context text for calibration: code, so n-gram drafting sees realistic repetition.
const CALIBRATION_TEXT: &str = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n";

/// `lapsd calibrate --from-step-log`: least squares over the served steps
/// ([`lapsd_core::fit_served_steps`]).
fn calibrate_from_step_log(log: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut steps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let step: StepObservation = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a step record", log.display(), index + 1))?;
        steps.push(step);
    }
    if steps.is_empty() {
        bail!("{}: no steps recorded", log.display());
    }
    let cost = lapsd_core::fit_served_steps(&steps).with_context(|| {
        format!(
            "{}: the {} steps do not determine the cost model (too little variety)",
            log.display(),
            steps.len()
        )
    })?;
    let profile = CostProfile {
        max_batch: None,
        model: format!("served steps of {}", log.display()),
        draft: "as served".into(),
        cost,
        samples: Vec::new(),
        prefill_samples: Vec::new(),
    };
    std::fs::write(out, serde_json::to_string_pretty(&profile)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (fitted to {} served steps)",
        out.display(),
        steps.len()
    );
    print_cost(&cost);
    Ok(())
}

fn print_cost(cost: &LinearCost) {
    println!(
        "draft: {:.3} ms + {:.3} ms/seq per position | verify: {:.3} ms + {:.3} ms/token | prefill: {:.3} ms + {:.4} ms/token",
        cost.draft_base_s * 1e3,
        cost.draft_per_seq_s * 1e3,
        cost.verify_base_s * 1e3,
        cost.verify_per_token_s * 1e3,
        cost.prefill_base_s * 1e3,
        cost.prefill_per_token_s * 1e3,
    );
}

/// `lapsd calibrate`.
pub fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    if let Some(log) = &args.from_step_log {
        return calibrate_from_step_log(log, &args.out);
    }
    if args.max_batch == 0 {
        bail!("--max-batch must be at least 1, got 0");
    }
    let model_path = resolve_model_path(args.model.clone())?;
    let (target, tokenizer) =
        Model::load_with_tokenizer_options(&model_path, &LoadOptions::for_weights(args.weights))
            .with_context(|| format!("loading {}", model_path.display()))?;
    target.warm_up()?;
    let draft_model = match &args.draft {
        DraftSpec::Model {
            path,
            head_rows,
            pad_q8_0,
        } => Some(
            load_draft_model(path, *head_rows, *pad_q8_0)
                .with_context(|| format!("loading draft {}", path.display()))?,
        ),
        _ => None,
    };
    let drafter = match (&args.draft, &draft_model) {
        (DraftSpec::None, _) => CalibrationDrafter::None,
        (DraftSpec::NGram { n }, _) => CalibrationDrafter::NGram { n: *n },
        (DraftSpec::SelfLayers { n_layers }, _) => {
            if *n_layers == 0 || *n_layers > target.info().n_layers {
                bail!(
                    "self:{n_layers}: the model has {} layers",
                    target.info().n_layers
                );
            }
            CalibrationDrafter::Model {
                model: &target,
                n_layers: *n_layers,
            }
        }
        (DraftSpec::Model { .. }, Some(model)) => CalibrationDrafter::Model {
            model,
            n_layers: model.info().n_layers,
        },
        (DraftSpec::Model { path, .. }, None) => {
            bail!("draft model {} was not loaded", path.display())
        }
    };
    let text_ids = tokenizer.encode(CALIBRATION_TEXT, false)?;
    let context_tokens: Vec<u32> = text_ids
        .iter()
        .copied()
        .cycle()
        .take(args.context_tokens.max(1))
        .collect();
    let plan = CalibrationPlan {
        max_batch: args.max_batch,
        max_k: args.max_k,
        context_tokens,
        prefill_lengths: vec![16, 32, 64, 128, 256],
        repeats: args.repeats,
    };
    let points = args.max_batch * (args.max_k + 1) + plan.prefill_lengths.len();
    let bar = indicatif::ProgressBar::new(points as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} points ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!(
        "calibrating {} with draft {}",
        target.info().name,
        args.draft
    ));
    let measured = calibrate(&target, &drafter, &plan, || bar.inc(1))?;
    bar.finish();
    let model_name = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (samples, prefill_samples) = profile_samples(&measured)?;
    let profile =
        CostProfile::from_calibration(model_name, args.draft.to_string(), samples, prefill_samples);
    let cost = profile.cost;
    let json = serde_json::to_string_pretty(&profile)?;
    std::fs::write(&args.out, json + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    print_cost(&cost);
    Ok(())
}

/// The engine's measurements in the profile's terms (speculation lengths and prompt lengths as
/// the core counts tokens, u32).
fn profile_samples(
    measured: &Calibration,
) -> anyhow::Result<(Vec<CostSample>, Vec<PrefillSample>)> {
    let samples = measured
        .steps
        .iter()
        .map(|m| {
            Ok(CostSample {
                batch: m.batch,
                k: u32::try_from(m.k)
                    .with_context(|| format!("speculation length {} does not fit in u32", m.k))?,
                draft_s: m.draft_s,
                verify_s: m.verify_s,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let prefill_samples = measured
        .prefills
        .iter()
        .map(|m| {
            Ok(PrefillSample {
                tokens: u32::try_from(m.tokens)
                    .with_context(|| format!("prompt length {} does not fit in u32", m.tokens))?,
                prefill_s: m.prefill_s,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((samples, prefill_samples))
}
