//! lapsd-sim: a discrete-event simulator of a speculative-decoding LLM server. It drives the same
//! `lapsd_core` scheduler and policies as the real server, with a simulated model (cost model for
//! time, latent acceptance probabilities for drafts) and synthetic or replayed workloads, and
//! reports latency per policy (`lapsd sim`). `theory` holds the M/G/1 formulas it is checked against.
pub mod acceptance;
pub mod cli;
pub mod dispatch;
pub mod error;
pub mod matrix;
pub mod plot;
pub mod prediction;
pub mod report;
mod rng;
pub mod run;
pub mod server_model;
pub mod theory;
pub mod trace;
pub mod workload;

pub use error::SimError;
