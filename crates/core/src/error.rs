//! Errors of the scheduling core.

use crate::request::RequestId;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("request {id} already exists")]
    DuplicateRequest { id: RequestId },
    #[error("unknown request {id}")]
    UnknownRequest { id: RequestId },
    #[error("request {id} needs {needed_tokens} KV tokens but the budget is {budget_tokens}")]
    NeverFits {
        id: RequestId,
        needed_tokens: u64,
        budget_tokens: u64,
    },
    #[error("unknown policy '{name}' (expected one of: {expected})")]
    UnknownPolicy { name: String, expected: String },
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
}
