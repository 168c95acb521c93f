//! lapsd-workload: what `lapsd sim` and `lapsd bench` both need to describe a workload, in one
//! place so the two cannot drift apart: the arrival process (gamma inter-arrival gaps, Poisson at
//! burstiness 1), the simulator's trace line (which `lapsd bench --emit-sim-trace` writes and
//! `lapsd sim --trace` reads), and the plot helpers with the one embedded font.
//!
//! It depends on no other lapsd crate, so both callers can depend on it without a cycle.
pub mod arrivals;
pub mod plot;
pub mod trace;

pub use arrivals::{ArrivalError, ArrivalProcess};
pub use plot::{Figure, PlotError};
pub use trace::{SpeculationCounters, TraceLine, TraceLineError};
