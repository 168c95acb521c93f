//! `lapsd generate` (one prompt through the speculative-decoding engine, text streamed to stdout,
//! then speed and acceptance) and `lapsd calibrate` (step-cost profile for `lapsd sim`).
//! Command glue only: the work is in [`crate::engine`] and [`crate::spec::calibrate`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::engine::{EngineConfig, SamplingParams, SdEngine, SeqFinish};
use crate::model::Model;
use crate::spec::calibrate::{calibrate, CalibrationDrafter, CalibrationPlan, CostProfile};
use crate::spec::draft::load_draft_model;
use crate::spec::DraftSpec;
use crate::tokenizer::DecodeStream;

/// The embedded default target model, relative to the repository root.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Default draft method: chosen by measurement on SmolLM2-135M (docs/speculative-decoding.md).
pub const DEFAULT_DRAFT: &str = "ngram:3";

/// Flags of `lapsd generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Target model GGUF (default: the embedded SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Draft method: none, ngram, ngram:N, self:N (first N target layers) or a draft .gguf path,
    /// optionally with :vocab=N (the draft scores only the first N token ids) and/or :exact.
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: DraftSpec,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Speculation length k (draft tokens per step; 0 = plain decoding).
    #[arg(short = 'k', long = "speculation-length", default_value_t = 4)]
    pub k: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus (top-p) mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
}

/// Flags of `lapsd calibrate`.
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// Target model GGUF (default: the embedded SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Draft method whose cost is measured (none, ngram[:N], self:N or a draft .gguf path with
    /// optional :vocab=N and :exact).
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: DraftSpec,
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
    #[arg(long, conflicts_with_all = ["model", "draft"])]
    pub from_step_log: Option<PathBuf>,
}

/// Resolves the target model path: the flag, else the embedded default relative to the current
/// directory, then to the executable's `../../` (i.e. the repository root for `target/*/lapsd`).
pub fn resolve_model(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        if !path.is_file() {
            bail!("model file {} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from(DEFAULT_MODEL)];
    if let Some(root) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    {
        candidates.push(root.join(DEFAULT_MODEL));
    }
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!("the default model {DEFAULT_MODEL} is missing: run scripts/fetch-models.sh (or pass --model PATH)")
    })
}

/// `lapsd generate`.
pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let model_path = resolve_model(args.model.as_deref())?;
    let load_start = Instant::now();
    let mut engine = SdEngine::load(EngineConfig {
        model_path: model_path.clone(),
        draft: args.draft.clone(),
        speculation_length: args.k,
    })
    .with_context(|| format!("loading {}", model_path.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();
    let (prompt_text, add_special) = if args.chat {
        let template = ChatTemplate::for_model(engine.info(), engine.tokenizer());
        (
            template.render(&[ChatMessage::user(args.prompt.clone())], true)?,
            false,
        )
    } else {
        (args.prompt.clone(), true)
    };
    let prompt_ids = engine.tokenizer().encode(&prompt_text, add_special)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        logit_adjustments: Default::default(),
        logprobs: None,
    };
    engine.add_sequence(0, prompt_ids.clone(), params)?;

    let mut stdout = std::io::stdout().lock();
    let mut stream = DecodeStream::new();
    let mut generated = 0usize;
    let start = Instant::now();
    let mut first_token_s = None;
    let finish = loop {
        let out = engine.step(&[(0, args.k)])?.remove(0);
        if first_token_s.is_none() {
            first_token_s = Some(start.elapsed().as_secs_f64());
        }
        for &id in &out.new_tokens {
            write!(stdout, "{}", stream.push(engine.tokenizer(), id)?)?;
        }
        stdout.flush()?;
        generated += out.new_tokens.len();
        if let Some(finish) = out.finished {
            break finish;
        }
    };
    let total_s = start.elapsed().as_secs_f64();
    let ttft_s = first_token_s.unwrap_or(total_s);
    let stats = engine.stats(0).unwrap_or_default();
    writeln!(stdout)?;
    writeln!(stdout, "---")?;
    writeln!(
        stdout,
        "model {} | draft {} | k {} | prompt {} tokens | load {:.2} s",
        engine.info().name,
        args.draft,
        args.k,
        prompt_ids.len(),
        load_s
    )?;
    let decode_s = (total_s - ttft_s).max(1e-9);
    writeln!(
        stdout,
        "generated {generated} tokens in {total_s:.2} s ({:.1} tokens/s overall; first token {:.0} ms, then {:.1} tokens/s); finish: {}",
        generated as f64 / total_s.max(1e-9),
        ttft_s * 1e3,
        generated.saturating_sub(1) as f64 / decode_s,
        match finish {
            SeqFinish::Eos => "eos",
            SeqFinish::Length => "length",
        }
    )?;
    match stats.acceptance_rate() {
        Some(rate) => writeln!(
            stdout,
            "SD steps {} | drafted {} | accepted {} | acceptance rate {:.3} | mean accepted length {:.2} tokens/step",
            stats.sd_steps, stats.drafted_tokens, stats.accepted_tokens, rate, stats.mean_accepted_length
        )?,
        None => writeln!(stdout, "no draft tokens (plain decoding)")?,
    }
    Ok(())
}

/// Context text for calibration: code, so n-gram drafting sees realistic repetition.
const CALIBRATION_TEXT: &str = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n";

/// `lapsd calibrate --from-step-log`: least squares over the served steps
/// (`lapsd_core::fit_served_steps`).
fn calibrate_from_step_log(log: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut steps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let step: lapsd_core::StepObservation = serde_json::from_str(line)
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
    let profile = lapsd_core::cost::CostProfile {
        max_batch: None,
        model: format!("served steps of {}", log.display()),
        draft: "as served".into(),
        cost,
        samples: Vec::new(),
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

fn print_cost(cost: &lapsd_core::LinearCost) {
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
    let model_path = resolve_model(args.model.as_deref())?;
    let (target, tokenizer) = Model::load_with_tokenizer(&model_path)
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
    let (samples, prefill_samples, cost) = calibrate(&target, &drafter, &plan, || bar.inc(1))?;
    bar.finish();
    let profile = CostProfile {
        model: model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        draft: args.draft.to_string(),
        cost,
        samples,
        prefill_samples,
    };
    let json = serde_json::to_string_pretty(&profile)?;
    std::fs::write(&args.out, json + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    print_cost(&cost);
    Ok(())
}
