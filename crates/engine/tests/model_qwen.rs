//! The Qwen2.5-Coder pair (architecture qwen2: attention biases, "halves" RoPE, GQA 14/2 and 12/2,
//! untied LM head). Opt-in because the files are large: `scripts/fetch-models.sh qwen`, then
//! `cargo test -p lapsd-engine --test model_qwen -- --ignored`. Run that way, a missing file fails.
mod spec_common;

use std::path::PathBuf;

use candle_core::{IndexOp, Tensor};
use lapsd_engine::engine::{EngineConfig, SdEngine};
use lapsd_engine::spec::DraftSpec;
use lapsd_engine::{Model, SeqForward};
use spec_common::{greedy_params, run_to_end};

fn path(file: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh qwen",
        path.display()
    );
    path
}

const DRAFT: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const TARGET: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

fn argmax_last(logits: &Tensor) -> u32 {
    let n = logits.dim(0).unwrap();
    logits
        .i(n - 1)
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn greedy_text(file: &str, prompt: &str, max_new: usize) -> String {
    let (model, tok) = Model::load_with_tokenizer(&path(file)).unwrap();
    let mut cache = model.new_cache();
    let mut next = tok.encode(prompt, true).unwrap();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let logits = model
            .forward_batch(&mut [SeqForward {
                tokens: &next,
                cache: &mut cache,
            }])
            .unwrap();
        let t = argmax_last(&logits[0]);
        if model.info().eos_token_ids.contains(&t) {
            break;
        }
        out.push(t);
        next = vec![t];
    }
    tok.decode(&out).unwrap()
}

#[test]
#[ignore = "needs scripts/fetch-models.sh qwen (1.45 GB)"]
fn qwen_tokenizer_gives_the_reference_ids() {
    for file in [DRAFT, TARGET] {
        let (model, tok) = Model::load_with_tokenizer(&path(file)).unwrap();
        assert_eq!(model.info().architecture, "qwen2");
        assert_eq!(
            tok.encode("Hello, world!", true).unwrap(),
            vec![9707, 11, 1879, 0]
        );
        assert_eq!(tok.token_id("<|im_end|>"), Some(151645));
        assert!(model.info().eos_token_ids.contains(&151645));
        let code = "def add(a, b):\n    return a + b  # 合計\n";
        assert_eq!(tok.decode(&tok.encode(code, true).unwrap()).unwrap(), code);
    }
}

#[test]
#[ignore = "needs scripts/fetch-models.sh qwen (1.45 GB)"]
fn qwen_pair_completes_code_coherently() {
    let prompt = "<|im_start|>user\nWrite a Python function is_even(n) that returns True when n is even.<|im_end|>\n<|im_start|>assistant\n";
    for file in [DRAFT, TARGET] {
        let text = greedy_text(file, prompt, 48);
        assert!(text.contains("def is_even"), "{file}: {text:?}");
        assert!(text.contains("% 2"), "{file}: {text:?}");
    }
}

/// Greedy tokens of `draft` at k = 4 on the 1.5B target, the prompt alone in its batch.
fn sd_greedy_tokens(draft: DraftSpec, prompt: &str, max_tokens: u32) -> Vec<u32> {
    let mut engine = SdEngine::load(EngineConfig {
        model_path: path(TARGET),
        draft,
        weights: lapsd_engine::WeightMode::Fast,
    })
    .unwrap();
    let ids = engine.tokenizer().encode(prompt, false).unwrap();
    engine
        .add_sequence(0, ids, greedy_params(max_tokens))
        .unwrap();
    run_to_end(&mut engine, &[(0, 4)], |_, _| {})
        .remove(&0)
        .unwrap()
}

#[test]
#[ignore = "needs scripts/fetch-models.sh qwen (1.45 GB)"]
fn qwen_pair_greedy_sd_matches_the_target_alone() {
    // 200 tokens of the code prompt: before a single Q6_K row was run as two, target-only
    // decoding (one row) and verification (k + 1 rows) rounded the 1.5B model's Q6_K tensors
    // differently and the two texts parted after ~150 tokens.
    let prompt = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a Python function that checks whether a number is prime.<|im_end|>\n<|im_start|>assistant\n";
    let alone = sd_greedy_tokens(DraftSpec::None, prompt, 200);
    assert!(alone.len() > 150, "only {} tokens", alone.len());
    let draft = path(DRAFT);
    for head_rows in [None, Some(65_536)] {
        let with_draft = sd_greedy_tokens(
            DraftSpec::Model {
                path: draft.clone(),
                head_rows,
                pad_q8_0: true,
            },
            prompt,
            200,
        );
        assert_eq!(with_draft, alone, "draft head {head_rows:?}");
    }
}
