//! Speculative-decoding engine on candle (placeholder: being written).
pub mod cli;
pub mod spec;
