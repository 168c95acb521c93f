//! The server's error type and its mapping to HTTP: OpenAI's error body
//! `{"error": {"message", "type", "param", "code"}}`. Client errors (4xx) say what was wrong and
//! name the field; server errors (5xx) are logged in full and answered with a generic message.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lapsd_engine::EngineError;
use serde::Serialize;

/// Every error a request can end with. Each variant maps to one HTTP status and one OpenAI
/// error `type`; [`ApiError::kind`] is a stable tag for logs and metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request body is not valid JSON, or a field has the wrong type or value (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        /// The offending field (`max_tokens`, `messages[1].role`, ...), if one is to blame.
        param: Option<String>,
    },
    /// The `model` field names a model this server does not serve (404).
    #[error("The model `{requested}` does not exist (this server serves `{served}`)")]
    ModelNotFound { requested: String, served: String },
    /// No route for this path (404).
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    /// The path exists but not for this method (405).
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A missing or wrong `Authorization: Bearer` key on a `/v1/*` route (401).
    #[error("{message}")]
    Unauthorized { message: String },
    /// The `Host` header names a host this server does not answer for (403): the guard against
    /// DNS rebinding of a loopback server.
    #[error("{message}")]
    HostNotAllowed { message: String },
    /// A POST body that is not declared as JSON (415).
    #[error("Content-Type must be application/json, got {got}")]
    UnsupportedMediaType { got: String },
    /// The request body exceeds the size limit (413).
    #[error("request body too large: {message}")]
    PayloadTooLarge { message: String },
    /// The request body did not arrive within the body read timeout (408).
    #[error("the request body did not arrive within {timeout_s} s")]
    BodyTimeout { timeout_s: f64 },
    /// The admission queue is full (429).
    #[error("the server is at capacity ({max_queue} requests in flight); retry later")]
    QueueFull { max_queue: usize },
    /// The server is shutting down and no longer admits or finishes requests (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Something failed inside the server (500). `detail` is logged, never sent.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::HostNotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable tag for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized { .. } => "invalid_api_key",
            ApiError::HostNotAllowed { .. } => "host_not_allowed",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Internal { .. } => "internal",
        }
    }

    /// The OpenAI error body for this error (5xx details withheld).
    pub fn body(&self) -> ErrorBody {
        let (error_type, code) = match self {
            ApiError::InvalidRequest { .. } | ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", None)
            }
            ApiError::ModelNotFound { .. } => ("invalid_request_error", Some("model_not_found")),
            ApiError::RouteNotFound { .. } => ("invalid_request_error", Some("not_found")),
            ApiError::MethodNotAllowed { .. } => {
                ("invalid_request_error", Some("method_not_allowed"))
            }
            ApiError::Unauthorized { .. } => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::HostNotAllowed { .. } => ("invalid_request_error", Some("host_not_allowed")),
            ApiError::UnsupportedMediaType { .. } => {
                ("invalid_request_error", Some("unsupported_media_type"))
            }
            ApiError::BodyTimeout { .. } => ("invalid_request_error", Some("request_timeout")),
            ApiError::QueueFull { .. } => ("rate_limit_error", Some("queue_full")),
            ApiError::ShuttingDown => ("server_error", Some("shutting_down")),
            ApiError::Internal { .. } => ("server_error", None),
        };
        let message = match self {
            ApiError::Internal { .. } => "internal server error".to_string(),
            other => other.to_string(),
        };
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::ModelNotFound { .. } => Some("model".to_string()),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                message,
                error_type: error_type.to_string(),
                param,
                code: code.map(str::to_string),
            },
        }
    }
}

/// OpenAI's error body.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Seconds a client told 429 waits before retrying: requests of the small default model finish
/// within seconds, and a fixed short hint keeps well-behaved clients from hammering the queue.
pub const RETRY_AFTER_S: u32 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(kind = self.kind(), error = %self, "request failed");
        } else {
            tracing::debug!(kind = self.kind(), error = %self, "request rejected");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::QueueFull { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
            }
            ApiError::Unauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The body was not (fully) read, or the server is going away: the connection cannot
            // carry another request, and saying so lets the client open a fresh one.
            ApiError::PayloadTooLarge { .. }
            | ApiError::BodyTimeout { .. }
            | ApiError::ShuttingDown => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// Errors that stop the server from starting or running (the CLI turns them into anyhow). A
/// cause is kept as the error's `source`; messages also carry its text, as the engine's do, so
/// a message read alone still says what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting the server cannot run with, described in words that name its flag.
    #[error("invalid configuration: {0}")]
    InvalidSetting(String),
    /// The policy settings do not make a policy.
    #[error("invalid configuration: {0}")]
    Policy(#[source] lapsd_core::CoreError),
    /// `--cors-origin` is not a valid header value.
    #[error("invalid configuration: --cors-origin {origin:?} is not a valid origin")]
    CorsOrigin {
        origin: String,
        #[source]
        source: axum::http::header::InvalidHeaderValue,
    },
    /// `--step-log` cannot be opened for appending.
    #[error("invalid configuration: --step-log {}: {source}", path.display())]
    StepLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The metrics registry refused a metric (their names are fixed, so this is a bug).
    #[error("invalid configuration: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot load the model: {0}")]
    Load(#[from] EngineError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The engine worker thread ended before it reported the model loaded (or failed).
    #[error("the engine worker stopped unexpectedly: the engine worker died while loading")]
    WorkerDiedLoading,
    /// The engine worker thread panicked.
    #[error("the engine worker stopped unexpectedly: the engine worker panicked")]
    WorkerPanicked,
    /// Waiting for the engine worker thread failed.
    #[error("the engine worker stopped unexpectedly: {0}")]
    WorkerJoin(#[source] tokio::task::JoinError),
    /// The task serving connections failed (panicked or was cancelled).
    #[error("the engine worker stopped unexpectedly: server task: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_are_not_sent() {
        let e = ApiError::Internal {
            detail: "tensor shape mismatch in layer 3".into(),
        };
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = e.body();
        assert_eq!(body.error.message, "internal server error");
        assert_eq!(body.error.error_type, "server_error");
    }

    #[test]
    fn invalid_request_names_the_param() {
        let body = ApiError::invalid("max_tokens", "max_tokens must be at least 1, got 0").body();
        assert_eq!(body.error.param.as_deref(), Some("max_tokens"));
        assert_eq!(body.error.error_type, "invalid_request_error");
        let json = serde_json::to_value(&body).expect("serializable");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["code"], serde_json::Value::Null);
    }

    #[test]
    fn queue_full_is_429_rate_limit() {
        let e = ApiError::QueueFull { max_queue: 2 };
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.body().error.error_type, "rate_limit_error");
    }
}
