//! The engine as the worker sees it: a small trait over `lapsd_engine::SdEngine` (implemented in
//! [`crate::sd_backend`]) so that the serving loop does not depend on the engine's internals and
//! can be exercised with a scripted backend in unit tests.

/// Per-sequence sampling settings given at admission: the engine's own type, so nothing is
/// copied field by field between the layers.
pub use lapsd_engine::engine::SamplingParams;
pub use lapsd_engine::spec::TokenLogprob;

/// Why the engine ended a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFinish {
    Eos,
    Length,
}

/// What one step produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStepOutput {
    pub id: u64,
    /// Tokens appended to the output this step (accepted drafts + the target's own token).
    pub new_tokens: Vec<u32>,
    pub drafted_tokens: u32,
    pub accepted_tokens: u32,
    pub finished: Option<BackendFinish>,
    /// When the sequence asked for logprobs: one entry per token of `new_tokens`.
    pub logprobs: Vec<TokenLogprob>,
}

/// One member of a step: its speculation length and, for a prefill, how much of it to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMember {
    pub id: u64,
    /// Draft tokens this step (0 = plain decoding).
    pub speculation_length: usize,
    /// For a sequence being prefilled: most tokens of its prefill to compute this step (a
    /// chunk; no token comes out until the last chunk). `None` = the whole prefill.
    pub max_prefill_tokens: Option<usize>,
}

/// Engine failure, with its stable kind tag (details are logged, not sent to clients).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("engine error ({kind}): {message}")]
pub struct BackendError {
    pub kind: &'static str,
    pub message: String,
}

/// Operations the engine worker performs. Called only from the worker thread.
pub trait Backend {
    /// Registers a sequence; its KV is not computed until its first step.
    fn add_sequence(
        &mut self,
        id: u64,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), BackendError>;
    /// One speculative-decoding step over `batch` (`(id, k)`; k = speculation length). A sequence
    /// whose KV is not resident is (re)prefilled first and yields its next token.
    fn step(&mut self, batch: &[(u64, usize)]) -> Result<Vec<BackendStepOutput>, BackendError>;
    /// [`Backend::step`] with per-member prefill limits (chunked prefill): a member whose
    /// prefill is cut short produces no token and continues in a later step. A backend without
    /// chunked prefill computes whole prefills (the default), which the scheduler accepts: a
    /// chunk that yields a token completes the prefill.
    fn step_members(
        &mut self,
        batch: &[BatchMember],
    ) -> Result<Vec<BackendStepOutput>, BackendError> {
        let plain: Vec<(u64, usize)> = batch.iter().map(|m| (m.id, m.speculation_length)).collect();
        self.step(&plain)
    }
    /// Drops a sequence's KV (it stays registered and is re-prefilled on its next step).
    fn free_kv(&mut self, id: u64);
    /// Forgets a sequence entirely.
    fn remove(&mut self, id: u64);
    /// KV tokens held by all sequences (what the engine really holds, for metrics).
    fn kv_tokens_in_use(&self) -> u64;
}
