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
//! finished requests: a Beta posterior whose prior carries as many pseudo-attempts as the spread
//! between requests allows ([`AcceptancePopulation`]). The chooser
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

/// Most pseudo-attempts the population's mean acceptance carries in a request's estimate (where
/// requests accept alike).
pub const MAX_PRIOR_ATTEMPTS: f64 = 8.0;
/// Pseudo-attempts of the prior while the spread between requests is unknown (fewer than two
/// finished requests drafted) or wide: two, the uniform Beta(1, 1) around the mean 1/2.
pub const MIN_PRIOR_ATTEMPTS: f64 = 2.0;
/// Draft positions over which the optimism of a request's estimate fades to its mean.
pub const LEARNING_ATTEMPTS: u64 = 16;
/// Draft positions a finished request must have tried for its rate to join the population (the
/// prior of new requests).
pub const MIN_ATTEMPTS_TO_JOIN_POPULATION: u64 = 4;
/// Dinkelbach iterations per longest-draft candidate (converges in 3-4 in practice).
const ITERATIONS: usize = 8;

/// The Beta prior of a request's per-position acceptance: its mean and the pseudo-attempts it
/// carries against the request's own tried positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptancePrior {
    pub mean: f64,
    pub attempts: f64,
}

impl AcceptancePrior {
    /// Before any request has drafted: Beta(1, 1).
    pub const UNINFORMED: AcceptancePrior = AcceptancePrior {
        mean: 0.5,
        attempts: MIN_PRIOR_ATTEMPTS,
    };
}

/// Finished requests' per-position acceptance rates, as the prior of new requests: a Beta with
/// their mean and as many pseudo-attempts as the spread between requests gives by the method of
/// moments (`var = m (1 - m) / (n + 1)`), each rate's own sampling noise subtracted (empirical
/// Bayes), within [`MIN_PRIOR_ATTEMPTS`, `MAX_PRIOR_ATTEMPTS`]. Where requests accept alike the
/// prior is strong and a new request drafts as the population does; where they differ (code
/// edits accepting 0.9 beside chat accepting 0.3) it is weak, so a new request's optimistic
/// estimate is high enough for it to try drafting and find out which kind it is. With a fixed
/// strong prior, a population whose mean fell just short of paying never drafted again, and no
/// request could learn that it was of the accepting kind.
#[derive(Debug, Clone, Default)]
pub struct AcceptancePopulation {
    count: u64,
    rate_sum: f64,
    rate_square_sum: f64,
    /// Sum of each rate's binomial sampling variance `rate (1 - rate) / attempts`.
    sampling_variance_sum: f64,
}

impl AcceptancePopulation {
    /// Adds a finished request's rate if it tried at least [`MIN_ATTEMPTS_TO_JOIN_POPULATION`]
    /// positions.
    pub fn observe(&mut self, t: &AcceptanceTracker) {
        let attempts = attempted_positions(t);
        if attempts < MIN_ATTEMPTS_TO_JOIN_POPULATION {
            return;
        }
        let attempts = attempts as f64;
        let rate = (t.accepted_tokens as f64 / attempts).clamp(0.0, 1.0);
        self.count += 1;
        self.rate_sum += rate;
        self.rate_square_sum += rate * rate;
        self.sampling_variance_sum += rate * (1.0 - rate) / attempts;
    }

    /// No finished request's rate has joined yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The prior of a new request's estimate.
    pub fn prior(&self) -> AcceptancePrior {
        if self.count == 0 {
            return AcceptancePrior::UNINFORMED;
        }
        let n = self.count as f64;
        let mean = self.rate_sum / n;
        if self.count < 2 {
            return AcceptancePrior {
                mean,
                attempts: MIN_PRIOR_ATTEMPTS,
            };
        }
        let observed_variance = ((self.rate_square_sum - n * mean * mean) / (n - 1.0)).max(0.0);
        let between_requests = observed_variance - self.sampling_variance_sum / n;
        let attempts = if between_requests <= 0.0 {
            MAX_PRIOR_ATTEMPTS
        } else {
            (mean * (1.0 - mean) / between_requests - 1.0)
                .clamp(MIN_PRIOR_ATTEMPTS, MAX_PRIOR_ATTEMPTS)
        };
        AcceptancePrior { mean, attempts }
    }
}

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

/// Beta posterior parameters of a request's per-position acceptance: the prior plus its own
/// accepted and rejected positions (`attempts` = [`attempted_positions`]).
fn posterior(t: &AcceptanceTracker, prior: AcceptancePrior, attempts: u64) -> (f64, f64) {
    let prior_mean = prior.mean.clamp(0.0, 1.0);
    let prior_attempts = prior.attempts.max(f64::MIN_POSITIVE);
    let attempts = attempts as f64;
    let accepted = (t.accepted_tokens as f64).min(attempts);
    (
        accepted + prior_attempts * prior_mean,
        attempts - accepted + prior_attempts * (1.0 - prior_mean),
    )
}

/// Per-position acceptance estimate of a request (its posterior mean), shrunk toward the prior.
pub fn acceptance_estimate(t: &AcceptanceTracker, prior: AcceptancePrior) -> f64 {
    let (a, b) = posterior(t, prior, attempted_positions(t));
    (a / (a + b)).clamp(0.0, 1.0)
}

/// The acceptance the chooser drafts on: the posterior mean plus one standard deviation,
/// fading linearly to the mean over the first [`LEARNING_ATTEMPTS`] positions (module docs),
/// at most 1.
pub fn optimistic_acceptance(t: &AcceptanceTracker, prior: AcceptancePrior) -> f64 {
    let attempts = attempted_positions(t);
    let (a, b) = posterior(t, prior, attempts);
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

    fn strong(mean: f64) -> AcceptancePrior {
        AcceptancePrior {
            mean,
            attempts: MAX_PRIOR_ATTEMPTS,
        }
    }

    #[test]
    fn acceptance_estimate_counts_tried_positions_and_shrinks() {
        let mut t = AcceptanceTracker::default();
        // Fresh: the prior mean.
        assert!((acceptance_estimate(&t, strong(0.6)) - 0.6).abs() < 1e-12);
        // Steps of 4 drafts accepting 1, 4, 0: tried 2 + 4 + 1 = 7 positions, 5 accepted.
        for accepted in [1, 4, 0] {
            t.record_step(4, accepted, 4);
        }
        assert_eq!(attempted_positions(&t), 7);
        let want = (5.0 + MAX_PRIOR_ATTEMPTS * 0.5) / (7.0 + MAX_PRIOR_ATTEMPTS);
        assert!((acceptance_estimate(&t, strong(0.5)) - want).abs() < 1e-12);
    }

    #[test]
    fn optimism_is_one_posterior_sd_and_fades_with_tried_positions() {
        let mut t = AcceptanceTracker::default();
        // Fresh, prior 0.3 over 8 pseudo-attempts: Beta(2.4, 5.6), sd sqrt(2.4 * 5.6 / (64 * 9)).
        let sd = (2.4f64 * 5.6 / (64.0 * 9.0)).sqrt();
        assert!((optimistic_acceptance(&t, strong(0.3)) - (0.3 + sd)).abs() < 1e-12);
        // Every position rejected: the bonus and the mean fall together.
        let mut previous = optimistic_acceptance(&t, strong(0.3));
        for _ in 0..20 {
            t.record_step(1, 0, 1);
            let now = optimistic_acceptance(&t, strong(0.3));
            assert!(now < previous, "{now} after {previous}");
            previous = now;
        }
        // LEARNING_ATTEMPTS positions tried: the mean itself.
        let mut known = AcceptanceTracker::default();
        for _ in 0..LEARNING_ATTEMPTS / 2 {
            known.record_step(4, 1, 4);
        }
        assert_eq!(attempted_positions(&known), LEARNING_ATTEMPTS);
        let mean = acceptance_estimate(&known, strong(0.3));
        assert!((optimistic_acceptance(&known, strong(0.3)) - mean).abs() < 1e-12);
    }

    /// A finished request that tried `attempts` positions one per step, accepting `accepted`.
    fn finished(attempts: u32, accepted: u32) -> AcceptanceTracker {
        let mut t = AcceptanceTracker::default();
        for i in 0..attempts {
            t.record_step(1, u32::from(i < accepted), 1);
        }
        t
    }

    #[test]
    fn the_population_prior_is_as_strong_as_requests_are_alike() {
        let mut population = AcceptancePopulation::default();
        assert_eq!(population.prior(), AcceptancePrior::UNINFORMED);
        // Too few positions tried: not counted.
        population.observe(&finished(3, 3));
        assert!(population.is_empty());
        // One rate: its mean, spread unknown.
        population.observe(&finished(100, 30));
        assert_eq!(
            population.prior(),
            AcceptancePrior {
                mean: 0.3,
                attempts: MIN_PRIOR_ATTEMPTS
            }
        );
        // Alike (0.28-0.32 over 100 positions each: within their own sampling noise): strong.
        for accepted in [28, 32, 31, 29, 30] {
            population.observe(&finished(100, accepted));
        }
        let alike = population.prior();
        assert!((alike.mean - 0.3).abs() < 1e-9);
        assert_eq!(alike.attempts, MAX_PRIOR_ATTEMPTS);
        // Two kinds, 0.3 and 0.9: Var ~0.09 between requests, m (1 - m) / var - 1 ~ 1.7: the
        // weakest prior.
        let mut two_kinds = AcceptancePopulation::default();
        for _ in 0..10 {
            two_kinds.observe(&finished(100, 30));
            two_kinds.observe(&finished(100, 90));
        }
        let prior = two_kinds.prior();
        assert!((prior.mean - 0.6).abs() < 1e-9);
        assert_eq!(prior.attempts, MIN_PRIOR_ATTEMPTS);
        // Between the two: Beta(6.5, 3.5)-like spread (sd 0.14) gives about 10 pseudo-attempts,
        // capped; a spread of sd 0.2 about 5.
        let mut spread = AcceptancePopulation::default();
        for accepted in [400, 800] {
            for _ in 0..10 {
                spread.observe(&finished(1000, accepted));
            }
        }
        let prior = spread.prior();
        let expected = 0.6 * 0.4 / (0.2 * 0.2 * 20.0 / 19.0 - 0.2 / 1000.0) - 1.0;
        assert!((prior.attempts - expected).abs() < 1e-6, "{prior:?}");
        assert!((4.0..6.0).contains(&prior.attempts));
    }

    #[test]
    fn a_new_request_tries_drafting_where_requests_differ_but_not_where_all_reject() {
        // One core, SmolLM2 with prompt-lookup drafts (profiles/cpu-1core-smollm2-ngram.json):
        // a verified position costs 68% of a one-token step, so at batch 1 drafting pays only
        // above an acceptance of ~0.68.
        let one_core = LinearCost {
            draft_base_s: 0.0,
            draft_per_seq_s: 0.0,
            verify_base_s: 0.00227,
            verify_per_token_s: 0.00493,
            prefill_base_s: 0.0,
            prefill_per_token_s: 0.0046,
        };
        let fresh = AcceptanceTracker::default();
        let first_k = |prior: AcceptancePrior| {
            let alpha = optimistic_acceptance(&fresh, prior);
            choose_speculation_lengths(
                &[DecodeMember { alpha, max_k: 6 }],
                FixedWork::default(),
                &one_core,
            )[0]
        };
        // Code edits (0.8) and chat (0.2) in one stream: the mean 0.5 alone would not pay, the
        // spread makes a new request try.
        let mut mixed = AcceptancePopulation::default();
        for _ in 0..10 {
            mixed.observe(&finished(100, 20));
            mixed.observe(&finished(100, 80));
        }
        assert!(first_k(mixed.prior()) > 0);
        // The same mean as a strong prior: no try (a population whose mean fell short never
        // drafted again).
        assert_eq!(first_k(strong(0.5)), 0);
        // Every request rejects most drafts alike: no try either.
        let mut rejecting = AcceptancePopulation::default();
        for accepted in [28, 32, 31, 29, 30, 30] {
            rejecting.observe(&finished(100, accepted));
        }
        assert_eq!(first_k(rejecting.prior()), 0);
        // Nothing known yet: the uniform prior tries.
        assert!(first_k(AcceptancePrior::UNINFORMED) > 0);
    }
}
