//! Cost of one scheduling decision: one `schedule` + `update` with 10k queued requests, for every
//! policy with default settings and for the server's default (`gittins` with the server's
//! starvation and tail bounds), at batch 1 and batch 32. Target: <= 5 us per decision at batch 1.
//! Before the 10k arrive, [`WARM_UP_FINISHED`] short requests run to completion, so policies that
//! learn from finished requests (`gittins`'s empirical posterior) are measured on what they learnt.
//! Nobody finishes during the measured run, so the bounds' bookkeeping is measured but no request
//! is promoted.
//!
//! Run: `cargo bench -p lapsd-core --bench decision`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lapsd_core::policy::build_policy;
use lapsd_core::{
    Capacity, LinearCost, PolicyConfig, PolicyKind, RequestSpec, Scheduler, SchedulerConfig,
    SchedulerOutput, StabilityRule, StepKind, StepResult,
};

const QUEUED: u64 = 10_000;
/// Requests run to completion before the measured queue arrives.
const WARM_UP_FINISHED: u64 = 256;
const K: u32 = 4;

fn scheduler(kind: PolicyKind, policy_config: &PolicyConfig, max_batch: usize) -> Scheduler {
    let config = SchedulerConfig {
        capacity: Capacity {
            max_batch,
            max_step_tokens: 1 << 20,
            kv_budget_tokens: 1 << 40,
        },
        speculation_length: K,
        stability: StabilityRule::default(),
        cost: LinearCost {
            draft_base_s: 0.002,
            draft_per_seq_s: 0.0001,
            verify_base_s: 0.02,
            verify_per_token_s: 0.0002,
            prefill_base_s: 0.01,
            prefill_per_token_s: 0.00005,
        },
    };
    let policy = build_policy(kind, policy_config).expect("the config is valid");
    let mut s = Scheduler::new(config, policy);
    // Warm-up: short requests (max_tokens 2-129) that finish on their length.
    for i in 0..WARM_UP_FINISHED {
        let spec = RequestSpec {
            predicted_output_tokens: Some((i * 29 % 100) as u32 + 2),
            ..RequestSpec::new(QUEUED + i, 0.0, 16, (i * 37 % 128) as u32 + 2)
        };
        s.add_request(spec, 0.0).expect("fits the huge budget");
    }
    let mut step = 0;
    while !s.is_empty() {
        let out = s.schedule(0.0);
        let res = results(&out, step);
        s.update(&out, &res, 0.0, 0.0);
        step += 1;
        assert!(step < 1_000_000, "the warm-up requests finish");
    }
    for i in 0..QUEUED {
        let spec = RequestSpec {
            predicted_output_tokens: Some((i * 13 % 1000) as u32 + 1),
            true_output_tokens: Some((i * 17 % 1000) as u32 + 1),
            true_acceptance_rate: Some((i % 10) as f64 / 10.0),
            // Nobody finishes during the benchmark: the queue stays at 10k.
            ..RequestSpec::new(i, i as f64 * 1e-3, (i * 7 % 500) as u32 + 10, 1_000_000_000)
        };
        s.add_request(spec, i as f64 * 1e-3)
            .expect("fits the huge budget");
    }
    s
}

fn results(out: &SchedulerOutput, step: u64) -> Vec<StepResult> {
    out.batch
        .iter()
        .map(|b| match b.kind {
            StepKind::PrefillChunk { .. } => StepResult {
                id: b.id,
                drafted_tokens: 0,
                accepted_tokens: 0,
                new_tokens: 0,
                finished: None,
            },
            StepKind::Prefill { .. } => StepResult {
                id: b.id,
                drafted_tokens: 0,
                accepted_tokens: 0,
                new_tokens: 1,
                finished: None,
            },
            StepKind::Decode { speculation_length } => {
                let accepted = ((b.id + step) % u64::from(speculation_length + 1)) as u32;
                StepResult {
                    id: b.id,
                    drafted_tokens: speculation_length,
                    accepted_tokens: accepted,
                    new_tokens: accepted + 1,
                    finished: None,
                }
            }
        })
        .collect()
}

fn decision(c: &mut Criterion) {
    for max_batch in [1usize, 32] {
        let mut group = c.benchmark_group(format!("decision_10k_batch{max_batch}"));
        group.warm_up_time(std::time::Duration::from_millis(500));
        group.measurement_time(std::time::Duration::from_secs(2));
        let cases = PolicyKind::ALL
            .into_iter()
            .map(|kind| (kind, PolicyConfig::default(), kind.name().to_string()))
            .chain(std::iter::once((
                PolicyKind::SERVER_DEFAULT,
                PolicyConfig::server_default(),
                "server-default".to_string(),
            )));
        for (kind, policy_config, label) in cases {
            let mut s = scheduler(kind, &policy_config, max_batch);
            let mut now_s = QUEUED as f64 * 1e-3;
            let mut step = 0u64;
            group.bench_function(label, |b| {
                b.iter(|| {
                    let out = s.schedule(black_box(now_s));
                    let res = results(&out, step);
                    now_s += 0.03;
                    step += 1;
                    black_box(s.update(&out, &res, 0.03, now_s));
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decision);
criterion_main!(benches);
