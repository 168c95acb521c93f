//! The discrete-event engine: replays a request list through a `lapsd_core::Scheduler` and a
//! simulated speculative-decoding model.
pub mod simulate;

pub use simulate::{simulate, CompletedRequest, SimConfig, SimOutcome};
