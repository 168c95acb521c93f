//! The discrete-event engine: replays a request list through a `lapsd_core::Scheduler` and a
//! simulated speculative-decoding model (`simulate`), or through R such replicas behind a
//! dispatcher (`replicas`).
pub mod replicas;
pub mod simulate;

pub use replicas::{
    simulate_replicas, DispatchDecision, ReplicaOutcome, ReplicaSetup, ReplicaStats,
};
pub use simulate::{simulate, CompletedRequest, SimConfig, SimOutcome};
