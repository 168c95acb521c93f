//! Property tests of the scheduler with every policy, driven by a tiny deterministic fake
//! engine: nothing lost, nothing duplicated, capacity never exceeded, never idle while work waits.

use crate::request::IdMap;

use proptest::prelude::*;

use super::*;
use crate::policy::{build_policy, PolicyConfig, PolicyKind};
use crate::testutil::test_cost;

#[derive(Debug, Clone)]
struct FakeRequest {
    arrival_s: f64,
    prompt_tokens: u32,
    max_tokens: u32,
    /// Where the fake engine stops it (EOS); the expected output is min(this, max_tokens).
    eos_tokens: u32,
    /// Draft tokens it accepts per step (capped at the step's speculation length).
    accepted_per_step: u32,
    predicted_output_tokens: u32,
    priority: Option<i32>,
    /// Cancelled once this many steps have run, if still unfinished.
    cancel_after_steps: Option<u32>,
}

fn fake_request() -> impl Strategy<Value = FakeRequest> {
    (
        0.0f64..2.0,
        1u32..64,
        1u32..64,
        1u32..80,
        0u32..=4,
        1u32..100,
        prop::option::weighted(0.2, -1i32..=1),
        prop::option::weighted(0.1, 0u32..60),
    )
        .prop_map(
            |(arrival_s, prompt, max, eos, acc, pred, priority, cancel)| FakeRequest {
                arrival_s,
                prompt_tokens: prompt,
                max_tokens: max,
                eos_tokens: eos,
                accepted_per_step: acc,
                predicted_output_tokens: pred,
                priority,
                cancel_after_steps: cancel,
            },
        )
}

#[derive(Debug, Clone)]
struct Setup {
    kind: PolicyKind,
    capacity: Capacity,
    speculation_length: u32,
    requests: Vec<FakeRequest>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(PolicyKind::ALL.to_vec()),
        1usize..6,
        8u64..200,
        100u64..600,
        0u32..=4,
        prop::collection::vec(fake_request(), 1..40),
    )
        .prop_map(
            |(kind, max_batch, max_step_tokens, kv, k, requests)| Setup {
                kind,
                capacity: Capacity {
                    max_batch,
                    max_step_tokens,
                    kv_budget_tokens: kv,
                },
                speculation_length: k,
                requests,
            },
        )
}

/// The fake engine's step for one member.
fn fake_step(s: &Scheduler, fake: &FakeRequest, sr: &ScheduledRequest) -> StepResult {
    let r = s.request(sr.id).expect("batch members are known");
    let eos = fake.eos_tokens;
    let (drafted, accepted, produced) = match sr.kind {
        StepKind::Prefill { .. } => (0, 0, 1),
        StepKind::PrefillChunk { .. } => (0, 0, 0),
        StepKind::Decode { speculation_length } => {
            let a = fake.accepted_per_step.min(speculation_length);
            (speculation_length, a, a + 1)
        }
    };
    let left_to_eos = eos.saturating_sub(r.generated_tokens);
    let new_tokens = produced.min(left_to_eos);
    let hits_eos = new_tokens == left_to_eos && eos < r.spec.max_tokens;
    StepResult {
        id: sr.id,
        drafted_tokens: drafted,
        accepted_tokens: accepted,
        new_tokens,
        finished: hits_eos.then_some(FinishReason::Stop),
    }
}

fn run(setup: &Setup) -> Result<(), TestCaseError> {
    let config = SchedulerConfig {
        capacity: setup.capacity,
        speculation_length: setup.speculation_length,
        stability: StabilityRule {
            min_steps: 2,
            window: 2,
            epsilon: 0.2,
        },
        cost: test_cost(),
    };
    let policy = build_policy(setup.kind, &PolicyConfig::default()).expect("default config");
    let mut s = Scheduler::new(config, policy);
    let mut order: Vec<usize> = (0..setup.requests.len()).collect();
    order.sort_by(|&a, &b| {
        setup.requests[a]
            .arrival_s
            .total_cmp(&setup.requests[b].arrival_s)
    });
    let mut next_arrival = 0;
    let mut finished: IdMap<RequestState> = IdMap::default();
    let mut never_fits = 0usize;
    let mut now_s = 0.0;
    let mut steps = 0u32;
    let cap = setup.capacity;
    let k = setup.speculation_length;
    loop {
        while next_arrival < order.len() && setup.requests[order[next_arrival]].arrival_s <= now_s {
            let i = order[next_arrival];
            let f = &setup.requests[i];
            let spec = RequestSpec {
                priority: f.priority,
                predicted_output_tokens: Some(f.predicted_output_tokens),
                true_output_tokens: Some(f.eos_tokens.min(f.max_tokens)),
                true_acceptance_rate: Some(f64::from(f.accepted_per_step) / 4.0),
                ..RequestSpec::new(i as u64, f.arrival_s, f.prompt_tokens, f.max_tokens)
            };
            let needed = u64::from(f.prompt_tokens + f.max_tokens + k + 1);
            match s.add_request(spec, now_s) {
                Ok(()) => prop_assert!(needed <= cap.kv_budget_tokens),
                Err(CoreError::NeverFits { needed_tokens, .. }) => {
                    prop_assert_eq!(needed_tokens, needed);
                    prop_assert!(needed > cap.kv_budget_tokens);
                    never_fits += 1;
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
            next_arrival += 1;
        }
        for (i, f) in setup.requests.iter().enumerate() {
            if f.cancel_after_steps == Some(steps) {
                if let Some(state) = s.cancel(i as u64, now_s) {
                    prop_assert!(finished.insert(i as u64, state).is_none());
                }
            }
        }
        let out = s.schedule(now_s);
        // Capacity.
        prop_assert!(out.batch.len() <= cap.max_batch);
        let step_tokens: u64 = out
            .batch
            .iter()
            .map(|b| match b.kind {
                StepKind::Prefill { tokens } | StepKind::PrefillChunk { tokens } => {
                    u64::from(tokens)
                }
                StepKind::Decode { speculation_length } => u64::from(speculation_length) + 1,
            })
            .sum();
        // Long prefills run in chunks, so no step exceeds the budget, not even a lone one.
        prop_assert!(step_tokens <= cap.max_step_tokens);
        prop_assert!(s.kv_tokens_in_use() <= cap.kv_budget_tokens);
        let mut ids: Vec<_> = out.batch.iter().map(|b| b.id).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), out.batch.len(), "no duplicates in a batch");
        // Work conservation: every admitted request is runnable and fits an empty batch.
        prop_assert_eq!(out.batch.is_empty(), s.is_empty());
        if out.batch.is_empty() {
            if next_arrival == order.len() {
                break;
            }
            now_s = setup.requests[order[next_arrival]].arrival_s;
            continue;
        }
        let results: Vec<StepResult> = out
            .batch
            .iter()
            .map(|b| fake_step(&s, &setup.requests[b.id as usize], b))
            .collect();
        let step_s = 0.01 + 0.001 * out.batch.len() as f64;
        now_s += step_s;
        for state in s.update(&out, &results, step_s, now_s) {
            prop_assert!(
                finished.insert(state.id(), state).is_none(),
                "finished twice"
            );
        }
        prop_assert!(s.kv_tokens_in_use() <= cap.kv_budget_tokens);
        steps += 1;
        prop_assert!(steps < 100_000, "no progress");
    }
    prop_assert_eq!(finished.len() + never_fits, setup.requests.len());
    for (id, state) in &finished {
        let f = &setup.requests[*id as usize];
        match state.phase {
            RequestPhase::Finished(FinishReason::Cancelled) => {
                prop_assert!(state.generated_tokens <= f.eos_tokens.min(f.max_tokens));
            }
            RequestPhase::Finished(reason) => {
                let expected = f.eos_tokens.min(f.max_tokens);
                prop_assert_eq!(state.generated_tokens, expected, "request {}", id);
                let want = if f.eos_tokens < f.max_tokens {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                prop_assert_eq!(reason, want);
            }
            other => return Err(TestCaseError::fail(format!("phase {other:?}"))),
        }
    }
    prop_assert_eq!(s.kv_tokens_in_use(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn every_policy_finishes_everything_exactly_within_capacity(setup in setup()) {
        run(&setup)?;
    }
}
