//! Replicas behind a dispatcher (`lapsd sim --replicas R --dispatch RULE`): one replica is the
//! single server to the bit under every rule, round-robin spreads evenly, jsq and least-work
//! never pass over an idle replica (checked against counts recomputed from the outcome), jsq
//! beats round-robin on identical replicas, and runs are deterministic.

mod common;

use common::cli::args;
use common::requests::{experiment, random_requests, sd_config, Mix};
use lapsd_core::{PolicyConfig, PolicyKind, PolicySpec};
use lapsd_sim::cli::{experiment_from_args, render, results_from_args};
use lapsd_sim::dispatch::Dispatch;
use lapsd_sim::prediction::PredictorChoice;
use lapsd_sim::report::PolicyResult;
use lapsd_sim::run::{ArrivalRate, Experiment, RequestSource};
use lapsd_sim::server_model::{
    simulate, simulate_replicas, ReplicaOutcome, ReplicaSetup, SimConfig,
};
use lapsd_sim::workload::{RequestSize, SimRequest, WorkloadKind};
use lapsd_workload::arrivals::ArrivalProcess;

/// Poisson arrivals at `rate_rps` rounded to a 50 ms grid, so many requests arrive at the same
/// instant (and at the instant a step ends); prompts up to 600 tokens (chunked above 256),
/// spread-out lengths and acceptance, noisy predictions, some prompt-lookup drafters.
fn requests(seed: u64, count: usize, rate_rps: f64) -> Vec<SimRequest> {
    random_requests(seed, count, rate_rps, &Mix::MIXED)
}

/// Steps of up to 256 tokens, so longer prompts are prefilled in chunks.
fn config(spec: &PolicySpec, max_batch: usize, kv_budget_tokens: u64) -> SimConfig {
    sd_config(spec, max_batch, 256, kv_budget_tokens)
}

/// Every ordering, plus the server's default (gittins with its starvation and tail bounds)
/// and marginal formation.
fn specs() -> Vec<PolicySpec> {
    let mut specs: Vec<PolicySpec> = PolicyKind::ALL
        .iter()
        .map(|&k| PolicySpec::new(k, PolicyConfig::default()))
        .collect();
    specs.push(PolicySpec::new(
        PolicyKind::Gittins,
        PolicyConfig::server_default(),
    ));
    specs.extend(
        PolicySpec::parse_list(
            "laps-sd[las-phase=false],fcfs[batch-formation=marginal]",
            &PolicyConfig::default(),
        )
        .expect("valid specs"),
    );
    specs
}

fn setup(replicas: usize, dispatch: Dispatch) -> ReplicaSetup {
    ReplicaSetup {
        replicas,
        dispatch,
        seed: 7,
        record_decisions: true,
    }
}

fn run(requests: &[SimRequest], config: &SimConfig, setup: &ReplicaSetup) -> ReplicaOutcome {
    simulate_replicas(requests, config, setup, None).expect("simulation runs")
}

#[test]
fn one_replica_is_the_single_server_to_the_bit_under_every_rule() {
    let reqs = requests(1, 400, 6.0);
    for spec in specs() {
        // A roomy KV budget and a tight one (preemptions that free KV, recomputes).
        for kv_budget_tokens in [1 << 20, 3000] {
            let mut cfg = config(&spec, 4, kv_budget_tokens);
            for predictor in [
                PredictorChoice::NoisyOracle { sigma: 0.5 },
                PredictorChoice::Online {
                    prior_tokens: 64,
                    window: 256,
                },
            ] {
                cfg.predictor = predictor;
                let single = simulate(&reqs, &cfg, None).expect("single server runs");
                assert_eq!(single.completed.len() + single.never_fits, reqs.len());
                for rule in Dispatch::ALL {
                    let one = run(&reqs, &cfg, &setup(1, rule));
                    assert!(
                        one.merged == single,
                        "{} kv {kv_budget_tokens} {predictor:?} {rule}: differs from the \
                         single server",
                        spec.label()
                    );
                    assert!(one.replica_of.iter().all(|&r| r == 0));
                    assert_eq!(one.decisions.len(), reqs.len());
                }
            }
        }
    }
}

#[test]
fn round_robin_spreads_requests_evenly() {
    let spec = PolicySpec::new(PolicyKind::Gittins, PolicyConfig::server_default());
    for (replicas, count) in [(4, 403), (3, 300), (16, 1000)] {
        let reqs = requests(2, count, 40.0);
        let out = run(
            &reqs,
            &config(&spec, 4, 1 << 20),
            &setup(replicas, Dispatch::RoundRobin),
        );
        let counts: Vec<usize> = out.per_replica.iter().map(|r| r.requests).collect();
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        assert!(max - min <= 1, "{replicas} replicas: {counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), count);
        for (i, &r) in out.replica_of.iter().enumerate() {
            assert_eq!(r, i % replicas, "request {i}");
        }
        assert_eq!(out.merged.completed.len(), count);
        let completed: usize = out.per_replica.iter().map(|r| r.completed).sum();
        assert_eq!(completed, count);
    }
}

/// Unfinished requests of each replica when request `i` arrives, recomputed from the outcome
/// alone: those sent there before it that finish after its arrival (steps ending at that very
/// instant are applied before the arrivals of the instant).
fn outstanding_at_arrivals(
    reqs: &[SimRequest],
    out: &ReplicaOutcome,
    replicas: usize,
) -> Vec<Vec<usize>> {
    let mut finish_s = vec![f64::NAN; reqs.len()];
    for c in &out.merged.completed {
        finish_s[c.id as usize] = c.finish_s;
    }
    (0..reqs.len())
        .map(|i| {
            let mut counts = vec![0usize; replicas];
            for (&finish, &replica) in finish_s[..i].iter().zip(&out.replica_of[..i]) {
                if finish > reqs[i].arrival_s {
                    counts[replica] += 1;
                }
            }
            counts
        })
        .collect()
}

#[test]
fn jsq_and_least_work_never_pass_over_an_idle_replica() {
    let spec = PolicySpec::new(PolicyKind::Gittins, PolicyConfig::server_default());
    let replicas = 4;
    // Light and heavy traffic: idle replicas are common in the first, rare in the second.
    for rate_rps in [4.0, 40.0] {
        let reqs = requests(3, 600, rate_rps);
        let cfg = config(&spec, 4, 1 << 20);
        for rule in [Dispatch::Jsq, Dispatch::LeastWork] {
            let out = run(&reqs, &cfg, &setup(replicas, rule));
            assert_eq!(out.merged.completed.len(), reqs.len(), "{rule}");
            let recount = outstanding_at_arrivals(&reqs, &out, replicas);
            let mut idle_seen = 0;
            for (i, d) in out.decisions.iter().enumerate() {
                assert_eq!(d.request_id, i as u64);
                assert_eq!(d.chosen, out.replica_of[i]);
                let seen: Vec<usize> = d.loads.iter().map(|l| l.requests).collect();
                assert_eq!(seen, recount[i], "{rule} request {i}: loads seen");
                let counts = &recount[i];
                if counts.contains(&0) {
                    idle_seen += 1;
                    assert_eq!(
                        counts[d.chosen], 0,
                        "{rule} request {i}: sent to a busy replica {counts:?} while one was idle"
                    );
                }
                for l in &d.loads {
                    // Work is zero exactly on an empty replica.
                    assert_eq!(l.requests == 0, l.work_s == 0.0, "{rule}: {l:?}");
                    assert!(l.work_s >= 0.0 && l.work_s.is_finite());
                }
                match rule {
                    Dispatch::Jsq => {
                        let min = counts.iter().min().copied().unwrap_or(0);
                        assert_eq!(counts[d.chosen], min, "{rule} request {i}: {counts:?}");
                    }
                    _ => {
                        let min = d
                            .loads
                            .iter()
                            .map(|l| l.work_s)
                            .fold(f64::INFINITY, f64::min);
                        assert_eq!(d.loads[d.chosen].work_s, min, "{rule} request {i}");
                    }
                }
            }
            assert!(
                idle_seen > 0,
                "{rule} at {rate_rps}/s: some arrival found an idle replica"
            );
        }
    }
}

#[test]
fn least_work_weighs_requests_by_their_estimated_size() {
    // Two replicas; request 0 is long, requests 1 and 2 are short. Round-robin and jsq put the
    // third request beside the long one (1 request each); least-work puts it with the short one.
    let spec = PolicySpec::new(PolicyKind::Fcfs, PolicyConfig::default());
    let mk = |id: u64, arrival_s: f64, output_tokens: u32| SimRequest {
        id,
        arrival_s,
        size: RequestSize {
            prompt_tokens: 8,
            output_tokens,
            acceptance_rate: 0.7,
            draft_length: None,
        },
        max_tokens: output_tokens + 1,
        predicted_output_tokens: Some(output_tokens),
        served_predicted_output_tokens: None,
    };
    let reqs = vec![mk(0, 0.0, 800), mk(1, 0.001, 10), mk(2, 0.002, 10)];
    let cfg = config(&spec, 1, 1 << 20);
    let jsq = run(&reqs, &cfg, &setup(2, Dispatch::Jsq));
    assert_eq!(jsq.replica_of, vec![0, 1, 0]);
    let least = run(&reqs, &cfg, &setup(2, Dispatch::LeastWork));
    assert_eq!(least.replica_of, vec![0, 1, 1]);
    let w = &least.decisions[2].loads;
    assert!(w[0].work_s > 10.0 * w[1].work_s, "{w:?}");
}

fn chatbot(replicas_load: f64, count: usize, seed: u64) -> Experiment {
    let fcfs = PolicySpec::new(PolicyKind::Fcfs, PolicyConfig::default());
    let source = RequestSource::Workload {
        profile: WorkloadKind::Chatbot.profile(),
        count,
        arrivals: ArrivalProcess::Poisson,
    };
    let rates = vec![ArrivalRate::Load(replicas_load)];
    let config = sd_config(&fcfs, 8, 4096, 65536);
    experiment(config, vec![fcfs], source, rates, seed)
}

fn mean_of(results: &[PolicyResult], rule: Dispatch) -> f64 {
    results
        .iter()
        .find(|r| r.dispatch.as_deref() == Some(rule.name()))
        .map_or(f64::NAN, |r| r.mean_latency_s)
}

#[test]
fn jsq_beats_round_robin_on_identical_replicas() {
    // Poisson arrivals, 4 identical replicas at 0.9 utilisation each: joining the shortest
    // queue waits less than cycling blindly (optimal for identical exponential servers,
    // Winston 1977; the gap is wide at this load).
    let results = chatbot(0.9, 6000, 11)
        .run_replicas(4, &[Dispatch::RoundRobin, Dispatch::Jsq], None)
        .expect("runs");
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r.completed, 6000);
        assert_eq!(r.replicas, Some(4));
    }
    let (rr, jsq) = (
        mean_of(&results, Dispatch::RoundRobin),
        mean_of(&results, Dispatch::Jsq),
    );
    eprintln!("mean latency: jsq {jsq:.3} s, round-robin {rr:.3} s");
    assert!(jsq <= rr, "jsq {jsq} s vs round-robin {rr} s");
}

#[test]
fn load_is_per_replica_and_one_replica_reproduces_the_plain_rows() {
    let e = chatbot(0.8, 500, 4);
    let plain = e.run(None).expect("plain runs");
    let one = e.run_replicas(1, &Dispatch::ALL, None).expect("runs");
    assert_eq!(one.len(), Dispatch::ALL.len());
    for (r, rule) in one.iter().zip(Dispatch::ALL) {
        assert_eq!(r.dispatch.as_deref(), Some(rule.name()));
        let unlabelled = PolicyResult {
            dispatch: None,
            replicas: None,
            ..r.clone()
        };
        assert_eq!(unlabelled, plain[0], "{rule}");
    }
    let four = e.run_replicas(4, &[Dispatch::Jsq], None).expect("runs");
    assert!((four[0].rate_rps - 4.0 * plain[0].rate_rps).abs() < 1e-9 * plain[0].rate_rps);
    assert_eq!(four[0].completed, 500);
}

#[test]
fn runs_are_deterministic_and_do_not_depend_on_threads() {
    let rules = Dispatch::ALL;
    let json = |e: &Experiment| {
        serde_json::to_string(&e.run_replicas(4, &rules, None).expect("runs")).expect("json")
    };
    let mut e = chatbot(0.9, 800, 5);
    e.policies = specs();
    let a = json(&e);
    let b = json(&e);
    assert_eq!(a, b);
    e.jobs = 1;
    assert_eq!(a, json(&e), "results do not depend on the worker threads");
    e.seed = 6;
    assert_ne!(a, json(&e));
    // The power-of-two draws are seeded: same seed, same assignment; another, another.
    let reqs = requests(8, 300, 30.0);
    let cfg = config(&specs()[0], 4, 1 << 20);
    let p2 = |seed: u64| {
        let s = ReplicaSetup {
            seed,
            ..setup(4, Dispatch::PowerOfTwo)
        };
        run(&reqs, &cfg, &s).replica_of
    };
    assert_eq!(p2(1), p2(1));
    assert_ne!(p2(1), p2(2));
}

fn output_of(extra: &[&str]) -> String {
    let a = args(extra);
    let e = experiment_from_args(&a).expect("valid");
    render(&a, results_from_args(&a, &e, None).expect("runs")).expect("renders")
}

#[test]
fn the_flags_run_replicas_and_label_the_rule() {
    let base = [
        "--requests",
        "300",
        "--load",
        "0.8",
        "--policy",
        "fcfs,gittins",
    ];
    let plain = output_of(&[&base[..], &["--format", "csv"]].concat());
    assert!(!plain.contains("dispatch"));
    let replicated = output_of(
        &[
            &base[..],
            &[
                "--format",
                "csv",
                "--replicas",
                "4",
                "--dispatch",
                "jsq,least-work",
            ],
        ]
        .concat(),
    );
    let mut lines = replicated.lines();
    assert!(lines
        .next()
        .expect("header")
        .ends_with(",dispatch,replicas"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4, "{replicated}");
    for (row, (policy, rule)) in rows.iter().zip([
        ("fcfs", "jsq"),
        ("fcfs", "least-work"),
        ("gittins", "jsq"),
        ("gittins", "least-work"),
    ]) {
        assert!(row.contains(&format!(",{policy},")), "{row}");
        assert!(row.ends_with(&format!(",{rule},4")), "{row}");
    }
    // --replicas 1 with a rule: the plain numbers, plus the label.
    let one = output_of(
        &[
            &base[..],
            &[
                "--format",
                "csv",
                "--replicas",
                "1",
                "--dispatch",
                "power-of-two",
            ],
        ]
        .concat(),
    );
    for (p, o) in plain.lines().skip(1).zip(one.lines().skip(1)) {
        assert_eq!(format!("{p},power-of-two,1"), o);
    }
    // Replicas alone default to round-robin; the table has the label column.
    let table = output_of(&[&base[..], &["--replicas", "2"]].concat());
    assert!(
        table.contains("round-robin") && table.contains("replicas: 2"),
        "{table}"
    );
    // Zero replicas is refused with the flag's name.
    let zero = args(&[&base[..], &["--replicas", "0"]].concat());
    let e = experiment_from_args(&zero).expect("valid experiment");
    let err = results_from_args(&zero, &e, None).expect_err("zero replicas");
    assert!(err.to_string().contains("replicas"), "{err}");
}
