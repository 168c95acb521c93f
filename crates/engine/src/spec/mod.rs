//! Speculative decoding pieces that do not own a model: token selection and the verification rule
//! ([`sampling`]), draft-method selection and prompt-lookup drafting ([`draft`]). The batched
//! draft-and-verify step that drives real models is [`crate::engine::SdEngine`].

pub mod calibrate;
pub mod draft;
pub mod sampling;

pub use draft::{load_draft_model, ngram_propose, DraftSpec, DraftSpecParseError, DEFAULT_DRAFT};
pub use sampling::{
    argmax, sample, verify_greedy, verify_sampled, DraftProbs, LogitAdjustments, SamplingMode,
    TokenCounts, TokenLogprob, Verdict,
};
