//! Scheduler mechanism tests: admission, KV keep/free preemption, recompute accounting,
//! cancellation and finishing.

use super::*;
use crate::policy::{build_policy, PolicyConfig, PolicyKind};
use crate::testutil::test_cost;

fn scheduler(kind: PolicyKind, max_batch: usize, kv_budget_tokens: u64, k: u32) -> Scheduler {
    let config = SchedulerConfig {
        capacity: Capacity {
            max_batch,
            max_step_tokens: 4096,
            kv_budget_tokens,
        },
        speculation_length: k,
        stability: StabilityRule::default(),
        cost: test_cost(),
    };
    let policy = build_policy(kind, &PolicyConfig::default()).expect("valid default config");
    Scheduler::new(config, policy)
}

/// Results of a step where every draft accepts `accepted` tokens (capped at the draft).
fn fake_results(output: &SchedulerOutput, accepted: u32) -> Vec<StepResult> {
    output
        .batch
        .iter()
        .map(|s| match s.kind {
            StepKind::PrefillChunk { .. } => StepResult {
                id: s.id,
                drafted_tokens: 0,
                accepted_tokens: 0,
                new_tokens: 0,
                finished: None,
            },
            StepKind::Prefill { .. } => StepResult {
                id: s.id,
                drafted_tokens: 0,
                accepted_tokens: 0,
                new_tokens: 1,
                finished: None,
            },
            StepKind::Decode { speculation_length } => {
                let a = accepted.min(speculation_length);
                StepResult {
                    id: s.id,
                    drafted_tokens: speculation_length,
                    accepted_tokens: a,
                    new_tokens: a + 1,
                    finished: None,
                }
            }
        })
        .collect()
}

fn step(s: &mut Scheduler, now_s: f64, accepted: u32) -> (SchedulerOutput, Vec<RequestState>) {
    let out = s.schedule(now_s);
    let results = fake_results(&out, accepted);
    let done = s.update(&out, &results, 0.01, now_s + 0.01);
    (out, done)
}

#[test]
fn never_fits_and_duplicates_are_refused() {
    let mut s = scheduler(PolicyKind::Fcfs, 4, 100, 4);
    assert_eq!(
        s.add_request(RequestSpec::new(1, 0.0, 50, 46), 0.0),
        Err(CoreError::NeverFits {
            id: 1,
            needed_tokens: 101,
            budget_tokens: 100
        })
    );
    assert_eq!(s.add_request(RequestSpec::new(1, 0.0, 50, 45), 0.0), Ok(()));
    assert_eq!(
        s.add_request(RequestSpec::new(1, 0.0, 5, 5), 0.0),
        Err(CoreError::DuplicateRequest { id: 1 })
    );
    assert_eq!(s.len(), 1);
}

#[test]
fn prefill_then_decode_with_capped_speculation_then_length_finish() {
    let mut s = scheduler(PolicyKind::Fcfs, 4, 1000, 4);
    s.add_request(RequestSpec::new(7, 0.0, 10, 8), 0.0).unwrap();
    let (out, done) = step(&mut s, 0.0, 4);
    assert_eq!(
        out.batch,
        vec![ScheduledRequest {
            id: 7,
            kind: StepKind::Prefill { tokens: 10 }
        }]
    );
    assert!(done.is_empty());
    let r = s.request(7).unwrap();
    assert_eq!((r.generated_tokens, r.attained_service_passes), (1, 1));
    assert_eq!(r.first_token_s, Some(0.01));
    assert_eq!(
        s.kv_tokens_in_use(),
        11,
        "after a step a request holds its context"
    );
    // 7 tokens left: full speculation (4) -> 5 tokens, then 2 left -> speculation 1.
    let (out, _) = step(&mut s, 0.1, 4);
    assert_eq!(
        out.batch[0].kind,
        StepKind::Decode {
            speculation_length: 4
        }
    );
    let (out, done) = step(&mut s, 0.2, 4);
    assert_eq!(
        out.batch[0].kind,
        StepKind::Decode {
            speculation_length: 1
        }
    );
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].phase, RequestPhase::Finished(FinishReason::Length));
    assert_eq!(done[0].generated_tokens, 8);
    assert_eq!(done[0].acceptance.sd_steps, 2);
    assert_eq!(done[0].acceptance.accepted_tokens, 5);
    assert!(s.is_empty());
    assert_eq!(s.kv_tokens_in_use(), 0);
    assert!(s.schedule(0.3).is_empty());
}

#[test]
fn preemption_keeps_kv_while_it_fits() {
    let mut s = scheduler(PolicyKind::Las, 1, 100, 4);
    s.add_request(RequestSpec::new(1, 0.0, 40, 40), 0.0)
        .unwrap();
    step(&mut s, 0.0, 0);
    assert_eq!(s.kv_tokens_in_use(), 41);
    s.add_request(RequestSpec::new(2, 0.5, 40, 40), 0.5)
        .unwrap();
    let out = s.schedule(0.5);
    assert_eq!(out.batch[0].id, 2);
    assert_eq!(
        out.preempted,
        vec![Preemption {
            id: 1,
            kind: PreemptKind::KeepKv
        }]
    );
    assert_eq!(
        s.request(1).unwrap().phase,
        RequestPhase::Preempted { kv_resident: true }
    );
    assert_eq!(s.kv_tokens_in_use(), 41 + 45);
    let results = fake_results(&out, 0);
    s.update(&out, &results, 0.01, 0.51);
    // Both have 1 pass now: LAS ties by arrival, request 1 resumes without a prefill.
    let out = s.schedule(0.51);
    assert_eq!(
        out.batch[0],
        ScheduledRequest {
            id: 1,
            kind: StepKind::Decode {
                speculation_length: 4
            }
        }
    );
    assert_eq!(s.request(1).unwrap().recomputes, 0);
    assert_eq!(s.request(1).unwrap().preemptions, 1);
}

#[test]
fn preemption_frees_kv_beyond_the_budget_and_recomputes() {
    let mut s = scheduler(PolicyKind::Las, 1, 100, 4);
    s.add_request(RequestSpec::new(1, 0.0, 40, 40), 0.0)
        .unwrap();
    step(&mut s, 0.0, 0);
    s.add_request(RequestSpec::new(2, 0.5, 55, 40), 0.5)
        .unwrap();
    let out = s.schedule(0.5);
    assert_eq!(out.batch[0].id, 2);
    assert_eq!(
        out.preempted,
        vec![Preemption {
            id: 1,
            kind: PreemptKind::FreeKv
        }]
    );
    assert_eq!(
        s.request(1).unwrap().phase,
        RequestPhase::Preempted { kv_resident: false }
    );
    assert_eq!(s.kv_tokens_in_use(), 60);
    let results = fake_results(&out, 0);
    s.update(&out, &results, 0.01, 0.51);
    let out = s.schedule(0.51);
    // Request 1 resumes (tie at 1 pass, earlier arrival) by recomputing prompt + 1 generated;
    // request 2 must now give up its KV.
    assert_eq!(
        out.batch,
        vec![ScheduledRequest {
            id: 1,
            kind: StepKind::Prefill { tokens: 41 }
        }]
    );
    assert_eq!(
        out.preempted,
        vec![Preemption {
            id: 2,
            kind: PreemptKind::FreeKv
        }]
    );
    assert_eq!(s.request(1).unwrap().recomputes, 1);
    assert!(s.kv_tokens_in_use() <= 100);
}

#[test]
fn cancel_frees_kv_and_forgets_the_request() {
    let mut s = scheduler(PolicyKind::Fcfs, 2, 1000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 30, 50), 0.0)
        .unwrap();
    s.add_request(RequestSpec::new(2, 0.0, 30, 50), 0.0)
        .unwrap();
    step(&mut s, 0.0, 2);
    assert_eq!(s.kv_tokens_in_use(), 62);
    let gone = s.cancel(1, 0.02).expect("known request");
    assert_eq!(gone.phase, RequestPhase::Finished(FinishReason::Cancelled));
    assert_eq!(s.kv_tokens_in_use(), 31);
    assert_eq!(s.running(), &[2]);
    assert_eq!(s.cancel(1, 0.03), None);
    let out = s.schedule(0.03);
    assert_eq!(out.batch.iter().map(|b| b.id).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn stop_from_the_engine_finishes_and_trains_the_predictor() {
    let mut s = scheduler(PolicyKind::Fcfs, 2, 1000, 4).with_predictor(Box::new(
        crate::predictor::OnlineQuantilePredictor::new(77, 16),
    ));
    s.add_request(RequestSpec::new(1, 0.0, 30, 50), 0.0)
        .unwrap();
    assert_eq!(s.request(1).unwrap().spec.predicted_output_tokens, Some(77));
    let out = s.schedule(0.0);
    let results = vec![StepResult {
        id: 1,
        drafted_tokens: 0,
        accepted_tokens: 0,
        new_tokens: 1,
        finished: Some(FinishReason::Stop),
    }];
    let done = s.update(&out, &results, 0.01, 0.01);
    assert_eq!(done[0].phase, RequestPhase::Finished(FinishReason::Stop));
    assert!(s.is_empty());
}

#[test]
fn perceptible_after_a_stable_acceptance_rate() {
    let mut s = scheduler(PolicyKind::Fcfs, 1, 10_000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 10, 1000), 0.0)
        .unwrap();
    let mut t = 0.0;
    let rule = StabilityRule::default();
    for _ in 0..=rule.min_steps {
        step(&mut s, t, 2);
        t += 0.01;
    }
    let r = s.request(1).unwrap();
    assert_eq!(r.acceptance.sd_steps, rule.min_steps);
    assert!(r.perceptible);
    assert!(r.perceptible_at_s.is_some());
}

#[test]
fn kv_is_freed_from_the_victim_the_policy_names_and_no_more() {
    let mut s = scheduler(PolicyKind::Las, 1, 100, 4);
    s.add_request(RequestSpec::new(1, 0.0, 20, 20), 0.0)
        .unwrap();
    step(&mut s, 0.0, 0);
    s.add_request(RequestSpec::new(2, 1.0, 20, 20), 1.0)
        .unwrap();
    let (out, _) = step(&mut s, 1.0, 0);
    assert_eq!(
        out.preempted,
        vec![Preemption {
            id: 1,
            kind: PreemptKind::KeepKv
        }]
    );
    assert_eq!(s.kv_tokens_in_use(), 42);
    s.add_request(RequestSpec::new(3, 2.0, 60, 30), 2.0)
        .unwrap();
    let out = s.schedule(2.0);
    assert_eq!(out.batch[0].id, 3);
    // 65 needed, 42 held by others, budget 100: one eviction suffices; the default victim is
    // the newest arrival (vLLM recomputes the newest).
    assert_eq!(
        out.preempted,
        vec![Preemption {
            id: 2,
            kind: PreemptKind::FreeKv
        }]
    );
    assert!(s.kv().is_resident(1));
    assert!(!s.kv().is_resident(2));
    assert_eq!(s.kv_tokens_in_use(), 21 + 65);
}

#[test]
fn results_in_any_order_reach_their_request() {
    let mut s = scheduler(PolicyKind::Fcfs, 2, 1000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 10, 50), 0.0)
        .unwrap();
    s.add_request(RequestSpec::new(2, 0.1, 10, 50), 0.1)
        .unwrap();
    step(&mut s, 0.1, 0);
    let out = s.schedule(0.2);
    assert_eq!(
        out.batch.iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let mut results = fake_results(&out, 3);
    results[1].accepted_tokens = 1;
    results[1].new_tokens = 2;
    results.reverse();
    s.update(&out, &results, 0.01, 0.21);
    assert_eq!(s.request(1).unwrap().generated_tokens, 1 + 4);
    assert_eq!(s.request(2).unwrap().generated_tokens, 1 + 2);
    assert_eq!(s.request(2).unwrap().acceptance.accepted_tokens, 1);
}

fn scheduler_with_step_tokens(kind: PolicyKind, max_step_tokens: u64, k: u32) -> Scheduler {
    let mut s = scheduler(kind, 8, 100_000, k);
    s.config.capacity.max_step_tokens = max_step_tokens;
    s
}

#[test]
fn a_prompt_longer_than_the_step_budget_is_prefilled_in_chunks() {
    let mut s = scheduler_with_step_tokens(PolicyKind::Fcfs, 1000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 2500, 8), 0.0)
        .unwrap();
    let mut kinds = Vec::new();
    let mut held = Vec::new();
    for i in 0..4 {
        let (out, done) = step(&mut s, f64::from(i), 4);
        assert!(done.is_empty());
        kinds.push(out.batch[0].kind);
        held.push(s.kv().held_tokens(1));
    }
    assert_eq!(
        kinds,
        vec![
            StepKind::PrefillChunk { tokens: 1000 },
            StepKind::PrefillChunk { tokens: 1000 },
            StepKind::Prefill { tokens: 500 },
            StepKind::Decode {
                speculation_length: 4
            },
        ]
    );
    // Between chunks it holds what was computed; after the last, the context (prompt + the
    // first token); after the decode step, the context again.
    assert_eq!(held, vec![1000, 2000, 2501, 2506]);
    let r = s.request(1).expect("still running");
    assert_eq!(r.recomputes, 0);
    assert_eq!(r.first_scheduled_s, Some(0.0));
    // The first token came with the last chunk (its step ended at 2.01), not before.
    assert_eq!(r.first_token_s, Some(2.01));
}

#[test]
fn chunks_run_between_the_decode_steps_of_requests_ranked_above() {
    let mut s = scheduler_with_step_tokens(PolicyKind::Fcfs, 1000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 10, 9), 0.0).unwrap();
    step(&mut s, 0.0, 4);
    s.add_request(RequestSpec::new(2, 0.5, 3000, 8), 0.5)
        .unwrap();
    // Request 1 ranks first: its decode steps run without a chunk riding along.
    let (out, _) = step(&mut s, 1.0, 4);
    assert_eq!(
        out.batch,
        vec![ScheduledRequest {
            id: 1,
            kind: StepKind::Decode {
                speculation_length: 4
            }
        }]
    );
    let (out, done) = step(&mut s, 2.0, 4);
    assert_eq!(out.batch.len(), 1);
    assert_eq!(done.len(), 1, "request 1 done: 1 + 5 + 3 tokens");
    let (out, _) = step(&mut s, 3.0, 4);
    assert_eq!(out.batch[0].kind, StepKind::PrefillChunk { tokens: 1000 });
    // Ranked below the chunk, a new request would fit only in the room it leaves (none).
    s.add_request(RequestSpec::new(3, 3.5, 10, 8), 3.5).unwrap();
    let (out, _) = step(&mut s, 4.0, 4);
    assert_eq!(out.batch.len(), 1);
    assert_eq!(s.request(2).map(|r| r.prefill_progress_tokens), Some(2000));
}

#[test]
fn a_prompt_that_fits_one_step_waits_for_room_instead_of_being_cut() {
    let mut s = scheduler_with_step_tokens(PolicyKind::Fcfs, 1000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 10, 100), 0.0)
        .unwrap();
    step(&mut s, 0.0, 4);
    s.add_request(RequestSpec::new(2, 0.5, 998, 8), 0.5)
        .unwrap();
    let (out, _) = step(&mut s, 1.0, 4);
    assert_eq!(
        out.batch.len(),
        1,
        "998 + 5 tokens exceed the budget: no chunk"
    );
    s.cancel(1, 1.5);
    let (out, _) = step(&mut s, 2.0, 4);
    assert_eq!(out.batch[0].kind, StepKind::Prefill { tokens: 998 });
}

#[test]
fn cancelling_during_a_chunked_prefill_frees_its_kv() {
    let mut s = scheduler_with_step_tokens(PolicyKind::Fcfs, 1000, 4);
    s.add_request(RequestSpec::new(1, 0.0, 5000, 8), 0.0)
        .unwrap();
    step(&mut s, 0.0, 4);
    step(&mut s, 1.0, 4);
    assert_eq!(s.kv_tokens_in_use(), 2000);
    let state = s.cancel(1, 2.0).expect("known");
    assert_eq!(state.phase, RequestPhase::Finished(FinishReason::Cancelled));
    assert_eq!(s.kv_tokens_in_use(), 0);
    assert!(s.is_empty());
}

#[test]
fn a_chunked_prefill_under_way_keeps_its_kv_and_runs_alone_of_its_kind() {
    // Room for one long request at a time. LAS alternates between equals, which would throw
    // away the chunks of each in turn if a chunked prefill could be evicted.
    let mut s = scheduler(PolicyKind::Las, 1, 3000, 0);
    s.config.capacity.max_step_tokens = 1000;
    s.add_request(RequestSpec::new(1, 0.0, 2500, 4), 0.0)
        .unwrap();
    step(&mut s, 0.0, 0); // request 1: chunk 1
    s.add_request(RequestSpec::new(2, 0.5, 2500, 4), 0.5)
        .unwrap();
    let mut finished = Vec::new();
    let mut order = Vec::new();
    for i in 1..40 {
        let (out, done) = step(&mut s, f64::from(i), 0);
        assert!(
            out.preempted.iter().all(|p| p.kind == PreemptKind::KeepKv
                || s.request(p.id)
                    .is_none_or(|r| r.prefill_progress_tokens == 0)),
            "no chunked prefill loses its KV"
        );
        assert!(s.kv_tokens_in_use() <= 3000);
        order.extend(out.batch.iter().map(|b| (b.id, b.kind)));
        finished.extend(done.iter().map(RequestState::id));
        if s.is_empty() {
            break;
        }
    }
    // Request 2 could not start its own chunked prefill while request 1's was under way.
    assert_eq!(
        &order[..2],
        &[
            (1, StepKind::PrefillChunk { tokens: 1000 }),
            (1, StepKind::Prefill { tokens: 500 }),
        ]
    );
    finished.sort_unstable();
    assert_eq!(finished, vec![1, 2]);
}

/// FCFS, batch 4, speculation length `k` in `mode`, costs `cost`, and one request (10 prompt
/// tokens, 400 to generate) admitted at time 0.
fn one_request_scheduler(mode: SpeculationMode, cost: LinearCost, k: u32) -> Scheduler {
    let mut s = scheduler(PolicyKind::Fcfs, 4, 100_000, k).with_speculation_mode(mode);
    s.config.cost = cost;
    s.add_request(RequestSpec::new(1, 0.0, 10, 400), 0.0)
        .unwrap();
    s
}

/// Auto speculation: a request whose drafts are all accepted comes to draft the longest length;
/// one whose drafts are all rejected drafts while its optimistic estimate says a draft might pay,
/// then stops for good; fixed mode drafts the configured length whatever happens.
#[test]
fn auto_speculation_follows_each_requests_acceptance() {
    // CPU-like costs: every verified position costs as much as the step's fixed part.
    let cost = LinearCost {
        draft_base_s: 0.0,
        draft_per_seq_s: 0.0,
        verify_base_s: 0.005,
        verify_per_token_s: 0.005,
        prefill_base_s: 0.0,
        prefill_per_token_s: 0.005,
    };
    let run = |mode: SpeculationMode, accepted: u32| {
        let mut s = one_request_scheduler(mode, cost, 4);
        let mut lengths = Vec::new();
        let mut now = 0.0;
        for _ in 0..40 {
            let (out, _) = step(&mut s, now, accepted);
            now += 0.1;
            if let StepKind::Decode { speculation_length } = out.batch[0].kind {
                lengths.push(speculation_length);
            }
        }
        lengths
    };
    // All accepted: k grows with the estimate (from the prior's 0.5) to the longest.
    let good = run(SpeculationMode::Auto, 4);
    assert!(good.windows(2).all(|w| w[0] <= w[1]), "{good:?}");
    assert!(good[good.len() - 10..].iter().all(|&k| k == 4), "{good:?}");
    let bad = run(SpeculationMode::Auto, 0);
    // With no acceptance a step tries one position; a few rejections end the optimism.
    let drafting = bad.iter().take_while(|&&k| k > 0).count();
    assert!((1..=8).contains(&drafting), "{bad:?}");
    assert!(bad[drafting..].iter().all(|&k| k == 0), "{bad:?}");
    let fixed = run(SpeculationMode::Fixed, 0);
    assert!(fixed.iter().all(|&k| k == 4), "{fixed:?}");
}

/// Auto speculation: where a verified position costs nearly a whole decode step (one CPU core),
/// even the optimistic estimate of a new request cannot pay for a draft, so it never drafts
/// (each request used to draft one token per step until it had tried 16 positions).
#[test]
fn auto_speculation_does_not_draft_where_no_acceptance_could_pay() {
    let cost = LinearCost {
        draft_base_s: 0.0,
        draft_per_seq_s: 0.0,
        verify_base_s: 0.001,
        verify_per_token_s: 0.009,
        prefill_base_s: 0.0,
        prefill_per_token_s: 0.005,
    };
    let mut s = one_request_scheduler(SpeculationMode::Auto, cost, 4);
    let mut now = 0.0;
    for _ in 0..20 {
        let (out, _) = step(&mut s, now, 0);
        now += 0.1;
        for scheduled in &out.batch {
            if let StepKind::Decode { speculation_length } = scheduled.kind {
                assert_eq!(speculation_length, 0, "{:?}", out.batch);
            }
        }
    }
}

/// Auto speculation: a member's length does not depend on a prefill sharing its step. The
/// prefill's time is spent whatever the members draft; counted as work the drafts amortize, a
/// long prompt made every member draft its longest and delayed the prompt's first token.
#[test]
fn auto_speculation_ignores_the_prefills_in_the_step() {
    let cost = LinearCost {
        draft_base_s: 0.001,
        draft_per_seq_s: 0.0,
        verify_base_s: 0.005,
        verify_per_token_s: 0.005,
        prefill_base_s: 0.0,
        prefill_per_token_s: 0.005,
    };
    let scheduler = || one_request_scheduler(SpeculationMode::Auto, cost, 6);
    let (mut alone, mut shared) = (scheduler(), scheduler());
    let mut now = 0.0;
    // Half the drafts accepted: a middling estimate, so the chosen length is neither 0 nor 6.
    for _ in 0..30 {
        step(&mut alone, now, 1);
        step(&mut shared, now, 1);
        now += 0.1;
    }
    shared
        .add_request(RequestSpec::new(2, now, 2000, 50), now)
        .unwrap();
    let (alone_out, _) = step(&mut alone, now, 1);
    let (shared_out, _) = step(&mut shared, now, 1);
    let length = |out: &SchedulerOutput| {
        out.batch.iter().find_map(|b| match (b.id, b.kind) {
            (1, StepKind::Decode { speculation_length }) => Some(speculation_length),
            _ => None,
        })
    };
    assert!(
        shared_out
            .batch
            .iter()
            .any(|b| b.id == 2 && matches!(b.kind, StepKind::Prefill { .. })),
        "the prompt is prefilled beside the decoding member: {:?}",
        shared_out.batch
    );
    let k = length(&alone_out).expect("request 1 decodes");
    assert!(k > 0 && k < 6, "a middling length: {k}");
    assert_eq!(length(&shared_out), Some(k));
}
