//! Sampled speculative decoding on the real SmolLM2 weights: a fixed seed reproduces the output,
//! `max_tokens`, EOS and stop tokens are respected, and engine misuse gives the exact error.
//! (That sampling is *lossless* is shown statistically in `spec_sampling.rs`.)

mod spec_common;

use lapsd_engine::engine::{SamplingParams, SeqFinish};
use lapsd_engine::spec::DraftSpec;
use lapsd_engine::EngineError;
use spec_common::{engine, greedy_params, prompts, run_to_end};

fn sampled(seed: u64, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed,
        max_tokens,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        logit_adjustments: Default::default(),
        logprobs: None,
    }
}

#[test]
fn sampled_sd_is_reproducible_and_respects_max_tokens() {
    for draft in [
        DraftSpec::NGram { n: 3 },
        DraftSpec::SelfLayers { n_layers: 8 },
    ] {
        let mut engine = engine(draft.clone());
        let prompts = prompts(engine.tokenizer(), engine.info());
        // Ids 0/1: same prompt and seed (must agree); id 2: another seed; ids 3..: k = 8 with a
        // budget of 5 tokens (drafts are clamped, output cut exactly at max_tokens or EOS).
        engine
            .add_sequence(0, prompts[1].clone(), sampled(7, 20))
            .unwrap();
        engine
            .add_sequence(1, prompts[1].clone(), sampled(7, 20))
            .unwrap();
        engine
            .add_sequence(2, prompts[1].clone(), sampled(8, 20))
            .unwrap();
        engine
            .add_sequence(3, prompts[0].clone(), sampled(9, 5))
            .unwrap();
        let batch = [(0, 4), (1, 4), (2, 4), (3, 8)];
        let mut finishes = std::collections::HashMap::new();
        let mut out = std::collections::HashMap::<u64, Vec<u32>>::new();
        let mut live = batch.to_vec();
        while !live.is_empty() {
            for o in engine.step(&live).unwrap() {
                assert!(o.accepted_tokens <= o.drafted_tokens);
                out.entry(o.id).or_default().extend(&o.new_tokens);
                if let Some(f) = o.finished {
                    finishes.insert(o.id, f);
                    live.retain(|&(id, _)| id != o.id);
                }
            }
        }
        assert_eq!(out[&0], out[&1], "{draft}: same seed, same output");
        for (id, max) in [(0u64, 20usize), (1, 20), (2, 20), (3, 5)] {
            let n = out[&id].len();
            match finishes[&id] {
                SeqFinish::Length => assert_eq!(n, max, "{draft}: id {id}"),
                SeqFinish::Eos => assert!(n < max, "{draft}: id {id}"),
            }
            let eos = &engine.info().eos_token_ids;
            assert!(
                out[&id].iter().all(|t| !eos.contains(t)),
                "EOS is never emitted"
            );
        }
        // A finished sequence stays finished and holds no KV.
        let again = engine.step(&[(3, 4)]).unwrap().remove(0);
        assert!(again.new_tokens.is_empty());
        assert_eq!(again.finished, Some(finishes[&3]));
        assert_eq!(engine.kv_tokens(3), 0);
    }
}

#[test]
fn stop_token_ids_end_the_sequence_before_the_stop_token() {
    let mut engine = engine(DraftSpec::NGram { n: 3 });
    let prompts = prompts(engine.tokenizer(), engine.info());
    engine
        .add_sequence(0, prompts[0].clone(), greedy_params(12))
        .unwrap();
    let full = run_to_end(&mut engine, &[(0, 4)], |_, _| {})
        .remove(&0)
        .unwrap();
    assert!(
        full.len() >= 6,
        "greedy output too short for the test: {full:?}"
    );
    let stop = full[5];
    let first = full.iter().position(|&t| t == stop).unwrap();
    let mut params = greedy_params(12);
    params.stop_token_ids = vec![stop];
    engine.add_sequence(1, prompts[0].clone(), params).unwrap();
    let mut got = Vec::new();
    let finish = loop {
        let o = engine.step(&[(1, 4)]).unwrap().remove(0);
        got.extend(o.new_tokens);
        if let Some(f) = o.finished {
            break f;
        }
    };
    assert_eq!(finish, SeqFinish::Eos);
    assert_eq!(got, full[..first].to_vec());
}

#[test]
fn misuse_gives_exact_errors() {
    let mut engine = engine(DraftSpec::NGram { n: 3 });
    assert!(matches!(
        engine.step(&[(42, 1)]),
        Err(EngineError::UnknownSequence(42))
    ));
    assert!(matches!(
        engine.free_kv(42),
        Err(EngineError::UnknownSequence(42))
    ));
    assert!(matches!(
        engine.add_sequence(1, vec![u32::MAX], greedy_params(4)),
        Err(EngineError::TokenOutOfRange {
            token_id: u32::MAX,
            ..
        })
    ));
    engine
        .add_sequence(1, vec![1, 2, 3], greedy_params(0))
        .unwrap();
    // max_tokens 0: finished at once, without running the model.
    let o = engine.step(&[(1, 4)]).unwrap().remove(0);
    assert_eq!(
        (o.new_tokens.len(), o.finished, o.prefilled),
        (0, Some(SeqFinish::Length), false)
    );
    assert!(
        engine.step(&[(1, 1), (1, 2)]).is_err(),
        "a sequence twice in one step"
    );
    assert!(
        engine.add_sequence(1, vec![1], greedy_params(4)).is_err(),
        "duplicate id"
    );
    engine.remove(1);
    assert!(engine.stats(1).is_none());
    let err = lapsd_engine::engine::SdEngine::load(lapsd_engine::engine::EngineConfig {
        model_path: spec_common::model_path(),
        draft: DraftSpec::SelfLayers { n_layers: 99 },
        weights: lapsd_engine::WeightMode::Fast,
    })
    .err()
    .expect("self:99 on a 30-layer model fails");
    assert!(
        matches!(
            err,
            EngineError::InvalidLayerCount {
                requested: 99,
                available: 30
            }
        ),
        "{err}"
    );
}

#[test]
fn ignore_eos_generates_exactly_max_tokens_past_the_eos() {
    use lapsd_engine::chat::{ChatMessage, ChatTemplate};
    let mut engine = engine(DraftSpec::NGram { n: 3 });
    let chat = ChatTemplate::for_model(engine.info(), engine.tokenizer())
        .render(
            &[ChatMessage::user("Is the sky blue? Answer with one word.")],
            true,
        )
        .expect("the chat template renders");
    let prompt = engine.tokenizer().encode(&chat, false).unwrap();
    let max_tokens = 48u32;
    engine
        .add_sequence(0, prompt.clone(), greedy_params(max_tokens))
        .unwrap();
    let (plain, plain_finish) = run_one(&mut engine, 0);
    assert_eq!(
        plain_finish,
        SeqFinish::Eos,
        "the test needs a prompt the model ends early: {plain:?}"
    );
    let mut params = greedy_params(max_tokens);
    params.ignore_eos = true;
    engine.add_sequence(1, prompt, params).unwrap();
    let (long, long_finish) = run_one(&mut engine, 1);
    assert_eq!(long_finish, SeqFinish::Length);
    assert_eq!(long.len(), max_tokens as usize);
    assert_eq!(long[..plain.len()], plain[..], "same greedy prefix");
    assert!(
        engine.info().eos_token_ids.contains(&long[plain.len()]),
        "where the plain run stopped, the EOS token is emitted and decoding goes on"
    );
}

fn run_one(engine: &mut lapsd_engine::engine::SdEngine, id: u64) -> (Vec<u32>, SeqFinish) {
    let mut got = Vec::new();
    loop {
        let o = engine.step(&[(id, 4)]).unwrap().remove(0);
        got.extend(o.new_tokens);
        if let Some(f) = o.finished {
            return (got, f);
        }
    }
}
