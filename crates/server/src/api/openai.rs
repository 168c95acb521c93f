//! OpenAI wire types (serde): completion and chat-completion requests as clients send them, the
//! responses and stream chunks we send back, usage, and lapsd's per-request statistics
//! (`metrics.speculative_decoding` in vLLM's opt-in shape, plus `metrics.scheduling`).
//!
//! Request fields that carry numbers a client may get wrong (`max_tokens`, `n`) are read as wide
//! signed integers so that a negative value is a validation error naming the field, not a type
//! error. Unknown request fields are ignored, as vLLM does.

use serde::{Deserialize, Serialize};

/// `prompt` of a completion: a string, a list of strings, token ids, or a list of token-id
/// lists (OpenAI's batched forms; validation accepts one prompt per request).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    TokenIds(Vec<u32>),
    TokenIdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and scheduling fields shared by both endpoints (copied out of either request by
/// `common()`; not `#[serde(flatten)]`, which would hide the path of a wrong-typed field).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopInput>,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's priority: lower runs first; default 0.
    pub priority: Option<i64>,
    /// Completions: the number of alternatives per token (0..=20); chat: `true` or `false`.
    pub logprobs: Option<serde_json::Value>,
    /// Unsupported beyond 1.
    pub best_of: Option<i64>,
    /// vLLM's extension: generate exactly `max_tokens` tokens, past EOS (benchmarks).
    pub ignore_eos: bool,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Value>,
    pub repetition_penalty: Option<f64>,
    pub top_logprobs: Option<serde_json::Value>,
    /// Fields the sampler does not implement: accepted only at their neutral value (see
    /// `Validator::unsupported`), never silently ignored.
    pub unsupported: UnsupportedParams,
}

/// OpenAI fields lapsd does not implement, kept as sent so validation can refuse any
/// non-neutral value with a 400 naming the field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct UnsupportedParams {
    pub response_format: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
}

macro_rules! common_of {
    ($req:expr) => {
        CommonParams {
            model: $req.model.clone(),
            max_tokens: $req.max_tokens,
            temperature: $req.temperature,
            top_p: $req.top_p,
            n: $req.n,
            seed: $req.seed,
            stop: $req.stop.clone(),
            stream: $req.stream,
            stream_options: $req.stream_options.clone(),
            priority: $req.priority,
            logprobs: $req.logprobs.clone(),
            best_of: $req.best_of,
            ignore_eos: $req.ignore_eos,
            presence_penalty: $req.presence_penalty,
            frequency_penalty: $req.frequency_penalty,
            logit_bias: $req.logit_bias.clone(),
            repetition_penalty: $req.repetition_penalty,
            top_logprobs: $req.top_logprobs.clone(),
            unsupported: UnsupportedParams {
                response_format: $req.response_format.clone(),
                tools: $req.tools.clone(),
                tool_choice: $req.tool_choice.clone(),
                functions: $req.functions.clone(),
                function_call: $req.function_call.clone(),
            },
        }
    };
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    #[serde(default)]
    pub echo: bool,
    /// Text after the completion (insertion); unsupported unless empty.
    pub suffix: Option<String>,
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopInput>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's priority: lower runs first; default 0.
    pub priority: Option<i64>,
    /// Completions: the number of alternatives per token (0..=20); chat: `true` or `false`.
    pub logprobs: Option<serde_json::Value>,
    /// Unsupported beyond 1.
    pub best_of: Option<i64>,
    /// vLLM's extension: generate exactly `max_tokens` tokens, past EOS (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// In [-2, 2]: subtracted once from the logit of every token generated so far.
    pub presence_penalty: Option<f64>,
    /// In [-2, 2]: subtracted from the logit of every generated token, times its count.
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string key) -> bias in [-100, 100], added to its logit.
    pub logit_bias: Option<serde_json::Value>,
    /// vLLM's extension, in (0, 2]: CTRL's penalty on tokens of the prompt and output; 1 = off.
    pub repetition_penalty: Option<f64>,
    /// With `logprobs` (chat: `true`): how many alternatives per token, 0..=20.
    pub top_logprobs: Option<serde_json::Value>,
    // Unsupported fields, read so that validation can refuse them (see `UnsupportedParams`);
    // listed here rather than flattened, which would hide the path of a wrong-typed field.
    pub response_format: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
}

impl CompletionRequest {
    pub fn common(&self) -> CommonParams {
        common_of!(self)
    }
}

/// Message content: a string or a list of parts (only `{"type": "text"}` parts are supported).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub part_type: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    /// The newer name of `max_tokens`; wins when both are set.
    pub max_completion_tokens: Option<i64>,
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopInput>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's priority: lower runs first; default 0.
    pub priority: Option<i64>,
    /// Completions: the number of alternatives per token (0..=20); chat: `true` or `false`.
    pub logprobs: Option<serde_json::Value>,
    /// Unsupported beyond 1.
    pub best_of: Option<i64>,
    /// vLLM's extension: generate exactly `max_tokens` tokens, past EOS (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// In [-2, 2]: subtracted once from the logit of every token generated so far.
    pub presence_penalty: Option<f64>,
    /// In [-2, 2]: subtracted from the logit of every generated token, times its count.
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string key) -> bias in [-100, 100], added to its logit.
    pub logit_bias: Option<serde_json::Value>,
    /// vLLM's extension, in (0, 2]: CTRL's penalty on tokens of the prompt and output; 1 = off.
    pub repetition_penalty: Option<f64>,
    /// With `logprobs` (chat: `true`): how many alternatives per token, 0..=20.
    pub top_logprobs: Option<serde_json::Value>,
    // Unsupported fields, read so that validation can refuse them (see `UnsupportedParams`);
    // listed here rather than flattened, which would hide the path of a wrong-typed field.
    pub response_format: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
}

impl ChatCompletionRequest {
    pub fn common(&self) -> CommonParams {
        common_of!(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// vLLM-style per-request speculative-decoding statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecDecodeStats {
    /// Draft tokens proposed over the request's life.
    pub drafted_tokens: u64,
    /// Draft tokens the target accepted.
    pub accepted_tokens: u64,
    /// accepted / drafted; null before any draft token.
    pub acceptance_rate: Option<f64>,
    /// Mean tokens produced per verification step (accepted + the target's own); null before any step.
    pub mean_acceptance_length: Option<f64>,
    /// SD steps that drafted at least one token (a prompt-lookup step that found no match is a
    /// plain decoding step and is not counted; nor is the prefill).
    pub verify_steps: u32,
    /// `accepted_per_position[i]`: steps that accepted the draft token at position i.
    pub accepted_per_position: Vec<u64>,
}

/// The request's scheduling history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulingStats {
    /// The policy that scheduled it.
    pub policy: String,
    /// Multi-level queue levels (0 = highest priority) its attained service put it in, in order
    /// of first visit (FastServe/LAPS-SD thresholds of the server's policy config).
    pub queue_levels_visited: Vec<u32>,
    /// Attained service in target forward passes (prefill counts as one).
    pub attained_service_passes: u64,
    /// Attained service in seconds of step time.
    pub attained_service_s: f64,
    /// Whether its acceptance rate became stable (LAPS-SD's perceptible requests).
    pub perceptible: bool,
    /// Seconds after arrival at which it became perceptible.
    pub perceptible_at_s: Option<f64>,
    /// Times it was removed from the batch while unfinished.
    pub preemptions: u32,
    /// Times its KV was freed and its prefill recomputed.
    pub recomputes: u32,
    /// Output length predicted from the prompt's text at admission (`lapsd serve
    /// --length-model`); absent without a length model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_predicted_output_tokens: Option<u32>,
    /// Seconds from arrival (admission by the engine worker) to its first generated token.
    pub ttft_s: Option<f64>,
    /// Seconds from arrival to finish.
    pub e2e_s: f64,
    /// Seconds waited before its first step.
    pub queue_time_s: Option<f64>,
}

/// Statistics attached to every final response / chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMetrics {
    pub speculative_decoding: SpecDecodeStats,
    pub scheduling: SchedulingStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<String>,
}

/// Non-streaming completion response and (with `object = "text_completion"`) stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metrics: Option<RequestMetrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub metrics: RequestMetrics,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metrics: Option<RequestMetrics>,
}

/// `GET /v1/models` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The model's context window in tokens (vLLM's `max_model_len`).
    pub max_model_len: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}
