//! Token selection for speculative decoding: logits processing (temperature, top-p), greedy and
//! seeded sampling, and the verification rule that keeps the output distributed exactly as the
//! target's: speculative sampling (Leviathan, Kalman & Matias 2023, "Fast Inference from
//! Transformers via Speculative Decoding", Algorithm 1; Chen et al. 2023, "Accelerating Large
//! Language Model Decoding with Speculative Sampling", Algorithm 2).
//!
//! Both the target's `p` and the draft's `q` go through the same [`SamplingMode`], so the emitted
//! tokens follow the target's *processed* distribution (temperature, then nucleus truncation).

use rand::Rng;

/// How a token is chosen from logits. Built from a request's temperature and top-p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplingMode {
    /// Argmax (temperature 0). Ties go to the lowest token id.
    Greedy,
    /// Softmax of `logits / temperature`, truncated to the smallest set of most likely tokens
    /// whose mass reaches `top_p` (nucleus sampling), renormalised.
    Sample {
        /// Strictly positive softmax temperature.
        temperature: f32,
        /// Nucleus mass in (0, 1]; 1 keeps the whole vocabulary.
        top_p: f32,
    },
}

impl SamplingMode {
    /// `temperature <= 0` (or not finite) means greedy; `top_p` outside (0, 1] is clamped into it.
    pub fn new(temperature: f32, top_p: f32) -> Self {
        if !(temperature.is_finite() && temperature > 0.0) {
            return SamplingMode::Greedy;
        }
        let top_p = if top_p.is_finite() && top_p > 0.0 {
            top_p.min(1.0)
        } else {
            1.0
        };
        SamplingMode::Sample { temperature, top_p }
    }

    /// Whether this mode is [`SamplingMode::Greedy`].
    pub fn is_greedy(&self) -> bool {
        matches!(self, SamplingMode::Greedy)
    }

    /// The processed distribution over the vocabulary for `logits` (one-hot on the argmax when
    /// greedy). Always sums to 1 (up to rounding) and has the length of `logits`.
    pub fn probs(&self, logits: &[f32]) -> Vec<f32> {
        match *self {
            SamplingMode::Greedy => {
                let mut p = vec![0.0; logits.len()];
                if !logits.is_empty() {
                    p[argmax(logits) as usize] = 1.0;
                }
                p
            }
            SamplingMode::Sample { temperature, top_p } => {
                let mut p = softmax(logits, temperature);
                if top_p < 1.0 {
                    nucleus_truncate(&mut p, top_p);
                }
                p
            }
        }
    }

    /// Picks one token from `logits`: the argmax when greedy, else a draw from [`Self::probs`].
    pub fn pick<R: Rng>(&self, logits: &[f32], rng: &mut R) -> u32 {
        match self {
            SamplingMode::Greedy => argmax(logits),
            SamplingMode::Sample { .. } => sample(&self.probs(logits), rng),
        }
    }
}

/// Per-request changes to the target's logits before [`SamplingMode`] sees them: OpenAI's
/// `logit_bias`, `presence_penalty` and `frequency_penalty` (over the tokens generated so far),
/// and the repetition penalty of Keskar et al. 2019 ("CTRL", section 4.1; over prompt and
/// output, as vLLM and Hugging Face apply it). Speculative decoding stays exact under them: the
/// row that verifies draft position `i` is adjusted with the drafts before `i` counted as
/// generated, which is the context the target alone would have had there.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitAdjustments {
    /// Added to the logit of each listed token id (OpenAI: -100 bans a token, +100 forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Subtracted once from the logit of every token generated at least once.
    pub presence_penalty: f32,
    /// Subtracted from the logit of every generated token, times its count.
    pub frequency_penalty: f32,
    /// Divides positive and multiplies negative logits of tokens seen in the prompt or the
    /// output; 1 = off.
    pub repetition_penalty: f32,
}

impl Default for LogitAdjustments {
    fn default() -> Self {
        Self {
            logit_bias: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
        }
    }
}

impl LogitAdjustments {
    /// Whether applying these leaves every logit unchanged (the engine then skips the work).
    pub fn is_neutral(&self) -> bool {
        self.logit_bias.iter().all(|&(_, b)| b == 0.0)
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.repetition_penalty == 1.0
    }

    /// The token counts these adjustments read, for a context of `tokens` whose first
    /// `prompt_len` are the prompt.
    pub fn counts(&self, tokens: &[u32], prompt_len: usize) -> TokenCounts {
        let prompt_len = prompt_len.min(tokens.len());
        let mut counts = TokenCounts::default();
        if self.repetition_penalty != 1.0 {
            counts.in_prompt = tokens[..prompt_len].iter().copied().collect();
        }
        for &t in &tokens[prompt_len..] {
            counts.push(t);
        }
        counts
    }

    /// Adjusts `logits` (one position's row) for the context `counts` describes. Ids beyond the
    /// row (a cut LM head) are left alone.
    pub fn apply(&self, logits: &mut [f32], counts: &TokenCounts) {
        for &(token, bias) in &self.logit_bias {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
        if self.repetition_penalty != 1.0 {
            let r = self.repetition_penalty;
            let seen = counts.in_prompt.iter().chain(
                counts
                    .in_output
                    .keys()
                    .filter(|t| !counts.in_prompt.contains(t)),
            );
            for &token in seen {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        if self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 {
            for (&token, &count) in &counts.in_output {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l -= self.frequency_penalty * count as f32 + self.presence_penalty;
                }
            }
        }
    }
}

/// Which tokens a context holds, as [`LogitAdjustments`] reads it: the prompt's token set and
/// each generated token's count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenCounts {
    in_prompt: std::collections::HashSet<u32>,
    in_output: std::collections::HashMap<u32, u32>,
}

impl TokenCounts {
    /// Counts one more generated (or drafted, when verifying the positions after it) token.
    pub fn push(&mut self, token: u32) {
        *self.in_output.entry(token).or_insert(0) += 1;
    }
}

/// The target's log probability of one emitted token and of its most likely alternatives, from
/// the raw logits of the position that emitted it (before bias, penalties, temperature and top-p,
/// as vLLM reports by default). Under speculative decoding these are the target's own numbers: the
/// verifying forward scores every emitted position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The `top` most likely tokens with their log probabilities, most likely first (ties by id).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `token`'s log-softmax in `logits`, and the `top` largest entries.
    pub fn from_logits(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits
            .iter()
            .map(|&l| (f64::from(l) - f64::from(max)).exp())
            .sum();
        let log_z = f64::from(max) + sum.ln();
        let logprob_of = |t: u32| {
            logits
                .get(t as usize)
                .map_or(f32::NEG_INFINITY, |&l| (f64::from(l) - log_z) as f32)
        };
        let mut best: Vec<u32> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if l.is_nan() {
                    continue;
                }
                let worse = |&b: &u32| logits[b as usize] < l;
                // Insert before the first strictly smaller entry: equal logits keep id order.
                let at = best.iter().position(worse).unwrap_or(best.len());
                if at < top {
                    best.insert(at, i as u32);
                    best.truncate(top);
                }
            }
        }
        Self {
            token,
            logprob: logprob_of(token),
            top: best.into_iter().map(|t| (t, logprob_of(t))).collect(),
        }
    }
}

/// Index of the largest value (the first one on ties; NaN never wins). 0 for an empty slice.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Softmax of `logits / temperature`, computed in f64 for the normaliser.
fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let inv_t = 1.0 / f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = Vec::with_capacity(logits.len());
    let mut total = 0.0f64;
    for &l in logits {
        let e = ((f64::from(l) - f64::from(max)) * inv_t).exp();
        let e = if e.is_finite() { e } else { 0.0 };
        total += e;
        out.push(e as f32);
    }
    if total > 0.0 {
        let inv = (1.0 / total) as f32;
        out.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// Keeps the smallest set of most likely tokens whose mass reaches `top_p`, zeroes the rest and
/// renormalises (Holtzman et al. 2020). Ties at the boundary are broken by token id.
fn nucleus_truncate(p: &mut [f32], top_p: f32) {
    let mut order: Vec<u32> = (0..p.len() as u32)
        .filter(|&i| p[i as usize] > 0.0)
        .collect();
    order.sort_unstable_by(|&a, &b| {
        p[b as usize]
            .partial_cmp(&p[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut mass = 0.0f64;
    let mut keep = order.len();
    for (rank, &i) in order.iter().enumerate() {
        mass += f64::from(p[i as usize]);
        if mass >= f64::from(top_p) {
            keep = rank + 1;
            break;
        }
    }
    for &i in &order[keep..] {
        p[i as usize] = 0.0;
    }
    let kept: f64 = order[..keep]
        .iter()
        .map(|&i| f64::from(p[i as usize]))
        .sum();
    if kept > 0.0 {
        let inv = (1.0 / kept) as f32;
        p.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Draws a token from an (unnormalised, non-negative) distribution. Falls back to the argmax
/// when the mass is zero or not finite, so a degenerate distribution never panics.
pub fn sample<R: Rng>(probs: &[f32], rng: &mut R) -> u32 {
    let total: f64 = probs.iter().map(|&x| f64::from(x.max(0.0))).sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax(probs);
    }
    let target = rng.gen::<f64>() * total;
    let mut acc = 0.0f64;
    let mut last_positive = 0usize;
    for (i, &x) in probs.iter().enumerate() {
        if x > 0.0 {
            acc += f64::from(x);
            last_positive = i;
            if target < acc {
                return i as u32;
            }
        }
    }
    // Rounding left `target` just above the accumulated mass: the last token with mass wins.
    last_positive as u32
}

/// The distribution `q` a draft token was sampled from.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftProbs {
    /// A deterministic proposal (n-gram lookup, or any greedy drafter): `q(x) = 1`.
    OneHot,
    /// A draft model's processed distribution over the whole vocabulary.
    Dense(Vec<f32>),
}

impl DraftProbs {
    /// `q(token)`.
    fn at(&self, token: u32) -> f32 {
        match self {
            DraftProbs::OneHot => 1.0,
            DraftProbs::Dense(q) => q.get(token as usize).copied().unwrap_or(0.0),
        }
    }
}

/// Outcome of verifying one sequence's draft against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How many draft tokens (a prefix of the draft) were accepted.
    pub accepted: usize,
    /// The token the target adds after the accepted prefix: the correction on a rejection, or the
    /// bonus token when every draft token was accepted.
    pub next_token: u32,
}

/// Greedy verification: accept while the draft token equals the target's argmax at that position,
/// then emit the target's argmax. `target_logits[i]` scores the position after `i` draft tokens;
/// it needs `draft.len() + 1` rows.
pub fn verify_greedy<L: AsRef<[f32]>>(draft: &[u32], target_logits: &[L]) -> Verdict {
    debug_assert!(target_logits.len() > draft.len());
    let mut accepted = 0;
    while accepted < draft.len() {
        let best = argmax(target_logits[accepted].as_ref());
        if best != draft[accepted] {
            return Verdict {
                accepted,
                next_token: best,
            };
        }
        accepted += 1;
    }
    Verdict {
        accepted,
        next_token: argmax(target_logits[accepted].as_ref()),
    }
}

/// Speculative sampling: draft token `x_i` is accepted with probability `min(1, p_i(x)/q_i(x))`;
/// at the first rejection the next token is drawn from `norm(max(0, p_i - q_i))`; if all are
/// accepted, the bonus token is drawn from `p_{k+1}`. `target_probs[i]` is the target's processed
/// distribution after `i` draft tokens (`draft.len() + 1` rows); `draft_probs[i]` the `q` that
/// `draft[i]` was drawn from.
pub fn verify_sampled<P: AsRef<[f32]>, R: Rng>(
    draft: &[u32],
    draft_probs: &[DraftProbs],
    target_probs: &[P],
    rng: &mut R,
) -> Verdict {
    debug_assert_eq!(draft.len(), draft_probs.len());
    debug_assert!(target_probs.len() > draft.len());
    for (i, (&x, q)) in draft.iter().zip(draft_probs).enumerate() {
        let p = target_probs[i].as_ref();
        let p_x = p.get(x as usize).copied().unwrap_or(0.0);
        let q_x = q.at(x);
        // u < p/q, written without the division; q_x > 0 whenever x was drawn from q.
        let u: f32 = rng.gen();
        if u * q_x < p_x {
            continue;
        }
        return Verdict {
            accepted: i,
            next_token: sample_residual(p, q, x, rng),
        };
    }
    let bonus = sample(target_probs[draft.len()].as_ref(), rng);
    Verdict {
        accepted: draft.len(),
        next_token: bonus,
    }
}

/// Draws from `norm(max(0, p - q))`; when that mass is zero (p == q up to rounding, where a
/// rejection has probability zero) it draws from `p`.
fn sample_residual<R: Rng>(p: &[f32], q: &DraftProbs, rejected: u32, rng: &mut R) -> u32 {
    let residual: Vec<f32> = match q {
        DraftProbs::OneHot => {
            let mut r = p.to_vec();
            if let Some(slot) = r.get_mut(rejected as usize) {
                *slot = 0.0;
            }
            r
        }
        DraftProbs::Dense(q) => p
            .iter()
            .enumerate()
            .map(|(i, &pi)| (pi - q.get(i).copied().unwrap_or(0.0)).max(0.0))
            .collect(),
    };
    if residual.iter().any(|&x| x > 0.0) {
        sample(&residual, rng)
    } else {
        sample(p, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn temperature_zero_is_greedy_and_top_p_is_clamped() {
        assert_eq!(SamplingMode::new(0.0, 0.9), SamplingMode::Greedy);
        assert_eq!(SamplingMode::new(-1.0, 0.9), SamplingMode::Greedy);
        assert_eq!(
            SamplingMode::new(0.5, 1.5),
            SamplingMode::Sample {
                temperature: 0.5,
                top_p: 1.0
            }
        );
        assert_eq!(
            SamplingMode::new(0.5, 0.0),
            SamplingMode::Sample {
                temperature: 0.5,
                top_p: 1.0
            }
        );
    }

    #[test]
    fn logit_adjustments_follow_openai_and_ctrl_rules() {
        let neutral = LogitAdjustments::default();
        assert!(neutral.is_neutral());
        // Prompt [5, 1], generated [2, 2, 3].
        let tokens = [5, 1, 2, 2, 3];
        let adjust = LogitAdjustments {
            logit_bias: vec![(0, 1.5), (99, 7.0)],
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 2.0,
        };
        assert!(!adjust.is_neutral());
        let counts = adjust.counts(&tokens, 2);
        let mut logits = vec![1.0f32, 4.0, 4.0, -2.0, 3.0, 6.0];
        adjust.apply(&mut logits, &counts);
        // 0: bias only; 1: prompt, positive -> halved; 2: generated twice, halved then
        // - (2 * 0.25 + 0.5); 3: generated once, negative -> doubled then - 0.75; 4: untouched;
        // 5: prompt -> halved. Id 99 is beyond the row and ignored.
        let want = [2.5f32, 2.0, 1.0, -4.75, 3.0, 3.0];
        for (got, want) in logits.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{logits:?}");
        }
        // Without a repetition penalty the prompt is not read.
        let freq_only = LogitAdjustments {
            frequency_penalty: 1.0,
            ..LogitAdjustments::default()
        };
        let mut logits = vec![1.0f32; 6];
        let mut counts = freq_only.counts(&tokens, 2);
        counts.push(3);
        freq_only.apply(&mut logits, &counts);
        assert_eq!(logits, vec![1.0, 1.0, -1.0, -1.0, 1.0, 1.0]);
    }

    #[test]
    fn token_logprobs_are_log_softmax_with_the_top_entries() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let lp = |l: f32| (f64::from(l) - z.ln()) as f32;
        let t = TokenLogprob::from_logits(&logits, 2, 3);
        assert_eq!(t.token, 2);
        assert!((t.logprob - lp(2.0)).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3, 2], "most likely first, ties by id");
        for &(id, l) in &t.top {
            assert!((l - lp(logits[id as usize])).abs() < 1e-6);
        }
        let total: f64 = logits
            .iter()
            .enumerate()
            .map(|(i, _)| f64::from(TokenLogprob::from_logits(&logits, i as u32, 0).logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(TokenLogprob::from_logits(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn argmax_takes_first_of_ties_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), 1);
    }

    #[test]
    fn probs_apply_temperature_then_nucleus() {
        let logits = [
            2.0f32.ln(),
            1.0f32.ln(),
            1.0f32.ln(),
            0.0f32.ln().max(-1e30),
        ];
        // Temperature 1: [0.5, 0.25, 0.25, 0].
        let p = SamplingMode::new(1.0, 1.0).probs(&logits);
        for (got, want) in p.iter().zip([0.5, 0.25, 0.25, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        // Temperature 0.5 squares the odds: [4, 1, 1] / 6.
        let p = SamplingMode::new(0.5, 1.0).probs(&logits);
        for (got, want) in p.iter().zip([4.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        // top_p 0.6 keeps {0, 1} (0.5 < 0.6 <= 0.75; tie between 1 and 2 goes to the lower id).
        let p = SamplingMode::new(1.0, 0.6).probs(&logits);
        for (got, want) in p.iter().zip([2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        // top_p 0.5 keeps the argmax only (mass reaches exactly 0.5).
        assert_eq!(
            SamplingMode::new(1.0, 0.5).probs(&logits),
            vec![1.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn sample_never_picks_zero_mass_and_is_seeded() {
        let p = [0.0, 0.3, 0.0, 0.7];
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let x = sample(&p, &mut a);
            assert!(x == 1 || x == 3);
            assert_eq!(x, sample(&p, &mut b));
        }
        assert_eq!(sample(&[0.0, 0.0], &mut a), 0);
    }

    #[test]
    fn greedy_verification_accepts_matching_prefix() {
        let rows = [
            vec![0.0, 5.0, 1.0],
            vec![3.0, 0.0, 1.0],
            vec![0.0, 0.0, 9.0],
        ];
        assert_eq!(
            verify_greedy(&[1, 0], &rows),
            Verdict {
                accepted: 2,
                next_token: 2
            }
        );
        assert_eq!(
            verify_greedy(&[1, 2], &rows),
            Verdict {
                accepted: 1,
                next_token: 0
            }
        );
        assert_eq!(
            verify_greedy(&[2, 0], &rows),
            Verdict {
                accepted: 0,
                next_token: 1
            }
        );
        assert_eq!(
            verify_greedy(&[], &rows[..1]),
            Verdict {
                accepted: 0,
                next_token: 1
            }
        );
    }

    #[test]
    fn one_hot_draft_with_one_hot_target_behaves_greedily() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = [
            vec![0.0, 1.0, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        let q = [DraftProbs::OneHot, DraftProbs::OneHot];
        for _ in 0..100 {
            assert_eq!(
                verify_sampled(&[1, 0], &q, &p, &mut rng),
                Verdict {
                    accepted: 2,
                    next_token: 2
                }
            );
            assert_eq!(
                verify_sampled(&[1, 2], &q, &p, &mut rng),
                Verdict {
                    accepted: 1,
                    next_token: 0
                }
            );
        }
    }

    #[test]
    fn rejected_one_hot_token_is_never_the_correction() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = [vec![0.5, 0.3, 0.2], vec![1.0, 0.0, 0.0]];
        for _ in 0..2000 {
            let v = verify_sampled(&[0], &[DraftProbs::OneHot], &p, &mut rng);
            if v.accepted == 0 {
                assert_ne!(v.next_token, 0);
            }
        }
    }

    #[test]
    fn a_draft_distribution_shorter_than_the_vocabulary_is_zero_beyond_it() {
        // A draft head cut to the first 2 ids: q covers ids 0..2 only. The target puts no mass on
        // the drafted id 0, so the draft is always rejected and the residual max(0, p - q) is p
        // itself on ids 2 and 3, which q does not cover.
        let p = vec![0.0f32, 0.0, 0.5, 0.5];
        let q = DraftProbs::Dense(vec![1.0, 0.0]);
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen = [0u32; 4];
        for _ in 0..200 {
            let v = verify_sampled(
                &[0],
                std::slice::from_ref(&q),
                &[p.clone(), p.clone()],
                &mut rng,
            );
            assert_eq!(v.accepted, 0);
            seen[v.next_token as usize] += 1;
        }
        assert_eq!(seen[0] + seen[1], 0, "{seen:?}");
        assert!(seen[2] > 50 && seen[3] > 50, "{seen:?}");
    }
}
