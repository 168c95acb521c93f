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
    /// The decode part of a step: `draft_passes` draft passes over `members` sequences, then one
    /// verification of `verified_tokens` positions; 0 without members.
    fn decode_s(&self, members: usize, draft_passes: u32, verified_tokens: usize) -> f64 {
        if members == 0 {
            0.0
        } else {
            f64::from(draft_passes) * self.draft_s(members)
                + self.verify_tokens_s(members, verified_tokens)
        }
    }
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

impl LinearCost {
    /// The built-in step costs, used when no cost profile is given (`lapsd sim` and `lapsd serve`
    /// without `--cost-profile`): a linear model in the range of SmolLM2-135M (Q4) as target on 2
    /// CPU cores (~36 tok/s plain decoding measured there, i.e. ~25 ms per target pass) with a
    /// draft ~5x cheaper. An assumption, not a measurement, until `lapsd calibrate` writes a
    /// profile: verify(b, k) = 20 ms + 1 ms * b * (k + 1); draft(b) = 4 ms + 1 ms * b;
    /// prefill(n) = 10 ms + 0.2 ms * n. `profiles/builtin.json` holds the same numbers for the
    /// regime matrix (a test keeps the two equal).
    pub const BUILT_IN: LinearCost = LinearCost {
        draft_base_s: 0.004,
        draft_per_seq_s: 0.001,
        verify_base_s: 0.020,
        verify_per_token_s: 0.001,
        prefill_base_s: 0.010,
        prefill_per_token_s: 0.0002,
    };
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

/// The JSON file `lapsd calibrate` writes and `lapsd sim --cost-profile` / `lapsd serve
/// --cost-profile` read: the one cost-profile format, whether measured in isolation, fitted to a
/// served run's steps or written by hand (`profiles/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostProfile {
    /// Target model (a file name, or a description in hand-written profiles).
    pub model: String,
    /// Draft method, as `--draft` spells it.
    pub draft: String,
    /// The linear fit (or the hand-written model).
    pub cost: LinearCost,
    /// The batch size the profile is meant to run at (the regime matrix's "profile batch");
    /// `None` in profiles `lapsd calibrate` writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    /// Measured SD steps behind the fit (the simulator's [`MeasuredCost`] reads them).
    #[serde(default)]
    pub samples: Vec<CostSample>,
    /// Measured prefills behind the fit. Absent from hand-written profiles and from fits to
    /// served steps, hence the default and not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefill_samples: Vec<PrefillSample>,
}

impl CostProfile {
    /// A profile of calibration measurements: the samples and their [`fit_calibration`].
    pub fn from_calibration(
        model: String,
        draft: String,
        samples: Vec<CostSample>,
        prefill_samples: Vec<PrefillSample>,
    ) -> Self {
        Self {
            model,
            draft,
            cost: fit_calibration(&samples, &prefill_samples),
            max_batch: None,
            samples,
            prefill_samples,
        }
    }
}

/// One measured SD step behind a [`CostProfile`] (median over the repeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostSample {
    /// Sequences in the batch.
    pub batch: usize,
    /// Speculation length.
    pub k: u32,
    /// Seconds of the k draft positions.
    pub draft_s: f64,
    /// Seconds of the verification forward over `batch * (k + 1)` positions.
    pub verify_s: f64,
}

/// One measured prefill behind a [`CostProfile`] (median over the repeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillSample {
    /// Prompt tokens.
    pub tokens: u32,
    /// Seconds of the prefill forward.
    pub prefill_s: f64,
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

    /// A linear cost with no samples (steps timed by the fit alone).
    pub fn linear_only(linear: LinearCost) -> Self {
        Self {
            linear,
            verify_by_batch: Vec::new(),
        }
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

/// One engine step as the server ran it (`lapsd serve --step-log`, one JSON object per line): the
/// in-situ measurement behind [`fit_served_steps`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepObservation {
    /// Seconds since the server started, at the end of the step.
    pub t_s: f64,
    /// Members that decoded (drafted and verified) this step.
    pub decode_members: u32,
    /// Positions verified in all: each decoding member's drafted tokens + 1.
    pub verified_tokens: u32,
    /// Draft passes: the largest number of tokens a member drafted.
    pub draft_passes: u32,
    /// Members (re)computing their prompt this step.
    pub prefills: u32,
    /// Tokens those prefills computed.
    pub prefill_tokens: u32,
    pub duration_s: f64,
}

/// The regressors of one observation, in [`LinearCost`]'s terms: a step costs
/// `draft_passes * (draft_base + draft_per_seq * decode_members)
///  + [decoding] * verify_base + verify_per_token * verified_tokens
///  + prefills * prefill_base + prefill_per_token * prefill_tokens`.
fn regressors(o: &StepObservation) -> [f64; 6] {
    [
        f64::from(o.draft_passes),
        f64::from(o.draft_passes) * f64::from(o.decode_members),
        if o.decode_members > 0 { 1.0 } else { 0.0 },
        f64::from(o.verified_tokens),
        f64::from(o.prefills),
        f64::from(o.prefill_tokens),
    ]
}

/// Least squares on the columns in `active` (normal equations, Gaussian elimination with partial
/// pivoting); `None` when the design is singular.
fn least_squares<const N: usize>(rows: &[([f64; N], f64)], active: &[usize]) -> Option<Vec<f64>> {
    let n = active.len();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (x, y) in rows {
        for (i, &ci) in active.iter().enumerate() {
            for (j, &cj) in active.iter().enumerate() {
                a[i][j] += x[ci] * x[cj];
            }
            a[i][n] += x[ci] * y;
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&r1, &r2| a[r1][col].abs().total_cmp(&a[r2][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let factor = row[col] / pivot_row[col];
                for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= factor * p;
                }
            }
        }
    }
    Some((0..n).map(|i| a[i][n] / a[i][i]).collect())
}

/// The one least-squares fit of step costs, for calibration samples ([`fit_calibration`]) and
/// served steps ([`fit_served_steps`]) alike: `y ~ sum of c[i] * x[i]` over the rows `(x, y)`,
/// costs being never negative. A column that is 0 in every row is left out (e.g. the draft
/// terms of prompt lookup, whose drafting is not a forward pass); a coefficient that comes out
/// negative is left out (the first one at a time) and the rest refitted. Left-out columns are
/// `None`. `None` in all when the design of the columns kept is singular (too little variety).
fn nonnegative_least_squares<const N: usize>(rows: &[([f64; N], f64)]) -> Option<[Option<f64>; N]> {
    let mut active: Vec<usize> = (0..N)
        .filter(|&c| rows.iter().any(|(x, _)| x[c] != 0.0))
        .collect();
    let mut fitted = [None; N];
    while !active.is_empty() {
        let coefficients = least_squares(rows, &active)?;
        match coefficients.iter().position(|&c| c < 0.0) {
            Some(negative) => {
                active.remove(negative);
            }
            None => {
                for (&column, value) in active.iter().zip(coefficients) {
                    fitted[column] = Some(value);
                }
                break;
            }
        }
    }
    Some(fitted)
}

/// Fits [`LinearCost`] to the steps a server really ran (in situ, with its HTTP threads and
/// clients on the same cores, which `lapsd calibrate`'s isolated measurement leaves out), with
/// [`nonnegative_least_squares`] over all six coefficients at once (a served step mixes drafts,
/// verification and prefills). `None` without observations, with a singular design, or when
/// every coefficient was left out.
pub fn fit_served_steps(observations: &[StepObservation]) -> Option<LinearCost> {
    let rows: Vec<([f64; 6], f64)> = observations
        .iter()
        .filter(|o| o.duration_s.is_finite() && o.duration_s >= 0.0)
        .map(|o| (regressors(o), o.duration_s))
        .collect();
    let fitted = nonnegative_least_squares(&rows)?;
    if fitted.iter().all(Option::is_none) {
        return None;
    }
    let c = fitted.map(|c| c.unwrap_or(0.0));
    Some(LinearCost {
        draft_base_s: c[0],
        draft_per_seq_s: c[1],
        verify_base_s: c[2],
        verify_per_token_s: c[3],
        prefill_base_s: c[4],
        prefill_per_token_s: c[5],
    })
}

/// `y = a * u + c * v` by [`nonnegative_least_squares`]; when `u` and `v` are collinear (e.g. one
/// batch size only) everything is attributed to `u`; (0, 0) without rows.
fn fit_pair(rows: &[([f64; 2], f64)]) -> (f64, f64) {
    if let Some([a, c]) = nonnegative_least_squares(rows) {
        return (a.unwrap_or(0.0), c.unwrap_or(0.0));
    }
    let u_only: Vec<([f64; 1], f64)> = rows.iter().map(|&([u, _], y)| ([u], y)).collect();
    match nonnegative_least_squares(&u_only) {
        Some([Some(a)]) => (a, 0.0),
        _ => (0.0, 0.0),
    }
}

/// Fits [`LinearCost`] to `lapsd calibrate`'s isolated measurements: three independent fits,
/// since each sample times one piece alone. Draft: `draft_s = k * (draft_base_s +
/// draft_per_seq_s * b)` over the samples with k > 0; verification: `verify_s = verify_base_s +
/// verify_per_token_s * b * (k + 1)`; prefill: `prefill_s = prefill_base_s +
/// prefill_per_token_s * tokens`.
pub fn fit_calibration(samples: &[CostSample], prefill_samples: &[PrefillSample]) -> LinearCost {
    let draft_rows: Vec<([f64; 2], f64)> = samples
        .iter()
        .filter(|s| s.k > 0)
        .map(|s| {
            let k = f64::from(s.k);
            ([k, k * s.batch as f64], s.draft_s)
        })
        .collect();
    let verify_rows: Vec<([f64; 2], f64)> = samples
        .iter()
        .map(|s| ([1.0, s.batch as f64 * (f64::from(s.k) + 1.0)], s.verify_s))
        .collect();
    let prefill_rows: Vec<([f64; 2], f64)> = prefill_samples
        .iter()
        .map(|p| ([1.0, f64::from(p.tokens)], p.prefill_s))
        .collect();
    let (draft_base_s, draft_per_seq_s) = fit_pair(&draft_rows);
    let (verify_base_s, verify_per_token_s) = fit_pair(&verify_rows);
    let (prefill_base_s, prefill_per_token_s) = fit_pair(&prefill_rows);
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

    fn profile(samples: &[(usize, u32, f64)]) -> CostProfile {
        CostProfile {
            max_batch: None,
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
            prefill_samples: Vec::new(),
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

    fn observation(
        decode_members: u32,
        drafted: u32,
        prefills: u32,
        prefill_tokens: u32,
    ) -> StepObservation {
        StepObservation {
            t_s: 0.0,
            decode_members,
            verified_tokens: decode_members + drafted,
            draft_passes: drafted.min(4),
            prefills,
            prefill_tokens,
            duration_s: 0.0,
        }
    }

    #[test]
    fn served_steps_fit_recovers_the_costs_and_never_goes_negative() {
        let truth = LinearCost {
            draft_base_s: 0.0,
            draft_per_seq_s: 0.0,
            verify_base_s: 0.003,
            verify_per_token_s: 0.011,
            prefill_base_s: 0.060,
            prefill_per_token_s: 0.005,
        };
        let step_s = |o: &StepObservation| {
            f64::from(o.draft_passes)
                * (truth.draft_base_s + truth.draft_per_seq_s * f64::from(o.decode_members))
                + if o.decode_members > 0 {
                    truth.verify_base_s
                } else {
                    0.0
                }
                + truth.verify_per_token_s * f64::from(o.verified_tokens)
                + truth.prefill_s(o.prefill_tokens) * f64::from(o.prefills.min(1))
                + truth.prefill_base_s * f64::from(o.prefills.saturating_sub(1))
        };
        let mut observations = Vec::new();
        for b in 1..=6u32 {
            for drafted in [0, 1, 3, 7] {
                for (prefills, tokens) in [(0, 0), (1, 20), (1, 90), (2, 150)] {
                    let mut o = observation(b, drafted, prefills, tokens);
                    o.duration_s = step_s(&o);
                    observations.push(o);
                }
            }
        }
        let fit = fit_served_steps(&observations).expect("fits");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(fit.verify_base_s, 0.003), "{fit:?}");
        assert!(close(fit.verify_per_token_s, 0.011), "{fit:?}");
        assert!(close(fit.prefill_base_s, 0.060), "{fit:?}");
        assert!(close(fit.prefill_per_token_s, 0.005), "{fit:?}");
        assert!(close(fit.draft_base_s, 0.0) && close(fit.draft_per_seq_s, 0.0));
        // A fixed cost that would come out negative is dropped, not kept below zero.
        for o in &mut observations {
            o.duration_s = 0.011 * f64::from(o.verified_tokens) - 0.001 * f64::from(o.draft_passes);
        }
        let fit = fit_served_steps(&observations).expect("fits");
        assert!(fit.draft_base_s >= 0.0 && fit.verify_base_s >= 0.0 && fit.prefill_base_s >= 0.0);
        assert!(fit.verify_per_token_s > 0.0);
        assert!(fit_served_steps(&[]).is_none());
    }

    #[test]
    fn calibration_fit_recovers_an_exact_linear_model() {
        let truth = LinearCost {
            draft_base_s: 0.004,
            draft_per_seq_s: 0.001,
            verify_base_s: 0.02,
            verify_per_token_s: 0.003,
            prefill_base_s: 0.01,
            prefill_per_token_s: 0.0005,
        };
        let mut samples = Vec::new();
        for batch in 1..=4usize {
            for k in 0..=5u32 {
                let (b, kf) = (batch as f64, f64::from(k));
                samples.push(CostSample {
                    batch,
                    k,
                    draft_s: kf * (truth.draft_base_s + truth.draft_per_seq_s * b),
                    verify_s: truth.verify_base_s + truth.verify_per_token_s * b * (kf + 1.0),
                });
            }
        }
        let prefill: Vec<PrefillSample> = [16u32, 64, 256]
            .iter()
            .map(|&t| PrefillSample {
                tokens: t,
                prefill_s: truth.prefill_base_s + truth.prefill_per_token_s * f64::from(t),
            })
            .collect();
        let got = fit_calibration(&samples, &prefill);
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
    fn calibration_profile_json_has_the_simulator_field_names() {
        let profile = CostProfile::from_calibration(
            "m".into(),
            "self:8".into(),
            vec![CostSample {
                batch: 1,
                k: 2,
                draft_s: 0.5,
                verify_s: 0.25,
            }],
            vec![PrefillSample {
                tokens: 16,
                prefill_s: 0.125,
            }],
        );
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
        assert_eq!(v["prefill_samples"][0]["tokens"], 16);
        assert_eq!(v["prefill_samples"][0]["prefill_s"], 0.125);
        assert_eq!(v["model"], "m");
        assert_eq!(v["draft"], "self:8");
        assert!(v.get("max_batch").is_none(), "{v}");
        let back: CostProfile = serde_json::from_value(v).unwrap();
        assert_eq!(back, profile);
    }

    #[test]
    fn noisy_calibration_fits_never_give_negative_costs() {
        // Draft time that shrinks with the batch (pure noise) must not give a negative slope.
        let samples: Vec<CostSample> = (1..=3)
            .map(|batch| CostSample {
                batch,
                k: 1,
                draft_s: 0.004 - 0.001 * batch as f64,
                verify_s: 0.01,
            })
            .collect();
        let cost = fit_calibration(&samples, &[]);
        assert_eq!(cost.draft_per_seq_s, 0.0);
        assert!(
            (cost.draft_base_s - 0.001 * (3.0 + 2.0 + 1.0) / 3.0).abs() < 1e-12,
            "{cost:?}"
        );
        assert!(cost.verify_base_s >= 0.0 && cost.verify_per_token_s >= 0.0);
        // Nothing measured: no cost.
        let none = fit_calibration(&[], &[]);
        assert_eq!(
            none.verify_base_s + none.verify_per_token_s + none.prefill_s(10),
            0.0
        );
    }

    #[test]
    fn collinear_calibration_attributes_the_cost_to_the_fixed_term() {
        // One batch size: k and k * b are the same column up to b, so the draft cost goes to the
        // per-pass term; one prompt length likewise puts the prefill into its base.
        let samples: Vec<CostSample> = (1..=4)
            .map(|k| CostSample {
                batch: 1,
                k,
                draft_s: 0.005 * f64::from(k),
                verify_s: 0.01 + 0.002 * (f64::from(k) + 1.0),
            })
            .collect();
        let prefill = [PrefillSample {
            tokens: 64,
            prefill_s: 0.2,
        }];
        let cost = fit_calibration(&samples, &prefill);
        assert!((cost.draft_base_s - 0.005).abs() < 1e-12, "{cost:?}");
        assert_eq!(cost.draft_per_seq_s, 0.0);
        assert!((cost.verify_base_s - 0.01).abs() < 1e-12, "{cost:?}");
        assert!((cost.prefill_base_s - 0.2).abs() < 1e-12, "{cost:?}");
        assert_eq!(cost.prefill_per_token_s, 0.0);
    }

    /// Every shipped profile parses and writes back the same JSON: the prefill samples added to
    /// the format default to none and are not written when empty.
    #[test]
    fn shipped_profiles_round_trip_unchanged() {
        for text in [
            include_str!("../../../profiles/builtin.json"),
            include_str!("../../../profiles/cpu-2core-smollm2-ngram.json"),
            include_str!("../../../profiles/gpu-a100-7b-shaped.json"),
            include_str!("../../../profiles/gpu-a100-7b-cited.json"),
        ] {
            let profile: CostProfile = serde_json::from_str(text).expect("a cost profile");
            assert!(profile.prefill_samples.is_empty());
            let original: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert_eq!(serde_json::to_value(&profile).unwrap(), original);
        }
    }

    #[test]
    fn built_in_cost_is_the_builtin_profile() {
        let profile: CostProfile =
            serde_json::from_str(include_str!("../../../profiles/builtin.json")).unwrap();
        assert_eq!(profile.cost, LinearCost::BUILT_IN);
    }
}
