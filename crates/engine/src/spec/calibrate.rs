//! Cost calibration for the simulator: measures, on this machine, the draft cost of one draft
//! position and the target's verification cost for batch sizes 1..B and speculation lengths 0..K,
//! plus the prefill cost per prompt token. Raw measurements only: the linear fit and the cost
//! profile they become are the scheduling core's (`lapsd_core::cost`), joined by `lapsd
//! calibrate` in the binary, so that the engine does not depend on the core.

use std::time::Instant;

use crate::error::EngineError;
use crate::model::{KvCache, Model, SeqForward};
use crate::spec::draft::ngram_propose;

/// One measured SD step (median over the repeats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMeasurement {
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillMeasurement {
    /// Prompt tokens.
    pub tokens: usize,
    /// Seconds of the prefill forward.
    pub prefill_s: f64,
}

/// Everything [`calibrate`] measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Calibration {
    /// One per (batch size, speculation length), batch-major.
    pub steps: Vec<StepMeasurement>,
    /// One per prompt length of the plan, in its order.
    pub prefills: Vec<PrefillMeasurement>,
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

/// Measures every point of `plan`, calling `progress` after each one.
pub fn calibrate(
    target: &Model,
    drafter: &CalibrationDrafter<'_>,
    plan: &CalibrationPlan,
    mut progress: impl FnMut(),
) -> Result<Calibration, EngineError> {
    let ctx = &plan.context_tokens;
    let repeats = plan.repeats.max(1);
    let mut steps = Vec::new();
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
            steps.push(StepMeasurement {
                batch,
                k,
                draft_s: median(draft_runs),
                verify_s: median(verify_runs),
            });
            progress();
        }
    }
    let mut prefills = Vec::new();
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
        prefills.push(PrefillMeasurement {
            tokens,
            prefill_s: median(runs),
        });
        progress();
    }
    Ok(Calibration { steps, prefills })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
