//! lapsd-engine: GGUF models on candle with per-request KV caches (model half), speculative decoding
//! on top of them, and the `lapsd generate` / `lapsd calibrate` commands.
pub mod chat;
pub mod cli;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod model;
pub mod spec;
pub mod tokenizer;

pub use error::EngineError;
pub use model::{KvCache, LoadOptions, Model, ModelInfo, SeqForward};
pub use tokenizer::{DecodeStream, Tokenizer};
