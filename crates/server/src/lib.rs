//! OpenAI-compatible server (placeholder: being written).
pub mod cli;
