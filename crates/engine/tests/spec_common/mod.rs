//! Shared helpers of the speculative-decoding tests: the embedded model's path, prompts, a
//! target-only greedy reference written directly against `Model`, and a driver for `SdEngine`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use lapsd_engine::chat::{ChatMessage, ChatTemplate};
use lapsd_engine::engine::{EngineConfig, SamplingParams, SdEngine, SeqFinish};
use lapsd_engine::spec::DraftSpec;
use lapsd_engine::{Model, SeqForward, Tokenizer};

pub fn model_path() -> PathBuf {
    let path = std::env::var_os("LAPSD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "model file {} is missing: run scripts/fetch-models.sh (or set LAPSD_MODEL)",
        path.display()
    );
    path
}

pub fn engine(draft: DraftSpec) -> SdEngine {
    SdEngine::load(EngineConfig {
        model_path: model_path(),
        draft,
        weights: lapsd_engine::WeightMode::Fast,
    })
    .expect("the embedded model loads")
}

/// A code prompt (repetitive: n-gram drafting shines), a chat prompt, and a plain-text prompt.
pub fn prompts(tokenizer: &Tokenizer, info: &lapsd_engine::ModelInfo) -> Vec<Vec<u32>> {
    let code = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\ndef factorial(n):\n";
    let chat = ChatTemplate::for_model(info, tokenizer)
        .render(
            &[ChatMessage::user("Give three tips for staying healthy.")],
            true,
        )
        .expect("the model's chat template renders");
    let plain = "The history of the printing press begins";
    [code, chat.as_str(), plain]
        .iter()
        .map(|t| tokenizer.encode(t, false).expect("prompt encodes"))
        .collect()
}

/// Target-only greedy decoding, one token per forward, straight on `Model` (no engine code).
pub fn reference_greedy(model: &Model, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < max_new {
        let logits = model
            .forward_batch(&mut [SeqForward {
                tokens: &input,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        let rows = logits[0]
            .to_vec2::<f32>()
            .expect("logits are [rows, vocab] f32");
        let next = lapsd_engine::spec::argmax(rows.last().expect("one row per token"));
        if model.info().eos_token_ids.contains(&next) {
            break;
        }
        out.push(next);
        input = vec![next];
    }
    out
}

pub fn greedy_params(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        max_tokens,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        logit_adjustments: Default::default(),
        logprobs: None,
    }
}

/// Steps every listed sequence with its own `k` until all finish; returns generated tokens per id.
/// `on_step(step_index, engine)` may free KV caches between steps.
pub fn run_to_end(
    engine: &mut SdEngine,
    batch: &[(u64, usize)],
    mut on_step: impl FnMut(usize, &mut SdEngine),
) -> HashMap<u64, Vec<u32>> {
    let mut out: HashMap<u64, Vec<u32>> = batch.iter().map(|&(id, _)| (id, Vec::new())).collect();
    let mut live: Vec<(u64, usize)> = batch.to_vec();
    let mut step_index = 0;
    while !live.is_empty() {
        let outputs = engine.step(&live).expect("step succeeds");
        assert_eq!(outputs.len(), live.len());
        for o in outputs {
            assert!(o.accepted_tokens <= o.drafted_tokens);
            out.get_mut(&o.id)
                .expect("output for a known id")
                .extend_from_slice(&o.new_tokens);
            if let Some(finish) = o.finished {
                assert!(matches!(finish, SeqFinish::Eos | SeqFinish::Length));
                live.retain(|&(id, _)| id != o.id);
            }
        }
        step_index += 1;
        on_step(step_index, engine);
        assert!(step_index < 10_000, "generation does not terminate");
    }
    out
}
