//! How far each `--weights` mode's logits (and those of the f32 prompt path) are from an f64 evaluation of the GGUF file's own
//! weights (`model::reference`), on the prompt path (one forward of the whole prompt) and on the
//! generated-token path (one token per forward), for a few prompts. Prints a Markdown table.
//!
//! ```sh
//! cargo run --release -p lapsd-engine --example logit_distance [-- MODEL.gguf]
//! ```
//! Default model: $LAPSD_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf in the checkout.
//! The reference holds every weight as f64 (8 bytes per parameter).
use std::path::PathBuf;

use lapsd_engine::model::reference::ReferenceModel;
use lapsd_engine::{LoadOptions, Model, SeqForward, Tokenizer, WeightMode};

const PROMPTS: [&str; 3] = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nclass Stack:\n    def __init__(self):\n",
    "The quick brown fox jumps over the lazy dog. Speculative decoding lets a small draft model propose several tokens that the large model then checks in one pass, so",
    "<|im_start|>user\nI am choosing a language for a command-line tool that parses large log files. What are three good reasons to learn Rust for it, and one reason not to?<|im_end|>\n<|im_start|>assistant\n",
];
/// Positions compared per prompt.
const POSITIONS: usize = 32;

/// Distances of one (mode, path) over all compared positions.
#[derive(Default)]
struct Distance {
    /// Sum over positions of RMS(engine - reference) / std(reference logits).
    relative_rms: f64,
    /// Largest |engine - reference| / std(reference logits).
    relative_max: f64,
    /// Positions whose most likely token is the reference's.
    top1_agree: usize,
    /// Sum over positions of KL(reference softmax || engine softmax), nats.
    kl: f64,
    positions: usize,
}

impl Distance {
    fn add(&mut self, engine: &[f32], reference: &[f64]) {
        let n = reference.len() as f64;
        let mean = reference.iter().sum::<f64>() / n;
        let std = (reference.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let mut square = 0.0;
        for (e, r) in engine.iter().zip(reference) {
            let d = f64::from(*e) - r;
            square += d * d;
            self.relative_max = self.relative_max.max(d.abs() / std);
        }
        self.relative_rms += (square / n).sqrt() / std;
        let log_softmax = |row: Vec<f64>| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
            row.into_iter().map(|v| v - log_sum).collect::<Vec<_>>()
        };
        let p = log_softmax(reference.to_vec());
        let q = log_softmax(engine.iter().map(|&v| f64::from(v)).collect());
        self.kl += p
            .iter()
            .zip(&q)
            .map(|(lp, lq)| lp.exp() * (lp - lq))
            .sum::<f64>();
        if argmax(engine) == argmax(reference) {
            self.top1_agree += 1;
        }
        self.positions += 1;
    }
}

fn argmax<T: PartialOrd + Copy>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LAPSD_MODEL").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let tokenizer = Tokenizer::from_gguf_file(&path)?;
    let mut prompts = Vec::new();
    for text in PROMPTS {
        let mut ids = tokenizer.encode(text, true)?;
        if ids.len() < POSITIONS {
            return Err(format!("prompt of {} tokens, need {POSITIONS}", ids.len()).into());
        }
        ids.truncate(POSITIONS);
        prompts.push(ids);
    }
    let reference = ReferenceModel::load(&path)?;
    let expected: Vec<Vec<Vec<f64>>> = prompts
        .iter()
        .map(|ids| reference.forward(ids))
        .collect::<Result<_, _>>()?;
    drop(reference);

    println!("model: {}", path.display());
    println!(
        "{} prompts x {POSITIONS} positions; distances relative to the std of the reference's logits at each position\n",
        prompts.len()
    );
    println!(
        "| weights | path | mean relative RMS | max relative | top-1 agreement | mean KL (nats) |"
    );
    println!("|---|---|---|---|---|---|");
    let configurations = [
        (
            "fast".to_string(),
            LoadOptions::for_weights(WeightMode::Fast),
        ),
        (
            "exact".to_string(),
            LoadOptions::for_weights(WeightMode::Exact),
        ),
        (
            "fast, f32 copy kept (`dense_for_own_kernels`)".to_string(),
            LoadOptions {
                dense_for_own_kernels: true,
                ..LoadOptions::for_weights(WeightMode::Fast)
            },
        ),
    ];
    for (mode, options) in &configurations {
        let model = Model::load_with_options(&path, options)?;
        let (mut prompt_path, mut token_path) = (Distance::default(), Distance::default());
        for (ids, want) in prompts.iter().zip(&expected) {
            let mut cache = model.new_cache();
            let logits = model.forward_batch(&mut [SeqForward {
                tokens: ids,
                cache: &mut cache,
            }])?;
            for (got, want) in logits[0].to_vec2::<f32>()?.iter().zip(want) {
                prompt_path.add(got, want);
            }
            let mut cache = model.new_cache();
            for (id, want) in ids.iter().zip(want) {
                let logits = model.forward_batch(&mut [SeqForward {
                    tokens: std::slice::from_ref(id),
                    cache: &mut cache,
                }])?;
                token_path.add(&logits[0].to_vec2::<f32>()?[0], want);
            }
        }
        for (name, d) in [
            ("prompt (one forward)", prompt_path),
            ("generated (one token per forward)", token_path),
        ] {
            let n = d.positions as f64;
            println!(
                "| {mode} | {name} | {:.2e} | {:.2e} | {}/{} | {:.2e} |",
                d.relative_rms / n,
                d.relative_max,
                d.top1_agree,
                d.positions,
                d.kl / n
            );
        }
    }
    Ok(())
}
