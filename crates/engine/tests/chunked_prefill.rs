//! Chunked prefill on the real SmolLM2-135M-Instruct weights: a prompt prefilled in chunks gives
//! the logits and the greedy tokens of the same prompt prefilled in one forward.
mod spec_common;
use spec_common::model_path;

use lapsd_engine::engine::{EngineConfig, SamplingParams, SdEngine, StepMember};
use lapsd_engine::spec::DraftSpec;
use lapsd_engine::{Model, SeqForward};

/// A prompt of `n` tokens of ordinary text (the tokenizer's ids for a repeated paragraph).
fn prompt(engine: &SdEngine, n: usize) -> Vec<u32> {
    let text = "The history of the printing press begins in the fifteenth century, when movable \
                type changed how books were made, sold and read across Europe. ";
    let ids = engine
        .tokenizer()
        .encode(&text.repeat(n / 20 + 1), false)
        .expect("encodes");
    ids[..n].to_vec()
}

fn last_row(t: &candle_core::Tensor) -> Vec<f32> {
    let rows = t.to_vec2::<f32>().expect("[rows, vocab] f32");
    rows.last().expect("a row").clone()
}

#[test]
fn chunked_prefill_matches_one_forward() {
    let engine = SdEngine::load(EngineConfig {
        model_path: model_path(),
        draft: DraftSpec::None,
        weights: lapsd_engine::WeightMode::Fast,
    })
    .expect("loads");
    let prompt = prompt(&engine, 300);
    let model = Model::load(&model_path()).expect("loads");

    // Logits of the last prompt position: one forward, then chunks of 64 (the first chunk
    // planned for the whole prompt, as the engine does).
    let mut whole = model.new_cache();
    let one = model
        .forward_batch(&mut [SeqForward {
            tokens: &prompt,
            cache: &mut whole,
        }])
        .expect("forward");
    let want = last_row(&one[0]);
    let mut chunked = model.new_cache();
    chunked.plan_dense_prefix(prompt.len());
    let mut got = Vec::new();
    for chunk in prompt.chunks(64) {
        let out = model
            .forward_batch(&mut [SeqForward {
                tokens: chunk,
                cache: &mut chunked,
            }])
            .expect("forward");
        got = last_row(&out[0]);
    }
    assert_eq!(chunked.len(), prompt.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = want
        .iter()
        .zip(&got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-3 * scale,
        "chunked logits differ by {worst} (scale {scale})"
    );
}

#[test]
fn engine_chunks_yield_no_token_until_the_last_and_then_the_same_greedy_text() {
    let mut engine = SdEngine::load(EngineConfig {
        model_path: model_path(),
        draft: DraftSpec::None,
        weights: lapsd_engine::WeightMode::Fast,
    })
    .expect("loads");
    let prompt = prompt(&engine, 300);
    let params = SamplingParams {
        max_tokens: 24,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    engine
        .add_sequence(1, prompt.clone(), params.clone())
        .expect("adds");
    engine.add_sequence(2, prompt, params).expect("adds");
    // Sequence 1 whole, sequence 2 in chunks of 128: 128, 128, then the last 44 with a token.
    let chunk = |id| StepMember {
        id,
        speculation_length: 0,
        max_prefill_tokens: Some(128),
    };
    for expected_kv in [128, 256] {
        let out = engine.step_members(&[chunk(2)]).expect("step");
        assert!(out[0].new_tokens.is_empty() && out[0].prefill_pending);
        assert!(!out[0].prefilled && out[0].finished.is_none());
        assert_eq!(engine.kv_tokens(2), expected_kv);
    }
    let out = engine
        .step_members(&[
            StepMember {
                id: 1,
                speculation_length: 0,
                max_prefill_tokens: None,
            },
            chunk(2),
        ])
        .expect("step");
    assert!(out.iter().all(|o| o.new_tokens.len() == 1 && o.prefilled));
    assert!(out.iter().all(|o| !o.prefill_pending));
    while engine.generated(1).map_or(0, <[u32]>::len) < 24 {
        engine.step(&[(1, 0), (2, 0)]).expect("step");
    }
    assert_eq!(engine.generated(1), engine.generated(2));
    assert_eq!(engine.generated(2).map(<[u32]>::len), Some(24));
}
