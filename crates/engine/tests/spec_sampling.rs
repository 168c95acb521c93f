//! Speculative sampling is lossless: on small synthetic target/draft distributions, the tokens it
//! emits follow the target's (processed) distribution. Pearson chi-square goodness-of-fit with a
//! fixed seed, N = 200,000 draws, pass bound p-value > 0.001; a deliberately wrong verifier (which
//! resamples from `p` instead of `norm(max(0, p - q))` after a rejection) must fail the same test.

use lapsd_engine::spec::sampling::{sample, verify_sampled, DraftProbs, SamplingMode, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N_DRAWS: usize = 200_000;
const PASS_P_VALUE: f64 = 0.001;
const VOCAB: usize = 8;

// ---------- chi-square machinery ----------

/// ln Γ(x) by the Lanczos approximation (g = 7, n = 9), |error| < 1e-13 for x > 0.
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let ln_pre = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * ln_pre.exp()
    } else {
        // Lentz's method for the continued fraction.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        ln_pre.exp() * h
    }
}

/// Pearson chi-square p-value of `observed` counts against `expected` probabilities. Cells with
/// zero expected probability must have zero observations (else the p-value is 0).
fn chi_square_p_value(observed: &[u64], expected: &[f64]) -> f64 {
    let n: u64 = observed.iter().sum();
    let mut stat = 0.0;
    let mut cells = 0usize;
    for (&o, &e) in observed.iter().zip(expected) {
        if e <= 0.0 {
            if o > 0 {
                return 0.0;
            }
            continue;
        }
        let e_count = e * n as f64;
        stat += (o as f64 - e_count).powi(2) / e_count;
        cells += 1;
    }
    gamma_q((cells - 1) as f64 / 2.0, stat / 2.0)
}

#[test]
fn chi_square_p_values_match_tables() {
    // Critical values of the chi-square distribution (standard tables).
    assert!((chi_square_cdf_tail(3.841, 1) - 0.05).abs() < 1e-3);
    assert!((chi_square_cdf_tail(18.307, 10) - 0.05).abs() < 1e-3);
    assert!((chi_square_cdf_tail(57.342, 35) - 0.01).abs() < 1e-4);
    assert!((chi_square_cdf_tail(60.275, 35) - 0.005).abs() < 1e-4);
    assert!((chi_square_cdf_tail(2.558, 10) - 0.99).abs() < 1e-3);
    // A perfect fit has p-value 1, a gross misfit ~0.
    assert!(chi_square_p_value(&[500, 500], &[0.5, 0.5]) > 0.999);
    assert!(chi_square_p_value(&[600, 400], &[0.5, 0.5]) < 1e-9);
}

fn chi_square_cdf_tail(stat: f64, dof: usize) -> f64 {
    gamma_q(dof as f64 / 2.0, stat / 2.0)
}

// ---------- a synthetic two-step "language model" ----------

fn normalised(weights: impl Iterator<Item = f32>) -> Vec<f32> {
    let w: Vec<f32> = weights.collect();
    let total: f32 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

/// Target distribution after `prefix`. Has zero cells, and cells where q has no mass.
fn target_probs(prefix: &[u32]) -> Vec<f32> {
    match prefix {
        [] => vec![0.30, 0.05, 0.20, 0.0, 0.15, 0.10, 0.12, 0.08],
        [a] => normalised((0..VOCAB as u32).map(|b| ((a * 3 + b * 5) % 7) as f32)),
        _ => normalised((0..VOCAB as u32).map(|b| 1.0 + b as f32)),
    }
}

/// Draft distribution after `prefix`: deliberately different from the target.
fn draft_probs(prefix: &[u32]) -> Vec<f32> {
    match prefix {
        [] => vec![0.05, 0.30, 0.10, 0.25, 0.10, 0.0, 0.10, 0.10],
        [a] => normalised((0..VOCAB as u32).map(|b| 1.0 + ((a * 5 + b * 2) % 4) as f32)),
        _ => normalised((0..VOCAB as u32).map(|b| (VOCAB as u32 - b) as f32)),
    }
}

/// A verifier with a classic bug: after a rejection it resamples from `p` instead of the residual.
fn verify_wrong<R: Rng>(draft: &[u32], q: &[DraftProbs], p: &[Vec<f32>], rng: &mut R) -> Verdict {
    for (i, (&x, qi)) in draft.iter().zip(q).enumerate() {
        let q_x = match qi {
            DraftProbs::OneHot => 1.0,
            DraftProbs::Dense(d) => d[x as usize],
        };
        if rng.gen::<f32>() * q_x < p[i][x as usize] {
            continue;
        }
        return Verdict {
            accepted: i,
            next_token: sample(&p[i], rng),
        };
    }
    Verdict {
        accepted: draft.len(),
        next_token: sample(&p[draft.len()], rng),
    }
}

type Verifier = fn(&[u32], &[DraftProbs], &[Vec<f32>], &mut StdRng) -> Verdict;

fn verify_right(draft: &[u32], q: &[DraftProbs], p: &[Vec<f32>], rng: &mut StdRng) -> Verdict {
    verify_sampled(draft, q, p, rng)
}

/// Generates `n_out` tokens from the empty prefix by speculative steps of `k` drafts each.
fn generate(k: usize, n_out: usize, verifier: Verifier, rng: &mut StdRng) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    while out.len() < n_out {
        let mut ctx = out.clone();
        let (mut draft, mut q, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..k {
            let qi = draft_probs(&ctx);
            let x = sample(&qi, rng);
            p.push(target_probs(&ctx));
            q.push(DraftProbs::Dense(qi));
            draft.push(x);
            ctx.push(x);
        }
        p.push(target_probs(&ctx));
        let v = verifier(&draft, &q, &p, rng);
        out.extend_from_slice(&draft[..v.accepted]);
        out.push(v.next_token);
    }
    out.truncate(n_out);
    out
}

fn first_token_p_value(k: usize, verifier: Verifier, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0u64; VOCAB];
    for _ in 0..N_DRAWS {
        counts[generate(k, 1, verifier, &mut rng)[0] as usize] += 1;
    }
    let expected: Vec<f64> = target_probs(&[]).iter().map(|&x| f64::from(x)).collect();
    chi_square_p_value(&counts, &expected)
}

fn two_token_p_value(k: usize, verifier: Verifier, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0u64; VOCAB * VOCAB];
    for _ in 0..N_DRAWS {
        let out = generate(k, 2, verifier, &mut rng);
        counts[out[0] as usize * VOCAB + out[1] as usize] += 1;
    }
    let p1 = target_probs(&[]);
    let mut expected = vec![0.0f64; VOCAB * VOCAB];
    for a in 0..VOCAB {
        let p2 = target_probs(&[a as u32]);
        for b in 0..VOCAB {
            expected[a * VOCAB + b] = f64::from(p1[a]) * f64::from(p2[b]);
        }
    }
    chi_square_p_value(&counts, &expected)
}

#[test]
fn first_token_follows_the_target_for_k_1_and_3() {
    for (k, seed) in [(1, 11), (3, 12)] {
        let p_value = first_token_p_value(k, verify_right, seed);
        eprintln!("k={k}: chi-square p-value {p_value:.4}");
        assert!(p_value > PASS_P_VALUE, "k={k}: p-value {p_value}");
    }
}

#[test]
fn two_token_outputs_follow_the_target_joint() {
    for (k, seed) in [(1, 21), (2, 22), (4, 23)] {
        let p_value = two_token_p_value(k, verify_right, seed);
        eprintln!("k={k}: chi-square p-value {p_value:.4}");
        assert!(p_value > PASS_P_VALUE, "k={k}: p-value {p_value}");
    }
}

#[test]
fn the_same_test_rejects_a_wrong_residual() {
    let p_value = first_token_p_value(1, verify_wrong, 11);
    eprintln!("wrong verifier: chi-square p-value {p_value:.3e}");
    assert!(
        p_value < PASS_P_VALUE,
        "wrong verifier passed: p-value {p_value}"
    );
    let p_value = two_token_p_value(2, verify_wrong, 22);
    eprintln!("wrong verifier: chi-square p-value {p_value:.3e}");
    assert!(
        p_value < PASS_P_VALUE,
        "wrong verifier passed: p-value {p_value}"
    );
}

#[test]
fn one_hot_drafts_follow_the_target() {
    // An n-gram drafter always proposes the same token: q is one-hot.
    let p = [target_probs(&[]), target_probs(&[2])];
    let mut rng = StdRng::seed_from_u64(31);
    let mut counts = vec![0u64; VOCAB];
    for _ in 0..N_DRAWS {
        let v = verify_sampled(&[2], &[DraftProbs::OneHot], &p, &mut rng);
        let first = if v.accepted == 1 { 2 } else { v.next_token };
        counts[first as usize] += 1;
    }
    let expected: Vec<f64> = p[0].iter().map(|&x| f64::from(x)).collect();
    let p_value = chi_square_p_value(&counts, &expected);
    eprintln!("chi-square p-value {p_value:.4}");
    assert!(p_value > PASS_P_VALUE, "p-value {p_value}");
}

#[test]
fn temperature_and_top_p_output_follows_the_processed_target() {
    let target_logits = [1.2f32, -0.3, 0.8, 2.0, -1.5, 0.1, 0.0, 1.0];
    let draft_logits = [0.2f32, 0.9, 0.5, 1.0, 0.3, -0.2, 1.1, -0.4];
    let mode = SamplingMode::new(0.7, 0.85);
    let p = mode.probs(&target_logits);
    let q = mode.probs(&draft_logits);
    assert!(
        p.iter().filter(|&&x| x == 0.0).count() >= 2,
        "top-p must cut some tokens: {p:?}"
    );
    let p_rows = [p.clone(), p.clone()];
    let mut rng = StdRng::seed_from_u64(41);
    let mut counts = vec![0u64; VOCAB];
    for _ in 0..N_DRAWS {
        let x = sample(&q, &mut rng);
        let v = verify_sampled(&[x], &[DraftProbs::Dense(q.clone())], &p_rows, &mut rng);
        let first = if v.accepted == 1 { x } else { v.next_token };
        counts[first as usize] += 1;
    }
    let expected: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
    let p_value = chi_square_p_value(&counts, &expected);
    eprintln!("chi-square p-value {p_value:.4}");
    assert!(p_value > PASS_P_VALUE, "p-value {p_value}");
}
