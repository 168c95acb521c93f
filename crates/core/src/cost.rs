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
