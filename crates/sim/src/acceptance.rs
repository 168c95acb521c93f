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
}
