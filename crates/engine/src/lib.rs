//! lapsd-engine: GGUF models and Hugging Face model folders on candle with per-request KV caches
//! (model half), speculative decoding on top of them, and the step-cost measurements behind
//! `lapsd calibrate`. Model code only: the `lapsd generate` / `lapsd calibrate` commands are the
//! binary's (crates/cli), and the engine does not depend on the scheduling core.
pub mod chat;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod model;
pub mod spec;
pub mod threads;
pub mod tokenizer;

pub use error::EngineError;
pub use model::{KvCache, LoadOptions, Model, ModelInfo, SeqForward, WeightMode};
pub use tokenizer::{DecodeStream, Tokenizer};
