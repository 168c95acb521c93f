//! Cost calibration for the simulator: measures, on this machine, the draft cost of one draft
//! position and the target's verification cost for batch sizes 1..B and speculation lengths 0..K,
//! plus the prefill cost per prompt token, and fits the linear step-cost model the simulator uses
//! (`lapsd_core::LinearCost`): an SD step of `b` sequences with speculation length `k` costs
//! `k * (draft_base_s + draft_per_seq_s * b) + verify_base_s + verify_per_token_s * b * (k + 1)`;
//! a prefill of `t` tokens costs `prefill_base_s + prefill_per_token_s * t`.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::model::{KvCache, Model, SeqForward};
use crate::spec::draft::ngram_propose;

/// The fitted linear cost model (the JSON object `cost`): the core's type, so the profile is
/// what `lapsd sim` and `lapsd serve` read.
pub use lapsd_core::LinearCost;

/// One measured point (median over the repeats).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostSample {
    /// Sequences in the batch.
    pub batch: usize,
    /// Speculation length.
    pub k: usize,
    /// Seconds of the k draft positions.
    pub draft_s: f64,
    /// Seconds of the verification forward over `batch * (k + 1)` tokens.
    pub verify_s: f64,
}

/// One measured prefill (median over the repeats).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrefillSample {
    /// Prompt tokens.
    pub tokens: usize,
    /// Seconds of the prefill forward.
    pub prefill_s: f64,
}

/// The cost profile `lapsd calibrate` writes and `lapsd sim --cost-profile` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostProfile {
    /// Target model (file name).
    pub model: String,
    /// Draft method, as `--draft` spells it.
    pub draft: String,
    /// The least-squares fit.
    pub cost: LinearCost,
    /// Raw SD-step samples.
    pub samples: Vec<CostSample>,
    /// Raw prefill samples.
    #[serde(default)]
    pub prefill_samples: Vec<PrefillSample>,
}

/// How the draft positions of a calibration are run.
pub enum CalibrationDrafter<'a> {
    /// No draft cost (target-only decoding); samples with k > 0 record 0 draft seconds.
    None,
    /// Prompt lookup with suffixes up to `n` (CPU only; its cost is the lookup itself).
    NGram {
        /// Longest suffix tried.
        n: usize,
    },
    /// A model (the target's first `n_layers`, or a separate draft model with all its layers).
    Model {
        /// The model the draft forwards run through.
        model: &'a Model,
        /// Layers run per draft forward.
        n_layers: usize,
    },
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct CalibrationPlan {
    /// Largest batch size (1..=max_batch are measured).
    pub max_batch: usize,
    /// Largest speculation length (0..=max_k are measured).
    pub max_k: usize,
    /// Context tokens every sequence holds before the measured step.
    pub context_tokens: Vec<u32>,
    /// Prompt lengths whose prefill is timed.
    pub prefill_lengths: Vec<usize>,
    /// Repeats per point; the median is kept.
    pub repeats: usize,
}

/// Measures every point of `plan`, calling `progress` after each one, and fits the cost model.
pub fn calibrate(
    target: &Model,
    drafter: &CalibrationDrafter<'_>,
    plan: &CalibrationPlan,
    mut progress: impl FnMut(),
) -> Result<(Vec<CostSample>, Vec<PrefillSample>, LinearCost), EngineError> {
    let ctx = &plan.context_tokens;
    let repeats = plan.repeats.max(1);
    let mut samples = Vec::new();
    for batch in 1..=plan.max_batch {
        let mut target_caches = prefilled(target, target.info().n_layers, batch, ctx)?;
        let mut draft_caches = match drafter {
            CalibrationDrafter::Model { model, n_layers } => {
                prefilled(model, *n_layers, batch, ctx)?
            }
            _ => Vec::new(),
        };
        for k in 0..=plan.max_k {
            let mut draft_runs = Vec::with_capacity(repeats);
            let mut verify_runs = Vec::with_capacity(repeats);
            for _ in 0..repeats {
                draft_runs.push(time_draft(drafter, &mut draft_caches, ctx, k)?);
                verify_runs.push(time_forward(target, &mut target_caches, batch, k + 1, ctx)?);
            }
            samples.push(CostSample {
                batch,
                k,
                draft_s: median(draft_runs),
                verify_s: median(verify_runs),
            });
            progress();
        }
    }
    let mut prefill_samples = Vec::new();
    for &tokens in &plan.prefill_lengths {
        let prompt: Vec<u32> = ctx.iter().copied().cycle().take(tokens).collect();
        let mut runs = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let mut cache = target.new_cache();
            let start = Instant::now();
            target.forward_batch(&mut [SeqForward {
                tokens: &prompt,
                cache: &mut cache,
            }])?;
            runs.push(start.elapsed().as_secs_f64());
        }
        prefill_samples.push(PrefillSample {
            tokens,
            prefill_s: median(runs),
        });
        progress();
    }
    let cost = fit(&samples, &prefill_samples);
    Ok((samples, prefill_samples, cost))
}

/// `batch` caches of `model` holding `ctx`.
fn prefilled(
    model: &Model,
    n_layers: usize,
    batch: usize,
    ctx: &[u32],
) -> Result<Vec<KvCache>, EngineError> {
    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| model.new_cache_layers(n_layers))
        .collect();
    let mut fwd: Vec<SeqForward<'_>> = caches
        .iter_mut()
        .map(|cache| SeqForward { tokens: ctx, cache })
        .collect();
    model.forward_batch_layers(&mut fwd, n_layers)?;
    Ok(caches)
}

/// Seconds of `k` draft positions for the batch (caches rolled back afterwards).
fn time_draft(
    drafter: &CalibrationDrafter<'_>,
    caches: &mut [KvCache],
    ctx: &[u32],
    k: usize,
) -> Result<f64, EngineError> {
    match drafter {
        CalibrationDrafter::None => Ok(0.0),
        CalibrationDrafter::NGram { n } => {
            let start = Instant::now();
            if k > 0 {
                std::hint::black_box(ngram_propose(ctx, *n, k));
            }
            Ok(start.elapsed().as_secs_f64())
        }
        CalibrationDrafter::Model { model, n_layers } => {
            let input = [ctx[ctx.len() - 1]];
            let start = Instant::now();
            for _ in 0..k {
                let mut fwd: Vec<SeqForward<'_>> = caches
                    .iter_mut()
                    .map(|cache| SeqForward {
                        tokens: &input,
                        cache,
                    })
                    .collect();
                model.forward_batch_layers(&mut fwd, *n_layers)?;
            }
            let elapsed = start.elapsed().as_secs_f64();
            caches.iter_mut().for_each(|c| c.truncate(ctx.len()));
            Ok(elapsed)
        }
    }
}

/// Seconds of one target forward of `tokens_per_seq` new tokens for each of `batch` sequences.
fn time_forward(
    target: &Model,
    caches: &mut [KvCache],
    batch: usize,
    tokens_per_seq: usize,
    ctx: &[u32],
) -> Result<f64, EngineError> {
    let input: Vec<u32> = ctx.iter().copied().cycle().take(tokens_per_seq).collect();
    let start = Instant::now();
    let mut fwd: Vec<SeqForward<'_>> = caches[..batch]
        .iter_mut()
        .map(|cache| SeqForward {
            tokens: &input,
            cache,
        })
        .collect();
    target.forward_batch(&mut fwd)?;
    let elapsed = start.elapsed().as_secs_f64();
    caches.iter_mut().for_each(|c| c.truncate(ctx.len()));
    Ok(elapsed)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Least squares for `y = a * u + c * v` (no intercept beyond the two regressors).
fn least_squares_2(points: impl Iterator<Item = (f64, f64, f64)>) -> (f64, f64) {
    let (mut suu, mut suv, mut svv, mut suy, mut svy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (u, v, y) in points {
        suu += u * u;
        suv += u * v;
        svv += v * v;
        suy += u * y;
        svy += v * y;
    }
    let det = suu * svv - suv * suv;
    if det.abs() < 1e-30 {
        // Degenerate design (e.g. one batch size only): attribute everything to `u`.
        return if suu > 0.0 {
            (suy / suu, 0.0)
        } else {
            (0.0, 0.0)
        };
    }
    let (a, c) = ((suy * svv - svy * suv) / det, (svy * suu - suy * suv) / det);
    // Costs are never negative: if noise drives one coefficient below 0, refit with it at 0.
    if a < 0.0 {
        (0.0, (svy / svv).max(0.0))
    } else if c < 0.0 {
        ((suy / suu).max(0.0), 0.0)
    } else {
        (a, c)
    }
}

/// Fits [`LinearCost`] to the samples by least squares (three independent fits: draft, verify,
/// prefill).
pub fn fit(samples: &[CostSample], prefill: &[PrefillSample]) -> LinearCost {
    // draft_s = draft_base * k + draft_per_seq * k * b
    let (draft_base_s, draft_per_seq_s) = least_squares_2(
        samples
            .iter()
            .filter(|s| s.k > 0)
            .map(|s| (s.k as f64, (s.k * s.batch) as f64, s.draft_s)),
    );
    // verify_s = verify_base * 1 + verify_per_token * b * (k + 1)
    let (verify_base_s, verify_per_token_s) = least_squares_2(
        samples
            .iter()
            .map(|s| (1.0, (s.batch * (s.k + 1)) as f64, s.verify_s)),
    );
    let (prefill_base_s, prefill_per_token_s) =
        least_squares_2(prefill.iter().map(|p| (1.0, p.tokens as f64, p.prefill_s)));
    LinearCost {
        draft_base_s,
        draft_per_seq_s,
        verify_base_s,
        verify_per_token_s,
        prefill_base_s,
        prefill_per_token_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_an_exact_linear_model() {
        let truth = LinearCost {
            draft_base_s: 0.004,
            draft_per_seq_s: 0.001,
            verify_base_s: 0.02,
            verify_per_token_s: 0.003,
            prefill_base_s: 0.01,
            prefill_per_token_s: 0.0005,
        };
        let mut samples = Vec::new();
        for batch in 1..=4 {
            for k in 0..=5 {
                let (b, kf) = (batch as f64, k as f64);
                samples.push(CostSample {
                    batch,
                    k,
                    draft_s: kf * (truth.draft_base_s + truth.draft_per_seq_s * b),
                    verify_s: truth.verify_base_s + truth.verify_per_token_s * b * (kf + 1.0),
                });
            }
        }
        let prefill: Vec<PrefillSample> = [16, 64, 256]
            .iter()
            .map(|&t| PrefillSample {
                tokens: t,
                prefill_s: truth.prefill_base_s + truth.prefill_per_token_s * t as f64,
            })
            .collect();
        let got = fit(&samples, &prefill);
        for (g, w) in [
            (got.draft_base_s, truth.draft_base_s),
            (got.draft_per_seq_s, truth.draft_per_seq_s),
            (got.verify_base_s, truth.verify_base_s),
            (got.verify_per_token_s, truth.verify_per_token_s),
            (got.prefill_base_s, truth.prefill_base_s),
            (got.prefill_per_token_s, truth.prefill_per_token_s),
        ] {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn profile_json_has_the_simulator_field_names() {
        let profile = CostProfile {
            model: "m".into(),
            draft: "self:8".into(),
            cost: fit(&[], &[]),
            samples: vec![CostSample {
                batch: 1,
                k: 2,
                draft_s: 0.5,
                verify_s: 0.25,
            }],
            prefill_samples: Vec::new(),
        };
        let v: serde_json::Value = serde_json::to_value(&profile).unwrap();
        for key in [
            "draft_base_s",
            "draft_per_seq_s",
            "verify_base_s",
            "verify_per_token_s",
            "prefill_base_s",
            "prefill_per_token_s",
        ] {
            assert!(v["cost"][key].is_f64(), "{key} missing: {v}");
        }
        assert_eq!(v["samples"][0]["batch"], 1);
        assert_eq!(v["samples"][0]["k"], 2);
        assert_eq!(v["samples"][0]["draft_s"], 0.5);
        assert_eq!(v["samples"][0]["verify_s"], 0.25);
        assert_eq!(v["model"], "m");
        assert_eq!(v["draft"], "self:8");
    }

    #[test]
    fn noisy_fits_never_give_negative_costs() {
        // Draft time that shrinks with the batch (pure noise) must not give a negative slope.
        let samples: Vec<CostSample> = (1..=3)
            .map(|batch| CostSample {
                batch,
                k: 1,
                draft_s: 0.004 - 0.001 * batch as f64,
                verify_s: 0.01,
            })
            .collect();
        let cost = fit(&samples, &[]);
        assert_eq!(cost.draft_per_seq_s, 0.0);
        assert!(
            (cost.draft_base_s - 0.001 * (3.0 + 2.0 + 1.0) / 3.0).abs() < 1e-12,
            "{cost:?}"
        );
        assert!(cost.verify_base_s >= 0.0 && cost.verify_per_token_s >= 0.0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
