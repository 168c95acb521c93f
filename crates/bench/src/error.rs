//! Error types of the benchmark client: workload loading (datasets, traces) and result files.
//! Per-request failures are not errors of the run: they are counted as [`crate::client::RequestErrorKind`].
use std::path::PathBuf;

use lapsd_workload::{ArrivalError, PlotError};

/// Everything that can stop a benchmark run before or after it sends requests.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A dataset file does not have the expected layout.
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },
    /// A line of a `--trace` JSONL file is malformed; names the 1-based line and the field.
    #[error("{path}:{line}: field `{field}`: {message}")]
    TraceLine {
        path: PathBuf,
        line: usize,
        field: &'static str,
        message: String,
    },
    /// A flag value is out of range.
    #[error("invalid argument --{flag}: {message}")]
    InvalidArgument { flag: &'static str, message: String },
    /// The workload has no request to send.
    #[error("the workload is empty: {0}")]
    EmptyWorkload(String),
    /// `--tokenizer` could not be loaded.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A result JSON file could not be parsed or written.
    #[error("result file {path}: {message}")]
    ResultFile { path: PathBuf, message: String },
    /// `--rate` or `--burstiness` is out of range.
    #[error(transparent)]
    Arrivals(#[from] ArrivalError),
    /// Drawing a plot failed.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    HttpClient(String),
}

impl BenchError {
    /// Stable tag of the error kind, for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            BenchError::Io { .. } => "io",
            BenchError::Dataset { .. } => "dataset",
            BenchError::TraceLine { .. } => "trace_line",
            BenchError::InvalidArgument { .. } | BenchError::Arrivals(_) => "invalid_argument",
            BenchError::EmptyWorkload(_) => "empty_workload",
            BenchError::Tokenizer { .. } => "tokenizer",
            BenchError::ResultFile { .. } => "result_file",
            BenchError::Plot(_) => "plot",
            BenchError::HttpClient(_) => "http_client",
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}
