//! One streaming request against an OpenAI-compatible server, timed: TTFT is the time to the first
//! chunk carrying content, ITL the gaps between content chunks, end-to-end the time to the end of the
//! stream. Output tokens come from `usage.completion_tokens` (we send
//! `stream_options.include_usage`) or, without usage, from the number of content chunks.
//! Per-request speculative-decoding statistics are collected when the server sends them:
//! `metrics.speculative_decoding` (vLLM's opt-in shape, which lapsd serve also uses) or llama.cpp's
//! `timings.draft_n` / `timings.draft_n_accepted`. Failures are classified, never propagated.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sse::{SseEvent, SseParser};

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/completions` with `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with one user message.
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// How every request of a run is sent.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server base URL without the `/v1/...` path, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    pub endpoint: Endpoint,
    /// `model` field of the request.
    pub model: String,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Send `ignore_eos: true` (vLLM, llama.cpp) so every request produces `max_tokens` tokens.
    pub ignore_eos: bool,
    /// Extra fields merged into every request body last (they win), e.g. llama.cpp's
    /// `logit_bias` to ban EOS where a server has no `ignore_eos`.
    pub extra_body: serde_json::Map<String, Value>,
    /// Whole-request limit; a request still running after it counts as a timeout.
    pub request_timeout: Duration,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestErrorKind {
    /// The connection could not be made (refused, DNS, reset before a response).
    Connect,
    /// The server answered with a non-2xx status.
    HttpStatus(u16),
    /// `--request-timeout-s` elapsed.
    Timeout,
    /// The connection broke in the middle of the stream.
    Disconnected,
    /// The stream was not valid OpenAI SSE (bad JSON, ended without `[DONE]`).
    MalformedStream,
    /// The stream carried an `error` object.
    StreamError,
}

impl RequestErrorKind {
    /// Stable tag used as the key of `errors_by_kind` in the report (`http_503` for statuses).
    pub fn tag(self) -> String {
        match self {
            RequestErrorKind::Connect => "connect".into(),
            RequestErrorKind::HttpStatus(code) => format!("http_{code}"),
            RequestErrorKind::Timeout => "timeout".into(),
            RequestErrorKind::Disconnected => "disconnected".into(),
            RequestErrorKind::MalformedStream => "malformed_stream".into(),
            RequestErrorKind::StreamError => "stream_error".into(),
        }
    }
}

/// A failed request's classification and detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub message: String,
}

/// Per-request speculative-decoding statistics reported by the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SdStats {
    pub drafted_tokens: Option<u64>,
    pub accepted_tokens: Option<u64>,
    /// accepted / drafted.
    pub acceptance_rate: Option<f64>,
    /// Tokens emitted per verification step (accepted + 1 bonus token on average).
    pub mean_acceptance_length: Option<f64>,
    pub verify_steps: Option<u64>,
}

/// Server-side timing of one request, when the server reports it (`metrics.scheduling` of
/// `lapsd serve`: measured from the engine's admission of the request, without network time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerTiming {
    pub ttft_s: Option<f64>,
    pub e2e_s: Option<f64>,
    /// Seconds waited before the request's first step.
    pub queue_time_s: Option<f64>,
    /// Times the request was removed from the batch unfinished.
    pub preemptions: Option<u64>,
    /// Output length the server predicted from the prompt's text at admission.
    #[serde(default)]
    pub text_predicted_output_tokens: Option<u64>,
}

/// Where the output token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCountSource {
    Usage,
    Chunks,
}

/// The measured outcome of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestResult {
    /// Time from sending to the first content chunk.
    pub ttft_s: Option<f64>,
    /// Gaps between consecutive content chunks.
    pub itl_s: Vec<f64>,
    /// Time from sending to the end of the stream (or to the failure).
    pub e2e_s: f64,
    /// Output tokens (from usage, else content chunks).
    pub output_tokens: u32,
    pub output_tokens_source: Option<TokenCountSource>,
    /// `usage.prompt_tokens` when the server sent it.
    pub server_prompt_tokens: Option<u32>,
    /// Chunks that carried content.
    pub content_chunks: u32,
    pub sd: Option<SdStats>,
    pub server_timing: Option<ServerTiming>,
    /// The last non-null `choices[].finish_reason` of the stream (`length`, `stop`, ...).
    pub finish_reason: Option<String>,
    pub error: Option<RequestError>,
}

impl RequestResult {
    /// TPOT = (e2e - ttft) / (output_tokens - 1); `None` with fewer than two tokens.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft_s = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - ttft_s) / (self.output_tokens - 1) as f64)
    }
}

/// The HTTP client's errors: reqwest's, or an API key that cannot be a header value.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("the API key cannot be sent in a header (control characters or non-ASCII)")]
    InvalidApiKey,
    #[error(transparent)]
    Build(#[from] reqwest::Error),
}

/// Builds the HTTP client shared by every request of a run; with `api_key`, every request
/// carries `Authorization: Bearer <api_key>`.
pub fn build_http_client(api_key: Option<&str>) -> Result<reqwest::Client, HttpClientError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| HttpClientError::InvalidApiKey)?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .default_headers(headers)
        .build()?)
}

/// The JSON body of a request.
pub fn request_body(config: &ClientConfig, prompt: &str, max_tokens: u32) -> Value {
    let mut body = json!({
        "model": config.model,
        "max_tokens": max_tokens,
        "temperature": config.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match config.endpoint {
        Endpoint::Completions => body["prompt"] = json!(prompt),
        Endpoint::Chat => body["messages"] = json!([{"role": "user", "content": prompt}]),
    }
    if config.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    for (key, value) in &config.extra_body {
        body[key.as_str()] = value.clone();
    }
    body
}

/// Sends one streaming request and measures it. Never fails: errors are recorded in the result.
pub async fn send_request(
    http: &reqwest::Client,
    config: &ClientConfig,
    prompt: &str,
    max_tokens: u32,
) -> RequestResult {
    let start = Instant::now();
    let mut result = RequestResult::default();
    let outcome = tokio::time::timeout(
        config.request_timeout,
        stream_request(http, config, prompt, max_tokens, start, &mut result),
    )
    .await;
    result.e2e_s = start.elapsed().as_secs_f64();
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(RequestError {
            kind: RequestErrorKind::Timeout,
            message: format!("no end of stream after {:?}", config.request_timeout),
        }),
    };
    if result.output_tokens_source.is_none() {
        result.output_tokens = result.content_chunks;
        result.output_tokens_source = Some(TokenCountSource::Chunks);
    }
    result.error = error;
    result
}

async fn stream_request(
    http: &reqwest::Client,
    config: &ClientConfig,
    prompt: &str,
    max_tokens: u32,
    start: Instant,
    result: &mut RequestResult,
) -> Result<(), RequestError> {
    let url = format!(
        "{}{}",
        config.base_url.trim_end_matches('/'),
        config.endpoint.path()
    );
    let response = http
        .post(&url)
        .json(&request_body(config, prompt, max_tokens))
        .send()
        .await
        .map_err(|e| classify_reqwest_error(&e, RequestErrorKind::Connect))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(RequestError {
            kind: RequestErrorKind::HttpStatus(status.as_u16()),
            message: body.chars().take(300).collect(),
        });
    }
    let mut response = response;
    let mut parser = SseParser::new();
    let mut last_content_at: Option<Instant> = None;
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| classify_reqwest_error(&e, RequestErrorKind::Disconnected))?;
        let (events, ended) = match chunk {
            Some(bytes) => (parser.push(&bytes), false),
            None => (parser.finish(), true),
        };
        let now = Instant::now();
        for event in events {
            match event {
                SseEvent::Done => return Ok(()),
                SseEvent::Data(data) => {
                    let has_content = apply_chunk(&data, result)?;
                    if has_content {
                        match last_content_at {
                            None => result.ttft_s = Some((now - start).as_secs_f64()),
                            Some(previous) => result.itl_s.push((now - previous).as_secs_f64()),
                        }
                        last_content_at = Some(now);
                        result.content_chunks += 1;
                    }
                }
            }
        }
        if ended {
            return Err(RequestError {
                kind: RequestErrorKind::MalformedStream,
                message: "stream ended without data: [DONE]".into(),
            });
        }
    }
}

fn classify_reqwest_error(error: &reqwest::Error, otherwise: RequestErrorKind) -> RequestError {
    let kind = if error.is_timeout() {
        RequestErrorKind::Timeout
    } else if error.is_connect() {
        RequestErrorKind::Connect
    } else {
        otherwise
    };
    RequestError {
        kind,
        message: error_chain(error),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Applies one `data:` payload to the result; returns whether it carried content.
pub fn apply_chunk(data: &str, result: &mut RequestResult) -> Result<bool, RequestError> {
    let malformed = |message: String| RequestError {
        kind: RequestErrorKind::MalformedStream,
        message,
    };
    let value: Value = serde_json::from_str(data)
        .map_err(|e| malformed(format!("chunk is not JSON ({e}): {}", preview(data))))?;
    if !value.is_object() {
        return Err(malformed(format!(
            "chunk is not a JSON object: {}",
            preview(data)
        )));
    }
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        return Err(RequestError {
            kind: RequestErrorKind::StreamError,
            message: preview(&error.to_string()),
        });
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        if let Some(tokens) = usage.get("completion_tokens").and_then(Value::as_u64) {
            result.output_tokens = tokens as u32;
            result.output_tokens_source = Some(TokenCountSource::Usage);
        }
        if let Some(tokens) = usage.get("prompt_tokens").and_then(Value::as_u64) {
            result.server_prompt_tokens = Some(tokens as u32);
        }
    }
    if let Some(sd) = parse_sd_stats(&value) {
        result.sd = Some(sd);
    }
    if let Some(scheduling) = value
        .get("metrics")
        .and_then(|m| m.get("scheduling"))
        .filter(|s| s.is_object())
    {
        result.server_timing = Some(ServerTiming {
            ttft_s: scheduling.get("ttft_s").and_then(Value::as_f64),
            e2e_s: scheduling.get("e2e_s").and_then(Value::as_f64),
            queue_time_s: scheduling.get("queue_time_s").and_then(Value::as_f64),
            preemptions: scheduling.get("preemptions").and_then(Value::as_u64),
            text_predicted_output_tokens: scheduling
                .get("text_predicted_output_tokens")
                .and_then(Value::as_u64),
        });
    }
    let choices = value.get("choices").and_then(Value::as_array);
    if let Some(reason) = choices
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("finish_reason").and_then(Value::as_str))
        .next_back()
    {
        result.finish_reason = Some(reason.to_string());
    }
    let has_content = choices
        .map(|choices| choices.iter().any(choice_has_content))
        .unwrap_or(false);
    Ok(has_content)
}

fn choice_has_content(choice: &Value) -> bool {
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    non_empty(choice.get("text"))
        || choice
            .get("delta")
            .is_some_and(|d| non_empty(d.get("content")) || non_empty(d.get("reasoning_content")))
}

/// Reads SD statistics from `metrics.speculative_decoding` (or a top-level `speculative_decoding`)
/// or from llama.cpp's `timings.draft_n` / `timings.draft_n_accepted`.
pub fn parse_sd_stats(chunk: &Value) -> Option<SdStats> {
    let u64_of = |obj: &Value, keys: &[&str]| keys.iter().find_map(|k| obj.get(*k)?.as_u64());
    let f64_of = |obj: &Value, keys: &[&str]| keys.iter().find_map(|k| obj.get(*k)?.as_f64());
    let mut stats = if let Some(sd) = chunk
        .get("metrics")
        .and_then(|m| m.get("speculative_decoding"))
        .or_else(|| chunk.get("speculative_decoding"))
        .filter(|sd| sd.is_object())
    {
        SdStats {
            drafted_tokens: u64_of(
                sd,
                &["num_drafted_tokens", "drafted_tokens", "draft_tokens"],
            ),
            accepted_tokens: u64_of(sd, &["num_accepted_tokens", "accepted_tokens"]),
            acceptance_rate: f64_of(sd, &["acceptance_rate"]),
            mean_acceptance_length: f64_of(sd, &["mean_acceptance_length"]),
            verify_steps: u64_of(sd, &["num_verify_steps", "verify_steps", "num_steps"]),
        }
    } else if let Some(timings) = chunk.get("timings").filter(|t| t.get("draft_n").is_some()) {
        SdStats {
            drafted_tokens: u64_of(timings, &["draft_n"]),
            accepted_tokens: u64_of(timings, &["draft_n_accepted"]),
            ..SdStats::default()
        }
    } else {
        return None;
    };
    if stats.acceptance_rate.is_none() {
        if let (Some(drafted), Some(accepted)) = (stats.drafted_tokens, stats.accepted_tokens) {
            if drafted > 0 {
                stats.acceptance_rate = Some(accepted as f64 / drafted as f64);
            }
        }
    }
    Some(stats)
}

fn preview(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Asks the server for its first model id (`GET /v1/models`), as `vllm bench serve` does when no
/// `--model` is given.
pub async fn discover_model(http: &reqwest::Client, base_url: &str) -> Option<String> {
    let url = format!("{}/v1/models", base_url.trim_end_matches('/'));
    let response = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let value: Value = response.json().await.ok()?;
    value
        .get("data")?
        .as_array()?
        .first()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_chat_chunks_are_read() {
        let mut r = RequestResult::default();
        assert!(apply_chunk(r#"{"choices":[{"text":"Hi","index":0}]}"#, &mut r).unwrap());
        assert!(!apply_chunk(r#"{"choices":[{"text":"","index":0}]}"#, &mut r).unwrap());
        assert!(!apply_chunk(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, &mut r).unwrap());
        assert!(apply_chunk(r#"{"choices":[{"delta":{"content":"x"}}]}"#, &mut r).unwrap());
        assert!(!apply_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":12}}"#,
            &mut r
        )
        .unwrap());
        assert_eq!(r.output_tokens, 12);
        assert_eq!(r.output_tokens_source, Some(TokenCountSource::Usage));
        assert_eq!(r.server_prompt_tokens, Some(7));
        assert!(r.server_timing.is_none());
        assert_eq!(r.finish_reason, None);
        apply_chunk(
            r#"{"choices":[{"text":"","index":0,"finish_reason":null}]}"#,
            &mut r,
        )
        .unwrap();
        assert_eq!(r.finish_reason, None);
        apply_chunk(
            r#"{"choices":[{"delta":{},"index":0,"finish_reason":"length"}]}"#,
            &mut r,
        )
        .unwrap();
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        apply_chunk(
            r#"{"choices":[],"metrics":{"scheduling":{"ttft_s":0.5,"e2e_s":2.0,"queue_time_s":null,"preemptions":3}}}"#,
            &mut r,
        )
        .unwrap();
        let timing = r.server_timing.expect("scheduling stats read");
        assert_eq!(
            (
                timing.ttft_s,
                timing.e2e_s,
                timing.queue_time_s,
                timing.preemptions
            ),
            (Some(0.5), Some(2.0), None, Some(3))
        );
    }

    #[test]
    fn bad_chunks_are_classified() {
        let mut r = RequestResult::default();
        let err = apply_chunk("{nope", &mut r).unwrap_err();
        assert_eq!(err.kind, RequestErrorKind::MalformedStream);
        let err = apply_chunk(r#"{"error":{"message":"boom"}}"#, &mut r).unwrap_err();
        assert_eq!(err.kind, RequestErrorKind::StreamError);
        assert_eq!(RequestErrorKind::HttpStatus(503).tag(), "http_503");
    }

    #[test]
    fn sd_stats_in_vllm_and_llama_cpp_shapes() {
        let vllm: Value = serde_json::from_str(
            r#"{"metrics":{"speculative_decoding":{"num_drafted_tokens":40,"num_accepted_tokens":30,"mean_acceptance_length":3.5,"num_verify_steps":10}}}"#,
        )
        .unwrap();
        let stats = parse_sd_stats(&vllm).unwrap();
        assert_eq!(stats.drafted_tokens, Some(40));
        assert_eq!(stats.accepted_tokens, Some(30));
        assert_eq!(stats.acceptance_rate, Some(0.75));
        assert_eq!(stats.mean_acceptance_length, Some(3.5));
        assert_eq!(stats.verify_steps, Some(10));
        let llama: Value =
            serde_json::from_str(r#"{"timings":{"draft_n":8,"draft_n_accepted":2}}"#).unwrap();
        assert_eq!(parse_sd_stats(&llama).unwrap().acceptance_rate, Some(0.25));
        assert!(parse_sd_stats(&serde_json::json!({"choices": []})).is_none());
    }

    #[test]
    fn tpot_needs_two_tokens() {
        let mut r = RequestResult {
            ttft_s: Some(0.5),
            e2e_s: 2.5,
            output_tokens: 5,
            ..RequestResult::default()
        };
        assert_eq!(r.tpot_s(), Some(0.5));
        r.output_tokens = 1;
        assert_eq!(r.tpot_s(), None);
    }

    #[test]
    fn bodies_follow_the_endpoint() {
        let mut config = ClientConfig {
            base_url: "http://x".into(),
            endpoint: Endpoint::Completions,
            model: "m".into(),
            temperature: 0.0,
            ignore_eos: false,
            extra_body: serde_json::Map::new(),
            request_timeout: Duration::from_secs(1),
        };
        let body = request_body(&config, "hello", 9);
        assert_eq!(body["prompt"], "hello");
        assert_eq!(body["max_tokens"], 9);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("ignore_eos").is_none());
        config.endpoint = Endpoint::Chat;
        config.ignore_eos = true;
        let body = request_body(&config, "hello", 9);
        assert_eq!(body["messages"][0]["content"], "hello");
        assert_eq!(body["ignore_eos"], true);
        config.extra_body = json!({"logit_bias": {"2": -100}, "max_tokens": 3})
            .as_object()
            .cloned()
            .unwrap();
        let body = request_body(&config, "hello", 9);
        assert_eq!(body["logit_bias"]["2"], -100);
        assert_eq!(body["max_tokens"], 3, "extra fields win");
    }
}
