//! Draft-token acceptance: per SD step, draft tokens are accepted one by one with the request's
//! acceptance probability until the first rejection, then the target adds one token, so a step
//! yields 1..=k+1 tokens (the standard speculative-decoding model of Leviathan et al., 2023, used
//! by the LAPS-SD estimate n*A + 1 tokens per step).
//!
//! Each request has a latent probability alpha. An optional early transient makes the observed
//! rate "move" before it settles (LAPS-SD waits for it to be stable): during the first
//! `transient_steps` SD steps alpha is shifted by `transient_shift`, the shift decaying linearly to
//! zero; the sign of the shift is drawn per request.
//!
//! Randomness is a counter-based hash of (seed, request id, step index), not a shared RNG stream:
//! a request sees the same acceptance outcomes under every policy, whatever order the policies run
//! it in (common random numbers across policies).

use serde::{Deserialize, Serialize};

/// The acceptance model's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceModel {
    /// SD steps over which the early shift decays to zero (0 = no transient).
    pub transient_steps: u32,
    /// Size of the shift of alpha at step 0 (absolute, e.g. 0.15); its sign is drawn per request.
    pub transient_shift: f64,
    /// Seed of the counter-based random numbers.
    pub seed: u64,
}

impl Default for AcceptanceModel {
    fn default() -> Self {
        Self {
            transient_steps: 16,
            transient_shift: 0.15,
            seed: 0,
        }
    }
}

/// SplitMix64 finaliser: a good 64-bit mix of one word.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in (0, 1] from (seed, a, b).
fn uniform(seed: u64, a: u64, b: u64) -> f64 {
    let h = mix64(mix64(mix64(seed) ^ a) ^ b);
    ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl AcceptanceModel {
    /// alpha in effect at SD step `step` (0-based) of request `id` with latent rate `alpha`.
    pub fn alpha_at(&self, id: u64, alpha: f64, step: u32) -> f64 {
        if step >= self.transient_steps || self.transient_shift == 0.0 {
            return alpha.clamp(0.0, 1.0);
        }
        let sign = if mix64(self.seed ^ mix64(id)) & 1 == 0 {
            1.0
        } else {
            -1.0
        };
        let decay = 1.0 - f64::from(step) / f64::from(self.transient_steps);
        (alpha + sign * self.transient_shift * decay).clamp(0.0, 1.0)
    }

    /// Draft tokens accepted (0..=k) at SD step `step` of request `id`: the number of successes
    /// before the first failure with success probability alpha, capped at k. Sampled by inversion
    /// with one uniform U: floor(ln U / ln alpha) has P(>= j) = alpha^j.
    pub fn accepted_tokens(&self, id: u64, alpha: f64, step: u32, speculation_length: u32) -> u32 {
        if speculation_length == 0 {
            return 0;
        }
        let a = self.alpha_at(id, alpha, step);
        if a <= 0.0 {
            return 0;
        }
        if a >= 1.0 {
            return speculation_length;
        }
        let u = uniform(self.seed, id, u64::from(step));
        let successes = (u.ln() / a.ln()).floor();
        if successes >= f64::from(speculation_length) {
            speculation_length
        } else {
            successes.max(0.0) as u32
        }
    }
}

/// Salts of the draft-length random numbers, so they are independent of the acceptance draws.
const DRAFT_MATCH_SALT: u64 = 0x6472_6166_745f_6d61;
const DRAFT_LENGTH_SALT: u64 = 0x6472_6166_745f_6c65;

/// How many tokens a drafter that does not always propose k drafts: prompt lookup drafts when
/// the recent tokens match earlier text and proposes nothing otherwise. Per SD step it drafts with
/// probability `match_probability`, then floor or ceil of `tokens_when_matched` (ceil with
/// probability equal to the fraction, so the mean is kept), at most the speculation length k.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DraftLength {
    pub match_probability: f64,
    pub tokens_when_matched: f64,
}

impl DraftLength {
    /// Mean draft tokens per SD step (before the cap at k).
    pub fn mean_tokens_per_step(&self) -> f64 {
        self.match_probability.clamp(0.0, 1.0) * self.tokens_when_matched.max(0.0)
    }
}

impl AcceptanceModel {
    /// Draft tokens proposed at SD step `step` of request `id` whose drafter follows `draft`.
    pub fn drafted_tokens(
        &self,
        id: u64,
        draft: &DraftLength,
        step: u32,
        speculation_length: u32,
    ) -> u32 {
        let matched = uniform(self.seed ^ DRAFT_MATCH_SALT, id, u64::from(step));
        if matched > draft.match_probability {
            return 0;
        }
        let mean = draft
            .tokens_when_matched
            .clamp(0.0, f64::from(speculation_length));
        let floor = mean.floor();
        let u = uniform(self.seed ^ DRAFT_LENGTH_SALT, id, u64::from(step));
        let drafted = if u <= mean - floor {
            floor + 1.0
        } else {
            floor
        };
        (drafted as u32).min(speculation_length)
    }
}

/// Expected accepted draft tokens per step under prefix acceptance with per-token probability
/// `alpha` in a step that drafts floor or ceil of `draft_tokens_per_step` tokens (as
/// [`AcceptanceModel::drafted_tokens`] does once matched): sum over j = 1..=d of alpha^j, averaged
/// over d.
pub fn expected_accepted_per_step(alpha: f64, draft_tokens_per_step: f64) -> f64 {
    let a = alpha.clamp(0.0, 1.0);
    let mean = draft_tokens_per_step.max(0.0);
    let floor = mean.floor();
    let frac = mean - floor;
    let accepted_of = |d: u32| (1..=d).map(|j| a.powi(j as i32)).sum::<f64>();
    let d = floor as u32;
    (1.0 - frac) * accepted_of(d) + frac * accepted_of(d + 1)
}

/// The per-token acceptance alpha for which [`expected_accepted_per_step`] at
/// `draft_tokens_per_step` equals `accepted_per_step` (a served request's accepted / drafting
/// steps); by
/// bisection, the expectation being increasing in alpha. 1 when every drafted token was accepted.
pub fn alpha_for_accepted_per_step(draft_tokens_per_step: f64, accepted_per_step: f64) -> f64 {
    if draft_tokens_per_step <= 0.0 || accepted_per_step <= 0.0 {
        return 0.0;
    }
    if accepted_per_step >= draft_tokens_per_step {
        return 1.0;
    }
    let (mut low, mut high) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if expected_accepted_per_step(mid, draft_tokens_per_step) < accepted_per_step {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// Expected tokens per SD step with per-token acceptance `alpha` and speculation length `k`:
/// (1 - alpha^(k+1)) / (1 - alpha) (Leviathan et al., 2023).
pub fn expected_tokens_per_step(alpha: f64, speculation_length: u32) -> f64 {
    let a = alpha.clamp(0.0, 1.0);
    if a >= 1.0 {
        f64::from(speculation_length + 1)
    } else {
        (1.0 - a.powi(speculation_length as i32 + 1)) / (1.0 - a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_lengths_follow_the_truncated_geometric_law() {
        let model = AcceptanceModel {
            transient_steps: 0,
            transient_shift: 0.0,
            seed: 3,
        };
        let (alpha, k, n) = (0.7, 4u32, 200_000u32);
        let mut counts = [0u32; 5];
        for step in 0..n {
            counts[model.accepted_tokens(u64::from(step % 97), alpha, step, k) as usize] += 1;
        }
        for (j, &c) in counts.iter().enumerate() {
            let p = if j < k as usize {
                alpha.powi(j as i32) * (1.0 - alpha)
            } else {
                alpha.powi(k as i32)
            };
            let freq = f64::from(c) / f64::from(n);
            // Binomial SE <= 0.0012: 0.006 is ~5 SE.
            assert!((freq - p).abs() < 0.006, "P(A={j}) = {freq}, expected {p}");
        }
        let mean_tokens = counts
            .iter()
            .enumerate()
            .map(|(j, &c)| (j as f64 + 1.0) * f64::from(c))
            .sum::<f64>()
            / f64::from(n);
        assert!((mean_tokens - expected_tokens_per_step(alpha, k)).abs() < 0.02);
    }

    #[test]
    fn transient_shifts_early_steps_only_and_is_deterministic() {
        let model = AcceptanceModel {
            transient_steps: 10,
            transient_shift: 0.2,
            seed: 9,
        };
        let shifted = model.alpha_at(5, 0.5, 0);
        assert!((shifted - 0.5).abs() > 0.19);
        assert!((model.alpha_at(5, 0.5, 5) - 0.5).abs() - 0.1 < 1e-12);
        assert_eq!(model.alpha_at(5, 0.5, 10), 0.5);
        assert_eq!(
            model.accepted_tokens(5, 0.5, 3, 4),
            model.accepted_tokens(5, 0.5, 3, 4)
        );
        assert_eq!(model.accepted_tokens(5, 0.5, 3, 0), 0);
        assert_eq!(model.accepted_tokens(5, 1.0, 30, 4), 4);
    }

    #[test]
    fn draft_lengths_keep_their_mean_and_cap() {
        let model = AcceptanceModel {
            seed: 4,
            ..AcceptanceModel::default()
        };
        let always = DraftLength {
            match_probability: 1.0,
            tokens_when_matched: 1.59,
        };
        let sometimes = DraftLength {
            match_probability: 0.25,
            tokens_when_matched: 3.0,
        };
        let n = 100_000u32;
        let mean_of = |draft: &DraftLength| {
            let total: u64 = (0..n)
                .map(|step| u64::from(model.drafted_tokens(7, draft, step, 4)))
                .sum();
            total as f64 / f64::from(n)
        };
        // Bernoulli SE <= 0.0016 per unit of length: 0.01 and 0.02 are >= 4 SE.
        assert!((mean_of(&always) - 1.59).abs() < 0.01);
        assert!((mean_of(&sometimes) - 0.75).abs() < 0.02);
        assert!((0..1000).all(|s| (1..=2).contains(&model.drafted_tokens(7, &always, s, 4))));
        assert!((0..1000).all(|s| [0, 3].contains(&model.drafted_tokens(7, &sometimes, s, 4))));
        let fixed = |tokens| DraftLength {
            match_probability: 1.0,
            tokens_when_matched: tokens,
        };
        assert_eq!(model.drafted_tokens(7, &fixed(6.0), 0, 4), 4);
        assert_eq!(model.drafted_tokens(7, &fixed(3.0), 0, 4), 3);
        assert_eq!(model.drafted_tokens(7, &fixed(0.0), 0, 4), 0);
        assert_eq!(sometimes.mean_tokens_per_step(), 0.75);
    }

    #[test]
    fn alpha_from_served_counters_reproduces_accepted_per_step() {
        // Whole draft length: the closed form sum alpha^j.
        assert!((expected_accepted_per_step(0.5, 2.0) - 0.75).abs() < 1e-12);
        for (draft, accepted) in [(1.59, 0.3), (4.0, 2.5), (2.5, 0.01), (0.8, 0.7)] {
            let alpha = alpha_for_accepted_per_step(draft, accepted);
            assert!((0.0..=1.0).contains(&alpha));
            let back = expected_accepted_per_step(alpha, draft);
            assert!((back - accepted).abs() < 1e-9, "{draft} {accepted}: {back}");
        }
        assert_eq!(alpha_for_accepted_per_step(2.0, 2.0), 1.0);
        assert_eq!(alpha_for_accepted_per_step(2.0, 0.0), 0.0);
        assert_eq!(alpha_for_accepted_per_step(0.0, 0.0), 0.0);
        // The served ratio accepted/drafted understates alpha: at 1.59 drafted and 0.3 accepted
        // per step the ratio is 0.19, alpha is higher.
        assert!(alpha_for_accepted_per_step(1.59, 0.3) > 0.3 / 1.59);
        // And the sampler agrees with the expectation it was solved against.
        let model = AcceptanceModel {
            transient_steps: 0,
            transient_shift: 0.0,
            seed: 11,
        };
        let alpha = alpha_for_accepted_per_step(1.59, 0.3);
        let n = 200_000u32;
        let accepted: u64 = (0..n)
            .map(|step| {
                let d = model.drafted_tokens(
                    3,
                    &DraftLength {
                        match_probability: 1.0,
                        tokens_when_matched: 1.59,
                    },
                    step,
                    4,
                );
                u64::from(model.accepted_tokens(3, alpha, step, d))
            })
            .sum();
        let mean = accepted as f64 / f64::from(n);
        assert!(
            (mean - 0.3).abs() < 0.01,
            "sampled accepted per step {mean}"
        );
    }
}
