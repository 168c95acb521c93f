//! The engine as the worker sees it: a small trait over `lapsd_engine::SdEngine` (implemented in
//! [`crate::sd_backend`]) so that the serving loop does not depend on the engine's internals and
//! can be exercised with a scripted backend in unit tests.
//!
//! The trait speaks the engine's own types (sampling settings, step members, step outputs,
//! errors): their fields are public, so a scripted backend builds them as the engine does, and
//! nothing is copied field by field between the layers.

pub use lapsd_engine::engine::{SamplingParams, SeqFinish, SeqStepOutput, StepMember};
pub use lapsd_engine::spec::TokenLogprob;
pub use lapsd_engine::EngineError;

/// Operations the engine worker performs. Called only from the worker thread.
pub trait Backend {
    /// Registers a sequence; its KV is not computed until its first step.
    fn add_sequence(
        &mut self,
        id: u64,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), EngineError>;
    /// One speculative-decoding step over `batch` (`(id, k)`; k = speculation length). A sequence
    /// whose KV is not resident is (re)prefilled first and yields its next token.
    fn step(&mut self, batch: &[(u64, usize)]) -> Result<Vec<SeqStepOutput>, EngineError>;
    /// [`Backend::step`] with per-member prefill limits (chunked prefill): a member whose
    /// prefill is cut short produces no token and continues in a later step. A backend without
    /// chunked prefill computes whole prefills (the default), which the scheduler accepts: a
    /// chunk that yields a token completes the prefill.
    fn step_members(&mut self, batch: &[StepMember]) -> Result<Vec<SeqStepOutput>, EngineError> {
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
