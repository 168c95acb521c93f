//! Per-request speculation length (`--speculation-mode auto`): each step, every decoding member
//! gets its own k from its acceptance estimate and the step cost model, so that the step
//! produces the most tokens per second of step time.
//!
//! Model. Draft tokens are accepted one by one with the request's per-position probability
//! `alpha` until the first rejection, and the target adds one token (Leviathan, Kalman & Matias
//! 2023), so a step at length k yields `E(k) = 1 + alpha + ... + alpha^k` tokens in expectation:
//! the k-th draft token adds `alpha^k`. A step of m decoding members costs
//! `draft_s(m) * max_i k_i + verify_tokens_s(m, sum_i (k_i + 1))` plus whatever prefills run in
//! it. Maximising tokens per second `sum_i E_i(k_i) / T(k)` is a fractional program; for a fixed
//! longest draft its Dinkelbach form `max sum_i E_i(k_i) - lambda T(k)` separates by member
//! (each drafts while `alpha_i^k >= lambda * c`, c the verify cost of one more position), and a
//! few iterations of `lambda <- E / T` converge. The longest draft is tried from 0 to the
//! configured maximum, which accounts for draft passes being paid once per step for the batch
//! (TurboSpec and SmartSpec choose k per step from goodput in the same spirit, one k per batch;
//! here it is per request).
//!
//! Acceptance. `alpha` per request: accepted draft tokens over draft positions tried (a
//! position is tried only after every earlier one was accepted), shrunk toward the mean of
//! finished requests with [`PRIOR_ATTEMPTS`] pseudo-attempts: a Beta posterior. The chooser
//! drafts on its mean plus one standard deviation while it learns (optimism under uncertainty,
//! as in UCB), the bonus fading to nothing over its first [`LEARNING_ATTEMPTS`] tried positions:
//! a request that has tried few positions drafts when its rate might make drafts pay, and stops
//! after a few rejections; where a verified position costs most of a decode step (one CPU core)
//! and the population's drafts are mostly rejected, a new request does not draft at all. Kept
//! for the whole request, the bonus made known requests draft too long where drafts are cheap
//! (GPU-shaped profile, mixed workload: 1.2% above the best fixed k). Forcing every request to
//! draft one token until it had tried 16 positions instead cost 9-11% mean latency served on
//! one core with n-gram drafts accepted 30% of the time (docs/speculative-decoding.md).
use serde::{Deserialize, Serialize};

use crate::cost::StepCostModel;
use crate::request::AcceptanceTracker;

/// How each decoding member's speculation length is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SpeculationMode {
    /// The configured speculation length for every member (capped by its `max_tokens`).
    #[default]
    Fixed,
    /// Per member and step, up to the configured length, from its acceptance estimate and the
    /// step cost model (module docs).
    Auto,
}

/// Pseudo-attempts the population's mean acceptance carries in a request's estimate.
pub const PRIOR_ATTEMPTS: f64 = 8.0;
/// Draft positions over which the optimism of a request's estimate fades to its mean.
pub const LEARNING_ATTEMPTS: u64 = 16;
/// Draft positions a finished request must have tried for its rate to join the population's
/// mean (the prior of new requests).
pub const MIN_PRIOR_ATTEMPTS: u64 = 4;
/// Dinkelbach iterations per longest-draft candidate (converges in 3-4 in practice).
const ITERATIONS: usize = 8;

/// Draft positions tried so far: position 0 in every step that drafted, position i > 0 only
/// after position i - 1 was accepted (and when the drafter proposed that far).
pub fn attempted_positions(t: &AcceptanceTracker) -> u64 {
    t.drafted_per_position
        .iter()
        .enumerate()
        .map(|(i, &drafted)| {
            if i == 0 {
                drafted
            } else {
                drafted.min(t.accepted_per_position.get(i - 1).copied().unwrap_or(0))
            }
        })
        .sum()
}

/// Beta posterior parameters of a request's per-position acceptance: `prior_mean` carried by
/// [`PRIOR_ATTEMPTS`] pseudo-attempts, plus its own accepted and rejected positions (`attempts`
/// = [`attempted_positions`]).
fn posterior(t: &AcceptanceTracker, prior_mean: f64, attempts: u64) -> (f64, f64) {
    let prior_mean = prior_mean.clamp(0.0, 1.0);
    let attempts = attempts as f64;
    let accepted = (t.accepted_tokens as f64).min(attempts);
    (
        accepted + PRIOR_ATTEMPTS * prior_mean,
        attempts - accepted + PRIOR_ATTEMPTS * (1.0 - prior_mean),
    )
}

/// Per-position acceptance estimate of a request (its posterior mean), shrunk toward
/// `prior_mean`.
pub fn acceptance_estimate(t: &AcceptanceTracker, prior_mean: f64) -> f64 {
    let (a, b) = posterior(t, prior_mean, attempted_positions(t));
    (a / (a + b)).clamp(0.0, 1.0)
}

/// The acceptance the chooser drafts on: the posterior mean plus one standard deviation,
/// fading linearly to the mean over the first [`LEARNING_ATTEMPTS`] positions (module docs),
/// at most 1.
pub fn optimistic_acceptance(t: &AcceptanceTracker, prior_mean: f64) -> f64 {
    let attempts = attempted_positions(t);
    let (a, b) = posterior(t, prior_mean, attempts);
    let n = a + b;
    let sd = (a * b / (n * n * (n + 1.0))).sqrt();
    let fade = 1.0 - (attempts as f64 / LEARNING_ATTEMPTS as f64).min(1.0);
    (a / n + sd * fade).clamp(0.0, 1.0)
}

/// Expected tokens one step yields at speculation length `k`: `1 + alpha + ... + alpha^k`.
pub fn expected_tokens(alpha: f64, k: u32) -> f64 {
    let mut total = 1.0;
    let mut term = 1.0;
    for _ in 0..k {
        term *= alpha;
        total += term;
    }
    total
}

/// One decoding member as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeMember {
    /// Per-position acceptance estimate.
    pub alpha: f64,
    /// Longest draft it may take (the configured length, capped by its `max_tokens`).
    pub max_k: u32,
}

/// The step's other work: prefills that run in it anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FixedWork {
    pub seconds: f64,
    /// Tokens it produces (one per prefill that completes).
    pub tokens: f64,
}

/// Expected tokens and seconds of a step whose decoding `members` draft `ks` (same order), with
/// the `fixed` work of its prefills (module docs).
fn step_tokens_and_seconds(
    ks: &[u32],
    members: &[DecodeMember],
    fixed: FixedWork,
    cost: &dyn StepCostModel,
) -> (f64, f64) {
    let m = members.len();
    let longest = ks.iter().copied().max().unwrap_or(0);
    let positions: usize = ks.iter().map(|&k| k as usize + 1).sum();
    let seconds =
        fixed.seconds + f64::from(longest) * cost.draft_s(m) + cost.verify_tokens_s(m, positions);
    let tokens = fixed.tokens
        + members
            .iter()
            .zip(ks)
            .map(|(member, &k)| expected_tokens(member.alpha, k))
            .sum::<f64>();
    (tokens, seconds)
}

/// Speculation lengths for `members` (same order) that maximise expected tokens per second of
/// the step (module docs).
pub fn choose_speculation_lengths(
    members: &[DecodeMember],
    fixed: FixedWork,
    cost: &dyn StepCostModel,
) -> Vec<u32> {
    let m = members.len();
    if m == 0 {
        return Vec::new();
    }
    let base_positions = m;
    // One more verified position: the marginal cost of a draft token.
    let per_position_s = (cost.verify_tokens_s(m, base_positions + 1)
        - cost.verify_tokens_s(m, base_positions))
    .max(0.0);
    let evaluate = |ks: &[u32]| step_tokens_and_seconds(ks, members, fixed, cost);
    let longest_allowed = members.iter().map(|x| x.max_k).max().unwrap_or(0);
    let mut best: Option<(f64, Vec<u32>)> = None;
    for longest in 0..=longest_allowed {
        let cap = |member: &DecodeMember| member.max_k.min(longest);
        let mut ks = vec![0u32; m];
        let (tokens, seconds) = evaluate(&ks);
        let mut rate = tokens / seconds.max(1e-12);
        for _ in 0..ITERATIONS {
            let threshold = rate * per_position_s;
            for (k, member) in ks.iter_mut().zip(members) {
                let cap = cap(member);
                let mut chosen = 0;
                // Draft the next token while its expected gain pays for its position.
                let mut gain = member.alpha;
                while chosen < cap && gain >= threshold && gain > 0.0 {
                    chosen += 1;
                    gain *= member.alpha;
                }
                *k = chosen;
            }
            let (tokens, seconds) = evaluate(&ks);
            let next = tokens / seconds.max(1e-12);
            let converged = (next - rate).abs() <= 1e-12 * rate.abs().max(1.0);
            rate = next;
            if converged {
                break;
            }
        }
        let better = best.as_ref().is_none_or(|(r, _)| rate > *r);
        if better {
            best = Some((rate, ks));
        }
    }
    best.map(|(_, ks)| ks).unwrap_or_else(|| vec![0; m])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::LinearCost;

    fn cpu() -> LinearCost {
        LinearCost {
            draft_base_s: 0.0,
            draft_per_seq_s: 0.0,
            verify_base_s: 0.005,
            verify_per_token_s: 0.005,
            prefill_base_s: 0.0,
            prefill_per_token_s: 0.005,
        }
    }

    fn member(alpha: f64) -> DecodeMember {
        DecodeMember { alpha, max_k: 8 }
    }

    /// Exhaustive search over every k vector (small cases).
    fn brute_force(members: &[DecodeMember], fixed: FixedWork, cost: &dyn StepCostModel) -> f64 {
        let m = members.len();
        let mut ks = vec![0u32; m];
        let mut best = 0.0f64;
        loop {
            let (tokens, seconds) = step_tokens_and_seconds(&ks, members, fixed, cost);
            best = best.max(tokens / seconds);
            // Next vector, odometer order.
            let mut i = 0;
            loop {
                if i == m {
                    return best;
                }
                if ks[i] < members[i].max_k {
                    ks[i] += 1;
                    break;
                }
                ks[i] = 0;
                i += 1;
            }
        }
    }

    fn rate_of(ks: &[u32], members: &[DecodeMember], fixed: FixedWork, cost: &LinearCost) -> f64 {
        let (tokens, seconds) = step_tokens_and_seconds(ks, members, fixed, cost);
        tokens / seconds
    }

    #[test]
    fn expected_tokens_is_the_geometric_sum() {
        assert_eq!(expected_tokens(0.5, 0), 1.0);
        assert!((expected_tokens(0.5, 3) - 1.875).abs() < 1e-12);
        assert_eq!(expected_tokens(1.0, 4), 5.0);
        assert_eq!(expected_tokens(0.0, 4), 1.0);
    }

    #[test]
    fn high_acceptance_drafts_long_and_low_acceptance_not_at_all() {
        let cost = cpu();
        let ks =
            choose_speculation_lengths(&[member(0.95), member(0.1)], FixedWork::default(), &cost);
        assert!(ks[0] >= 4, "{ks:?}");
        assert_eq!(ks[1], 0, "{ks:?}");
        // Caps hold.
        let capped = DecodeMember {
            max_k: 2,
            ..member(0.99)
        };
        assert_eq!(
            choose_speculation_lengths(&[capped], FixedWork::default(), &cost),
            vec![2]
        );
    }

    #[test]
    fn matches_exhaustive_search_on_small_batches() {
        let gpu_like = LinearCost {
            draft_base_s: 0.002,
            draft_per_seq_s: 0.0001,
            verify_base_s: 0.03,
            verify_per_token_s: 0.0002,
            prefill_base_s: 0.0,
            prefill_per_token_s: 0.0001,
        };
        let costs = [cpu(), gpu_like];
        let alphas = [0.05, 0.3, 0.55, 0.7, 0.85, 0.97];
        for cost in &costs {
            for fixed in [
                FixedWork::default(),
                FixedWork {
                    seconds: 0.2,
                    tokens: 1.0,
                },
            ] {
                for (i, &a) in alphas.iter().enumerate() {
                    for &b in &alphas[i..] {
                        let members = [
                            DecodeMember {
                                max_k: 5,
                                ..member(a)
                            },
                            DecodeMember {
                                max_k: 5,
                                ..member(b)
                            },
                            DecodeMember {
                                max_k: 3,
                                ..member(0.6)
                            },
                        ];
                        let ks = choose_speculation_lengths(&members, fixed, cost);
                        let got = rate_of(&ks, &members, fixed, cost);
                        let best = brute_force(&members, fixed, cost);
                        assert!(
                            got >= best * (1.0 - 1e-9),
                            "alphas {a} {b}: {ks:?} gives {got}, best {best}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn acceptance_estimate_counts_tried_positions_and_shrinks() {
        let mut t = AcceptanceTracker::default();
        // Fresh: the prior mean.
        assert!((acceptance_estimate(&t, 0.6) - 0.6).abs() < 1e-12);
        // Steps of 4 drafts accepting 1, 4, 0: tried 2 + 4 + 1 = 7 positions, 5 accepted.
        for accepted in [1, 4, 0] {
            t.record_step(4, accepted, 4);
        }
        assert_eq!(attempted_positions(&t), 7);
        let want = (5.0 + PRIOR_ATTEMPTS * 0.5) / (7.0 + PRIOR_ATTEMPTS);
        assert!((acceptance_estimate(&t, 0.5) - want).abs() < 1e-12);
    }

    #[test]
    fn optimism_is_one_posterior_sd_and_fades_with_tried_positions() {
        let mut t = AcceptanceTracker::default();
        // Fresh, prior 0.3 over 8 pseudo-attempts: Beta(2.4, 5.6), sd sqrt(2.4 * 5.6 / (64 * 9)).
        let sd = (2.4f64 * 5.6 / (64.0 * 9.0)).sqrt();
        assert!((optimistic_acceptance(&t, 0.3) - (0.3 + sd)).abs() < 1e-12);
        // Every position rejected: the bonus and the mean fall together.
        let mut previous = optimistic_acceptance(&t, 0.3);
        for _ in 0..20 {
            t.record_step(1, 0, 1);
            let now = optimistic_acceptance(&t, 0.3);
            assert!(now < previous, "{now} after {previous}");
            previous = now;
        }
        // LEARNING_ATTEMPTS positions tried: the mean itself.
        let mut known = AcceptanceTracker::default();
        for _ in 0..LEARNING_ATTEMPTS / 2 {
            known.record_step(4, 1, 4);
        }
        assert_eq!(attempted_positions(&known), LEARNING_ATTEMPTS);
        let mean = acceptance_estimate(&known, 0.3);
        assert!((optimistic_acceptance(&known, 0.3) - mean).abs() < 1e-12);
    }
}
