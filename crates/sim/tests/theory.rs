//! The simulator against single-server queueing theory: with SD off, batch
//! 1 and every step costing one unit, a request of L tokens is a job of L * STEP_S seconds, and
//! Poisson arrivals make it an M/G/1 queue. FCFS must match M/M/1 and Pollaczek-Khinchine, LAS
//! Kleinrock's FB formula, the oracle (true-remaining SRPT) Schrage-Miller.
//!
//! Sizes are whole tokens (ceil of an exponential / hyper-exponential), and the formulas are
//! evaluated on exactly that discrete distribution (theory.rs). Token-granular preemption only
//! approximates FB's processor sharing and SRPT's instant preemption, hence 5% for LAS/SRPT, 3%
//! for FCFS. Every check also asserts that its tolerance is at least 4 standard errors, so it can
//! neither pass by luck nor fail by noise. Standard errors come from batch means; where the plain
//! estimate would need millions of requests (load 0.8, high-variance sizes) the work found at
//! arrival serves as a control variate (common/mod.rs explains why its mean is known).

mod common;

use common::*;
use lapsd_core::PolicyKind;
use lapsd_sim::theory::{
    fb_mean_latency_s, gittins_mean_latency_s, mm1_mean_latency_s, pk_mean_latency_s,
    srpt_mean_latency_s, DiscreteDist,
};
use lapsd_sim::workload::LengthDist;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EXPONENTIAL: LengthDist = LengthDist::Exponential {
    mean: 40.0,
    max: u32::MAX,
};

/// CV^2 ~ 2.3: LAS and SRPT differ clearly from FCFS.
const HYPER: LengthDist = LengthDist::HyperExponential {
    p_first: 0.7,
    mean_first: 25.0,
    mean_second: 120.0,
    max: u32::MAX,
};

fn runs(
    policy: PolicyKind,
    dist: &LengthDist,
    lambda: f64,
    count: usize,
    seeds: &[u64],
) -> Vec<Run> {
    seeds
        .iter()
        .map(|&seed| run(policy, &poisson_requests(dist, lambda, count, seed)))
        .collect()
}

#[test]
fn fcfs_at_batch_one_is_exactly_lindleys_fcfs_queue() {
    let d = size_dist(&HYPER);
    let lambda = 0.8 / d.mean_s();
    let requests = poisson_requests(&HYPER, lambda, 20_000, 11);
    let r = run(PolicyKind::Fcfs, &requests);
    for (i, req) in requests.iter().enumerate() {
        let expected = r.work_at_arrival_s[i] + f64::from(req.size.output_tokens) * STEP_S;
        assert!(
            // 1 us: float rounding of the clock over ~1M steps, far below one 5 ms step.
            (r.latency_s[i] - expected).abs() <= 1e-6,
            "request {i}: latency {} but waiting + service = {expected}",
            r.latency_s[i]
        );
    }
}

#[test]
fn fcfs_matches_mm1_at_load_half() {
    let d = size_dist(&EXPONENTIAL);
    let mu = 1.0 / d.mean_s();
    let lambda = 0.5 * mu;
    let est = plain_estimate(
        &runs(
            PolicyKind::Fcfs,
            &EXPONENTIAL,
            lambda,
            75_000,
            &[1, 2, 3, 4],
        ),
        1000,
        20,
    );
    let mm1 = mm1_mean_latency_s(lambda, mu).expect("stable");
    assert_matches("fcfs M/M/1 rho=0.5 (plain)", &est, mm1, 0.03);
}

#[test]
fn fcfs_matches_mm1_at_load_point_eight() {
    let d = size_dist(&EXPONENTIAL);
    let mu = 1.0 / d.mean_s();
    let lambda = 0.8 * mu;
    let rs = runs(PolicyKind::Fcfs, &EXPONENTIAL, lambda, 50_000, &[5, 6]);
    let est = cv_estimate(&rs, 1000, 20, expected_work_s(lambda, &d));
    let mm1 = mm1_mean_latency_s(lambda, mu).expect("stable");
    assert_matches("fcfs M/M/1 rho=0.8 (control variate)", &est, mm1, 0.03);
}

#[test]
fn fcfs_matches_pollaczek_khinchine_for_general_sizes() {
    let d = size_dist(&HYPER);
    let lambda = 0.7 / d.mean_s();
    let rs = runs(PolicyKind::Fcfs, &HYPER, lambda, 50_000, &[7, 8]);
    let est = cv_estimate(&rs, 1000, 20, expected_work_s(lambda, &d));
    let pk = pk_mean_latency_s(lambda, &d).expect("stable");
    assert_matches("fcfs M/G/1 P-K rho=0.7 (control variate)", &est, pk, 0.03);
}

#[test]
fn las_matches_kleinrocks_fb_formula() {
    let d = size_dist(&HYPER);
    let lambda = 0.7 / d.mean_s();
    let rs = runs(PolicyKind::Las, &HYPER, lambda, 60_000, &[9, 10, 14]);
    let est = cv_estimate(&rs, 1000, 20, expected_work_s(lambda, &d));
    let fb = fb_mean_latency_s(lambda, &d).expect("stable");
    let pk = pk_mean_latency_s(lambda, &d).expect("stable");
    assert!(fb < 0.9 * pk, "the check must separate LAS from FCFS");
    assert_matches("las M/G/1 FB rho=0.7 (control variate)", &est, fb, 0.05);
}

#[test]
fn oracle_matches_schrage_miller_srpt_formula() {
    let d = size_dist(&HYPER);
    let lambda = 0.7 / d.mean_s();
    let rs = runs(PolicyKind::Oracle, &HYPER, lambda, 50_000, &[12, 13]);
    let est = cv_estimate(&rs, 1000, 20, expected_work_s(lambda, &d));
    let srpt = srpt_mean_latency_s(lambda, &d).expect("stable");
    let fb = fb_mean_latency_s(lambda, &d).expect("stable");
    assert!(srpt < 0.9 * fb, "the check must separate SRPT from LAS");
    assert_matches(
        "oracle M/G/1 SRPT rho=0.7 (control variate)",
        &est,
        srpt,
        0.05,
    );
}

fn without_predictions(
    mut requests: Vec<lapsd_sim::workload::SimRequest>,
) -> Vec<lapsd_sim::workload::SimRequest> {
    for r in &mut requests {
        r.predicted_output_tokens = None;
    }
    requests
}

/// Known limit of the Gittins index: with memoryless sizes and no prediction, no order of
/// service changes the mean (every non-anticipating work-conserving policy gives M/M/1's).
#[test]
fn gittins_without_predictions_matches_mm1_for_exponential_sizes() {
    let d = size_dist(&EXPONENTIAL);
    let mu = 1.0 / d.mean_s();
    let lambda = 0.7 * mu;
    let rs: Vec<Run> = [21, 22]
        .iter()
        .map(|&seed| {
            let requests =
                without_predictions(poisson_requests(&EXPONENTIAL, lambda, 50_000, seed));
            run(PolicyKind::Gittins, &requests)
        })
        .collect();
    let est = cv_estimate(&rs, 1000, 20, expected_work_s(lambda, &d));
    let mm1 = mm1_mean_latency_s(lambda, mu).expect("stable");
    assert_matches(
        "gittins M/M/1 rho=0.7, no predictions (control variate)",
        &est,
        mm1,
        0.03,
    );
}

/// Known limit of the Gittins index: a degenerate (known) size makes it SRPT. With equal sizes
/// SRPT never preempts, so the mean is Pollaczek-Khinchine's M/D/1, and the oracle (true SRPT)
/// gives the same on the same arrivals.
#[test]
fn gittins_with_known_equal_sizes_is_srpt() {
    const FIXED: LengthDist = LengthDist::Constant(40);
    let d = size_dist(&FIXED);
    let lambda = 0.8 / d.mean_s();
    let requests = poisson_requests(&FIXED, lambda, 50_000, 23);
    let gittins = run(PolicyKind::Gittins, &requests);
    let oracle = run(PolicyKind::Oracle, &requests);
    let mean = |r: &Run| r.latency_s.iter().sum::<f64>() / r.latency_s.len() as f64;
    let (g, o) = (mean(&gittins), mean(&oracle));
    assert!((g / o - 1.0).abs() < 0.005, "gittins {g} s vs oracle {o} s");
    let est = cv_estimate(
        std::slice::from_ref(&gittins),
        1000,
        40,
        expected_work_s(lambda, &d),
    );
    let pk = pk_mean_latency_s(lambda, &d).expect("stable");
    assert_matches("gittins M/D/1 rho=0.8 (control variate)", &est, pk, 0.03);
}

/// Gittins without predictions against SOAP's M/G/1 Gittins formula (the optimal size-blind
/// mean), on two sizes where it is neither FCFS, LAS nor SRPT: a new request runs first while
/// it may still be short, a request past the short size waits behind newcomers until its
/// remaining work drops below theirs. The policy learns the size distribution from finished
/// requests; the formula is handed it.
#[test]
fn gittins_without_predictions_matches_soaps_gittins_formula() {
    const SHORT: u32 = 20;
    const LONG: u32 = 200;
    const P_SHORT: f64 = 0.8;
    let d = DiscreteDist::new(vec![
        (f64::from(SHORT) * STEP_S, P_SHORT),
        (f64::from(LONG) * STEP_S, 1.0 - P_SHORT),
    ])
    .expect("valid");
    let lambda = 0.7 / d.mean_s();
    let rs: Vec<Run> = [31, 32]
        .iter()
        .map(|&seed| {
            let mut requests = without_predictions(poisson_requests(
                &LengthDist::Constant(SHORT),
                lambda,
                50_000,
                seed,
            ));
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 1_000);
            for r in &mut requests {
                if rng.gen::<f64>() >= P_SHORT {
                    r.size.output_tokens = LONG;
                }
            }
            run(PolicyKind::Gittins, &requests)
        })
        .collect();
    let est = cv_estimate(&rs, 1000, 20, expected_work_s(lambda, &d));
    let gittins = gittins_mean_latency_s(lambda, &d, STEP_S).expect("stable");
    let fb = fb_mean_latency_s(lambda, &d).expect("stable");
    let pk = pk_mean_latency_s(lambda, &d).expect("stable");
    let srpt = srpt_mean_latency_s(lambda, &d).expect("stable");
    assert!(
        gittins < 0.9 * fb.min(pk) && srpt < 0.95 * gittins,
        "the check must separate Gittins from LAS, FCFS and SRPT: gittins {gittins}, fb {fb}, fcfs {pk}, srpt {srpt}"
    );
    assert_matches(
        "gittins M/G/1 two sizes rho=0.7, no predictions (control variate)",
        &est,
        gittins,
        0.03,
    );
}
