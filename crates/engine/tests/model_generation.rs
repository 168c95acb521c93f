//! Greedy generation on the real SmolLM2-135M-Instruct weights is coherent (plain and chat prompts).
mod spec_common;
use spec_common::model_path;

use lapsd_engine::{KvCache, Model, SeqForward, Tokenizer};

fn argmax_last(logits: &candle_core::Tensor) -> u32 {
    let rows = logits
        .to_vec2::<f32>()
        .expect("logits are [rows, vocab] f32");
    let last = rows.last().expect("at least one row");
    let mut best = 0;
    for (i, v) in last.iter().enumerate() {
        if *v > last[best] {
            best = i;
        }
    }
    best as u32
}

fn greedy(model: &Model, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut cache: KvCache = model.new_cache();
    let mut out = Vec::new();
    let mut next = prompt.to_vec();
    for _ in 0..max_new {
        let logits = model
            .forward_batch(&mut [SeqForward {
                tokens: &next,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        let tok = argmax_last(&logits[0]);
        if model.info().eos_token_ids.contains(&tok) {
            break;
        }
        out.push(tok);
        next = vec![tok];
    }
    out
}

fn load() -> (Model, Tokenizer) {
    Model::load_with_tokenizer(&model_path()).expect("the embedded model loads")
}

#[test]
fn greedy_completion_names_paris() {
    let (model, tok) = load();
    let prompt = tok.encode("The capital of France is", true).unwrap();
    let text = tok.decode(&greedy(&model, &prompt, 12)).unwrap();
    assert!(text.contains("Paris"), "completion was {text:?}");
}

#[test]
fn greedy_chat_answer_is_on_topic() {
    let (model, tok) = load();
    // (With the template's default system prompt this 135M model rambles about French landmarks;
    // candle-transformers' quantized llama gives the same answer, so the question is asked bare.)
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(prompt, true).unwrap();
    let text = tok.decode(&greedy(&model, &ids, 24)).unwrap();
    assert!(text.contains("Paris"), "answer was {text:?}");
}
