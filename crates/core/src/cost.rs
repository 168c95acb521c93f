//! Step-cost model: how long one draft pass, one verification and one prefill take. Used by the
//! simulator to advance time and by LAPS-SD to estimate remaining execution time
//! (T_SSM and T_LLM in the paper's estimate).

use serde::{Deserialize, Serialize};

/// Costs of the pieces of a speculative-decoding step, in seconds.
pub trait StepCostModel: Send + Sync {
    /// One draft forward pass over `batch` sequences (one token each).
    fn draft_s(&self, batch: usize) -> f64;
    /// One target verification of `batch` sequences that together verify `verified_tokens`
    /// positions (each sequence its own drafted tokens + 1: a drafter may propose fewer than the
    /// speculation length, as prompt lookup does when nothing matches).
    fn verify_tokens_s(&self, batch: usize, verified_tokens: usize) -> f64;
    /// One target verification of `speculation_length + 1` positions for each of `batch` sequences.
    fn verify_s(&self, batch: usize, speculation_length: u32) -> f64 {
        self.verify_tokens_s(batch, batch * (speculation_length as usize + 1))
    }
    /// A prefill of `tokens` prompt tokens.
    fn prefill_s(&self, tokens: u32) -> f64;
    /// A whole SD step: k draft passes then one verification (the k*t_draft(b) + t_verify(b,k)).
    fn sd_step_s(&self, batch: usize, speculation_length: u32) -> f64 {
        f64::from(speculation_length) * self.draft_s(batch)
            + self.verify_s(batch, speculation_length)
    }
}

/// Linear cost model; also the `cost` object of the JSON cost profile `lapsd calibrate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearCost {
    pub draft_base_s: f64,
    pub draft_per_seq_s: f64,
    pub verify_base_s: f64,
    /// Per verified position: a verification of b sequences at speculation length k costs
    /// `verify_base_s + verify_per_token_s * b * (k + 1)`.
    pub verify_per_token_s: f64,
    pub prefill_base_s: f64,
    pub prefill_per_token_s: f64,
}

impl StepCostModel for LinearCost {
    fn draft_s(&self, batch: usize) -> f64 {
        self.draft_base_s + self.draft_per_seq_s * batch as f64
    }
    fn verify_tokens_s(&self, _batch: usize, verified_tokens: usize) -> f64 {
        self.verify_base_s + self.verify_per_token_s * verified_tokens as f64
    }
    fn prefill_s(&self, tokens: u32) -> f64 {
        self.prefill_base_s + self.prefill_per_token_s * f64::from(tokens)
    }
}

/// The JSON file `lapsd calibrate` writes and `lapsd sim --cost-profile` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostProfile {
    pub model: String,
    pub draft: String,
    pub cost: LinearCost,
    #[serde(default)]
    pub samples: Vec<CostSample>,
}

/// One measurement behind a [`CostProfile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostSample {
    pub batch: usize,
    pub k: u32,
    pub draft_s: f64,
    pub verify_s: f64,
}

/// Verification times read off a profile's measured samples instead of its linear fit (the
/// simulator's ground-truth step time). `lapsd calibrate` measures every batch size 1..B at every
/// k in 0..K; on 2 CPU cores the fit (no intercept, one cost per verified position) is 20% low for
/// one-position steps (14 ms measured, 11 ms fitted) and the per-position cost grows with the batch.
/// A step of `batch` sequences verifying `tokens` positions takes the sample of that batch size
/// at `tokens / batch` positions per sequence, interpolated linearly between the measured k + 1
/// (extrapolated from the last two beyond them, scaled from the first below it). Batch sizes
/// without samples, drafts and prefills use the linear fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredCost {
    pub linear: LinearCost,
    /// `verify_by_batch[b - 1]`: (positions per sequence = k + 1, seconds), ascending.
    verify_by_batch: Vec<Vec<(f64, f64)>>,
}

impl MeasuredCost {
    /// The profile's samples as a table; `None` when it has none.
    pub fn from_profile(profile: &CostProfile) -> Option<Self> {
        let max_batch = profile.samples.iter().map(|s| s.batch).max()?;
        let mut verify_by_batch = vec![Vec::new(); max_batch];
        for s in &profile.samples {
            if s.batch >= 1 && s.verify_s.is_finite() && s.verify_s > 0.0 {
                verify_by_batch[s.batch - 1].push((f64::from(s.k) + 1.0, s.verify_s));
            }
        }
        for points in &mut verify_by_batch {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points.dedup_by(|a, b| a.0 == b.0);
        }
        Some(Self {
            linear: profile.cost,
            verify_by_batch,
        })
    }
}

/// Piecewise-linear interpolation of ascending `points` at `x`.
fn interpolate(points: &[(f64, f64)], x: f64) -> f64 {
    let (x0, y0) = points[0];
    if points.len() == 1 || x <= x0 {
        return y0 * x / x0;
    }
    let upper = points
        .iter()
        .position(|&(px, _)| px >= x)
        .unwrap_or(points.len() - 1);
    let (x1, y1) = points[upper - 1];
    let (x2, y2) = points[upper];
    y1 + (y2 - y1) * (x - x1) / (x2 - x1)
}

impl StepCostModel for MeasuredCost {
    fn draft_s(&self, batch: usize) -> f64 {
        self.linear.draft_s(batch)
    }
    fn verify_tokens_s(&self, batch: usize, verified_tokens: usize) -> f64 {
        match batch
            .checked_sub(1)
            .and_then(|i| self.verify_by_batch.get(i))
            .filter(|points| !points.is_empty())
        {
            Some(points) => interpolate(points, verified_tokens as f64 / batch as f64),
            None => self.linear.verify_tokens_s(batch, verified_tokens),
        }
    }
    fn prefill_s(&self, tokens: u32) -> f64 {
        self.linear.prefill_s(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(samples: &[(usize, u32, f64)]) -> CostProfile {
        CostProfile {
            model: "m".into(),
            draft: "ngram".into(),
            cost: LinearCost {
                draft_base_s: 0.0,
                draft_per_seq_s: 0.0,
                verify_base_s: 0.0,
                verify_per_token_s: 0.010,
                prefill_base_s: 0.05,
                prefill_per_token_s: 0.004,
            },
            samples: samples
                .iter()
                .map(|&(batch, k, verify_s)| CostSample {
                    batch,
                    k,
                    draft_s: 0.0,
                    verify_s,
                })
                .collect(),
        }
    }

    #[test]
    fn measured_cost_reads_interpolates_and_falls_back() {
        assert!(MeasuredCost::from_profile(&profile(&[])).is_none());
        let m = MeasuredCost::from_profile(&profile(&[
            (1, 0, 0.014),
            (1, 1, 0.024),
            (1, 4, 0.055),
            (2, 0, 0.024),
        ]))
        .expect("samples");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // At a sample: the sample.
        assert!(close(m.verify_s(1, 0), 0.014));
        assert!(close(m.verify_s(1, 4), 0.055));
        assert!(close(m.verify_tokens_s(2, 2), 0.024));
        // Between samples: 3 positions lie a third of the way from 2 (k = 1) to 5 (k = 4).
        assert!(close(
            m.verify_tokens_s(1, 3),
            0.024 + (0.055 - 0.024) / 3.0
        ));
        // Two sequences verifying 5 positions in all: 2.5 each, past batch 2's only sample.
        assert!(close(m.verify_tokens_s(2, 5), 0.024 * 2.5));
        // Past the last sample: extrapolated from the last two.
        assert!(close(
            m.verify_tokens_s(1, 6),
            0.024 + (0.055 - 0.024) * 4.0 / 3.0
        ));
        // No samples for batch 3: the linear fit.
        assert!(close(m.verify_tokens_s(3, 6), 0.060));
        assert!(close(m.prefill_s(10), 0.09));
    }
}
