//! `lapsd generate`: one prompt through the speculative-decoding engine, text streamed to stdout,
//! then speed and acceptance. Command glue only: the work is in `lapsd_engine::engine`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use lapsd_engine::chat::{ChatMessage, ChatTemplate};
use lapsd_engine::engine::{EngineConfig, SamplingParams, SdEngine, SeqFinish};
use lapsd_engine::spec::{DraftSpec, DEFAULT_DRAFT};
use lapsd_engine::tokenizer::DecodeStream;
use lapsd_engine::WeightMode;
use lapsd_server::cli::resolve_model_path;

/// Flags of `lapsd generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Target model: a GGUF file or a Hugging Face folder (config.json, tokenizer.json,
    /// *.safetensors). Default: $LAPSD_MODEL, else the embedded SmolLM2-135M-Instruct,
    /// looked for where `lapsd serve` looks for it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Draft method: none, ngram, ngram:N, self:N (first N target layers), a draft .gguf path or
    /// model:PATH (a GGUF file or Hugging Face folder), optionally with :vocab=N (the draft scores
    /// only the first N token ids) and/or :exact.
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: DraftSpec,
    /// Target arithmetic: `fast` (Q5_0/Q5_1/Q8_1 projections re-quantized to Q8_0 at load,
    /// prompts of 16+ tokens through an f32 copy of the weights candle's kernels serve; for
    /// Q8_0/Q4_1/Q4_K/Q6_K files the same as `exact`) or `exact` (the file's own
    /// quantized weights for every position). Measured: docs/speculative-decoding.md, "Exact or
    /// fast weights".
    #[arg(long, default_value = "fast")]
    pub weights: WeightMode,
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

/// `lapsd generate`.
pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let model_path = resolve_model_path(args.model.clone())?;
    let load_start = Instant::now();
    let mut engine = SdEngine::load(EngineConfig {
        model_path: model_path.clone(),
        draft: args.draft.clone(),
        weights: args.weights,
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
