//! Errors of the simulator library. Each variant names what was wrong (line, field, value), so a
//! bad flag or a malformed trace line gets a precise message and nothing panics on input.

use lapsd_core::CoreError;
use lapsd_workload::{ArrivalError, PlotError, TraceLineError};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A trace line that is not valid: `line` is 1-based.
    #[error("trace line {line}: field `{field}`: {reason}")]
    TraceLine {
        line: usize,
        field: &'static str,
        reason: String,
    },
    #[error("trace {path}: {source}")]
    TraceIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("trace line {line}: {source}")]
    TraceRead {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("trace has no requests")]
    EmptyTrace,
    #[error("cost profile {path}: {reason}")]
    CostProfile { path: String, reason: String },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A bad burstiness or rate.
    #[error(transparent)]
    Arrivals(#[from] ArrivalError),
    /// The scheduler returned an empty batch while requests waited and no arrival was left:
    /// a policy or capacity bug (work conservation violated).
    #[error("simulation stalled at t={now_s:.3}s with {waiting} unfinished requests and no arrivals left")]
    Stalled { now_s: f64, waiting: usize },
    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl From<TraceLineError> for SimError {
    fn from(e: TraceLineError) -> Self {
        SimError::TraceLine {
            line: e.line,
            field: e.field,
            reason: e.reason,
        }
    }
}
