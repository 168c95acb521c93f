//! `ApiJson<T>`: a JSON body extractor whose every rejection is an OpenAI error body naming the
//! field (axum's own `Json` answers plain text). The path of a wrong-typed field comes from
//! `serde_path_to_error`; the Content-Type header is not required (some clients omit it).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

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
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
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
        let inner = e.into_inner().to_string();
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
    fn good_bodies_parse() {
        let r: CompletionRequest =
            parse_body(br#"{"prompt":"hi","max_tokens":3,"stream":true,"stop":["\n"]}"#)
                .expect("valid");
        assert_eq!(r.max_tokens, Some(3));
        assert!(r.stream);
    }
}
