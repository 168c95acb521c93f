//! End-to-end properties of the simulator over every policy: each request finishes exactly once
//! with exactly its true output length (also when preemption frees KV and forces recomputes), the
//! server is never idle while work waits (at batch 1, SD off, the last departure is where
//! Lindley's recursion puts it, whatever the order of service), runs are deterministic per seed.

mod common;

use common::requests::{self, Mix};
use common::{single_server, STEP_S};
use lapsd_core::cost::{CostProfile, CostSample};
use lapsd_core::{MeasuredCost, PolicyConfig, PolicyKind, PolicySpec};
use lapsd_sim::acceptance::DraftLength;
use lapsd_sim::run::{ArrivalRate, Experiment, RequestSource};
use lapsd_sim::server_model::{simulate, SimConfig};
use lapsd_sim::workload::{RequestSize, SimRequest, WorkloadKind};
use lapsd_workload::arrivals::ArrivalProcess;
use proptest::prelude::*;

fn random_requests(seed: u64, count: usize, rate_rps: f64) -> Vec<SimRequest> {
    requests::random_requests(seed, count, rate_rps, &Mix::PLAIN)
}

/// Every ordering, plus the settings that change how one behaves (aging, marginal formation,
/// LAPS-SD without its LAS phase, placement ablation).
fn every_spec() -> Vec<PolicySpec> {
    let mut specs: Vec<PolicySpec> = PolicyKind::ALL
        .iter()
        .map(|&k| PolicySpec::new(k, PolicyConfig::default()))
        .collect();
    specs.extend(
        PolicySpec::parse_list(
            "laps-sd[las-phase=false],laps-sd[perceptible-placement=first],\
             gittins[batch-formation=marginal,max-wait-s=1],fcfs[batch-formation=marginal]",
            &PolicyConfig::default(),
        )
        .expect("valid specs"),
    );
    specs
}

fn spec_config(spec: &PolicySpec, max_batch: usize, kv_budget_tokens: u64) -> SimConfig {
    requests::sd_config(spec, max_batch, 2048, kv_budget_tokens)
}

fn sd_config(policy: PolicyKind, max_batch: usize, kv_budget_tokens: u64) -> SimConfig {
    let spec = PolicySpec::new(policy, PolicyConfig::default());
    spec_config(&spec, max_batch, kv_budget_tokens)
}

/// A label printed like a kind's name in failure messages.
struct PolicyName<'a>(&'a str);
impl PolicyName<'_> {
    fn name(&self) -> &str {
        self.0
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn every_request_finishes_once_with_its_true_length(
        seed in 0u64..1_000_000,
        max_batch in 1usize..6,
        tight_kv in any::<bool>(),
    ) {
        let requests = random_requests(seed, 150, 6.0);
        // A tight budget (a few requests' worth) forces KV-freeing preemptions and recomputes.
        let kv_budget_tokens = if tight_kv { 1500 } else { 1 << 40 };
        for spec in every_spec() {
            let policy = spec.label();
            let policy = PolicyName(&policy);
            let outcome = simulate(&requests, &spec_config(&spec, max_batch, kv_budget_tokens), None)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", policy.name())))?;
            let mut seen = vec![0u32; requests.len()];
            for c in &outcome.completed {
                seen[c.id as usize] += 1;
                let r = &requests[c.id as usize];
                prop_assert_eq!(c.output_tokens, r.size.output_tokens, "{} request {}", policy.name(), c.id);
                prop_assert!(c.finish_s > c.arrival_s && c.first_token_s <= c.finish_s);
            }
            let never = outcome.never_fits;
            prop_assert!(seen.iter().all(|&n| n <= 1), "{}: a request finished twice", policy.name());
            prop_assert_eq!(seen.iter().filter(|&&n| n == 1).count() + never, requests.len(), "{}", policy.name());
        }
    }
}

#[test]
fn never_idle_while_work_waits_under_every_policy() {
    // (Marginal formation is left out on purpose: with a cost that does not amortize it may
    // hold a request back while another runs, which is not work conservation per request.)
    // Batch 1, SD off, unit step cost: every work-conserving order of service empties the system
    // at the same instants, so the last departure equals Lindley's (FCFS) last departure.
    let requests: Vec<SimRequest> = random_requests(42, 3000, 1.0)
        .into_iter()
        .map(|mut r| {
            r.size.output_tokens = r.size.output_tokens.min(300);
            r.max_tokens = r.size.output_tokens + 1;
            r
        })
        .collect();
    let mut departure_s = 0.0f64;
    for r in &requests {
        departure_s = departure_s.max(r.arrival_s) + f64::from(r.size.output_tokens) * STEP_S;
    }
    for policy in PolicyKind::ALL {
        let outcome = simulate(&requests, &single_server(policy), None).expect("runs");
        assert_eq!(outcome.completed.len(), requests.len(), "{}", policy.name());
        assert!(
            (outcome.end_s - departure_s).abs() < 1e-6,
            "{}: last departure {} vs {departure_s} (idle while work waited?)",
            policy.name(),
            outcome.end_s
        );
        let work_s: f64 = requests
            .iter()
            .map(|r| f64::from(r.size.output_tokens) * STEP_S)
            .sum();
        assert!(
            (outcome.busy_s - work_s).abs() < 1e-6,
            "{}: busy {} vs work {work_s}",
            policy.name(),
            outcome.busy_s
        );
    }
}

fn experiment(seed: u64) -> Experiment {
    let source = RequestSource::Workload {
        profile: WorkloadKind::Mbpp.profile(),
        count: 400,
        arrivals: ArrivalProcess::Gamma { shape: 0.5 },
    };
    let rates = vec![ArrivalRate::Load(0.6), ArrivalRate::Load(0.9)];
    let config = sd_config(PolicyKind::Fcfs, 4, 20_000);
    requests::experiment(config, every_spec(), source, rates, seed)
}

#[test]
fn same_seed_gives_identical_results_and_another_seed_differs() {
    let a = serde_json::to_string(&experiment(5).run(None).expect("runs")).expect("json");
    let b = serde_json::to_string(&experiment(5).run(None).expect("runs")).expect("json");
    assert_eq!(a, b);
    let mut single = experiment(5);
    single.jobs = 1;
    let c = serde_json::to_string(&single.run(None).expect("runs")).expect("json");
    assert_eq!(
        a, c,
        "results do not depend on the number of worker threads"
    );
    let d = serde_json::to_string(&experiment(6).run(None).expect("runs")).expect("json");
    assert_ne!(a, d);
}

#[test]
fn policies_see_the_same_requests_and_sd_speeds_up() {
    let results = experiment(1).run(None).expect("runs");
    assert_eq!(results.len(), 2 * every_spec().len());
    for r in &results {
        assert_eq!(r.completed + r.never_fits, 400, "{}", r.policy);
    }
    // Speculative decoding at MBPP's high acceptance must beat plain decoding on the same requests.
    let mut with_sd = experiment(1);
    with_sd.policies = vec![PolicySpec::new(PolicyKind::Fcfs, PolicyConfig::default())];
    with_sd.rates = vec![ArrivalRate::Rate(0.5)];
    let mut no_sd = with_sd.clone();
    no_sd.scheduler.speculation_length = 0;
    let sd = with_sd.run(None).expect("runs")[0].mean_latency_s;
    let plain = no_sd.run(None).expect("runs")[0].mean_latency_s;
    assert!(sd < plain, "SD {sd} s vs plain {plain} s");
}

#[test]
fn tight_kv_budget_forces_recomputes_and_everything_still_finishes() {
    let requests = random_requests(9, 300, 20.0);
    for policy in [PolicyKind::Las, PolicyKind::LapsSd, PolicyKind::Mlfq] {
        let outcome = simulate(&requests, &sd_config(policy, 4, 1500), None).expect("runs");
        let recomputes: u32 = outcome.completed.iter().map(|c| c.recomputes).sum();
        assert!(
            recomputes > 0,
            "{}: the budget must force recomputes",
            policy.name()
        );
        assert_eq!(outcome.completed.len() + outcome.never_fits, requests.len());
        for c in &outcome.completed {
            assert_eq!(c.output_tokens, requests[c.id as usize].size.output_tokens);
        }
    }
}

/// A prompt-lookup drafter that finds nothing (mean draft length 0) costs one verified position
/// per step, a model drafter k + 1 plus k draft passes: the step time charges the positions each
/// member really drafted, not the speculation length (module header of `server_model::server`).
#[test]
fn step_time_charges_the_tokens_each_member_drafted() {
    const OUTPUT_TOKENS: u32 = 21;
    let cost = lapsd_core::LinearCost {
        draft_base_s: 0.0,
        draft_per_seq_s: 0.001,
        verify_base_s: 0.002,
        verify_per_token_s: 0.010,
        prefill_base_s: 0.050,
        prefill_per_token_s: 0.0,
    };
    let request = |draft_length| SimRequest {
        id: 0,
        arrival_s: 0.0,
        size: RequestSize {
            prompt_tokens: 8,
            output_tokens: OUTPUT_TOKENS,
            // Never accepted: every step yields exactly one token.
            acceptance_rate: 0.0,
            draft_length,
        },
        // Far above the true length: the scheduler shortens k only near max_tokens.
        max_tokens: 10 * OUTPUT_TOKENS,
        predicted_output_tokens: Some(OUTPUT_TOKENS),
        served_predicted_output_tokens: None,
    };
    let mut config = sd_config(PolicyKind::Fcfs, 1, 1 << 40);
    config.scheduler.cost = cost;
    let k = config.scheduler.speculation_length;
    assert!(
        k >= 2,
        "the test needs a speculation length above the draft"
    );
    let busy_s = |config: &SimConfig, draft| {
        let outcome = simulate(&[request(draft)], config, None).expect("runs");
        assert_eq!(outcome.completed[0].output_tokens, OUTPUT_TOKENS);
        outcome.busy_s
    };
    // The prefill yields the first token; the other 20 take one step each.
    let steps = f64::from(OUTPUT_TOKENS - 1);
    let model_drafter = 0.050 + steps * (f64::from(k) * 0.001 + 0.002 + 0.010 * f64::from(k + 1));
    let got = busy_s(&config, None);
    assert!(
        (got - model_drafter).abs() < 1e-9,
        "{got} vs {model_drafter}"
    );
    let nothing_found = 0.050 + steps * (0.002 + 0.010);
    let always = |tokens| {
        Some(DraftLength {
            match_probability: 1.0,
            tokens_when_matched: tokens,
        })
    };
    assert!((busy_s(&config, always(0.0)) - nothing_found).abs() < 1e-9);
    let never_matched = Some(DraftLength {
        match_probability: 0.0,
        tokens_when_matched: 4.0,
    });
    assert!((busy_s(&config, never_matched) - nothing_found).abs() < 1e-9);
    // One token drafted every step: one draft pass, two verified positions.
    let one_token = 0.050 + steps * (0.001 + 0.002 + 0.010 * 2.0);
    assert!((busy_s(&config, always(1.0)) - one_token).abs() < 1e-9);
    // Measured step times, when given, replace the fit for the verification.
    let profile = CostProfile {
        max_batch: None,
        model: "m".into(),
        draft: "ngram".into(),
        cost,
        samples: vec![CostSample {
            batch: 1,
            k: 0,
            draft_s: 0.0,
            verify_s: 0.020,
        }],
        prefill_samples: Vec::new(),
    };
    config.step_cost = MeasuredCost::from_profile(&profile);
    let measured = 0.050 + steps * 0.020;
    assert!((busy_s(&config, always(0.0)) - measured).abs() < 1e-9);
}

/// A prompt longer than the step budget is prefilled in chunks, each charged the prefill cost of
/// its own tokens, and only the last one yields the first token; a short request that arrives
/// meanwhile runs beside the chunks instead of waiting for the whole prefill.
#[test]
fn long_prompts_are_prefilled_in_chunks_beside_short_requests() {
    let request = |id: u64, arrival_s: f64, prompt_tokens: u32, output_tokens: u32| SimRequest {
        id,
        arrival_s,
        size: RequestSize {
            prompt_tokens,
            output_tokens,
            acceptance_rate: 0.5,
            draft_length: None,
        },
        max_tokens: output_tokens,
        predicted_output_tokens: Some(output_tokens),
        served_predicted_output_tokens: None,
    };
    let mut config = sd_config(PolicyKind::Fcfs, 4, 1 << 40);
    config.scheduler.capacity.max_step_tokens = 512;
    config.scheduler.speculation_length = 0;
    let cost = config.scheduler.cost;
    use lapsd_core::StepCostModel;
    let alone = simulate(&[request(0, 0.0, 2000, 1)], &config, None).expect("runs");
    let c = alone.completed[0];
    // 512 + 512 + 512 + 464: four prefill steps, each with its own fixed cost.
    let want_s = 3.0 * cost.prefill_s(512) + cost.prefill_s(464);
    assert!(
        (c.ttft_s() - want_s).abs() < 1e-9,
        "{} vs {want_s}",
        c.ttft_s()
    );
    assert_eq!(alone.steps, 4);
    // Without chunking (a budget the prompt fits), one step of the whole prompt.
    config.scheduler.capacity.max_step_tokens = 2048;
    let whole = simulate(&[request(0, 0.0, 2000, 1)], &config, None).expect("runs");
    assert_eq!(whole.steps, 1);
    assert!((whole.completed[0].ttft_s() - cost.prefill_s(2000)).abs() < 1e-9);

    // A short request arriving during the first chunk, ranked first (shortest remaining first),
    // finishes before the long prompt's prefill does: its steps take the room the chunks leave.
    config.scheduler.capacity.max_step_tokens = 512;
    config.policy = PolicyKind::Srpt;
    let both = simulate(
        &[request(0, 0.0, 4000, 50), request(1, 1e-6, 10, 3)],
        &config,
        None,
    )
    .expect("runs");
    let finish = |id| {
        both.completed
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.finish_s)
            .expect("finished")
    };
    let long = both.completed.iter().find(|c| c.id == 0).expect("finished");
    assert!(
        finish(1) < long.first_token_s,
        "short {} long's first token {}",
        finish(1),
        long.first_token_s
    );
}
