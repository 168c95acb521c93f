//! `lapsd bench train-length-model`: fits lapsd-core's text length model to a dataset's
//! prompt/reply pairs, with the reply lengths transformed exactly as a benchmark run sends them
//! (`--output-scale`, `--max-output-tokens`), so the server predicts the lengths it will be asked
//! for. The prompts of the benchmark runs it will be judged on are left out of training (planned
//! with the same seeds and request counts, matched by text), and a share of the rest is held out
//! to measure the rank correlation honestly.
use std::collections::HashSet;

use lapsd_core::length_model::{self, PromptFeatures, TextLengthModel, TrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::datasets::{self, PromptReply};
use crate::error::BenchError;
use crate::tokens::TokenCounter;
use crate::workload::{self, WorkloadSource};

/// What to train on.
pub struct TrainSettings<'a> {
    pub source: &'a WorkloadSource,
    pub output_scale: f64,
    pub max_output_tokens: u32,
    pub tokens: &'a TokenCounter,
    /// Prompts never trained on (the benchmark's own).
    pub excluded_prompts: &'a HashSet<String>,
    /// Share of the remaining pairs held out for the Spearman check.
    pub holdout_fraction: f64,
    pub seed: u64,
    pub train: TrainConfig,
}

/// A trained model and how it did.
pub struct TrainOutcome {
    pub model: TextLengthModel,
    pub train_examples: usize,
    pub holdout_examples: usize,
    pub excluded_examples: usize,
    /// Spearman correlation on the excluded (benchmark) prompts, if there were at least 2.
    pub excluded_spearman: Option<f64>,
}

/// The dataset's pairs with the output length a benchmark run would send.
fn labelled_pairs(settings: &TrainSettings<'_>) -> Result<Vec<(String, u32)>, BenchError> {
    let (pairs, filter): (Vec<PromptReply>, bool) = match settings.source {
        WorkloadSource::ShareGpt { path } => (datasets::load_sharegpt(path)?.pairs, true),
        WorkloadSource::Gsm8k { path } => (datasets::load_gsm8k(path)?, false),
        _ => {
            return Err(BenchError::InvalidArgument {
                flag: "dataset",
                message: "a length model trains on a dataset (sharegpt or gsm8k)".into(),
            })
        }
    };
    Ok(pairs
        .into_iter()
        .filter_map(|pair| {
            let prompt_tokens = settings.tokens.count(&pair.prompt);
            let reply_tokens = settings.tokens.count(&pair.reply);
            if filter && !workload::passes_sharegpt_filter(prompt_tokens, reply_tokens) {
                return None;
            }
            let tokens = workload::served_output_tokens(
                reply_tokens,
                settings.output_scale,
                settings.max_output_tokens,
            );
            Some((pair.prompt, tokens))
        })
        .collect())
}

/// Trains the model (module header).
pub fn train_length_model(settings: &TrainSettings<'_>) -> Result<TrainOutcome, BenchError> {
    if !(0.0..1.0).contains(&settings.holdout_fraction) {
        return Err(BenchError::InvalidArgument {
            flag: "holdout-fraction",
            message: format!("must be in [0, 1), got {}", settings.holdout_fraction),
        });
    }
    let labelled = labelled_pairs(settings)?;
    let buckets = settings.train.hash_buckets;
    let (excluded, usable): (Vec<_>, Vec<_>) = labelled
        .into_iter()
        .partition(|(prompt, _)| settings.excluded_prompts.contains(prompt));
    // Held out by prompt, not by pair: ShareGPT repeats first turns, and a prompt seen in
    // training would flatter the held-out correlation.
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut prompts: Vec<&str> = usable.iter().map(|(p, _)| p.as_str()).collect();
    prompts.sort_unstable();
    prompts.dedup();
    prompts.shuffle(&mut rng);
    let holdout_len = (prompts.len() as f64 * settings.holdout_fraction).round() as usize;
    let held_out: HashSet<String> = prompts[..holdout_len.min(prompts.len())]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let (holdout, usable): (Vec<_>, Vec<_>) = usable
        .into_iter()
        .partition(|(prompt, _)| held_out.contains(prompt));
    if usable.is_empty() {
        return Err(BenchError::EmptyWorkload(
            "no dataset pair is left to train on".into(),
        ));
    }
    let examples: Vec<(PromptFeatures, u32)> = usable
        .iter()
        .map(|(prompt, tokens)| (PromptFeatures::of(prompt, buckets), *tokens))
        .collect();
    let orders: Vec<Vec<usize>> = (0..settings.train.epochs)
        .map(|_| {
            let mut order: Vec<usize> = (0..examples.len()).collect();
            order.shuffle(&mut rng);
            order
        })
        .collect();
    let Some(mut model) = length_model::train(&examples, &orders, &settings.train) else {
        return Err(BenchError::EmptyWorkload("no example to train on".into()));
    };
    let correlation = |pairs: &[(String, u32)]| {
        let predicted: Vec<f64> = pairs
            .iter()
            .map(|(p, _)| f64::from(model.predict_output_tokens(p)))
            .collect();
        let truth: Vec<f64> = pairs.iter().map(|(_, t)| f64::from(*t)).collect();
        length_model::spearman(&predicted, &truth)
    };
    let holdout_spearman = correlation(&holdout);
    let excluded_spearman = correlation(&excluded);
    model.holdout_spearman = holdout_spearman;
    Ok(TrainOutcome {
        train_examples: usable.len(),
        holdout_examples: holdout.len(),
        excluded_examples: excluded.len(),
        excluded_spearman,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small ShareGPT file where the reply length follows a word of the prompt: the model learns
    /// it, the excluded prompts are not trained on, and the holdout correlation is measured.
    #[test]
    fn trains_on_sharegpt_without_the_excluded_prompts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sharegpt.json");
        let mut conversations = Vec::new();
        for i in 0..300 {
            let (word, reply_chars) = match i % 3 {
                0 => ("name", 40),
                1 => ("explain", 400),
                _ => ("essay", 2000),
            };
            conversations.push(serde_json::json!({
                "id": format!("c{i}"),
                "conversations": [
                    {"from": "human", "value": format!("please {word} item number {i}")},
                    {"from": "gpt", "value": "x".repeat(reply_chars)},
                ]
            }));
        }
        std::fs::write(&path, serde_json::to_vec(&conversations).expect("json")).expect("write");
        let excluded: HashSet<String> = ["please essay item number 2", "please name item number 3"]
            .into_iter()
            .map(String::from)
            .collect();
        let tokens = TokenCounter::CharsPerFour;
        let source = WorkloadSource::ShareGpt { path };
        let outcome = train_length_model(&TrainSettings {
            source: &source,
            output_scale: 0.5,
            max_output_tokens: 200,
            tokens: &tokens,
            excluded_prompts: &excluded,
            holdout_fraction: 0.2,
            seed: 0,
            train: TrainConfig {
                hash_buckets: 1 << 12,
                ..TrainConfig::default()
            },
        })
        .expect("trains");
        assert_eq!(outcome.excluded_examples, 2);
        assert_eq!(outcome.holdout_examples, 60);
        assert_eq!(outcome.train_examples, 238);
        // Served lengths: 40/4*0.5 = 5, 400/4*0.5 = 50, 2000/4*0.5 = 250, capped at 200.
        assert_eq!(outcome.model.min_output_tokens, 5);
        assert_eq!(outcome.model.max_output_tokens, 200);
        let m = &outcome.model;
        let (short, mid, long) = (
            m.predict_output_tokens("please name item number 999"),
            m.predict_output_tokens("please explain item number 999"),
            m.predict_output_tokens("please essay item number 999"),
        );
        assert!(short < mid && mid < long, "{short} {mid} {long}");
        assert!(outcome.model.holdout_spearman.expect("measured") > 0.9);
        assert!(outcome.excluded_spearman.expect("measured") > 0.9);
    }

    #[test]
    fn rejects_a_profile_source_and_a_bad_holdout() {
        let tokens = TokenCounter::CharsPerFour;
        let excluded = HashSet::new();
        let profile = WorkloadSource::Profile {
            profile: crate::profiles::Profile::Chatbot,
        };
        let settings = |source, holdout_fraction| TrainSettings {
            source,
            output_scale: 1.0,
            max_output_tokens: 64,
            tokens: &tokens,
            excluded_prompts: &excluded,
            holdout_fraction,
            seed: 0,
            train: TrainConfig::default(),
        };
        assert!(matches!(
            train_length_model(&settings(&profile, 0.1)),
            Err(BenchError::InvalidArgument {
                flag: "dataset",
                ..
            })
        ));
        assert!(matches!(
            train_length_model(&settings(&profile, 1.0)),
            Err(BenchError::InvalidArgument {
                flag: "holdout-fraction",
                ..
            })
        ));
    }
}
