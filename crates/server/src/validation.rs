//! Validation at the edge (TGI's `validation.rs`): turns an OpenAI request into a [`ValidRequest`]
//! that the engine worker accepts as is, or a 400/404 naming the field, the limit and the value.
//!
//! Limits checked: the model name, `n` (1..=16) and `best_of` (1 or n), `echo` (not with
//! `logprobs`), `logprobs`/`top_logprobs` (at most 20 alternatives), `temperature` in [0, 2], `top_p` in (0, 1], `presence_penalty` and
//! `frequency_penalty` in [-2, 2], `repetition_penalty` in (0, 2], `logit_bias` (token ids inside
//! the vocabulary, biases in [-100, 100]), `priority` in i32, `stop` (at most 4
//! non-empty strings), the prompt (non-empty, inside the context window, token ids inside the
//! vocabulary), `max_tokens` (>= 1; prompt + max_tokens within the context and, with the
//! speculative lookahead, within the KV budget). Without `max_tokens` a request may generate up
//! to the remaining context (vLLM's default), capped by the KV budget.

use std::sync::Arc;

use crate::api::openai::{
    ChatCompletionRequest, CommonParams, CompletionRequest, MessageContent, PromptInput, StopInput,
    UnsupportedParams,
};
use crate::error::ApiError;
use crate::model_text::{ChatPromptError, ModelCard, ModelText};
use lapsd_core::length_model::TextLengthModel;
use lapsd_engine::spec::LogitAdjustments;

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// Sampling parameters after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    /// `logit_bias`, `presence_penalty`, `frequency_penalty`, `repetition_penalty`.
    pub logit_adjustments: LogitAdjustments,
}

/// Most `logit_bias` entries per request (OpenAI documents no limit; this bounds the work each
/// step spends on one request).
pub const MAX_LOGIT_BIAS_ENTRIES: usize = 1024;

/// A request the engine worker can run without further checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: u32,
    pub sampling: ValidSampling,
    pub stop: Vec<String>,
    /// Lower runs first (vLLM); default 0.
    pub priority: i32,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Generate past EOS until `max_tokens` (vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    /// Output length predicted from the prompt's text (`--length-model`), if a model is loaded
    /// and the prompt came as text.
    pub predicted_output_tokens: Option<u32>,
    /// Report the target's log probability of each token with this many alternatives.
    pub logprobs: Option<u32>,
    /// Choices to generate (`n`), each its own sequence.
    pub n: u32,
    /// Completions' `echo`: the prompt text each choice's text starts with.
    pub echo: Option<String>,
}

/// Most choices per request (`n`); each is scheduled and prefilled as its own sequence.
pub const MAX_CHOICES: u32 = 16;

/// The limits requests are checked against, and the model text functions.
#[derive(Clone)]
pub struct Validator {
    pub card: ModelCard,
    pub text: Arc<dyn ModelText>,
    /// Scheduler KV budget in tokens.
    pub kv_budget_tokens: u64,
    /// KV tokens reserved beyond the context for one SD step (k + 1).
    pub lookahead_tokens: u32,
    /// Predicts output lengths from prompt text (`--length-model`).
    pub length_model: Option<Arc<TextLengthModel>>,
    /// `--max-prompt-chars`: longer prompt texts are refused before tokenization.
    pub max_prompt_chars: Option<usize>,
}

impl Validator {
    pub fn completion(&self, req: &CompletionRequest) -> Result<ValidRequest, ApiError> {
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                "`suffix` (insertion) is not supported",
            ));
        }
        let prompt_ids = match &req.prompt {
            PromptInput::Text(text) => self.encode(text, true, "prompt")?,
            PromptInput::Texts(texts) => match texts.as_slice() {
                [one] => self.encode(one, true, "prompt")?,
                _ => {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "exactly one prompt per request is supported, got {}",
                            texts.len()
                        ),
                    ))
                }
            },
            PromptInput::TokenIds(ids) => self.token_ids(ids)?,
            PromptInput::TokenIdLists(lists) => match lists.as_slice() {
                [one] => self.token_ids(one)?,
                _ => {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "exactly one prompt per request is supported (batched prompts are not; n = 1), got {} token-id lists",
                            lists.len()
                        ),
                    ))
                }
            },
        };
        let prompt_text = match &req.prompt {
            PromptInput::Text(text) => Some(text.as_str()),
            PromptInput::Texts(texts) => texts.first().map(String::as_str),
            PromptInput::TokenIds(_) | PromptInput::TokenIdLists(_) => None,
        };
        let mut valid = self.finish(&req.common(), None, prompt_ids, "prompt")?;
        valid.predicted_output_tokens = self.predict_length(prompt_text);
        if req.echo {
            if valid.logprobs.is_some() {
                // The prompt's own logprobs would need the LM head on every prompt position.
                return Err(ApiError::invalid(
                    "echo",
                    "`echo` together with `logprobs` is not supported (prompt logprobs are not computed)",
                ));
            }
            valid.echo = Some(match prompt_text {
                Some(text) => text.to_string(),
                None => self
                    .text
                    .decode(&valid.prompt_ids)
                    .map_err(|e| ApiError::Internal {
                        detail: format!("decoding the prompt for `echo`: {e}"),
                    })?,
            });
        }
        Ok(valid)
    }

    /// A token-id prompt, checked against the vocabulary.
    fn token_ids(&self, ids: &[u32]) -> Result<Vec<u32>, ApiError> {
        if let Some(&bad) = ids.iter().find(|&&id| id >= self.card.vocab_size) {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.card.vocab_size
                ),
            ));
        }
        Ok(ids.to_vec())
    }

    /// The length model's prediction for a prompt text (None without a model or text).
    fn predict_length(&self, text: Option<&str>) -> Option<u32> {
        Some(self.length_model.as_ref()?.predict_output_tokens(text?))
    }

    pub fn chat(&self, req: &ChatCompletionRequest) -> Result<ValidRequest, ApiError> {
        if req.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        let mut turns = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("unsupported role {other:?} (expected system, developer, user or assistant)"),
                    ))
                }
            };
            let content = match &m.content {
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.part_type.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "only text content parts are supported, got type {kind:?}"
                                    ),
                                ))
                            }
                        }
                    }
                    text
                }
                None if role == "assistant" => String::new(),
                None => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].content"),
                        "`content` is required",
                    ))
                }
            };
            turns.push((role.to_string(), content));
        }
        let chars = turns.iter().map(|(_, c)| c.chars().count()).sum();
        self.check_prompt_chars(chars, "messages")?;
        // The template writes any special tokens itself; contents are plain text.
        let prompt_ids = self.text.encode_chat(&turns).map_err(|e| match e {
            // A template that raises (e.g. roles out of the order it accepts) is the
            // request's fault.
            ChatPromptError::Template(_) => ApiError::invalid("messages", e.to_string()),
            ChatPromptError::SpecialTokenInContent { index, .. } => {
                ApiError::invalid(format!("messages[{index}].content"), e.to_string())
            }
            ChatPromptError::Tokenize(detail) => ApiError::Internal {
                detail: format!("tokenizing `messages`: {detail}"),
            },
        })?;
        let mut valid = self.finish(
            &req.common(),
            req.max_completion_tokens
                .map(|v| ("max_completion_tokens", v)),
            prompt_ids,
            "messages",
        )?;
        // The model was trained on first user turns: predict from the last user message.
        let last_user = turns
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map(|(_, content)| content.as_str());
        valid.predicted_output_tokens = self.predict_length(last_user);
        Ok(valid)
    }

    /// Refuses a prompt of more than `--max-prompt-chars` characters, naming the field, the
    /// limit and the length sent.
    fn check_prompt_chars(&self, chars: usize, field: &str) -> Result<(), ApiError> {
        match self.max_prompt_chars {
            Some(limit) if chars > limit => Err(ApiError::invalid(
                field,
                format!(
                    "the prompt has {chars} characters, more than this server's limit of {limit} \
                     (--max-prompt-chars)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn encode(&self, text: &str, add_special: bool, field: &str) -> Result<Vec<u32>, ApiError> {
        self.check_prompt_chars(text.chars().count(), field)?;
        self.text
            .encode(text, add_special)
            .map_err(|e| ApiError::Internal {
                detail: format!("tokenizing `{field}`: {e}"),
            })
    }

    /// Checks shared by both endpoints. `max_override` is chat's `max_completion_tokens`.
    fn finish(
        &self,
        c: &CommonParams,
        max_override: Option<(&'static str, i64)>,
        prompt_ids: Vec<u32>,
        prompt_field: &str,
    ) -> Result<ValidRequest, ApiError> {
        if let Some(model) = &c.model {
            if model != &self.card.name {
                return Err(ApiError::ModelNotFound {
                    requested: model.clone(),
                    served: self.card.name.clone(),
                });
            }
        }
        let n = match c.n {
            None => 1,
            Some(n) if (1..=i64::from(MAX_CHOICES)).contains(&n) => n as u32,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("n must be in [1, {MAX_CHOICES}], got {n}"),
                ))
            }
        };
        if let Some(b) = c.best_of {
            // best_of > n would rank candidates by logprob; only returning all of them is
            // supported.
            if b != 1 && b != i64::from(n) {
                return Err(ApiError::invalid(
                    "best_of",
                    format!("best_of must be 1 or equal to n ({n}), got {b}"),
                ));
            }
        }
        let logprobs = requested_logprobs(c)?;
        unsupported(&c.unsupported)?;
        let logit_adjustments = self.logit_adjustments(c)?;
        let temperature = c.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = c.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let priority = match c.priority {
            None => 0,
            Some(p) => i32::try_from(p).map_err(|_| {
                ApiError::invalid("priority", format!("priority must fit in 32 bits, got {p}"))
            })?,
        };
        let stop = self.stop(c.stop.as_ref())?;
        let max_tokens = self.max_tokens(c, max_override, prompt_ids.len(), prompt_field)?;
        Ok(ValidRequest {
            prompt_ids,
            max_tokens,
            sampling: ValidSampling {
                temperature: temperature as f32,
                top_p: top_p as f32,
                seed: c.seed.map(|s| s as u64),
                logit_adjustments,
            },
            stop,
            priority,
            stream: c.stream,
            include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
            ignore_eos: c.ignore_eos,
            predicted_output_tokens: None,
            logprobs,
            n,
            echo: None,
        })
    }

    /// `logit_bias` (token id keys inside the vocabulary, biases in [-100, 100]), the OpenAI
    /// penalties in [-2, 2] and vLLM's `repetition_penalty` in (0, 2].
    fn logit_adjustments(&self, c: &CommonParams) -> Result<LogitAdjustments, ApiError> {
        let mut adjust = LogitAdjustments::default();
        for (field, value, slot) in [
            (
                "presence_penalty",
                c.presence_penalty,
                &mut adjust.presence_penalty,
            ),
            (
                "frequency_penalty",
                c.frequency_penalty,
                &mut adjust.frequency_penalty,
            ),
        ] {
            let Some(v) = value else { continue };
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} must be in [-2, 2], got {v}"),
                ));
            }
            *slot = v as f32;
        }
        if let Some(r) = c.repetition_penalty {
            if !(r > 0.0 && r <= 2.0) {
                return Err(ApiError::invalid(
                    "repetition_penalty",
                    format!("repetition_penalty must be in (0, 2], got {r}"),
                ));
            }
            adjust.repetition_penalty = r as f32;
        }
        match &c.logit_bias {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) => {
                if map.len() > MAX_LOGIT_BIAS_ENTRIES {
                    return Err(ApiError::invalid(
                        "logit_bias",
                        format!(
                            "at most {MAX_LOGIT_BIAS_ENTRIES} logit_bias entries are allowed, got {}",
                            map.len()
                        ),
                    ));
                }
                for (key, value) in map {
                    let token = key
                        .parse::<u32>()
                        .ok()
                        .filter(|&t| t < self.card.vocab_size)
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "logit_bias",
                                format!(
                                    "logit_bias keys must be token ids below the vocabulary size {}, got {key:?}",
                                    self.card.vocab_size
                                ),
                            )
                        })?;
                    let bias = value
                        .as_f64()
                        .filter(|b| (-100.0..=100.0).contains(b))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "logit_bias",
                                format!(
                                    "logit_bias values must be numbers in [-100, 100], got {value} for token {key}"
                                ),
                            )
                        })?;
                    adjust.logit_bias.push((token, bias as f32));
                }
                // Map order is not the request's; sorted, equal requests give equal values.
                adjust.logit_bias.sort_by_key(|&(token, _)| token);
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias must be an object of token id -> bias, got {other}"),
                ))
            }
        }
        Ok(adjust)
    }

    fn stop(&self, stop: Option<&StopInput>) -> Result<Vec<String>, ApiError> {
        let stops = match stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                    stops.len()
                ),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "stop strings must not be empty"));
        }
        Ok(stops)
    }

    fn max_tokens(
        &self,
        c: &CommonParams,
        max_override: Option<(&'static str, i64)>,
        prompt_tokens: usize,
        prompt_field: &str,
    ) -> Result<u32, ApiError> {
        let context = u64::from(self.card.context_length);
        let prompt = prompt_tokens as u64;
        let lookahead = u64::from(self.lookahead_tokens);
        if prompt == 0 {
            return Err(ApiError::invalid(
                prompt_field,
                "the prompt must not be empty",
            ));
        }
        if prompt >= context {
            return Err(ApiError::invalid(
                prompt_field,
                format!("the prompt is {prompt} tokens; the model's context length is {context}"),
            ));
        }
        // What the KV budget leaves for output after the prompt and one step's lookahead.
        let kv_room = self.kv_budget_tokens.saturating_sub(prompt + lookahead);
        if kv_room == 0 {
            return Err(ApiError::invalid(
                prompt_field,
                format!(
                    "the prompt is {prompt} tokens; with the speculative lookahead of {lookahead} it leaves no room in the KV budget of {} tokens",
                    self.kv_budget_tokens
                ),
            ));
        }
        let (field, requested) = match max_override {
            Some((field, v)) => (field, Some(v)),
            None => ("max_tokens", c.max_tokens),
        };
        let Some(requested) = requested else {
            return Ok((context - prompt).min(kv_room).min(u64::from(u32::MAX)) as u32);
        };
        if requested < 1 {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be at least 1, got {requested}"),
            ));
        }
        let requested = requested as u64;
        if prompt + requested > context {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} = {requested} plus the prompt's {prompt} tokens exceeds the model's context length of {context} tokens"
                ),
            ));
        }
        if requested > kv_room {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} = {requested} plus the prompt's {prompt} tokens and the lookahead of {lookahead} exceeds the KV budget of {} tokens",
                    self.kv_budget_tokens
                ),
            ));
        }
        Ok(requested as u32)
    }
}

/// Most alternatives per token in `logprobs` / `top_logprobs` (OpenAI's chat limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `logprobs` as completions take it (a number of alternatives) or as chat takes it (`true`,
/// with `top_logprobs` alternatives); `None` when off.
fn requested_logprobs(c: &CommonParams) -> Result<Option<u32>, ApiError> {
    let count = |field: &str, v: &serde_json::Value| -> Result<u32, ApiError> {
        v.as_u64()
            .filter(|&n| n <= u64::from(MAX_TOP_LOGPROBS))
            .map(|n| n as u32)
            .ok_or_else(|| {
                ApiError::invalid(
                    field,
                    format!("{field} must be an integer in [0, {MAX_TOP_LOGPROBS}], got {v}"),
                )
            })
    };
    let top = match &c.top_logprobs {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(count("top_logprobs", v)?),
    };
    let logprobs = match &c.logprobs {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
        Some(serde_json::Value::Bool(true)) => Some(top.unwrap_or(0)),
        Some(v) => Some(count("logprobs", v)?),
    };
    if logprobs.is_none() && top.is_some_and(|t| t > 0) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    Ok(logprobs)
}

/// Refuses any non-neutral value of a field the sampler does not implement: a client that asks
/// for a JSON schema or tools must learn it did not get them.
fn unsupported(u: &UnsupportedParams) -> Result<(), ApiError> {
    let is_empty = |v: &Option<serde_json::Value>| match v {
        None => true,
        Some(serde_json::Value::Object(m)) => m.is_empty(),
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    match &u.response_format {
        None => {}
        Some(v) if v.get("type").and_then(|t| t.as_str()) == Some("text") => {}
        Some(v) => {
            let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("?");
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "only response_format {{\"type\": \"text\"}} is supported, got type {kind:?}"
                ),
            ));
        }
    }
    for (field, value) in [("tools", &u.tools), ("functions", &u.functions)] {
        if !is_empty(value) {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` (tool calling) is not supported"),
            ));
        }
    }
    // Without tools, "none" and "auto" both mean: answer in text.
    for (field, value) in [
        ("tool_choice", &u.tool_choice),
        ("function_call", &u.function_call),
    ] {
        match value.as_ref().map(|v| v.as_str()) {
            None | Some(Some("none" | "auto")) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    field,
                    format!("`{field}` (tool calling) is not supported; only \"none\" or \"auto\" without tools"),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::json::parse_body;
    use lapsd_engine::chat::ChatError;
    use lapsd_engine::EngineError;

    /// The ChatML fallback, as the engine renders it.
    fn render_chatml(m: &[(String, String)]) -> String {
        lapsd_engine::chat::ChatTemplate::chatml()
            .render_turns(m)
            .expect("ChatML renders any turns")
    }

    /// One token per whitespace-separated word (enough to test the limits).
    struct Words;
    impl ModelText for Words {
        fn encode(&self, text: &str, _: bool) -> Result<Vec<u32>, EngineError> {
            Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
            Ok(format!("{ids:?}"))
        }
        fn render_chat(&self, m: &[(String, String)]) -> Result<String, ChatError> {
            Ok(render_chatml(m))
        }
        fn encode_chat(&self, m: &[(String, String)]) -> Result<Vec<u32>, ChatPromptError> {
            self.encode(&render_chatml(m), false)
                .map_err(ChatPromptError::Tokenize)
        }
    }

    fn validator() -> Validator {
        Validator {
            card: ModelCard {
                name: "tiny".into(),
                context_length: 20,
                vocab_size: 100,
                eos_token_ids: vec![0],
            },
            text: Arc::new(Words),
            kv_budget_tokens: 1000,
            lookahead_tokens: 5,
            length_model: None,
            max_prompt_chars: None,
        }
    }

    #[test]
    fn prompts_over_the_character_limit_are_refused_naming_the_field() {
        let v = Validator {
            max_prompt_chars: Some(10),
            ..validator()
        };
        let completion = |body: &str| v.completion(&parse_body(body.as_bytes()).expect("body"));
        let chat = |body: &str| v.chat(&parse_body(body.as_bytes()).expect("body"));
        assert!(completion(r#"{"prompt": "0123456789"}"#).is_ok());
        let err = completion(r#"{"prompt": "01234567890"}"#).expect_err("11 > 10");
        assert_eq!(
            err,
            ApiError::invalid(
                "prompt",
                "the prompt has 11 characters, more than this server's limit of 10 \
                 (--max-prompt-chars)"
            )
        );
        // Characters, not bytes: ten two-byte characters fit.
        assert!(completion(r#"{"prompt": "éééééééééé"}"#).is_ok());
        // Chat: all contents together.
        let err = chat(
            r#"{"messages": [{"role": "system", "content": "012345"},
                             {"role": "user", "content": "6789x"}]}"#,
        )
        .expect_err("11 > 10");
        assert_eq!(param(Err(err)), "messages");
    }

    /// A length model that predicts 10 tokens, or 90 for prompts containing "essay".
    fn essay_model() -> Arc<TextLengthModel> {
        // Enough buckets that "a", "poem" and "a poem" do not share the bucket of "essay".
        let buckets = 1 << 16;
        let mut model = TextLengthModel::zeros(buckets);
        model.bias = 10f64.ln();
        model.max_output_tokens = 1000;
        let features = lapsd_core::length_model::PromptFeatures::of("essay", buckets);
        let (bucket, value) = features.hashed[0];
        model.weights[bucket as usize] = (9f64.ln() / f64::from(value)) as f32;
        Arc::new(model)
    }

    #[test]
    fn length_model_predicts_from_the_prompt_text_or_the_last_user_turn() {
        let v = Validator {
            length_model: Some(essay_model()),
            ..validator()
        };
        let parse =
            |body: &str| -> CompletionRequest { parse_body(body.as_bytes()).expect("body") };
        let text = v.completion(&parse(r#"{"prompt": "essay", "max_tokens": 5}"#));
        assert_eq!(text.expect("valid").predicted_output_tokens, Some(90));
        let other = v.completion(&parse(r#"{"prompt": "a poem", "max_tokens": 5}"#));
        assert_eq!(other.expect("valid").predicted_output_tokens, Some(10));
        let ids = v.completion(&parse(r#"{"prompt": [1, 2], "max_tokens": 5}"#));
        assert_eq!(ids.expect("valid").predicted_output_tokens, None);
        let chat: ChatCompletionRequest = parse_body(
            br#"{"messages": [{"role": "user", "content": "a poem"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "essay"}],
                "max_tokens": 3}"#,
        )
        .expect("body");
        assert_eq!(
            v.chat(&chat).expect("valid").predicted_output_tokens,
            Some(90)
        );
        // Without a model nothing is predicted here (the scheduler's online predictor is).
        let plain = validator().completion(&parse(r#"{"prompt": "essay", "max_tokens": 5}"#));
        assert_eq!(plain.expect("valid").predicted_output_tokens, None);
    }

    fn completion(body: &str) -> Result<ValidRequest, ApiError> {
        let req: CompletionRequest = parse_body(body.as_bytes())?;
        validator().completion(&req)
    }

    fn chat(body: &str) -> Result<ValidRequest, ApiError> {
        let req: ChatCompletionRequest = parse_body(body.as_bytes())?;
        validator().chat(&req)
    }

    fn param(r: Result<ValidRequest, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidRequest { param: Some(p), .. }) => p,
            other => panic!("expected a 400 naming a field, got {other:?}"),
        }
    }

    #[test]
    fn a_good_completion_becomes_valid() {
        let v = completion(
            r#"{"model":"tiny","prompt":"a bb ccc","max_tokens":4,"temperature":0,"stop":"x","priority":-3,"seed":7,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("valid");
        assert_eq!(v.prompt_ids, vec![1, 2, 3]);
        assert_eq!(v.max_tokens, 4);
        assert_eq!(
            v.sampling,
            ValidSampling {
                temperature: 0.0,
                top_p: 1.0,
                seed: Some(7),
                logit_adjustments: LogitAdjustments::default(),
            }
        );
        assert_eq!(v.stop, vec!["x".to_string()]);
        assert_eq!(v.priority, -3);
        assert!(v.stream && v.include_usage);
    }

    #[test]
    fn ignore_eos_is_off_unless_asked_and_must_be_a_bool() {
        assert!(!completion(r#"{"prompt":"a"}"#).expect("valid").ignore_eos);
        assert!(
            completion(r#"{"prompt":"a","ignore_eos":true}"#)
                .expect("valid")
                .ignore_eos
        );
        assert!(completion(r#"{"prompt":"a","ignore_eos":"yes"}"#).is_err());
    }

    #[test]
    fn default_max_tokens_is_the_remaining_context() {
        let v = completion(r#"{"prompt":"a b c"}"#).expect("valid");
        assert_eq!(v.max_tokens, 17);
    }

    #[test]
    fn max_tokens_limits() {
        assert_eq!(
            param(completion(r#"{"prompt":"a","max_tokens":0}"#)),
            "max_tokens"
        );
        assert_eq!(
            param(completion(r#"{"prompt":"a","max_tokens":-5}"#)),
            "max_tokens"
        );
        assert_eq!(
            param(completion(r#"{"prompt":"a b","max_tokens":19}"#)),
            "max_tokens"
        );
        assert!(completion(r#"{"prompt":"a b","max_tokens":18}"#).is_ok());
        assert_eq!(
            param(chat(
                r#"{"messages":[{"role":"user","content":"a"}],"max_completion_tokens":0}"#
            )),
            "max_completion_tokens"
        );
    }

    #[test]
    fn kv_budget_bounds_max_tokens() {
        let mut v = validator();
        v.kv_budget_tokens = 12;
        let req: CompletionRequest =
            parse_body(br#"{"prompt":"a b","max_tokens":6}"#).expect("parses");
        assert_eq!(param(v.completion(&req)), "max_tokens");
        let req: CompletionRequest =
            parse_body(br#"{"prompt":"a b","max_tokens":5}"#).expect("parses");
        assert_eq!(v.completion(&req).expect("fits").max_tokens, 5);
    }

    #[test]
    fn prompt_limits() {
        assert_eq!(param(completion(r#"{"prompt":""}"#)), "prompt");
        let long = vec!["w"; 20].join(" ");
        assert_eq!(
            param(completion(&format!(r#"{{"prompt":"{long}"}}"#))),
            "prompt"
        );
        assert_eq!(param(completion(r#"{"prompt":["a","b"]}"#)), "prompt");
        assert_eq!(param(completion(r#"{"prompt":[1,2,100]}"#)), "prompt");
        assert_eq!(
            completion(r#"{"prompt":[1,2,99]}"#)
                .expect("valid")
                .prompt_ids,
            vec![1, 2, 99]
        );
    }

    #[test]
    fn sampling_ranges_and_unsupported_options() {
        assert_eq!(
            param(completion(r#"{"prompt":"a","temperature":2.5}"#)),
            "temperature"
        );
        assert_eq!(
            param(completion(r#"{"prompt":"a","temperature":-0.1}"#)),
            "temperature"
        );
        assert_eq!(param(completion(r#"{"prompt":"a","top_p":0}"#)), "top_p");
        assert_eq!(param(completion(r#"{"prompt":"a","top_p":1.5}"#)), "top_p");
        assert_eq!(param(completion(r#"{"prompt":"a","n":0}"#)), "n");
        assert_eq!(param(completion(r#"{"prompt":"a","n":17}"#)), "n");
        assert_eq!(completion(r#"{"prompt":"a","n":3}"#).expect("valid").n, 3);
        assert_eq!(
            param(completion(r#"{"prompt":"a","best_of":3}"#)),
            "best_of"
        );
        assert!(completion(r#"{"prompt":"a","n":3,"best_of":3}"#).is_ok());
        assert_eq!(
            param(completion(r#"{"prompt":"a","echo":true,"logprobs":1}"#)),
            "echo"
        );
        assert_eq!(
            completion(r#"{"prompt":"a bb","echo":true}"#)
                .expect("valid")
                .echo
                .as_deref(),
            Some("a bb")
        );
        assert_eq!(
            param(completion(r#"{"prompt":"a","logprobs":21}"#)),
            "logprobs"
        );
        assert_eq!(
            param(completion(r#"{"prompt":"a","logprobs":"yes"}"#)),
            "logprobs"
        );
        assert_eq!(
            param(chat(
                r#"{"messages":[{"role":"user","content":"a"}],"top_logprobs":2}"#
            )),
            "top_logprobs"
        );
        assert_eq!(
            param(chat(
                r#"{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":-1}"#
            )),
            "top_logprobs"
        );
        assert_eq!(
            completion(r#"{"prompt":"a","logprobs":2}"#)
                .expect("valid")
                .logprobs,
            Some(2)
        );
        assert_eq!(
            chat(
                r#"{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":5}"#
            )
            .expect("valid")
            .logprobs,
            Some(5)
        );
        assert_eq!(
            chat(r#"{"messages":[{"role":"user","content":"a"}],"logprobs":false}"#)
                .expect("valid")
                .logprobs,
            None
        );
        assert_eq!(
            param(completion(r#"{"prompt":"a","priority":9999999999}"#)),
            "priority"
        );
        assert!(completion(r#"{"prompt":"a","n":1,"logprobs":null}"#).is_ok());
    }

    #[test]
    fn unsupported_parameters_are_refused_unless_neutral() {
        for (extra, field) in [
            (
                r#""response_format":{"type":"json_object"}"#,
                "response_format",
            ),
            (r#""tools":[{"type":"function"}]"#, "tools"),
            (r#""tool_choice":"required""#, "tool_choice"),
            (r#""suffix":"end""#, "suffix"),
        ] {
            let body = format!(r#"{{"prompt":"a",{extra}}}"#);
            assert_eq!(param(completion(&body)), field, "{body}");
        }
        let neutral = r#"{"prompt":"a","presence_penalty":0,"frequency_penalty":0.0,"logit_bias":{},"top_logprobs":0,"response_format":{"type":"text"},"tools":[],"tool_choice":"none","suffix":"","functions":null}"#;
        assert!(completion(neutral).is_ok());
        assert_eq!(
            param(chat(
                r#"{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function"}],"tool_choice":"auto"}"#
            )),
            "tools"
        );
    }

    #[test]
    fn penalties_and_logit_bias_are_checked_and_passed_on() {
        for (extra, field) in [
            (r#""presence_penalty":2.5"#, "presence_penalty"),
            (r#""frequency_penalty":-3"#, "frequency_penalty"),
            (r#""repetition_penalty":0"#, "repetition_penalty"),
            (r#""repetition_penalty":2.5"#, "repetition_penalty"),
            (r#""logit_bias":{"100":1}"#, "logit_bias"),
            (r#""logit_bias":{"x":1}"#, "logit_bias"),
            (r#""logit_bias":{"5":-101}"#, "logit_bias"),
            (r#""logit_bias":{"5":"up"}"#, "logit_bias"),
            (r#""logit_bias":[1]"#, "logit_bias"),
        ] {
            let body = format!(r#"{{"prompt":"a",{extra}}}"#);
            assert_eq!(param(completion(&body)), field, "{body}");
        }
        let e = completion(r#"{"prompt":"a","presence_penalty":2.5}"#).expect_err("range");
        assert!(e.to_string().contains("[-2, 2]"), "{e}");
        let e = completion(r#"{"prompt":"a","logit_bias":{"100":1}}"#).expect_err("vocab");
        assert!(e.to_string().contains("vocabulary size 100"), "{e}");
        let v = completion(
            r#"{"prompt":"a","presence_penalty":0.5,"frequency_penalty":-1,"repetition_penalty":1.2,"logit_bias":{"99":-100,"7":2.5}}"#,
        )
        .expect("valid");
        assert_eq!(
            v.sampling.logit_adjustments,
            LogitAdjustments {
                logit_bias: vec![(7, 2.5), (99, -100.0)],
                presence_penalty: 0.5,
                frequency_penalty: -1.0,
                repetition_penalty: 1.2,
            }
        );
        let v = chat(r#"{"messages":[{"role":"user","content":"a"}],"frequency_penalty":0.3}"#)
            .expect("valid");
        assert_eq!(v.sampling.logit_adjustments.frequency_penalty, 0.3);
    }

    #[test]
    fn a_list_of_one_token_list_is_that_prompt() {
        assert_eq!(
            completion(r#"{"prompt":[[1,2,3]]}"#)
                .expect("valid")
                .prompt_ids,
            vec![1, 2, 3]
        );
        let e = completion(r#"{"prompt":[[1],[2]]}"#).expect_err("batched");
        assert_eq!(e.body().error.param.as_deref(), Some("prompt"));
        assert!(e.to_string().contains("batched"), "{e}");
        assert_eq!(param(completion(r#"{"prompt":[[1,200]]}"#)), "prompt");
    }

    #[test]
    fn stop_limits() {
        assert_eq!(
            param(completion(r#"{"prompt":"a","stop":["a","b","c","d","e"]}"#)),
            "stop"
        );
        assert_eq!(param(completion(r#"{"prompt":"a","stop":""}"#)), "stop");
    }

    #[test]
    fn unknown_model_is_404() {
        let e = completion(r#"{"model":"gpt-9","prompt":"a"}"#).expect_err("unknown model");
        assert_eq!(e.status(), axum::http::StatusCode::NOT_FOUND);
        assert_eq!(e.body().error.param.as_deref(), Some("model"));
    }

    #[test]
    fn chat_messages_are_checked() {
        assert_eq!(param(chat(r#"{"messages":[]}"#)), "messages");
        assert_eq!(
            param(chat(
                r#"{"messages":[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]}"#
            )),
            "messages[1].role"
        );
        assert_eq!(
            param(chat(r#"{"messages":[{"role":"user"}]}"#)),
            "messages[0].content"
        );
        assert_eq!(
            param(chat(
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#
            )),
            "messages[0].content[0]"
        );
        let v = chat(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#)
            .expect("valid");
        // ChatML of one user turn, split on whitespace by the toy tokenizer.
        assert_eq!(
            v.prompt_ids,
            Words
                .encode(&render_chatml(&[("user".into(), "hi".into())]), false)
                .expect("encodes")
        );
    }
}
