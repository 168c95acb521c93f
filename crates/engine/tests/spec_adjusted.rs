//! Logit bias and repetition penalties keep greedy speculative decoding lossless: on the real
//! SmolLM2-135M-Instruct weights, the engine's output with n-gram and self-speculative drafting
//! (k = 1..4) is token-for-token what target-only greedy decoding with the same adjustments gives,
//! the reference being written straight on `Model`. A banned token never appears. Reported
//! logprobs are the target's own at every emitted position, drafted or not.

mod spec_common;

use lapsd_engine::engine::{SamplingParams, SdEngine};
use lapsd_engine::spec::{argmax, DraftSpec, LogitAdjustments, TokenLogprob};
use lapsd_engine::{Model, SeqForward};
use spec_common::{engine, greedy_params, model_path, prompts, reference_greedy, run_to_end};

const MAX_NEW: usize = 16;

/// Target-only greedy decoding with `adjust` applied to every row, one token per forward.
fn reference_adjusted(model: &Model, prompt: &[u32], adjust: &LogitAdjustments) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut context = prompt.to_vec();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < MAX_NEW {
        let logits = model
            .forward_batch(&mut [SeqForward {
                tokens: &input,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        let rows = logits[0]
            .to_vec2::<f32>()
            .expect("logits are [rows, vocab] f32");
        let mut row = rows.last().expect("one row per token").clone();
        adjust.apply(&mut row, &adjust.counts(&context, prompt.len()));
        let next = argmax(&row);
        if model.info().eos_token_ids.contains(&next) {
            break;
        }
        out.push(next);
        context.push(next);
        input = vec![next];
    }
    out
}

fn params(adjust: &LogitAdjustments) -> SamplingParams {
    SamplingParams {
        logit_adjustments: adjust.clone(),
        ..greedy_params(MAX_NEW as u32)
    }
}

fn check_lossless(engine: &mut SdEngine, adjust: &LogitAdjustments, label: &str) {
    let model = Model::load(&model_path()).expect("the embedded model loads");
    let prompts = prompts(engine.tokenizer(), engine.info());
    let refs: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| reference_adjusted(&model, p, adjust))
        .collect();
    // The adjustments must change something, or this test could not fail.
    let plain: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| reference_greedy(&model, p, MAX_NEW))
        .collect();
    assert_ne!(refs, plain, "{label}: the adjustments change no output");
    let mut batch = Vec::new();
    for k in 1..=4 {
        for (p, prompt) in prompts.iter().enumerate() {
            let id = (p * 100 + k) as u64;
            engine
                .add_sequence(id, prompt.clone(), params(adjust))
                .expect("adds");
            batch.push((id, k));
        }
    }
    let out = run_to_end(engine, &batch, |_, _| {});
    for &(id, k) in &batch {
        let p = id as usize / 100;
        assert_eq!(out[&id], refs[p], "{label}, prompt {p}, k={k}");
    }
}

fn penalties() -> LogitAdjustments {
    LogitAdjustments {
        logit_bias: vec![(13, 2.0)],
        presence_penalty: 0.8,
        frequency_penalty: 0.6,
        repetition_penalty: 1.3,
    }
}

#[test]
fn ngram_drafting_with_penalties_matches_adjusted_target_greedy() {
    let mut engine = engine(DraftSpec::NGram { n: 3 });
    check_lossless(&mut engine, &penalties(), "ngram");
}

#[test]
fn self_drafting_with_penalties_matches_adjusted_target_greedy() {
    let mut engine = engine(DraftSpec::SelfLayers { n_layers: 8 });
    check_lossless(&mut engine, &penalties(), "self:8");
}

#[test]
fn a_token_biased_by_minus_100_never_appears() {
    let model = Model::load(&model_path()).expect("the embedded model loads");
    let mut engine = engine(DraftSpec::NGram { n: 3 });
    let prompts = prompts(engine.tokenizer(), engine.info());
    // The code prompt's greedy continuation repeats tokens, which n-gram drafting proposes.
    let plain = reference_greedy(&model, &prompts[0], MAX_NEW);
    let banned = plain[0];
    let adjust = LogitAdjustments {
        logit_bias: vec![(banned, -100.0)],
        ..LogitAdjustments::default()
    };
    engine
        .add_sequence(1, prompts[0].clone(), params(&adjust))
        .expect("adds");
    let out = run_to_end(&mut engine, &[(1, 4)], |_, _| {});
    assert!(!out[&1].is_empty());
    assert!(
        !out[&1].contains(&banned),
        "token {banned} was banned: {:?}",
        out[&1]
    );
    assert_eq!(out[&1], reference_adjusted(&model, &prompts[0], &adjust));
}

#[test]
fn logprobs_under_speculation_are_the_targets() {
    let model = Model::load(&model_path()).expect("the embedded model loads");
    let mut engine = engine(DraftSpec::NGram { n: 3 });
    let prompt = prompts(engine.tokenizer(), engine.info())[0].clone();
    let params = SamplingParams {
        logprobs: Some(3),
        ..greedy_params(MAX_NEW as u32)
    };
    engine
        .add_sequence(1, prompt.clone(), params)
        .expect("adds");
    let mut tokens = Vec::new();
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    let mut accepted = 0;
    loop {
        let out = engine.step(&[(1, 4)]).expect("steps");
        let out = &out[0];
        assert_eq!(out.logprobs.len(), out.new_tokens.len());
        tokens.extend_from_slice(&out.new_tokens);
        logprobs.extend(out.logprobs.iter().cloned());
        accepted += out.accepted_tokens;
        if out.finished.is_some() {
            break;
        }
    }
    assert!(accepted > 0, "some tokens came from accepted drafts");
    // The reference: one target forward per token over the same context.
    let mut cache = model.new_cache();
    let mut input = prompt;
    for (i, (&token, lp)) in tokens.iter().zip(&logprobs).enumerate() {
        let logits = model
            .forward_batch(&mut [SeqForward {
                tokens: &input,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        let rows = logits[0].to_vec2::<f32>().expect("f32 rows");
        let want = TokenLogprob::from_logits(rows.last().expect("a row"), token, 3);
        assert_eq!(lp.token, token);
        assert!(lp.logprob <= 0.0);
        // Greedy: the emitted token is the most likely one.
        assert_eq!(lp.top[0], (token, lp.logprob), "position {i}");
        assert!(
            (lp.logprob - want.logprob).abs() < 1e-3,
            "position {i}: {} vs {}",
            lp.logprob,
            want.logprob
        );
        assert_eq!(lp.top.len(), 3);
        input = vec![token];
    }
}
