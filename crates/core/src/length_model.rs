//! Output-length prediction from the prompt's text: a linear model over hashed word and word-pair
//! counts that predicts the logarithm of the output length (a cheap stand-in for the proxy models
//! of SSJF and learning-to-rank scheduling, which fine-tune a small LM on the same task). The
//! paper's semi-clairvoyant estimate needs a predicted length L_i; the prompt's length alone says
//! little about it (ShareGPT: Spearman 0.11 between prompt and reply length), its words say more.
//!
//! Pure: the server and the simulator call [`TextLengthModel::predict_output_tokens`]; training
//! ([`train`]) is plain stochastic gradient descent over `(prompt, length)` pairs, deterministic
//! for a given example order. Loading and saving the JSON file is the caller's job.

use serde::{Deserialize, Serialize};

/// Word and word-pair features are hashed into this many buckets (2^18: few collisions for the
/// ~10^5 distinct words and pairs of a chat dataset, ~1 MiB of f32 weights).
pub const DEFAULT_HASH_BUCKETS: u32 = 1 << 18;

/// Words of a prompt that are featurised: beyond this the prompt's opening has said what it asks.
pub const MAX_FEATURE_WORDS: usize = 512;

/// A trained model (the JSON file `lapsd bench train-length-model` writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextLengthModel {
    /// What it was trained on (dataset, scale, cap, holdout), for reports.
    pub description: String,
    pub hash_buckets: u32,
    /// One weight per hash bucket.
    pub weights: Vec<f32>,
    /// Weight of ln(prompt characters + 1) / 8.
    pub prompt_length_weight: f64,
    pub bias: f64,
    /// Predictions are clamped to this range (the training lengths' range).
    pub min_output_tokens: u32,
    pub max_output_tokens: u32,
    /// Standard deviation of ln(true / predicted) on the training set.
    pub residual_sigma: f64,
    /// Spearman rank correlation of predicted and true lengths on held-out examples, if measured.
    #[serde(default)]
    pub holdout_spearman: Option<f64>,
}

/// Sparse features of a prompt: (bucket, value) with the values L2-normalised, plus the dense
/// prompt-length feature.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFeatures {
    pub hashed: Vec<(u32, f32)>,
    pub log_length: f64,
}

/// FNV-1a, 64 bit: a stable hash (std's `DefaultHasher` may change between Rust releases, which
/// would silently scramble a saved model's buckets).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b' ');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for &b in part.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Lower-cased words: runs of alphanumeric characters, and every other non-space character on
/// its own (punctuation and symbols say a lot about code and lists).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
            continue;
        }
        if !current.is_empty() {
            out.push(std::mem::take(&mut current));
            if out.len() >= MAX_FEATURE_WORDS {
                return out;
            }
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
            if out.len() >= MAX_FEATURE_WORDS {
                return out;
            }
        }
    }
    if !current.is_empty() && out.len() < MAX_FEATURE_WORDS {
        out.push(current);
    }
    out
}

impl PromptFeatures {
    /// Words and adjacent word pairs, counted per bucket, log(1 + count), L2-normalised.
    pub fn of(text: &str, hash_buckets: u32) -> Self {
        let buckets = u64::from(hash_buckets.max(1));
        let words = words(text);
        let mut counts: rustc_hash::FxHashMap<u32, f32> = Default::default();
        for w in &words {
            *counts.entry((fnv1a(&[w]) % buckets) as u32).or_default() += 1.0;
        }
        for pair in words.windows(2) {
            *counts
                .entry((fnv1a(&[&pair[0], &pair[1]]) % buckets) as u32)
                .or_default() += 1.0;
        }
        let mut hashed: Vec<(u32, f32)> = counts
            .into_iter()
            .map(|(bucket, count)| (bucket, count.ln_1p()))
            .collect();
        hashed.sort_unstable_by_key(|&(bucket, _)| bucket);
        let norm = hashed.iter().map(|&(_, v)| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (_, v) in &mut hashed {
                *v /= norm;
            }
        }
        let chars = text.chars().count() as f64;
        Self {
            hashed,
            log_length: (chars + 1.0).ln() / 8.0,
        }
    }
}

impl TextLengthModel {
    /// A model that predicts nothing yet (all weights zero).
    pub fn zeros(hash_buckets: u32) -> Self {
        Self {
            description: String::new(),
            hash_buckets,
            weights: vec![0.0; hash_buckets as usize],
            prompt_length_weight: 0.0,
            bias: 0.0,
            min_output_tokens: 1,
            max_output_tokens: u32::MAX,
            residual_sigma: 0.0,
            holdout_spearman: None,
        }
    }

    /// Whether the weights match the bucket count (a hand-edited or truncated file does not).
    pub fn is_consistent(&self) -> bool {
        self.hash_buckets > 0
            && self.weights.len() == self.hash_buckets as usize
            && self.min_output_tokens >= 1
            && self.min_output_tokens <= self.max_output_tokens
            && self.bias.is_finite()
            && self.prompt_length_weight.is_finite()
            && self.weights.iter().all(|w| w.is_finite())
    }

    /// Predicted ln(output tokens) from features.
    pub fn predict_log_tokens(&self, features: &PromptFeatures) -> f64 {
        let mut sum = self.bias + self.prompt_length_weight * features.log_length;
        for &(bucket, value) in &features.hashed {
            if let Some(w) = self.weights.get(bucket as usize) {
                sum += f64::from(*w) * f64::from(value);
            }
        }
        sum
    }

    /// Predicted output tokens for a prompt: exp of the predicted log length (the median under
    /// a log-normal error), clamped to the training range.
    pub fn predict_output_tokens(&self, prompt: &str) -> u32 {
        let features = PromptFeatures::of(prompt, self.hash_buckets);
        let tokens = self.predict_log_tokens(&features).exp().round();
        let (lo, hi) = (
            f64::from(self.min_output_tokens.max(1)),
            f64::from(self.max_output_tokens.max(1)),
        );
        if tokens.is_nan() {
            // Only a corrupt model gets here (e.g. weights so large they overflow).
            return lo as u32;
        }
        tokens.clamp(lo, hi.max(lo)) as u32
    }
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub hash_buckets: u32,
    pub epochs: usize,
    /// Initial SGD step; multiplied by `learning_rate_decay` after each epoch.
    pub learning_rate: f64,
    pub learning_rate_decay: f64,
    /// L2 penalty on the weights.
    pub l2: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hash_buckets: DEFAULT_HASH_BUCKETS,
            epochs: 6,
            learning_rate: 0.5,
            learning_rate_decay: 0.6,
            l2: 1e-6,
        }
    }
}

/// Fits the model to `(prompt features, output tokens)` by least squares on ln(tokens), visiting
/// the examples in `order` each epoch (the caller shuffles; indices out of range are skipped).
/// Returns `None` without examples.
pub fn train(
    examples: &[(PromptFeatures, u32)],
    orders: &[Vec<usize>],
    config: &TrainConfig,
) -> Option<TextLengthModel> {
    if examples.is_empty() {
        return None;
    }
    let mut model = TextLengthModel::zeros(config.hash_buckets.max(1));
    let targets: Vec<f64> = examples
        .iter()
        .map(|(_, tokens)| f64::from((*tokens).max(1)).ln())
        .collect();
    // Start at the mean so the first epoch fits what words add to it.
    model.bias = targets.iter().sum::<f64>() / targets.len() as f64;
    let mut rate = config.learning_rate;
    for epoch in 0..config.epochs {
        let fallback: Vec<usize>;
        let order = match orders.get(epoch).or_else(|| orders.last()) {
            Some(o) => o,
            None => {
                fallback = (0..examples.len()).collect();
                &fallback
            }
        };
        for &i in order {
            let (Some((features, _)), Some(&target)) = (examples.get(i), targets.get(i)) else {
                continue;
            };
            let error = model.predict_log_tokens(features) - target;
            for &(bucket, value) in &features.hashed {
                if let Some(w) = model.weights.get_mut(bucket as usize) {
                    let grad = error * f64::from(value) + config.l2 * f64::from(*w);
                    *w -= (rate * grad) as f32;
                }
            }
            model.prompt_length_weight -= rate * error * features.log_length;
            model.bias -= rate * error * 0.1;
        }
        rate *= config.learning_rate_decay;
    }
    let residuals: Vec<f64> = examples
        .iter()
        .zip(&targets)
        .map(|((f, _), t)| t - model.predict_log_tokens(f))
        .collect();
    let mean = residuals.iter().sum::<f64>() / residuals.len() as f64;
    model.residual_sigma =
        (residuals.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / residuals.len() as f64).sqrt();
    model.min_output_tokens = examples.iter().map(|(_, t)| *t).min().unwrap_or(1).max(1);
    model.max_output_tokens = examples.iter().map(|(_, t)| *t).max().unwrap_or(1).max(1);
    Some(model)
}

/// Spearman rank correlation (average ranks for ties); `None` for fewer than 2 values or a
/// constant side.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let ra = ranks(a);
    let rb = ranks(b);
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let mut cov = 0.0;
    let mut va = 0.0;
    let mut vb = 0.0;
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        return None;
    }
    Some(cov / (va * vb).sqrt())
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut out = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let average = (start + end - 1) as f64 / 2.0;
        for &i in &order[start..end] {
            out[i] = average;
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_runs_and_symbols_and_lowercase() {
        assert_eq!(
            words("Write a Python_fn(x): 3+4"),
            vec!["write", "a", "python", "_", "fn", "(", "x", ")", ":", "3", "+", "4"]
        );
        assert!(words("   ").is_empty());
        let long = "w ".repeat(MAX_FEATURE_WORDS * 2);
        assert_eq!(words(&long).len(), MAX_FEATURE_WORDS);
    }

    #[test]
    fn features_are_normalised_and_stable() {
        let f = PromptFeatures::of("hello world hello", 1 << 10);
        let norm: f32 = f.hashed.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        // hello, world, (hello world), (world hello): 4 buckets unless two collide.
        assert!(f.hashed.len() <= 4 && f.hashed.len() >= 3);
        assert_eq!(f, PromptFeatures::of("Hello World hello", 1 << 10));
        // The hash is fixed: a saved model must map words to the same buckets forever.
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
    }

    /// Lengths that depend on a word the prompt contains are learnt; the prediction orders
    /// held-out prompts correctly and an empty model predicts the clamp.
    #[test]
    fn learns_a_word_that_sets_the_length() {
        // 5 fillers against 3 verbs: every filler meets every verb.
        let fillers = ["please", "could you", "now", "hi there", "ok"];
        let mut examples = Vec::new();
        for i in 0..240 {
            let (verb, tokens) = match i % 3 {
                0 => ("translate", 8),
                1 => ("summarise", 30),
                _ => ("essay", 120),
            };
            let text = format!("{} {} this {}", fillers[i % fillers.len()], verb, i % 7);
            examples.push((PromptFeatures::of(&text, 1 << 12), tokens));
        }
        let order: Vec<usize> = (0..examples.len()).collect();
        // Few examples: more, slower-decaying epochs than the default (sized for ~10^4 pairs).
        let config = TrainConfig {
            hash_buckets: 1 << 12,
            epochs: 40,
            learning_rate_decay: 0.95,
            ..TrainConfig::default()
        };
        let model = train(&examples, &[order], &config).expect("examples");
        assert!(model.is_consistent());
        let short = model.predict_output_tokens("ok translate this 9");
        let mid = model.predict_output_tokens("now summarise this 9");
        let long = model.predict_output_tokens("hi there essay this 9");
        assert!(short < mid && mid < long, "{short} {mid} {long}");
        assert!((6..=11).contains(&short), "{short}");
        assert!((90..=120).contains(&long), "{long}");
        assert_eq!((model.min_output_tokens, model.max_output_tokens), (8, 120));
        let mut empty = TextLengthModel::zeros(16);
        empty.min_output_tokens = 5;
        empty.max_output_tokens = 9;
        assert_eq!(empty.predict_output_tokens("anything"), 5);
    }

    #[test]
    fn inconsistent_models_are_detected() {
        let mut m = TextLengthModel::zeros(8);
        assert!(m.is_consistent());
        m.weights.pop();
        assert!(!m.is_consistent());
        let mut m = TextLengthModel::zeros(8);
        m.weights[0] = f32::NAN;
        assert!(!m.is_consistent());
    }

    #[test]
    fn spearman_handles_ties_and_degenerate_input() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        let tied = spearman(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).expect("defined");
        assert!(tied > 0.9 && tied < 1.0, "{tied}");
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
    }
}
