//! The discrete-event model of the speculative-decoding server: replays a request list through a
//! `lapsd_core::Scheduler` and a simulated model (`simulate`), or through R such replicas behind a
//! dispatcher (`replicas`); both event loops drive the same simulated server (`server`). Not the
//! model runtime, which is the `lapsd-engine` crate.
pub mod replicas;
mod server;
pub mod simulate;

pub use replicas::{
    simulate_replicas, DispatchDecision, ReplicaOutcome, ReplicaSetup, ReplicaStats,
};
pub use simulate::{simulate, CompletedRequest, SimConfig, SimOutcome};
