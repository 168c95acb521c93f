//! `ApiJson<T>`: a JSON body extractor whose every rejection is an OpenAI error body naming the
//! field (axum's own `Json` answers plain text). The path of a wrong-typed field comes from
//! `serde_path_to_error`. The body is read within the request's [`BodyTimeout`] (408 past it);
//! its Content-Type was checked by the edge guard.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::edge::{BodyTimeout, DEFAULT_BODY_TIMEOUT_S};
use crate::error::ApiError;

/// Deserialized request body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A router without the edge layers (unit tests) still gets a bounded read.
        let timeout = req
            .extensions()
            .get::<BodyTimeout>()
            .map(|t| t.0)
            .unwrap_or(std::time::Duration::from_secs_f64(DEFAULT_BODY_TIMEOUT_S));
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout {
                timeout_s: timeout.as_secs_f64(),
            })?;
        let bytes = read.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    message: e.body_text(),
                }
            } else {
                ApiError::InvalidRequest {
                    message: format!("cannot read the request body: {}", e.body_text()),
                    param: None,
                }
            }
        })?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body into `T`, turning errors into 400s that name the field when serde knows it.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first, so that malformed JSON is reported as such and not as a missing field.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidRequest {
            message: format!("the request body is not valid JSON: {e}"),
            param: None,
        })?;
    if !value.is_object() {
        return Err(ApiError::InvalidRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
        });
    }
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = readable(&e.into_inner().to_string());
        // A missing field is reported at the parent path with the name in the message.
        let param = missing_field_name(&inner)
            .map(|name| {
                if path == "." {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            })
            .or_else(|| (path != ".").then_some(path));
        let message = match &param {
            Some(p) => format!("invalid field `{p}`: {inner}"),
            None => format!("invalid request body: {inner}"),
        };
        ApiError::InvalidRequest { message, param }
    })
}

/// What each untagged enum of the wire types accepts, in the client's terms: serde's own message
/// ("data did not match any variant of untagged enum PromptInput") names a Rust type.
const UNTAGGED_EXPECTED: &[(&str, &str)] = &[
    (
        "PromptInput",
        "expected a string, a list of one string, a list of token ids, or a list of one token-id list",
    ),
    ("StopInput", "expected a string or a list of strings"),
    (
        "MessageContent",
        "expected a string or a list of content parts ({\"type\": \"text\", \"text\": ...})",
    ),
];

/// serde's message with Rust type names replaced by what the field accepts.
fn readable(message: &str) -> String {
    if !message.contains("untagged enum") {
        return message.to_string();
    }
    UNTAGGED_EXPECTED
        .iter()
        .find(|(name, _)| message.contains(name))
        .map(|(_, expected)| expected.to_string())
        .unwrap_or_else(|| "the value has the wrong type".to_string())
}

fn missing_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::{ChatCompletionRequest, CompletionRequest};

    fn err_param<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> Option<String> {
        match parse_body::<T>(body.as_bytes()) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_400_without_param() {
        assert_eq!(err_param::<CompletionRequest>("{\"prompt\": "), None);
        assert_eq!(err_param::<CompletionRequest>("[1,2]"), None);
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(
            err_param::<CompletionRequest>(r#"{"prompt":"hi","max_tokens":"ten"}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            err_param::<CompletionRequest>(r#"{"prompt":"hi","temperature":[1]}"#).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            err_param::<ChatCompletionRequest>(r#"{"messages":[{"role":1,"content":"x"}]}"#)
                .as_deref(),
            Some("messages[0].role")
        );
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(
            err_param::<CompletionRequest>(r#"{"max_tokens":3}"#).as_deref(),
            Some("prompt")
        );
        assert_eq!(
            err_param::<ChatCompletionRequest>(r#"{"messages":[{"content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
    }

    #[test]
    fn untagged_enums_say_what_is_expected_not_the_rust_type() {
        for (body, param, expected) in [
            (r#"{"prompt":{"a":1}}"#, "prompt", "a list of token ids"),
            (r#"{"prompt":"x","stop":3}"#, "stop", "a list of strings"),
        ] {
            match parse_body::<CompletionRequest>(body.as_bytes()) {
                Err(ApiError::InvalidRequest { message, param: p }) => {
                    assert_eq!(p.as_deref(), Some(param));
                    assert!(message.contains(expected), "{message}");
                    assert!(!message.contains("untagged"), "{message}");
                    assert!(!message.contains("Input"), "{message}");
                }
                other => panic!("expected InvalidRequest, got {other:?}"),
            }
        }
        match parse_body::<ChatCompletionRequest>(br#"{"messages":[{"role":"user","content":5}]}"#)
        {
            Err(ApiError::InvalidRequest { message, param }) => {
                assert_eq!(param.as_deref(), Some("messages[0].content"));
                assert!(message.contains("content parts"), "{message}");
                assert!(!message.contains("MessageContent"), "{message}");
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn good_bodies_parse() {
        let r: CompletionRequest =
            parse_body(br#"{"prompt":"hi","max_tokens":3,"stream":true,"stop":["\n"]}"#)
                .expect("valid");
        assert_eq!(r.max_tokens, Some(3));
        assert!(r.stream);
    }
}
