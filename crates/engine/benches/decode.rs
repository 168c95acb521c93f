//! Decode-speed benchmark of the model half of the engine on the embedded SmolLM2-135M-Instruct
//! (target-only greedy decoding, no speculation): batch-1 decode tokens/s, batch-8 aggregate
//! tokens/s and prefill tokens/s (f32 prompt path beside quantized-only), each the median of 3 runs. Run with
//! `cargo bench -p lapsd-engine --bench decode` (release profile); `LAPSD_MODEL` picks another file,
//! `LAPSD_BENCH_TOKENS` the decode length (default 128).
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{IndexOp, Tensor};
use lapsd_engine::{KvCache, LoadOptions, Model, SeqForward, Tokenizer};

const RUNS: usize = 3;
const BATCH: usize = 8;

fn argmax_last(logits: &Tensor) -> u32 {
    let n = logits.dim(0).expect("2-D logits");
    logits
        .i(n - 1)
        .and_then(|r| r.argmax(0))
        .and_then(|t| t.to_scalar::<u32>())
        .expect("argmax of a logits row")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn prefill(model: &Model, prompt: &[u32], cache: &mut KvCache) -> u32 {
    let out = model
        .forward_batch(&mut [SeqForward {
            tokens: prompt,
            cache,
        }])
        .expect("prefill");
    argmax_last(&out[0])
}

/// Decodes `n_tokens` greedily for each prompt as one batch per step; returns tokens/s (all
/// sequences together) for the decode steps only.
fn decode_batch(model: &Model, prompts: &[Vec<u32>], n_tokens: usize) -> f64 {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut next: Vec<u32> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| prefill(model, p, c))
        .collect();
    let start = Instant::now();
    for _ in 0..n_tokens {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut seqs: Vec<SeqForward<'_>> = tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, cache)| SeqForward { tokens: t, cache })
            .collect();
        let out = model.forward_batch(&mut seqs).expect("decode step");
        next = out.iter().map(argmax_last).collect();
    }
    (n_tokens * prompts.len()) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let path = std::env::var_os("LAPSD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let n_tokens: usize = std::env::var("LAPSD_BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let t0 = Instant::now();
    let (model, tok): (Model, Tokenizer) = Model::load_with_tokenizer(&path)
        .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-models.sh first"));
    println!(
        "model {} ({}), loaded in {:.2} s",
        model.info().name,
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    let texts = [
        "The capital of France is",
        "Write a Python function that checks whether a number is prime.",
        "Once upon a time, in a small village by the sea,",
        "Explain the difference between TCP and UDP.",
        "fn fibonacci(n: u64) -> u64 {",
        "List three facts about the Moon:",
        "The best way to learn a new language is",
        "In 1969, the first humans",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t, true).expect("encode"))
        .collect();

    let b1: Vec<f64> = (0..RUNS)
        .map(|_| decode_batch(&model, &prompts[..1], n_tokens))
        .collect();
    println!(
        "batch 1 decode: median {:.1} tok/s  runs {b1:.1?}",
        median(b1.clone())
    );
    let b8: Vec<f64> = (0..RUNS)
        .map(|_| decode_batch(&model, &prompts[..BATCH], n_tokens))
        .collect();
    println!(
        "batch {BATCH} decode aggregate: median {:.1} tok/s  runs {b8:.1?}",
        median(b8.clone())
    );

    // Prefill through the quantized kernels (default for this model's types) and through the
    // f32 prompt path, interleaved run by run so that load drift hits both alike.
    let quantized_only = Model::load_with_options(
        &path,
        &LoadOptions {
            dense_weights_max_bytes: 0,
            ..LoadOptions::default()
        },
    )
    .expect("model loads");
    let model = Model::load_with_options(
        &path,
        &LoadOptions {
            dense_for_own_kernels: true,
            ..LoadOptions::default()
        },
    )
    .expect("model loads");
    for len in [64usize, 256, 512] {
        let long: Vec<u32> = prompts
            .iter()
            .flatten()
            .copied()
            .cycle()
            .take(len)
            .collect();
        let rate = |m: &Model| {
            let mut cache = m.new_cache();
            let start = Instant::now();
            prefill(m, &long, &mut cache);
            long.len() as f64 / start.elapsed().as_secs_f64()
        };
        let (mut f32_path, mut quantized) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            f32_path.push(rate(&model));
            quantized.push(rate(&quantized_only));
        }
        let (a, b) = (median(f32_path.clone()), median(quantized.clone()));
        println!(
            "prefill {len} tokens: f32 prompt path median {a:.1} tok/s {f32_path:.1?}, \
             quantized only {b:.1} tok/s {quantized:.1?}, ratio {:.2}x",
            a / b
        );
    }
}
