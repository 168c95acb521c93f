//! Greedy speculative decoding is lossless on the real SmolLM2-135M-Instruct weights: for a code,
//! a chat and a plain prompt, every draft method (n-gram, self:N, a separate draft model) and
//! k = 1..8, the engine's output is token-for-token the target-only greedy output — batched with
//! different k per sequence, alone, with k changing between steps, with prefills mixed into decode
//! steps, and after `free_kv` + recompute in the middle of generation.

mod spec_common;

use lapsd_engine::engine::SdEngine;
use lapsd_engine::spec::DraftSpec;
use lapsd_engine::Model;
use spec_common::{engine, greedy_params, model_path, prompts, reference_greedy, run_to_end};

const MAX_NEW: usize = 16;

fn references(engine: &SdEngine) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let model = Model::load(&model_path()).expect("the embedded model loads");
    let prompts = prompts(engine.tokenizer(), engine.info());
    let refs = prompts
        .iter()
        .map(|p| reference_greedy(&model, p, MAX_NEW))
        .collect();
    (prompts, refs)
}

/// k = 1..8 as one batch, each sequence with its own k, the prompts taking turns (sequence id
/// `100 * prompt + k`). Kept at 8 sequences so the test runs in tens of seconds on 2 cores.
fn check_batched_every_k(draft: DraftSpec) -> SdEngine {
    let mut engine = engine(draft.clone());
    let (prompts, refs) = references(&engine);
    let mut batch = Vec::new();
    for k in 1..=8 {
        let p = (k - 1) % prompts.len();
        let id = (p * 100 + k) as u64;
        engine
            .add_sequence(id, prompts[p].clone(), greedy_params(MAX_NEW as u32))
            .unwrap();
        batch.push((id, k));
    }
    let out = run_to_end(&mut engine, &batch, |_, _| {});
    for &(id, k) in &batch {
        let p = id as usize / 100;
        assert_eq!(out[&id], refs[p], "draft {draft}, prompt {p}, k={k}");
        let stats = engine.stats(id).expect("stats of a known sequence");
        assert!(stats.accepted_tokens <= stats.drafted_tokens);
        assert!(
            stats.accepted_per_position.windows(2).all(|w| w[0] >= w[1]),
            "{stats:?}"
        );
        let expected_mean = (stats.accepted_tokens + stats.sd_steps) as f64 / stats.sd_steps as f64;
        assert!((stats.mean_accepted_length - expected_mean).abs() < 1e-12);
    }
    engine
}

#[test]
fn ngram_batched_every_k_matches_target_greedy() {
    let engine = check_batched_every_k(DraftSpec::NGram { n: 3 });
    // The code prompt repeats itself: prompt lookup must get some drafts accepted there.
    let accepted: u64 = [1, 4, 7]
        .iter()
        .map(|&k| engine.stats(k).unwrap().accepted_tokens)
        .sum();
    assert!(
        accepted > 0,
        "n-gram drafting never accepted a token on the code prompt"
    );
}

#[test]
fn self_layers_batched_every_k_matches_target_greedy() {
    check_batched_every_k(DraftSpec::SelfLayers { n_layers: 8 });
}

#[test]
fn separate_draft_model_batched_every_k_matches_target_greedy() {
    // The only model here is the target itself, so the "separate" draft model is a second copy
    // of it, run with the target's arithmetic (`:exact`): greedy drafts must then almost always
    // be accepted (same weights, same argmax).
    let engine = check_batched_every_k(DraftSpec::Model {
        path: model_path(),
        head_rows: None,
        pad_q8_0: false,
    });
    let (mut drafted, mut accepted) = (0, 0);
    for k in 1..=8u64 {
        let s = engine.stats((k - 1) % 3 * 100 + k).unwrap();
        drafted += s.drafted_tokens;
        accepted += s.accepted_tokens;
    }
    assert!(drafted > 0);
    let rate = accepted as f64 / drafted as f64;
    assert!(
        rate > 0.95,
        "identical draft model accepted only {accepted}/{drafted}"
    );
}

#[test]
fn draft_model_with_a_cut_head_matches_target_greedy() {
    // The draft scores only the first 2048 of 49152 ids (`:vocab=2048`): it cannot propose the
    // rest, so it is accepted less often, and the output must still be the target's.
    let full = check_batched_every_k(DraftSpec::Model {
        path: model_path(),
        head_rows: None,
        pad_q8_0: false,
    });
    let cut = check_batched_every_k(DraftSpec::Model {
        path: model_path(),
        head_rows: Some(2048),
        pad_q8_0: false,
    });
    let accepted = |engine: &SdEngine| -> u64 {
        (1..=8u64)
            .map(|k| engine.stats((k - 1) % 3 * 100 + k).unwrap().accepted_tokens)
            .sum()
    };
    assert!(
        accepted(&cut) < accepted(&full),
        "a draft that cannot name most ids was accepted as often ({} vs {})",
        accepted(&cut),
        accepted(&full)
    );
}

#[test]
fn draft_model_with_padded_fast_weights_matches_target_greedy() {
    // The default for a draft model: its Q8_0 weights padded for candle's faster kernel, which
    // rounds differently from the target's. Only acceptance may change, never the output.
    let engine = check_batched_every_k(DraftSpec::Model {
        path: model_path(),
        head_rows: None,
        pad_q8_0: true,
    });
    let drafted: u64 = (1..=8u64)
        .map(|k| engine.stats((k - 1) % 3 * 100 + k).unwrap().drafted_tokens)
        .sum();
    assert!(drafted > 0);
}

#[test]
fn alone_changing_k_and_staggered_prefills_match_target_greedy() {
    let mut engine = engine(DraftSpec::SelfLayers { n_layers: 8 });
    let (prompts, refs) = references(&engine);
    // Alone: one sequence per step, k changing every step (0 = plain decoding; the draft cache
    // lags and must catch up).
    engine
        .add_sequence(1, prompts[0].clone(), greedy_params(MAX_NEW as u32))
        .unwrap();
    let mut got = Vec::new();
    let mut step = 0usize;
    loop {
        let k = [3, 0, 1, 8, 0, 0, 5, 2][step % 8];
        let o = engine.step(&[(1, k)]).unwrap().remove(0);
        assert_eq!(o.prefilled, step == 0);
        got.extend(o.new_tokens);
        step += 1;
        if o.finished.is_some() {
            break;
        }
    }
    assert_eq!(got, refs[0], "alone with changing k");
    // Staggered: sequence 2 starts, sequence 3 is prefilled while 2 decodes, then 4 joins.
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); 3];
    let mut live: Vec<(u64, usize)> = Vec::new();
    for step in 0..200usize {
        if let Some(prompt) = prompts.get(step) {
            let id = 2 + step as u64;
            engine
                .add_sequence(id, prompt.clone(), greedy_params(MAX_NEW as u32))
                .unwrap();
            live.push((id, 2 + 2 * step));
        }
        if live.is_empty() {
            break;
        }
        for o in engine.step(&live).unwrap() {
            outs[(o.id - 2) as usize].extend(o.new_tokens);
            if o.finished.is_some() {
                live.retain(|&(id, _)| id != o.id);
            }
        }
    }
    assert_eq!(outs, refs, "staggered prefills");
}

#[test]
fn free_kv_and_recompute_mid_generation_matches_target_greedy() {
    for draft in [
        DraftSpec::NGram { n: 3 },
        DraftSpec::SelfLayers { n_layers: 8 },
    ] {
        let mut engine = engine(draft.clone());
        let (prompts, refs) = references(&engine);
        let batch: Vec<(u64, usize)> = (0..3).map(|p| (p as u64, 2 + p)).collect();
        for &(id, _) in &batch {
            engine
                .add_sequence(
                    id,
                    prompts[id as usize].clone(),
                    greedy_params(MAX_NEW as u32),
                )
                .unwrap();
        }
        let out = run_to_end(&mut engine, &batch, |step, engine| {
            // Preempt sequence 0 after step 2 and everyone after step 4.
            let victims: &[u64] = match step {
                2 => &[0],
                4 => &[0, 1, 2],
                _ => &[],
            };
            for &id in victims {
                engine.free_kv(id).unwrap();
                assert_eq!(engine.kv_tokens(id), 0);
            }
        });
        for &(id, _) in &batch {
            assert_eq!(
                out[&id], refs[id as usize],
                "draft {draft}, prompt {id} after free_kv"
            );
        }
    }
}
