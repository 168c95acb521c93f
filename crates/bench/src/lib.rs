//! Benchmark client (placeholder: being written).
pub mod cli;
