//! Discrete-event simulator of a speculative-decoding server (placeholder: being written).
pub mod cli;
