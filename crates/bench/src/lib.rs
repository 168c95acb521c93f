//! lapsd-bench: an open-loop serving benchmark client for OpenAI-compatible servers, modelled on
//! `vllm bench serve` (Poisson/gamma arrivals, streaming TTFT/TPOT/ITL/end-to-end latency,
//! goodput, errors by kind, speculative-decoding acceptance statistics), with ShareGPT, GSM8K,
//! built-in profiles and JSONL traces as workloads, and plots of the results.
pub mod cli;
pub mod client;
pub mod datasets;
pub mod error;
pub mod length_model;
pub mod plot;
pub mod profiles;
pub mod report;
pub mod runner;
pub mod sse;
pub mod stats;
pub mod tokens;
pub mod trace;
pub mod workload;

pub use error::BenchError;
