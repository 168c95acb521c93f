//! `--weights exact|fast` on the real SmolLM2-135M-Instruct (Q4_1): what each mode computes,
//! checked against each other and against the f64 yardstick (`model::reference`), which shares
//! no code with the engine's forward. The measured distances are in docs/speculative-decoding.md
//! ("Exact or fast weights"; `cargo run --release -p lapsd-engine --example logit_distance`).
mod spec_common;
use spec_common::model_path;

use std::sync::OnceLock;

use lapsd_engine::model::reference::ReferenceModel;
use lapsd_engine::{LoadOptions, Model, SeqForward, Tokenizer, WeightMode};

const PROMPT: &str = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n";

fn tokens() -> Vec<u32> {
    static TOKENS: OnceLock<Vec<u32>> = OnceLock::new();
    TOKENS
        .get_or_init(|| {
            let tokenizer = Tokenizer::from_gguf_file(&model_path()).expect("tokenizer");
            let ids = tokenizer.encode(PROMPT, true).expect("encodes");
            assert!(ids.len() >= 24, "the prompt has {} tokens", ids.len());
            ids[..24].to_vec()
        })
        .clone()
}

fn load(options: &LoadOptions) -> Model {
    Model::load_with_options(&model_path(), options).expect("the embedded model loads")
}

/// Logits of every position from one forward of the whole prompt.
fn in_one_forward(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let logits = model
        .forward_batch(&mut [SeqForward {
            tokens,
            cache: &mut cache,
        }])
        .expect("forward");
    logits[0].to_vec2::<f32>().expect("f32 rows")
}

/// Logits of every position, one token per forward (as generated tokens are run).
fn one_by_one(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    tokens
        .iter()
        .map(|token| {
            let logits = model
                .forward_batch(&mut [SeqForward {
                    tokens: std::slice::from_ref(token),
                    cache: &mut cache,
                }])
                .expect("forward");
            logits[0].to_vec2::<f32>().expect("f32 rows").remove(0)
        })
        .collect()
}

/// Largest |a - b| over all positions, over the largest |logit| of `b`.
fn relative_max_diff(a: &[Vec<f32>], b: &[Vec<f64>]) -> f64 {
    let scale = b.iter().flatten().fold(1.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f64, |m, (x, y)| m.max((f64::from(*x) - y).abs()));
    diff / scale
}

fn widen(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
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

#[test]
fn exact_weights_run_prompt_and_generated_positions_alike() {
    let tokens = tokens();
    // Exact: a 24-token prompt (which the f32 prompt path would take) and the same tokens run
    // one at a time take the same quantized kernels, row for row.
    let exact = load(&LoadOptions::for_weights(WeightMode::Exact));
    let prompt = in_one_forward(&exact, &tokens);
    let decoded = one_by_one(&exact, &tokens);
    let exact_gap = relative_max_diff(&prompt, &widen(&decoded));
    assert!(exact_gap <= 1e-5, "exact: prompt vs one by one {exact_gap}");
    // With the f32 copy kept for the own kernels' weights, the prompt takes it and the
    // one-by-one rows the quantized weights, which round differently: the comparison above
    // would catch a mode that mixed them.
    let with_f32_prompt_path = load(&LoadOptions {
        dense_for_own_kernels: true,
        ..LoadOptions::for_weights(WeightMode::Fast)
    });
    let f32_gap = relative_max_diff(
        &in_one_forward(&with_f32_prompt_path, &tokens),
        &widen(&one_by_one(&with_f32_prompt_path, &tokens)),
    );
    assert!(
        f32_gap > 1e-3,
        "f32 prompt path: prompt vs one by one {f32_gap}"
    );
    // Fast mode on a Q4_1 file keeps no f32 copy (the own kernels take prompts faster), so its
    // prompt rows are exact mode's.
    let fast = load(&LoadOptions::for_weights(WeightMode::Fast));
    let fast_prompt = in_one_forward(&fast, &tokens);
    assert_eq!(
        relative_max_diff(&fast_prompt, &widen(&prompt)),
        0.0,
        "fast vs exact prompt"
    );
}

#[test]
fn exact_weights_keep_the_files_quantized_values() {
    let tokens = tokens();
    let exact = one_by_one(&load(&LoadOptions::for_weights(WeightMode::Exact)), &tokens);
    // The same quantized path with Q4_1 re-quantized to Q8_0: if exact mode re-quantized too,
    // the two would agree bit for bit.
    let requantized = load(&LoadOptions {
        requantize_all_to_q8_0: true,
        ..LoadOptions::for_weights(WeightMode::Exact)
    });
    let gap = relative_max_diff(&exact, &widen(&one_by_one(&requantized, &tokens)));
    assert!(gap > 1e-4, "exact vs re-quantized: {gap}");
}

#[test]
fn the_f64_reference_agrees_with_the_f32_prompt_path() {
    // The f32 prompt path multiplies the file's weights, dequantized to f32, in f32; the
    // reference does the same in f64 with code of its own. They differ by f32 rounding only
    // (measured ~1e-5 of the largest logit), so a wrong RoPE pairing, norm or head in either
    // would show at once.
    let tokens = tokens();
    let reference = ReferenceModel::load(&model_path())
        .expect("the reference loads")
        .forward(&tokens)
        .expect("reference forward");
    let f32_path = load(&LoadOptions {
        dense_for_own_kernels: true,
        ..LoadOptions::for_weights(WeightMode::Fast)
    });
    let prompt = in_one_forward(&f32_path, &tokens);
    let gap = relative_max_diff(&prompt, &reference);
    assert!(gap <= 1e-3, "f32 prompt path vs f64 reference: {gap}");
    for (i, (a, b)) in prompt.iter().zip(&reference).enumerate() {
        assert_eq!(argmax(a), argmax(b), "position {i}");
    }
}
