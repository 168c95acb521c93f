//! `gittins` (ours): serve the requests with the highest Gittins index of their *posterior*
//! remaining execution time. It is the principled form of LAPS-SD's two regimes.
//!
//! Theory. For one server, Poisson arrivals and job sizes drawn from a known distribution but
//! unknown per job, serving the job of highest Gittins index minimizes the mean response time
//! among non-anticipating policies (Gittins, "Multi-armed Bandit Allocation Indices", 1989,
//! ch. 5; Aalto, Ayesta and Righter, "On the Gittins index in the M/G/1 queue", Queueing
//! Systems 63, 2009). A job that has attained `a` has index
//!
//! `G(a) = sup_{Δ > 0} P(X - a <= Δ | X > a) / E[min(X - a, Δ) | X > a]`,
//!
//! the best ratio of "probability of finishing within the next quantum" to "expected time
//! spent in it". Aalto et al. show the limits: with a decreasing hazard rate it is LAS (least
//! attained service first), with an increasing one FCFS, with known sizes SRPT. Scully,
//! Harchol-Balter and Scheller-Wolf ("SOAP", SIGMETRICS 2018) put it in the rank-function form
//! used here: a rank per job that changes only while the job runs. LAPS-SD (arXiv 2505.17074)
//! hand-builds the same shape: least attained service while a request's acceptance rate is
//! unknown, shortest estimated remaining time once it is stable.
//!
//! The posterior of a request's remaining time, in three parts:
//! - **Tokens.** The total output length is log-normal with median
//!   `m = e^alpha * prediction^beta` and spread `sigma`: a least-squares regression of
//!   `ln(actual)` on `ln(predicted)` over the finished requests (learnt online, shrunk toward
//!   alpha = 0, beta = 1, sigma = 1 while few have finished). The regression, not the plain
//!   ratio, is the posterior: a noisy predictor's long predictions are too long on average and
//!   its short ones too short (regression to the mean), and beta < 1 says by how much. Without a
//!   prediction, `m` and `sigma` are those of `ln(actual)`. It is conditioned on the tokens
//!   already generated (`X > a`).
//! - **Acceptance.** A Beta posterior over the fraction of drafted tokens accepted: prior
//!   `Beta(a0, b0)` fitted by moments to the finished requests' rates, updated with the
//!   request's own accepted / rejected draft tokens. Expected tokens per SD step at speculation
//!   length k is then `k * E[A] + 1` (LAPS-SD's `n*A + 1`, with the posterior mean for A). We
//!   use the posterior mean only: over a request's many steps the length dominates the spread
//!   of its remaining time.
//! - **Time.** Seconds per token `c = sd_step_s(1, k) / (k E[A] + 1)` from the `StepCostModel`
//!   (at batch 1, like LAPS-SD: the batch scales every request alike), and the prefill still
//!   owed, `p` seconds, paid before the first token.
//!
//! So the remaining time is `p + c * (X - a)`. Scale invariance makes the index a function of
//! three numbers: `G = g(ln(a/m)/sigma, p/(c m); sigma) / (c m)` where g is the index of a
//! median-1 log-normal. A table of g over (sigma, standardized age, prefill ratio) is built once
//! per process ([`IndexTable`], ~30k entries, tens of milliseconds) and read with linear
//! interpolation, so a decision is O(b log n) like every keyed policy: a request's index only
//! changes when it runs, or when the learnt spread moves (then every queued key is recomputed;
//! this happens a bounded number of times as the estimates settle, see the thresholds below).
//!
//! **Empirical posterior** (`size-posterior=empirical`, the default). The log-normal has one
//! fixed shape and an unbounded tail; real lengths have neither: ShareGPT's residuals around an
//! online predictor's median are skewed, a noisy predictor's error is not log-normal once the
//! lengths are clamped, and `max_tokens` bounds every request (an old request near its cap is
//! nearly done, not likely to run forever). So the regression's *residuals* over a cohort of the
//! newest [`EMPIRICAL_WINDOW`] requests to have produced a token are kept as they are, the live
//! ones as censored observations ("longer than its age"; Kaplan-Meier), and a request's length
//! is distributed as `min(median * e^residual, max_tokens)` over them, conditioned on its age;
//! the index is evaluated exactly on that distribution ([`ResidualPieces`]: a histogram of equal
//! counts, its largest few observations replaced by a generalized Pareto tail fitted to them
//! ([`TailFit`]), at most [`EMPIRICAL_MAX_PIECES`] uniform pieces, so a key costs a constant).
//! The log-normal stands in while fewer than [`EMPIRICAL_MIN_OBSERVATIONS`] requests of the
//! cohort have completed, and beyond the fitted tail's pieces (fewer than
//! [`EMPIRICAL_MIN_SURVIVORS`] above the age).
//!
//! At batch B > 1 the B highest indices run (the index rule has no batch form; with costs that
//! amortize, filling the batch is what keeps throughput, see `BatchFormation`).

use std::sync::OnceLock;

use std::collections::VecDeque;

use super::queue::{offer_in_order, LazyKeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext, SizePosterior};
use crate::request::{FinishReason, IdMap, RequestId, RequestState};

/// Spreads of the table (log-normal sigma), geometric from 0.05 to 3.
const SIGMA_MIN: f64 = 0.05;
const SIGMA_MAX: f64 = 3.0;
const SIGMA_STEPS: usize = 24;
/// Standardized ages z = ln(a/m)/sigma of the table's rows; a younger request uses the fresh
/// curve (P(X <= a) < 3e-7 there), an older one the last row.
const Z_ROW_MIN: f64 = -5.0;
const Z_ROW_MAX: f64 = 5.0;
const Z_ROW_STEP: f64 = 0.1;
/// Integration grid (standardized): beyond 7 sigma the survival is below 1.3e-12.
const Z_GRID_MIN: f64 = -7.0;
const Z_GRID_MAX: f64 = 7.0;
const Z_GRID_STEP: f64 = 0.02;
/// Prefill ratios q = p / (c m): 0, then 10^-3 .. 10^3 geometrically.
const Q_STEPS: usize = 17;
const Q_LOG_MIN: f64 = -3.0;
const Q_LOG_MAX: f64 = 3.0;

/// Pseudo-observations the prior spread carries (sigma = [`PRIOR_SIGMA`], alpha = 0, beta = 1).
const PRIOR_OBSERVATIONS: f64 = 2.0;
const PRIOR_SIGMA: f64 = 1.0;
/// Median output length assumed before any request finished, for requests without prediction.
const PRIOR_MEDIAN_TOKENS: f64 = 128.0;
/// Queued keys are recomputed when the learnt spread moves by more than this fraction, the
/// median shift by more than [`REKEY_MU`], or the prior acceptance by more than
/// [`REKEY_ACCEPTANCE`].
const REKEY_SIGMA_FRACTION: f64 = 0.05;
const REKEY_MU: f64 = 0.05;
const REKEY_ACCEPTANCE: f64 = 0.02;
/// Drafted tokens a finished request needs before its rate informs the acceptance prior.
const MIN_DRAFTED_FOR_PRIOR: u64 = 8;

/// Requests in the empirical posterior's cohort (the newest to have produced a token).
const EMPIRICAL_WINDOW: usize = 1024;
/// Completed requests in the cohort needed before the residuals replace the log-normal.
const EMPIRICAL_MIN_OBSERVATIONS: usize = 32;
/// Largest residuals below the fitted tail kept as pieces of their own (the upper body decides
/// whether old requests run).
const EMPIRICAL_SINGLE_PIECES: usize = 64;
/// Pieces at most: the fitted tail's, the single ones, and the body in groups of equal count.
const EMPIRICAL_MAX_PIECES: usize = 104;
/// Largest completions whose lengths are replaced by a fitted tail ([`TailFit`]).
const FITTED_TAIL_OBSERVATIONS: usize = 4;
/// Equal-mass pieces of the fitted tail.
const FITTED_TAIL_SLICES: usize = 8;
/// Range of the fitted tail's shape (the moment estimator is unreliable beyond 1/4 and a shape
/// below -1/2 is a tail shorter than the uniform's).
const TAIL_SHAPE_MIN: f64 = -0.5;
const TAIL_SHAPE_MAX: f64 = 0.25;
/// Pieces above a request's age needed to use the residuals (else the log-normal's tail).
const EMPIRICAL_MIN_SURVIVORS: usize = 4;
/// Finished requests between two rebuilds of the pieces (they also rebuild when the regression
/// moves enough to re-key the queue).
const EMPIRICAL_REBUILD_EVERY: u32 = 16;

/// Survival function of the standard normal, P(Z > z).
fn normal_survival(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// The index of a median-1 log-normal of spread `sigma`, by table (module header). It stores the
/// reciprocal of the index, the *rank* `R = inf_Δ (q + E[min(X - a, Δ) | X > a]) / P(X - a <= Δ
/// | X > a)` (expected time per completion): an infimum of functions linear in q, so R is concave
/// and piecewise linear in q and linear interpolation in q is nearly exact.
///
/// Two parts per sigma:
/// - the *fresh* curve, for ages where the survival is still 1 (z <= [`Z_ROW_MIN`]): there the
///   age only shifts the work owed, `R(a, q) = R(0, q - a)`, so it is stored over `c = q - a`,
///   from `-e^(sigma Z_ROW_MIN)` up;
/// - rows of standardized age `z = ln(a)/sigma` from [`Z_ROW_MIN`] to [`Z_ROW_MAX`], each over q.
#[derive(Debug)]
pub struct IndexTable {
    sigmas: Vec<f64>,
    /// q grid of the rows (and the c >= 0 part of the fresh curve): 0, then geometric.
    qs: Vec<f64>,
    age_rows: usize,
    /// `fresh[s]`: (c, R) ascending in c.
    fresh: Vec<Vec<(f64, f64)>>,
    /// `rows[(s * age_rows + row) * Q_STEPS + j]`.
    rows: Vec<f64>,
}

/// Points of the fresh curve below c = 0.
const FRESH_NEGATIVE_POINTS: usize = 32;

impl IndexTable {
    /// The process-wide table (built on first use).
    pub fn get() -> &'static IndexTable {
        static TABLE: OnceLock<IndexTable> = OnceLock::new();
        TABLE.get_or_init(IndexTable::build)
    }

    fn build() -> Self {
        let ratio = (SIGMA_MAX / SIGMA_MIN).powf(1.0 / (SIGMA_STEPS - 1) as f64);
        let sigmas: Vec<f64> = (0..SIGMA_STEPS)
            .map(|i| SIGMA_MIN * ratio.powi(i as i32))
            .collect();
        let mut qs = vec![0.0];
        qs.extend((0..Q_STEPS - 1).map(|j| {
            10f64.powf(Q_LOG_MIN + (Q_LOG_MAX - Q_LOG_MIN) * j as f64 / (Q_STEPS - 2) as f64)
        }));
        let age_rows = ((Z_ROW_MAX - Z_ROW_MIN) / Z_ROW_STEP).round() as usize + 1;
        let grid_points = ((Z_GRID_MAX - Z_GRID_MIN) / Z_GRID_STEP).round() as usize + 1;
        let zs: Vec<f64> = (0..grid_points)
            .map(|i| Z_GRID_MIN + i as f64 * Z_GRID_STEP)
            .collect();
        let survival: Vec<f64> = zs.iter().map(|&z| normal_survival(z)).collect();
        let mut fresh = Vec::with_capacity(SIGMA_STEPS);
        let mut rows = Vec::with_capacity(SIGMA_STEPS * age_rows * Q_STEPS);
        for &sigma in &sigmas {
            let xs: Vec<f64> = zs.iter().map(|&z| (sigma * z).exp()).collect();
            // The rank from grid point `start` (survival s_u there, `spent` already owed by
            // the time of that point) for each of `owed`.
            let rank = |start: usize, s_u: f64, spent0: f64, owed: &[f64]| -> Vec<f64> {
                let mut best = vec![f64::INFINITY; owed.len()];
                let mut spent = spent0;
                for i in start + 1..grid_points {
                    spent += 0.5 * (survival[i - 1] + survival[i]) * (xs[i] - xs[i - 1]);
                    let done = s_u - survival[i];
                    if done <= 0.0 {
                        continue;
                    }
                    for (j, c) in owed.iter().enumerate() {
                        let time = c * s_u + spent;
                        if time > 0.0 {
                            best[j] = best[j].min(time / done);
                        }
                    }
                }
                // Per unit of conditional probability: the ratio is unchanged, R as is.
                best
            };
            let young_age = (sigma * Z_ROW_MIN).exp();
            let mut owed: Vec<f64> = (0..FRESH_NEGATIVE_POINTS)
                .map(|j| -young_age * (1.0 - j as f64 / FRESH_NEGATIVE_POINTS as f64))
                .collect();
            owed.extend(qs.iter().copied());
            // A fresh job: survival 1 up to the first grid point, whose time is owed already.
            let curve = rank(0, 1.0, xs[0], &owed);
            fresh.push(owed.into_iter().zip(curve).collect());
            for row in 0..age_rows {
                let z = Z_ROW_MIN + row as f64 * Z_ROW_STEP;
                let i = ((z - Z_GRID_MIN) / Z_GRID_STEP).round() as usize;
                rows.extend(rank(i, survival[i], 0.0, &qs));
            }
        }
        Self {
            sigmas,
            qs,
            age_rows,
            fresh,
            rows,
        }
    }

    fn sigma_index(&self, sigma: f64) -> usize {
        let x = (sigma.clamp(SIGMA_MIN, SIGMA_MAX) / SIGMA_MIN).ln()
            / (self.sigmas[1] / SIGMA_MIN).ln();
        (x.round() as usize).min(self.sigmas.len() - 1)
    }

    /// The spread the table uses for `sigma` (its nearest grid value).
    pub fn grid_sigma(&self, sigma: f64) -> f64 {
        self.sigmas[self.sigma_index(sigma)]
    }

    /// Rank of row `row` of spread `s` at prefill ratio `q` (>= 0).
    fn row_rank(&self, s: usize, row: usize, q: f64) -> f64 {
        let base = (s * self.age_rows + row) * Q_STEPS;
        interpolate(
            self.qs
                .iter()
                .copied()
                .zip(self.rows[base..base + Q_STEPS].iter().copied()),
            q,
        )
    }

    /// Rank (reciprocal index) of a median-1 log-normal of spread `sigma` (nearest grid value)
    /// at age `age` (in units of the median) with `q` (same units) still owed first.
    pub fn rank(&self, sigma: f64, age: f64, q: f64) -> f64 {
        let s = self.sigma_index(sigma);
        let q = if q.is_finite() { q.max(0.0) } else { 0.0 };
        let age = if age.is_finite() { age.max(0.0) } else { 0.0 };
        let z = if age > 0.0 {
            age.ln() / self.sigmas[s]
        } else {
            f64::NEG_INFINITY
        };
        if z <= Z_ROW_MIN {
            return interpolate(self.fresh[s].iter().copied(), q - age);
        }
        let x = (z.min(Z_ROW_MAX) - Z_ROW_MIN) / Z_ROW_STEP;
        let r = (x.floor() as usize).min(self.age_rows - 2);
        let t = (x - r as f64).min(1.0);
        let lo = self.row_rank(s, r, q);
        let hi = self.row_rank(s, r + 1, q);
        lo + (hi - lo) * t
    }

    /// The Gittins index: completions per unit of time (the reciprocal of [`Self::rank`]).
    pub fn index(&self, sigma: f64, age: f64, q: f64) -> f64 {
        1.0 / self.rank(sigma, age, q)
    }
}

/// Piecewise-linear interpolation over ascending `points`, extrapolated linearly beyond both
/// ends from the nearest two.
fn interpolate(points: impl Iterator<Item = (f64, f64)>, x: f64) -> f64 {
    let mut prev: Option<(f64, f64)> = None;
    let mut before_prev: Option<(f64, f64)> = None;
    for (px, py) in points {
        if let Some((x0, y0)) = prev {
            if x <= px {
                return y0 + (py - y0) * (x - x0) / (px - x0);
            }
        }
        before_prev = prev;
        prev = Some((px, py));
    }
    match (before_prev, prev) {
        (Some((x0, y0)), Some((x1, y1))) => y1 + (y1 - y0) * (x - x1) / (x1 - x0),
        (None, Some((_, y))) => y,
        _ => f64::NAN,
    }
}

/// A piece of a length distribution: `weight` spread uniformly over lengths `[lo, hi]` (a point
/// mass where `lo == hi`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    lo: f64,
    hi: f64,
    weight: f64,
}

impl Piece {
    fn point(length: f64, weight: f64) -> Self {
        Self {
            lo: length,
            hi: length,
            weight,
        }
    }
}

/// Gittins rank (seconds per completion, the reciprocal index) of a request of age `age` whose
/// length is distributed as the ascending, non-overlapping `pieces` (all above the age, none
/// starting below it), at `s_per_token` with `prefill_s` owed first.
///
/// Within a piece of constant density the ratio "expected time in the quantum / probability of
/// finishing in it" has no interior minimum (the numerator of its derivative in the quantum's
/// length, `S F - f E`, only falls), and its value at the piece's end is below the limit at its
/// start (the hazard rises across a uniform piece), so the best quantum ends at a piece's end.
/// Each end is evaluated: O(pieces).
fn rank_over_pieces(
    pieces: impl Iterator<Item = Piece>,
    total_weight: f64,
    age: f64,
    s_per_token: f64,
    prefill_s: f64,
) -> f64 {
    let mut pieces = pieces.peekable();
    // Weighted remaining tokens of the mass that finishes within the quantum, and its weight.
    let mut finished_tokens = 0.0;
    let mut finished_weight = 0.0;
    let mut best = f64::INFINITY;
    while let Some(piece) = pieces.next() {
        finished_tokens += piece.weight * (0.5 * (piece.lo + piece.hi) - age);
        finished_weight += piece.weight;
        // Evaluate a quantum once per distinct end, at the last of its ties.
        if pieces.peek().is_some_and(|next| next.hi <= piece.hi) {
            continue;
        }
        if finished_weight <= 0.0 {
            continue;
        }
        let unfinished_weight = (total_weight - finished_weight).max(0.0);
        // Expected time of the quantum, times the total weight.
        let time_s = prefill_s * total_weight
            + s_per_token * (finished_tokens + unfinished_weight * (piece.hi - age));
        best = best.min(time_s / finished_weight);
    }
    best
}

/// What became of a request of the cohort ([`ResidualPieces`]).
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Still live: censored at its current age when the pieces are rebuilt.
    Running,
    /// Completed with ln(output tokens).
    Finished(f64),
    /// Left without completing (cancelled, failed) at ln(output tokens): censored there.
    Censored(f64),
}

#[derive(Debug, Clone, Copy)]
struct CohortEntry {
    id: RequestId,
    ln_predicted: Option<f64>,
    outcome: Outcome,
}

/// A generalized Pareto excess of ln(length) over `threshold`: by the Pickands-Balkema-de Haan
/// theorem the excesses over a high threshold are GPD whatever the distribution. Shape 0 is an
/// exponential excess (a Pareto tail in tokens, decreasing hazard: old requests wait), positive
/// heavier, negative a bounded tail (a capped one). The top of a cohort of residuals ends in it:
/// as they are, the largest few observations would bound the lengths at the largest seen and give
/// a request older than all but a few of them a nearly certain end just ahead, the opposite of
/// what a long tail says. (Replacing more of the top, an eighth, helped a log-normal tail of
/// sigma 1.5 by 1.5% and cost ShareGPT's bounded one 3%: the observations are the better
/// estimate wherever there are enough of them.)
#[derive(Debug, Clone, Copy, PartialEq)]
struct TailFit {
    threshold: f64,
    shape: f64,
    scale: f64,
}

impl TailFit {
    /// Fitted by the method of moments (Hosking and Wallis, Technometrics 29, 1987) to the
    /// (residual, Kaplan-Meier weight) pairs beyond `threshold`.
    fn of(threshold: f64, beyond: &[(f64, f64)]) -> Self {
        let weight: f64 = beyond.iter().map(|&(_, w)| w).sum();
        let moment = |f: &dyn Fn(f64) -> f64| {
            beyond
                .iter()
                .map(|&(r, w)| w * f(r - threshold))
                .sum::<f64>()
                / weight
        };
        let mean = moment(&|x| x);
        if !(weight > 0.0 && mean > 1e-12) {
            // Nothing beyond, or every excess 0 (ties at the threshold): a point there.
            return Self {
                threshold,
                shape: 0.0,
                scale: 0.0,
            };
        }
        let variance = moment(&|x| (x - mean).powi(2));
        let shape =
            (0.5 * (1.0 - mean * mean / variance.max(1e-12))).clamp(TAIL_SHAPE_MIN, TAIL_SHAPE_MAX);
        Self {
            threshold,
            shape,
            scale: mean * (1.0 - shape),
        }
    }

    /// The residual below which a fraction `u` of the tail lies.
    fn quantile(&self, u: f64) -> f64 {
        let excess = if self.shape.abs() < 1e-9 {
            -self.scale * (1.0 - u).ln()
        } else {
            self.scale / self.shape * ((1.0 - u).powf(-self.shape) - 1.0)
        };
        self.threshold + excess
    }

    /// `weight` in [`FITTED_TAIL_SLICES`] equal-mass pieces of the factor e^residual; the last
    /// ends at the tail's bound, or where it has none, as far above its middle quantile as it
    /// starts below it.
    fn slices(&self, weight: f64) -> impl Iterator<Item = Piece> + '_ {
        let n = FITTED_TAIL_SLICES as f64;
        (0..FITTED_TAIL_SLICES).map(move |i| {
            let lo = self.quantile(i as f64 / n);
            let hi = if i + 1 < FITTED_TAIL_SLICES || self.shape < 0.0 {
                self.quantile((i + 1) as f64 / n)
            } else {
                2.0 * self.quantile((i as f64 + 0.5) / n) - lo
            };
            Piece {
                lo: lo.exp(),
                hi: hi.exp(),
                weight: weight / n,
            }
        })
    }
}

/// The residuals of `ln(length)` around the regression's median over a cohort of recent
/// requests, as a piecewise-uniform density of `e^residual` (module header, "Empirical
/// posterior").
///
/// The cohort is the newest [`EMPIRICAL_WINDOW`] requests *to have produced a token*, finished or
/// not, and the distribution is their Kaplan-Meier estimate (Kaplan and Meier, "Nonparametric
/// estimation from incomplete observations", JASA 53, 1958): a live request is a censored
/// observation, "longer than its age". Taking only the newest *finished* requests would be
/// survivorship-biased: the long requests of the same period are still running (after a start,
/// a burst, or under an LAS-like order, for a long time), so the tail would be missing exactly
/// when it decides what to run. Entering the cohort at the first token does not depend on the
/// request's length, and a non-anticipating scheduler's censoring depends only on the age, so
/// the estimate is unbiased. Mass the cohort cannot place (every request older than the last
/// completion is still running) goes on the fitted tail.
#[derive(Debug, Default)]
pub struct ResidualPieces {
    /// The cohort in order of first token; the front is the oldest.
    cohort: VecDeque<CohortEntry>,
    /// Entries ever pushed before the front (the sequence number of the front).
    front_seq: u64,
    /// Live requests that entered the cohort, by sequence number (stale once evicted).
    entered: IdMap<u64>,
    /// Ascending pieces of the factor e^residual for requests with and without a prediction.
    predicted: Vec<Piece>,
    unpredicted: Vec<Piece>,
    /// Requests that left (completed or not) since the last rebuild.
    since_rebuild: u32,
    /// Completions ever seen.
    completions: usize,
}

impl ResidualPieces {
    fn push(&mut self, entry: CohortEntry) -> u64 {
        self.cohort.push_back(entry);
        if self.cohort.len() > EMPIRICAL_WINDOW {
            self.cohort.pop_front();
            self.front_seq += 1;
        }
        self.front_seq + self.cohort.len() as u64 - 1
    }

    /// A request took part in a step: it enters the cohort with its first token.
    /// `ln_predicted` is asked for only when the request enters.
    fn on_step(
        &mut self,
        id: RequestId,
        ln_predicted: impl FnOnce() -> Option<f64>,
        generated_tokens: u32,
    ) {
        if generated_tokens == 0 || self.entered.contains_key(&id) {
            return;
        }
        let seq = self.push(CohortEntry {
            id,
            ln_predicted: ln_predicted(),
            outcome: Outcome::Running,
        });
        self.entered.insert(id, seq);
    }

    /// A request left with `generated_tokens`, completed or not.
    fn on_finish(
        &mut self,
        id: RequestId,
        ln_predicted: Option<f64>,
        generated_tokens: u32,
        completed: bool,
    ) {
        let outcome = match (completed, generated_tokens) {
            (_, 0) => None,
            (true, n) => Some(Outcome::Finished(f64::from(n).ln())),
            (false, n) => Some(Outcome::Censored(f64::from(n).ln())),
        };
        let slot = self
            .entered
            .remove(&id)
            .and_then(|seq| seq.checked_sub(self.front_seq))
            .and_then(|i| usize::try_from(i).ok());
        match (slot, outcome) {
            (Some(i), Some(outcome)) => {
                if let Some(entry) = self.cohort.get_mut(i) {
                    entry.outcome = outcome;
                }
            }
            // Never entered (it finished within its first step), or evicted from the cohort
            // while running: it enters now, with its outcome.
            (None, Some(outcome)) => {
                self.push(CohortEntry {
                    id,
                    ln_predicted,
                    outcome,
                });
            }
            _ => {}
        }
        if matches!(outcome, Some(Outcome::Finished(_))) {
            self.completions += 1;
        }
        if outcome.is_some() {
            self.since_rebuild += 1;
        }
    }

    fn needs_rebuild(&self) -> bool {
        self.since_rebuild >= EMPIRICAL_REBUILD_EVERY
            || (self.since_rebuild > 0 && self.completions <= EMPIRICAL_MIN_OBSERVATIONS)
    }

    /// Recomputes the pieces around the current beliefs' medians, reading the live requests'
    /// ages from `requests` (O(window log window)).
    fn rebuild(&mut self, beliefs: &Beliefs, requests: &IdMap<RequestState>) {
        // (residual, completed?) per cohort member with something to say.
        let mut predicted: Vec<(f64, bool)> = Vec::with_capacity(self.cohort.len());
        let mut unpredicted: Vec<(f64, bool)> = Vec::new();
        for e in &self.cohort {
            let (ln_length, completed) = match e.outcome {
                Outcome::Finished(y) => (y, true),
                Outcome::Censored(y) => (y, false),
                Outcome::Running => match requests.get(&e.id) {
                    Some(r) if r.generated_tokens > 0 => {
                        (f64::from(r.generated_tokens).ln(), false)
                    }
                    _ => continue,
                },
            };
            match e.ln_predicted {
                Some(x) => {
                    predicted.push((ln_length - beliefs.alpha - beliefs.beta * x, completed))
                }
                None => unpredicted.push((ln_length - beliefs.size_log_median, completed)),
            }
        }
        self.predicted = Self::pieces(predicted);
        self.unpredicted = Self::pieces(unpredicted);
        self.since_rebuild = 0;
    }

    /// Kaplan-Meier weights of the completed residuals, with censored ones "longer than"
    /// theirs, as a piecewise-uniform density of the factor `e^residual` (a histogram of equal
    /// counts): the largest [`FITTED_TAIL_OBSERVATIONS`] completions and the mass left beyond
    /// the largest censored residual as a fitted tail ([`TailFit`]); below it the largest
    /// [`EMPIRICAL_SINGLE_PIECES`] each spread from the residual below it to its own; the rest in
    /// groups of equal count, each spread over the range its residuals span. Ties stay point
    /// masses, so a length seen many times is a certainty where it holds. Point
    /// masses at every observation instead would make a request just short of one look nearly
    /// done and just past it much less so: it would keep running to the next observed length, a
    /// bias against preemption that a continuous length distribution does not have.
    fn pieces(mut residuals: Vec<(f64, bool)>) -> Vec<Piece> {
        let completions = residuals.iter().filter(|&&(_, done)| done).count();
        if completions < EMPIRICAL_MIN_OBSERVATIONS {
            return Vec::new();
        }
        // Ascending; at a tie completions first (censored at r means longer than r).
        residuals.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut at_risk = residuals.len() as f64;
        let mut survival = 1.0;
        let mut weighted: Vec<(f64, f64)> = Vec::with_capacity(completions);
        for &(r, done) in &residuals {
            if done {
                weighted.push((r, survival / at_risk));
                survival *= 1.0 - 1.0 / at_risk;
            }
            at_risk -= 1.0;
        }
        // The largest completions and the mass the cohort could not place make the tail, fitted
        // beyond the largest completion below them.
        let cut = weighted.len() - FITTED_TAIL_OBSERVATIONS;
        let fit = TailFit::of(weighted[cut - 1].0, &weighted[cut..]);
        let tail_weight = weighted[cut..].iter().map(|&(_, w)| w).sum::<f64>() + survival;
        let body = cut.saturating_sub(EMPIRICAL_SINGLE_PIECES);
        let groups = EMPIRICAL_MAX_PIECES - EMPIRICAL_SINGLE_PIECES - FITTED_TAIL_SLICES;
        let mut pieces = Vec::with_capacity(EMPIRICAL_MAX_PIECES);
        let mut start = 0;
        for g in 0..groups {
            let mut end = body * (g + 1) / groups;
            // A group ends where the residual changes: a length seen many times stays one point,
            // never spread across the gap to the next length seen.
            while end > start && end < body && weighted[end].0 == weighted[end - 1].0 {
                end += 1;
            }
            if end > start {
                pieces.push(Piece {
                    lo: weighted[start].0.exp(),
                    hi: weighted[end - 1].0.exp(),
                    weight: weighted[start..end].iter().map(|&(_, w)| w).sum(),
                });
                start = end;
            }
        }
        for i in body..cut {
            let (r, w) = weighted[i];
            let below = if i > 0 { weighted[i - 1].0 } else { r };
            pieces.push(Piece {
                lo: below.exp(),
                hi: r.exp(),
                weight: w,
            });
        }
        pieces.extend(fit.slices(tail_weight));
        pieces
    }

    /// Rank of a request of median `median_tokens` (the regression's, or the unpredicted
    /// median) that has generated `age` tokens of at most `cap`; `None` where the log-normal
    /// stands in.
    fn rank_s(
        &self,
        predicted: bool,
        median_tokens: f64,
        age: u32,
        cap: u32,
        s_per_token: f64,
        prefill_s: f64,
    ) -> Option<f64> {
        let pieces = if predicted {
            &self.predicted
        } else {
            &self.unpredicted
        };
        let (age, cap) = (f64::from(age), f64::from(cap));
        if pieces.is_empty() || cap <= age {
            return None;
        }
        let survivors = &pieces[pieces.partition_point(|p| median_tokens * p.hi <= age)..];
        if survivors.len() < EMPIRICAL_MIN_SURVIVORS {
            return None;
        }
        // In tokens, conditioned on X > age (the piece holding the age keeps its part above it)
        // and bounded by the cap (the mass above it becomes a point there). On the stack: this
        // runs for every key computed.
        let mut conditioned = [Piece::point(0.0, 0.0); EMPIRICAL_MAX_PIECES + 1];
        let mut len = 0;
        let mut push = |piece: Piece| {
            // At most one piece per survivor, and the cap's point.
            debug_assert!(len < EMPIRICAL_MAX_PIECES + 1);
            if let Some(slot) = conditioned.get_mut(len) {
                *slot = piece;
                len += 1;
            }
        };
        let mut at_cap = 0.0;
        for p in survivors {
            let (lo, hi) = (median_tokens * p.lo, median_tokens * p.hi);
            let above_age = if lo >= age {
                1.0
            } else {
                (hi - age) / (hi - lo)
            };
            let lo = lo.max(age);
            let weight = p.weight * above_age;
            if hi <= cap {
                push(Piece { lo, hi, weight });
            } else if lo >= cap {
                at_cap += weight;
            } else {
                let below_cap = (cap - lo) / (hi - lo);
                push(Piece {
                    lo,
                    hi: cap,
                    weight: weight * below_cap,
                });
                at_cap += weight * (1.0 - below_cap);
            }
        }
        if at_cap > 0.0 {
            push(Piece::point(cap, at_cap));
        }
        let conditioned = &conditioned[..len];
        let total_weight: f64 = conditioned.iter().map(|p| p.weight).sum();
        Some(rank_over_pieces(
            conditioned.iter().copied(),
            total_weight,
            age,
            s_per_token,
            prefill_s,
        ))
    }
}

/// Running mean and variance (Welford) with a prior's pseudo-observations.
#[derive(Debug, Clone, Copy)]
struct LogStats {
    n: f64,
    mean: f64,
    m2: f64,
}

impl LogStats {
    fn with_prior(mean: f64, sigma: f64) -> Self {
        Self {
            n: PRIOR_OBSERVATIONS,
            mean,
            m2: PRIOR_OBSERVATIONS * sigma * sigma,
        }
    }
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }
    fn sigma(&self) -> f64 {
        (self.m2 / self.n).sqrt().clamp(SIGMA_MIN, SIGMA_MAX)
    }
}

/// Online least squares of y = ln(actual) on x = ln(predicted), shrunk toward y = x.
#[derive(Debug, Clone, Copy, Default)]
struct LogRegression {
    n: f64,
    mean_x: f64,
    mean_y: f64,
    /// Centered sums of squares and products (Welford-style updates).
    sxx: f64,
    sxy: f64,
    syy: f64,
}

impl LogRegression {
    fn push(&mut self, x: f64, y: f64) {
        self.n += 1.0;
        let dx = x - self.mean_x;
        let dy = y - self.mean_y;
        self.mean_x += dx / self.n;
        self.mean_y += dy / self.n;
        self.sxx += dx * (x - self.mean_x);
        self.sxy += dx * (y - self.mean_y);
        self.syy += dy * (y - self.mean_y);
    }
    /// Intercept and slope; the slope is shrunk toward 1 by [`PRIOR_OBSERVATIONS`] units of
    /// x-variance and kept in [0, 1.5].
    fn alpha_beta(&self) -> (f64, f64) {
        if self.n == 0.0 {
            return (0.0, 1.0);
        }
        let beta =
            ((self.sxy + PRIOR_OBSERVATIONS) / (self.sxx + PRIOR_OBSERVATIONS)).clamp(0.0, 1.5);
        (self.mean_y - beta * self.mean_x, beta)
    }
    fn sigma(&self) -> f64 {
        let (_, beta) = self.alpha_beta();
        let residual = (self.syy - 2.0 * beta * self.sxy + beta * beta * self.sxx).max(0.0);
        let prior = PRIOR_OBSERVATIONS * PRIOR_SIGMA * PRIOR_SIGMA;
        ((residual + prior) / (self.n + PRIOR_OBSERVATIONS))
            .sqrt()
            .clamp(SIGMA_MIN, SIGMA_MAX)
    }
}

/// What the index of every request depends on besides the request itself.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Beliefs {
    /// ln(actual) ~ alpha + beta ln(predicted), residual spread sigma.
    alpha: f64,
    beta: f64,
    sigma: f64,
    /// ln(actual) for requests without a prediction.
    size_log_median: f64,
    size_sigma: f64,
    /// Beta prior of the acceptance fraction.
    prior_a: f64,
    prior_b: f64,
}

impl Beliefs {
    fn prior_mean(&self) -> f64 {
        self.prior_a / (self.prior_a + self.prior_b)
    }
    fn moved_from(&self, keyed: &Beliefs) -> bool {
        (self.sigma / keyed.sigma - 1.0).abs() > REKEY_SIGMA_FRACTION
            || (self.size_sigma / keyed.size_sigma - 1.0).abs() > REKEY_SIGMA_FRACTION
            || (self.alpha - keyed.alpha).abs() > REKEY_MU
            || (self.beta - keyed.beta).abs() > REKEY_MU / 5.0
            || (self.size_log_median - keyed.size_log_median).abs() > REKEY_MU
            || (self.prior_mean() - keyed.prior_mean()).abs() > REKEY_ACCEPTANCE
    }
}

type Key = (i32, OrdF64, OrdF64);

#[derive(Debug)]
pub struct Gittins {
    table: &'static IndexTable,
    queue: LazyKeyedQueue<Key>,
    /// Each live request's prediction at arrival (the scheduler may re-predict later; the
    /// posterior conditions on the generated tokens instead).
    predictions: IdMap<Option<u32>>,
    regression: LogRegression,
    size_stats: LogStats,
    /// Per-request acceptance fractions of finished requests: count, mean, M2.
    acceptance_n: f64,
    acceptance_mean: f64,
    acceptance_m2: f64,
    /// The beliefs the queued keys were computed with.
    keyed: Beliefs,
    /// The residuals, when the posterior is empirical.
    empirical: Option<ResidualPieces>,
}

impl Default for Gittins {
    fn default() -> Self {
        Self::new()
    }
}

impl Gittins {
    /// The default posterior ([`SizePosterior::default`]).
    pub fn new() -> Self {
        Self::with_size_posterior(SizePosterior::default())
    }

    pub fn with_size_posterior(posterior: SizePosterior) -> Self {
        let mut p = Self {
            table: IndexTable::get(),
            queue: LazyKeyedQueue::default(),
            predictions: IdMap::default(),
            regression: LogRegression::default(),
            size_stats: LogStats::with_prior(PRIOR_MEDIAN_TOKENS.ln(), PRIOR_SIGMA),
            acceptance_n: 0.0,
            acceptance_mean: 0.0,
            acceptance_m2: 0.0,
            keyed: Beliefs {
                alpha: 0.0,
                beta: 1.0,
                sigma: PRIOR_SIGMA,
                size_log_median: PRIOR_MEDIAN_TOKENS.ln(),
                size_sigma: PRIOR_SIGMA,
                prior_a: 1.0,
                prior_b: 1.0,
            },
            empirical: (posterior == SizePosterior::Empirical).then(ResidualPieces::default),
        };
        p.keyed = p.beliefs();
        p
    }

    fn beliefs(&self) -> Beliefs {
        // Method of moments for the Beta prior; uniform until a few requests finished.
        let (prior_a, prior_b) = if self.acceptance_n >= 3.0 {
            let mean = self.acceptance_mean.clamp(0.01, 0.99);
            let var = (self.acceptance_m2 / self.acceptance_n).max(1e-6);
            let strength = (mean * (1.0 - mean) / var - 1.0).clamp(1.0, 200.0);
            (mean * strength, (1.0 - mean) * strength)
        } else {
            (1.0, 1.0)
        };
        let (alpha, beta) = self.regression.alpha_beta();
        Beliefs {
            alpha,
            beta,
            sigma: self.regression.sigma(),
            size_log_median: self.size_stats.mean,
            size_sigma: self.size_stats.sigma(),
            prior_a,
            prior_b,
        }
    }

    /// The learnt residual spread of `ln(actual)` given `ln(predicted)`.
    pub fn prediction_sigma(&self) -> f64 {
        self.regression.sigma()
    }

    /// Gittins index of `r` in completions per second (higher runs first; module header).
    pub fn index_per_s(&self, r: &RequestState, ctx: &ScheduleContext<'_>) -> f64 {
        let b = self.keyed;
        let prediction = self.predictions.get(&r.id()).copied().flatten();
        let (median_tokens, sigma) = match prediction {
            Some(p) => ((b.alpha + b.beta * f64::from(p.max(1)).ln()).exp(), b.sigma),
            None => (b.size_log_median.exp(), b.size_sigma),
        };
        let median_tokens = median_tokens.max(1.0);
        let k = ctx.speculation_length;
        let accepted = r.acceptance.accepted_tokens as f64;
        let rejected = r.acceptance.drafted_tokens as f64 - accepted;
        let acceptance = (b.prior_a + accepted) / (b.prior_a + b.prior_b + accepted + rejected);
        let s_per_token = ctx.cost.sd_step_s(1, k) / (f64::from(k) * acceptance + 1.0).max(1.0);
        // The prefill still owed: what is left of a chunked prefill, the whole context for a
        // request never prefilled or whose KV was freed.
        let prefill_s = if r.needs_prefill() {
            ctx.cost.prefill_s(r.prefill_remaining_tokens())
        } else {
            0.0
        };
        if let Some(rank_s) = self.empirical.as_ref().and_then(|e| {
            e.rank_s(
                prediction.is_some(),
                median_tokens,
                r.generated_tokens,
                r.spec.max_tokens,
                s_per_token,
                prefill_s,
            )
        }) {
            return 1.0 / rank_s.max(1e-12);
        }
        let unit_s = (s_per_token * median_tokens).max(1e-12);
        let age = f64::from(r.generated_tokens) / median_tokens;
        1.0 / (self.table.rank(sigma, age, prefill_s / unit_s) * unit_s)
    }
}

impl Policy for Gittins {
    fn name(&self) -> &str {
        "gittins"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        self.predictions
            .insert(request.id(), request.spec.predicted_output_tokens);
        self.queue.mark_stale(request.id());
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        let id = request.id();
        self.queue.mark_stale(id);
        if let Some(e) = self.empirical.as_mut() {
            let predictions = &self.predictions;
            let ln_predicted = || {
                predictions
                    .get(&id)
                    .copied()
                    .flatten()
                    .map(|p| f64::from(p.max(1)).ln())
            };
            e.on_step(id, ln_predicted, request.generated_tokens);
        }
    }
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.queue.remove(id);
        let prediction = self.predictions.remove(&id).flatten();
        let completed = matches!(
            request.phase,
            crate::request::RequestPhase::Finished(FinishReason::Stop | FinishReason::Length)
        );
        let ln_predicted = prediction.map(|p| f64::from(p.max(1)).ln());
        if let Some(e) = self.empirical.as_mut() {
            e.on_finish(id, ln_predicted, request.generated_tokens, completed);
        }
        if !completed || request.generated_tokens == 0 {
            return;
        }
        let ln_actual = f64::from(request.generated_tokens).ln();
        if let Some(x) = ln_predicted {
            self.regression.push(x, ln_actual);
        }
        self.size_stats.push(ln_actual);
        let drafted = request.acceptance.drafted_tokens;
        if drafted >= MIN_DRAFTED_FOR_PRIOR {
            let rate = request.acceptance.accepted_tokens as f64 / drafted as f64;
            self.acceptance_n += 1.0;
            let d = rate - self.acceptance_mean;
            self.acceptance_mean += d / self.acceptance_n;
            self.acceptance_m2 += d * (rate - self.acceptance_mean);
        }
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        let now = self.beliefs();
        let moved = now.moved_from(&self.keyed);
        if moved {
            self.keyed = now;
        }
        if let Some(e) = self.empirical.as_mut() {
            // Queued keys stay as they are until the beliefs move (like the log-normal's).
            if moved || e.needs_rebuild() {
                e.rebuild(&self.keyed, ctx.requests);
            }
        }
        if moved {
            self.queue.mark_all_stale();
        }
        // The keys read `self`; the queue is set aside while they are computed.
        let mut queue = std::mem::take(&mut self.queue);
        queue.rekey(ctx.requests, |r| {
            (
                r.spec.priority_or_default(),
                OrdF64(-self.index_per_s(r, ctx)),
                OrdF64(r.spec.arrival_s),
            )
        });
        self.queue = queue;
        offer_in_order(batch, self.queue.ids());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::StepCostModel;
    use crate::testutil::Fixture;

    /// Brute-force Gittins index of a discrete size distribution (`atoms`: (size, probability))
    /// at age `age` with `q` owed first: every quantum ending at an atom, evaluated directly.
    fn discrete_index(atoms: &[(f64, f64)], age: f64, q: f64) -> f64 {
        let alive: Vec<(f64, f64)> = atoms.iter().copied().filter(|a| a.0 > age).collect();
        let mass: f64 = alive.iter().map(|a| a.1).sum();
        alive
            .iter()
            .map(|&(end, _)| {
                let done: f64 = alive.iter().filter(|a| a.0 <= end).map(|a| a.1).sum();
                let spent: f64 = alive.iter().map(|a| a.1 * (a.0.min(end) - age)).sum();
                (done / mass) / (q + spent / mass)
            })
            .fold(0.0, f64::max)
    }

    /// Direct numerical index of a median-1 log-normal: midpoint integration on a fine
    /// geometric grid of quanta, independent of the table's grid.
    fn lognormal_index(sigma: f64, age: f64, q: f64) -> f64 {
        let survival = |x: f64| normal_survival(x.ln() / sigma);
        let s_u = if age > 0.0 { survival(age) } else { 1.0 };
        let start = age.max((-9.0 * sigma).exp());
        // Work owed before the grid starts (survival 1 below 9 sigma).
        let mut spent = (start - age) * s_u;
        let end = (8.0 * sigma).exp().max(age * 2.0);
        let steps = 200_000;
        let ratio = (end / start).powf(1.0 / steps as f64);
        let (mut x, mut best) = (start, 0.0f64);
        for _ in 0..steps {
            let next = x * ratio;
            spent += survival((x * next).sqrt()) * (next - x);
            let done = s_u - survival(next);
            best = best.max(done / (q * s_u + spent));
            x = next;
        }
        best
    }

    #[test]
    fn the_table_matches_direct_integration() {
        let table = IndexTable::get();
        for sigma in [0.1, 0.5, 1.0, 2.0] {
            let sigma = table.grid_sigma(sigma);
            // Ages by standardized z (the table's range is z <= 5; a fresh job is z = -inf).
            for z in [f64::NEG_INFINITY, -6.0, -2.0, 0.0, 1.5, 4.0] {
                let age = (sigma * z).exp();
                for q in [0.0, 0.05, 0.7, 3.0] {
                    let direct = lognormal_index(sigma, age, q);
                    let tabled = table.index(sigma, age, q);
                    assert!(
                        (tabled / direct - 1.0).abs() < 0.02,
                        "sigma {sigma} age {age} q {q}: table {tabled} direct {direct}"
                    );
                }
            }
        }
    }

    #[test]
    fn discrete_brute_force_shows_the_limits_the_table_reproduces() {
        // Known size (one atom): index = 1 / (q + remaining), SRPT's order.
        assert!((discrete_index(&[(10.0, 1.0)], 4.0, 0.0) - 1.0 / 6.0).abs() < 1e-12);
        assert!((discrete_index(&[(10.0, 1.0)], 4.0, 2.0) - 1.0 / 8.0).abs() < 1e-12);
        // Two atoms 1 and 10, equal mass: fresh, the best quantum stops at 1
        // (0.5 / 1 = 0.5 > 1 / 5.5); past 1 only the long one is left: 1 / 9.
        let two = [(1.0, 0.5), (10.0, 0.5)];
        assert!((discrete_index(&two, 0.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((discrete_index(&two, 1.0, 0.0) - 1.0 / 9.0).abs() < 1e-12);
        // A narrow log-normal is nearly a known size: its table index tracks 1 / (1 - age).
        let table = IndexTable::get();
        for age in [0.0, 0.5, 0.8] {
            let g = table.index(SIGMA_MIN, age, 0.0);
            assert!((g * (1.0 - age) - 1.0).abs() < 0.12, "age {age}: {g}");
        }
        // A wide one has a decreasing hazard in its tail: past the median, the older the
        // request, the lower its index (LAS's order there).
        let wide = |age| table.index(2.5, age, 0.0);
        assert!(wide(2.0) > wide(8.0) && wide(8.0) > wide(30.0));
        // The index falls as the prefill owed grows.
        assert!(table.index(1.0, 0.0, 0.0) > table.index(1.0, 0.0, 1.0));
    }

    #[test]
    fn the_table_agrees_with_a_discretized_lognormal_brute_force() {
        // A log-normal cut into 400 atoms, indexed by enumerating every quantum.
        let sigma = IndexTable::get().grid_sigma(0.8);
        let atoms: Vec<(f64, f64)> = (0..400)
            .map(|i| {
                let lo = -5.0 + 10.0 * i as f64 / 400.0;
                let hi = lo + 10.0 / 400.0;
                let p = normal_survival(lo) - normal_survival(hi);
                ((sigma * 0.5 * (lo + hi)).exp(), p)
            })
            .collect();
        for age in [0.0, 0.5, 1.5] {
            let brute = discrete_index(&atoms, age, 0.1);
            let tabled = IndexTable::get().index(sigma, age, 0.1);
            assert!(
                (tabled / brute - 1.0).abs() < 0.03,
                "age {age}: table {tabled} brute {brute}"
            );
        }
    }

    #[test]
    fn the_atom_rank_matches_the_brute_force_on_weighted_atoms() {
        // Deterministic pseudo-random atoms (lengths 1..1000, weights 1..5).
        let mut x: u64 = 7;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..50 {
            let mut atoms: Vec<(f64, f64)> = (0..12)
                .map(|_| ((1.0 + 999.0 * next()).round(), (1.0 + 4.0 * next()).round()))
                .collect();
            atoms.sort_by(|a, b| a.0.total_cmp(&b.0));
            let age = (atoms[0].0 - 1.0).max(0.0) * next();
            let (s_per_token, prefill_s) = (0.02, 3.0 * next());
            let total: f64 = atoms.iter().map(|a| a.1).sum();
            let rank = rank_over_pieces(
                atoms.iter().map(|&(l, w)| Piece::point(l, w)),
                total,
                age,
                s_per_token,
                prefill_s,
            );
            let probabilities: Vec<(f64, f64)> =
                atoms.iter().map(|&(l, w)| (l, w / total)).collect();
            // discrete_index is in units of one token's time: index per second = index / s.
            let brute = discrete_index(&probabilities, age, prefill_s / s_per_token) / s_per_token;
            assert!(
                (rank * brute - 1.0).abs() < 1e-9,
                "atoms {atoms:?} age {age}: rank {rank}, brute-force index {brute}"
            );
        }
    }

    #[test]
    fn the_piece_rank_matches_the_brute_force_on_a_fine_discretization() {
        // Uniform pieces (some points), each cut into 300 atoms at the ends of equal slices;
        // the discretization's bias is O(1/300) of a piece.
        let mut x: u64 = 11;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as f64 / (1u64 << 31) as f64
        };
        for case in 0..24 {
            let mut edge = 1.0 + 20.0 * next();
            let mut pieces = Vec::new();
            for _ in 0..6 {
                let lo = edge + 30.0 * next() * next();
                let width = if next() < 0.2 { 0.0 } else { 80.0 * next() };
                pieces.push(Piece {
                    lo,
                    hi: lo + width,
                    weight: 1.0 + 4.0 * next(),
                });
                edge = lo + width;
            }
            // Half the cases start inside the first piece (its part above the age), half below.
            let age = if case % 2 == 0 && pieces[0].hi > pieces[0].lo {
                let age = pieces[0].lo + 0.5 * (pieces[0].hi - pieces[0].lo);
                pieces[0].weight *= 0.5;
                pieces[0].lo = age;
                age
            } else {
                pieces[0].lo * next()
            };
            let prefill_s = if case % 4 < 2 { 0.0 } else { 2.0 * next() };
            let s_per_token = 0.02;
            let total: f64 = pieces.iter().map(|p| p.weight).sum();
            let rank = rank_over_pieces(pieces.iter().copied(), total, age, s_per_token, prefill_s);
            let n = 300;
            let mut atoms = Vec::new();
            for p in &pieces {
                if p.hi == p.lo {
                    atoms.push((p.lo, p.weight / total));
                } else {
                    atoms.extend((1..=n).map(|j| {
                        let l = p.lo + (p.hi - p.lo) * j as f64 / n as f64;
                        (l, p.weight / total / n as f64)
                    }));
                }
            }
            let brute = discrete_index(&atoms, age, prefill_s / s_per_token) / s_per_token;
            assert!(
                (rank * brute - 1.0).abs() < 1e-2,
                "case {case}, pieces {pieces:?}, age {age}: rank {rank}, brute-force index {brute}"
            );
        }
    }

    #[test]
    fn the_tail_fit_recovers_known_excess_distributions() {
        // Excesses at the midpoints of 400 equal-probability slices of a GPD (exact quantiles).
        let sample = |shape: f64, scale: f64| -> Vec<(f64, f64)> {
            let truth = TailFit {
                threshold: 1.0,
                shape,
                scale,
            };
            (0..400)
                .map(|i| (truth.quantile((i as f64 + 0.5) / 400.0), 1.0))
                .collect()
        };
        // Exponential (a Pareto tail in tokens) and a bounded one.
        for (shape, scale) in [(0.0, 0.5), (-0.25, 0.8), (0.15, 0.3)] {
            let fit = TailFit::of(1.0, &sample(shape, scale));
            assert!((fit.shape - shape).abs() < 0.05, "{shape}: {fit:?}");
            assert!((fit.scale / scale - 1.0).abs() < 0.1, "{scale}: {fit:?}");
        }
        // A bounded tail ends at its bound; an unbounded one goes past its largest observation.
        let bounded = TailFit::of(1.0, &sample(-0.25, 0.8));
        let last = bounded.slices(1.0).last().map(|p| p.hi.ln());
        assert!(
            (last.unwrap_or(0.0) - (1.0 + 0.8 / 0.25)).abs() < 0.3,
            "{last:?}"
        );
        let pareto = TailFit::of(1.0, &sample(0.0, 0.5));
        let largest = sample(0.0, 0.5).iter().map(|s| s.0).fold(0.0, f64::max);
        let last = pareto.slices(1.0).last().map(|p| p.hi.ln()).unwrap_or(0.0);
        assert!(last > largest, "{last} <= {largest}");
        // Ties at the threshold: a point there.
        let tied = TailFit::of(1.0, &[(1.0, 1.0), (1.0, 2.0)]);
        assert!(tied
            .slices(1.0)
            .all(|p| p.lo == p.hi && (p.lo.ln() - 1.0).abs() < 1e-12));
    }

    #[test]
    fn the_sparse_top_of_a_heavy_tail_does_not_look_nearly_done() {
        // Lengths with a Pareto tail (alpha 1.5 above 100 tokens): the hazard falls with age,
        // so a request among the longest few observed should wait behind one of median age.
        // Taken as they are, the observations just above it would make it look nearly done.
        let mut p = Gittins::with_size_posterior(SizePosterior::Empirical);
        let lengths: Vec<u32> = (0..512)
            .map(|i| (100.0 * (1.0 - (i as f64 + 0.5) / 512.0).powf(-1.0 / 1.5)).round() as u32)
            .collect();
        teach(&mut p, 0..512, 100, |id| lengths[id as usize]);
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, Some(100));
        arrive(&mut f, 2, 0.0, Some(100));
        for id in 1..=2 {
            f.get_mut(id).prefilled = true;
        }
        // Just short of the fifth longest observation, and at the median.
        f.get_mut(1).generated_tokens = lengths[507] - 1;
        f.get_mut(2).generated_tokens = lengths[256];
        let old = index_after_a_decision(&mut p, &f, 1);
        let median = index_after_a_decision(&mut p, &f, 2);
        assert!(old < median, "old {old} >= median-age {median}");
    }

    /// Finishes requests `ids` (all predicted at `predicted` tokens) with the lengths
    /// `length_of(id)` gives, so that `p` learns from them.
    fn teach(
        p: &mut Gittins,
        ids: std::ops::Range<u64>,
        predicted: u32,
        length_of: impl Fn(u64) -> u32,
    ) {
        for id in ids {
            let mut r = RequestState::new(
                crate::request::RequestSpec::new(id, 0.0, 10, 1000)
                    .with_predicted_output_tokens(predicted),
            );
            p.on_arrival(&r, 0.0);
            r.generated_tokens = length_of(id);
            r.phase = crate::request::RequestPhase::Finished(FinishReason::Stop);
            p.on_finish(&r);
        }
    }

    /// A Gittins policy taught that predictions of 100 tokens end at 50 or at 500 (half each),
    /// never anywhere else: a shape no log-normal has.
    fn taught_two_modes(posterior: SizePosterior) -> Gittins {
        let mut p = Gittins::with_size_posterior(posterior);
        teach(
            &mut p,
            100..300,
            100,
            |id| if id % 2 == 0 { 50 } else { 500 },
        );
        p
    }

    /// Index per second of request `id` of `f` after `p` has seen it arrive and made one
    /// decision (which rebuilds what it learnt), at k = 0.
    fn index_after_a_decision(p: &mut Gittins, f: &Fixture, id: u64) -> f64 {
        p.on_arrival(f.get(id), 0.0);
        let ctx = ScheduleContext {
            now_s: 0.0,
            requests: &f.requests,
            running: &f.running,
            speculation_length: 0,
            cost: &f.cost,
        };
        let mut batch = BatchBuilder::new(f.capacity, &f.requests, 0, &f.cost);
        p.select(&ctx, &mut batch);
        p.index_per_s(f.get(id), &ctx)
    }

    #[test]
    fn the_empirical_posterior_keeps_the_shape_the_log_normal_loses() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, Some(100));
        f.get_mut(1).prefilled = true;
        // Past the short mode, 440 tokens are certainly left: the index is exactly 1 / (440 c).
        f.get_mut(1).generated_tokens = 60;
        let s_per_token = f.cost.sd_step_s(1, 0);
        let index = index_after_a_decision(&mut taught_two_modes(SizePosterior::Empirical), &f, 1);
        assert!(
            (index * 440.0 * s_per_token - 1.0).abs() < 1e-6,
            "index {index}, expected {}",
            1.0 / (440.0 * s_per_token)
        );
        // The log-normal spreads the same data over every length: far from that.
        let other = index_after_a_decision(&mut taught_two_modes(SizePosterior::LogNormal), &f, 1);
        assert!((other * 440.0 * s_per_token - 1.0).abs() > 0.2, "{other}");
    }

    #[test]
    fn max_tokens_bounds_the_empirical_posterior() {
        // Taught long lengths (500 of 100 predicted), a request capped at 80 tokens that has
        // produced 70 has exactly 10 left; without the cap it would have 430.
        let mut f = Fixture::new(1);
        f.arrive_with(1, 0.0, 10, 80, |s| s.predicted_output_tokens = Some(100));
        f.get_mut(1).prefilled = true;
        f.get_mut(1).generated_tokens = 70;
        let s_per_token = f.cost.sd_step_s(1, 0);
        let mut p = Gittins::with_size_posterior(SizePosterior::Empirical);
        teach(&mut p, 100..200, 100, |_| 500);
        let index = index_after_a_decision(&mut p, &f, 1);
        assert!(
            (index * 10.0 * s_per_token - 1.0).abs() < 1e-6,
            "index {index}, expected {}",
            1.0 / (10.0 * s_per_token)
        );
    }

    #[test]
    fn live_requests_count_as_censored_observations() {
        // 96 requests finished at 50 tokens and 160 at 1,000, while 128 more are still running
        // at 300 tokens. Kaplan-Meier: the short mode has 96 of the 384 at risk, P = 1/4 (the
        // finished requests alone would say 3/8), and the long mode the remaining 3/4. A fresh
        // request's best quantum is then the short one: index = (1/4) / (50 c) = 1 / (200 c).
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, Some(100));
        f.get_mut(1).prefilled = true;
        let mut p = Gittins::with_size_posterior(SizePosterior::Empirical);
        for id in 1000..1128 {
            arrive(&mut f, id, 0.0, Some(100));
            f.get_mut(id).prefilled = true;
            f.get_mut(id).generated_tokens = 300;
            p.on_arrival(f.get(id), 0.0);
            p.on_step(f.get(id), 0.0);
        }
        teach(&mut p, 100..356, 100, |id| if id < 196 { 50 } else { 1000 });
        let s_per_token = f.cost.sd_step_s(1, 0);
        let index = index_after_a_decision(&mut p, &f, 1);
        assert!(
            (index * 200.0 * s_per_token - 1.0).abs() < 1e-6,
            "index {index}, expected {}",
            1.0 / (200.0 * s_per_token)
        );
        // Cancelled where they stood, they stay censored at 300: the same estimate.
        for id in 1000..1128 {
            f.get_mut(id).phase = crate::request::RequestPhase::Finished(FinishReason::Cancelled);
            p.on_finish(f.get(id));
            f.requests.remove(&id);
        }
        let index = index_after_a_decision(&mut p, &f, 1);
        assert!((index * 200.0 * s_per_token - 1.0).abs() < 1e-6, "{index}");
    }

    fn arrive(f: &mut Fixture, id: u64, t: f64, predicted: Option<u32>) {
        f.arrive_with(id, t, 10, 10_000, |s| s.predicted_output_tokens = predicted);
    }

    #[test]
    fn precise_predictions_give_the_shortest_remaining_first() {
        let mut f = Fixture::new(1);
        let mut p = Gittins::new();
        // Teach it that predictions are exact: sigma at its floor.
        teach(&mut p, 100..140, 50, |_| 50);
        assert!(p.prediction_sigma() < 0.3, "{}", p.prediction_sigma());
        arrive(&mut f, 1, 0.0, Some(300));
        arrive(&mut f, 2, 0.0, Some(100));
        arrive(&mut f, 3, 0.0, Some(200));
        f.announce(&mut p);
        for id in 1..=3 {
            f.get_mut(id).prefilled = true;
        }
        assert_eq!(f.select(&mut p), vec![2]);
        // Request 1 runs until 250 of its 300 are done: 50 left, less than 2's 100.
        f.get_mut(1).generated_tokens = 250;
        p.on_step(f.get(1), 0.0);
        assert_eq!(f.select(&mut p), vec![1]);
    }

    #[test]
    fn without_predictions_a_wide_spread_favours_less_attained_service() {
        let mut f = Fixture::new(1);
        let mut p = Gittins::new();
        arrive(&mut f, 1, 0.0, None);
        arrive(&mut f, 2, 0.1, None);
        f.announce(&mut p);
        for id in 1..=2 {
            f.get_mut(id).prefilled = true;
        }
        // Both past the prior median (128) with sigma 1: the younger one goes first.
        f.get_mut(1).generated_tokens = 2000;
        f.get_mut(2).generated_tokens = 400;
        p.on_step(f.get(1), 0.0);
        p.on_step(f.get(2), 0.0);
        assert_eq!(f.select(&mut p), vec![2]);
    }

    #[test]
    fn a_chunked_prefill_owes_only_what_is_left_of_it() {
        let mut f = Fixture::new(1);
        let mut p = Gittins::new();
        for id in 1..=2 {
            f.arrive_with(id, 0.0, 4000, 10_000, |s| {
                s.predicted_output_tokens = Some(100)
            });
        }
        f.announce(&mut p);
        // Request 1 has 3,000 of its 4,000 prompt tokens in its KV already.
        f.get_mut(1).prefill_progress_tokens = 3000;
        let ctx = ScheduleContext {
            now_s: 0.0,
            requests: &f.requests,
            running: &f.running,
            speculation_length: 4,
            cost: &f.cost,
        };
        assert!(p.index_per_s(f.get(1), &ctx) > p.index_per_s(f.get(2), &ctx));
    }

    #[test]
    fn higher_acceptance_and_no_prefill_owed_raise_the_index() {
        let mut f = Fixture::new(2);
        let mut p = Gittins::new();
        arrive(&mut f, 1, 0.0, Some(100));
        arrive(&mut f, 2, 0.0, Some(100));
        f.announce(&mut p);
        f.get_mut(1).prefilled = true;
        f.get_mut(2).prefilled = true;
        for _ in 0..5 {
            f.step_one(&mut p, 1, 4, 4);
            f.step_one(&mut p, 2, 4, 0);
        }
        // Same length and age (request 1 produced 25 tokens, 2 only 5: 1 is older but faster).
        f.get_mut(2).generated_tokens = 25;
        p.on_step(f.get(2), 0.0);
        let ctx_index = |f: &Fixture, p: &Gittins, id| {
            let ctx = ScheduleContext {
                now_s: 0.0,
                requests: &f.requests,
                running: &f.running,
                speculation_length: 4,
                cost: &f.cost,
            };
            p.index_per_s(f.get(id), &ctx)
        };
        assert!(ctx_index(&f, &p, 1) > ctx_index(&f, &p, 2));
        arrive(&mut f, 3, 0.0, Some(100));
        p.on_arrival(f.get(3), 0.0);
        arrive(&mut f, 4, 0.0, Some(100));
        f.get_mut(4).prefilled = true;
        p.on_arrival(f.get(4), 0.0);
        assert!(
            ctx_index(&f, &p, 4) > ctx_index(&f, &p, 3),
            "3 owes its prefill"
        );
    }
}
