//! HTTP routes (axum 0.8): `POST /v1/completions`, `POST /v1/chat/completions` (JSON or SSE with
//! `stream: true`, ending in `data: [DONE]`), `GET /v1/models`, `GET /v1/models/{id}`, `GET
//! /health`, `GET /metrics`, and OpenAI error bodies for unknown routes (404) and methods (405). Handlers take an admission slot (429 when none is
//! free), validate and tokenize on a blocking thread, hand the request to the engine worker and
//! relay its events; dropping the event receiver
//! (client gone) cancels the request in the worker.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::api::json::ApiJson;
use crate::api::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, CompletionChoice, CompletionRequest, CompletionResponse,
    ModelList, ModelObject, Usage,
};
use crate::edge::{self, BodyTimeout, EdgeState, HttpConfig};
use crate::engine_worker::WorkerCommand;
use crate::error::{ApiError, ServerError};
use crate::inflight::{FinishedInfo, GenerateCommand, LogprobEntry, ResponseEvent};
use crate::metrics::Metrics;
use crate::validation::{ValidRequest, Validator};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub validator: Validator,
    pub commands_tx: mpsc::Sender<WorkerCommand>,
    /// One permit per request in the server (waiting, running or preempted): `--max-queue`.
    pub admission: Arc<Semaphore>,
    pub max_queue: usize,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins: new requests get 503, /health reports it.
    pub shutting_down: Arc<AtomicBool>,
    /// Unix time the server started (`created` of the model object).
    pub created_unix_s: u64,
    pub start: Instant,
    pub next_response_id: Arc<AtomicU64>,
    /// `/metrics` also exports vLLM's names for the load gauges (`--metrics-compat vllm`).
    pub metrics_compat_vllm: bool,
}

/// The routes behind the edge guard (host, shutdown, API key, body checks), with the body limit
/// and read timeout the JSON extractor applies, and CORS outermost when origins are configured
/// (a browser's preflight carries no API key, so it must be answered before the guard).
pub fn router(state: AppState, edge: EdgeState, http: &HttpConfig) -> Result<Router, ServerError> {
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        // `*` so that a served name containing `/` (org/model) is one id.
        .route("/v1/models/{*id}", get(model_by_id))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .layer(Extension(BodyTimeout(Duration::from_secs_f64(
            http.body_timeout_s,
        ))))
        .layer(middleware::from_fn_with_state(edge, edge::guard));
    Ok(match edge::cors_layer(&http.cors_origins)? {
        Some(cors) => app.layer(cors),
        None => app,
    })
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    fn response_id(&self, prefix: &str) -> String {
        let n = self.next_response_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.created_unix_s)
    }

    fn queue_full(&self) -> ApiError {
        self.metrics
            .requests_rejected
            .with_label_values(&["queue_full"])
            .inc();
        ApiError::QueueFull {
            max_queue: self.max_queue,
        }
    }

    /// Takes an admission slot (429 when none is left) before any work is done for the request,
    /// so that `--max-queue` also bounds how many prompts are being tokenized.
    fn take_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::ShuttingDown);
        }
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.queue_full())
    }

    /// Validates (tokenizing) on a blocking thread: a long prompt takes the tokenizer a while,
    /// which must not hold a thread of the HTTP runtime.
    async fn validate<R: Send + 'static>(
        &self,
        req: R,
        validate: fn(&Validator, &R) -> Result<ValidRequest, ApiError>,
    ) -> Result<ValidRequest, ApiError> {
        let validator = self.validator.clone();
        tokio::task::spawn_blocking(move || validate(&validator, &req))
            .await
            .map_err(|e| ApiError::Internal {
                detail: format!("validation task failed: {e}"),
            })?
    }

    /// Hands one command per choice (`n`) to the worker, each holding an admission slot (the
    /// handler's `permit` is the first; 429 if the others are not free), and merges their
    /// events into one receiver tagged with the choice index. Choice i of a seeded request
    /// samples with `seed + i`, so that the choices differ. Dropping the receiver cancels every
    /// choice.
    fn submit_choices(
        &self,
        request: ValidRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<mpsc::UnboundedReceiver<ChoiceEvent>, ApiError> {
        let mut permits = vec![permit];
        for _ in 1..request.n {
            permits.push(self.take_slot()?);
        }
        let (merged_tx, merged_rx) = mpsc::unbounded_channel();
        for (index, permit) in (0u32..).zip(permits) {
            let mut choice = request.clone();
            choice.sampling.seed = request
                .sampling
                .seed
                .map(|seed| seed.wrapping_add(u64::from(index)));
            let mut events = self.submit(choice, permit)?;
            let merged_tx = merged_tx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        event = events.recv() => match event {
                            Some(event) => {
                                if merged_tx.send((index, event)).is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                        // The client left: drop `events`, which cancels the choice.
                        () = merged_tx.closed() => break,
                    }
                }
            });
        }
        Ok(merged_rx)
    }

    /// Hands the validated request and its admission slot to the worker.
    fn submit(
        &self,
        request: ValidRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<mpsc::UnboundedReceiver<ResponseEvent>, ApiError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::ShuttingDown);
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let cmd = GenerateCommand {
            request,
            events_tx,
            permit,
            received_at: Instant::now(),
        };
        // Counted before the send, so that the worker never takes a request the gauge has not
        // counted yet.
        self.metrics.request_submitted();
        let sent = self
            .commands_tx
            .try_send(WorkerCommand::Generate(Box::new(cmd)));
        if sent.is_err() {
            self.metrics.request_not_submitted();
        }
        match sent {
            Ok(()) => Ok(events_rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.queue_full()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::ShuttingDown),
        }
    }
}

/// A request's events from all of its choices (`n`), tagged with the choice index.
type ChoiceEvent = (u32, ResponseEvent);

/// One choice's output, collected for a non-streaming response.
struct Collected {
    text: String,
    logprobs: Vec<LogprobEntry>,
    info: FinishedInfo,
}

/// Waits until every one of the `n` choices has finished (or one fails).
async fn collect(
    mut rx: mpsc::UnboundedReceiver<ChoiceEvent>,
    n: u32,
) -> Result<Vec<Collected>, ApiError> {
    let mut texts = vec![String::new(); n as usize];
    let mut logprobs: Vec<Vec<LogprobEntry>> = vec![Vec::new(); n as usize];
    let mut infos: Vec<Option<FinishedInfo>> = vec![None; n as usize];
    let mut finished = 0;
    let lost = || ApiError::Internal {
        detail: "the engine worker dropped a request without finishing it".into(),
    };
    while let Some((index, event)) = rx.recv().await {
        let i = index as usize;
        match event {
            ResponseEvent::Text {
                text,
                logprobs: entries,
            } => {
                texts.get_mut(i).ok_or_else(lost)?.push_str(&text);
                logprobs.get_mut(i).ok_or_else(lost)?.extend(entries);
            }
            ResponseEvent::Finished(info) => {
                *infos.get_mut(i).ok_or_else(lost)? = Some(*info);
                finished += 1;
                if finished == n {
                    return texts
                        .into_iter()
                        .zip(logprobs)
                        .zip(infos)
                        .map(|((text, logprobs), info)| {
                            Ok(Collected {
                                text,
                                logprobs,
                                info: info.ok_or_else(lost)?,
                            })
                        })
                        .collect();
                }
            }
            ResponseEvent::Error(e) => return Err(e),
        }
    }
    Err(lost())
}

/// The request's usage over all its choices: the prompt once (as OpenAI counts it), the
/// completions summed.
fn total_usage<'a>(infos: impl IntoIterator<Item = &'a FinishedInfo>) -> Usage {
    let mut usage = Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    for info in infos {
        usage.prompt_tokens = info.usage.prompt_tokens;
        usage.completion_tokens += info.usage.completion_tokens;
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    usage
}

/// Waits for the first event so that an error before any output is a plain HTTP error.
async fn first_event(
    rx: &mut mpsc::UnboundedReceiver<ChoiceEvent>,
) -> Result<ChoiceEvent, ApiError> {
    match rx.recv().await {
        Some((_, ResponseEvent::Error(e))) => Err(e),
        Some(event) => Ok(event),
        None => Err(ApiError::Internal {
            detail: "the engine worker dropped a request before its first event".into(),
        }),
    }
}

fn json_event<T: serde::Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(s) => Event::default().data(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a stream chunk");
            Event::default().data(r#"{"error":{"message":"internal server error","type":"server_error","param":null,"code":null}}"#)
        }
    }
}

/// Turns worker events into SSE events with `to_events`, then `data: [DONE]` once all `n`
/// choices have finished (or after an error). The receiver lives in the stream: a client that
/// goes away drops it, which cancels every choice in the worker.
fn sse_stream<F>(
    first: ChoiceEvent,
    rx: mpsc::UnboundedReceiver<ChoiceEvent>,
    n: u32,
    mut to_events: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnMut(u32, ResponseEvent) -> Vec<Event> + Send + 'static,
{
    let events = stream::unfold(
        (Some(first), rx, 0u32, false),
        move |(first, mut rx, finished, done)| async move {
            if done {
                return None;
            }
            let event = match first {
                Some(e) => Some(e),
                None => rx.recv().await,
            };
            let finished =
                finished + u32::from(matches!(event, Some((_, ResponseEvent::Finished(_)))));
            let terminal = match &event {
                None | Some((_, ResponseEvent::Error(_))) => true,
                Some(_) => finished >= n,
            };
            Some(((event, terminal), (None, rx, finished, terminal)))
        },
    );
    events
        .map(move |(event, terminal)| {
            let mut out = match event {
                Some((_, ResponseEvent::Error(e))) => {
                    tracing::warn!(kind = e.kind(), "stream ended with an error");
                    vec![json_event(&e.body())]
                }
                Some((index, e)) => to_events(index, e),
                None => vec![json_event(
                    &ApiError::Internal {
                        detail: "the engine worker dropped a streaming request".into(),
                    }
                    .body(),
                )],
            };
            if terminal {
                out.push(Event::default().data("[DONE]"));
            }
            out
        })
        .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let permit = state.take_slot()?;
    let valid = state.validate(req, Validator::completion).await?;
    let (stream, include_usage, n) = (valid.stream, valid.include_usage, valid.n);
    let with_logprobs = valid.logprobs.is_some();
    let echo = valid.echo.clone();
    let mut rx = state.submit_choices(valid, permit)?;
    let id = state.response_id("cmpl");
    let created = unix_now_s();
    let model = state.validator.card.name.clone();
    if !stream {
        let done = collect(rx, n).await?;
        let usage = total_usage(done.iter().map(|c| &c.info));
        let metrics = done.first().map(|c| c.info.metrics.clone());
        let choices = done
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index: index as u32,
                text: match &echo {
                    Some(prompt) => format!("{prompt}{}", c.text),
                    None => c.text,
                },
                logprobs: with_logprobs.then(|| completion_logprobs(&c.logprobs, &mut 0)),
                finish_reason: Some(c.info.finish_reason.to_string()),
            })
            .collect();
        return Ok(Json(CompletionResponse {
            id,
            object: "text_completion".into(),
            created,
            model,
            choices,
            usage: Some(usage),
            metrics,
        })
        .into_response());
    }
    let first = first_event(&mut rx).await?;
    let chunk = move |choices: Vec<CompletionChoice>, usage, metrics| CompletionResponse {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        metrics,
    };
    // Per choice: where its next token's text starts, and whether the echoed prompt is still to
    // be sent (first, before any generated text).
    let mut text_offsets = vec![0usize; n as usize];
    let mut echo_pending = vec![echo.is_some(); n as usize];
    let mut finished: Vec<FinishedInfo> = Vec::new();
    let to_events = move |index: u32, event: ResponseEvent| {
        let i = index as usize;
        let mut events = Vec::new();
        let text_choice = |text: String, logprobs| CompletionChoice {
            index,
            text,
            logprobs,
            finish_reason: None,
        };
        if echo_pending.get(i).copied().unwrap_or(false) {
            echo_pending[i] = false;
            let prompt = echo.clone().unwrap_or_default();
            events.push(json_event(&chunk(
                vec![text_choice(prompt, None)],
                None,
                None,
            )));
        }
        match event {
            ResponseEvent::Text { text, logprobs } => {
                let logprobs = match text_offsets.get_mut(i) {
                    Some(offset) if with_logprobs => Some(completion_logprobs(&logprobs, offset)),
                    _ => None,
                };
                events.push(json_event(&chunk(
                    vec![text_choice(text, logprobs)],
                    None,
                    None,
                )));
            }
            ResponseEvent::Finished(info) => {
                events.push(json_event(&chunk(
                    vec![CompletionChoice {
                        index,
                        text: String::new(),
                        logprobs: None,
                        finish_reason: Some(info.finish_reason.to_string()),
                    }],
                    None,
                    Some(info.metrics.clone()),
                )));
                finished.push(*info);
                if include_usage && finished.len() == n as usize {
                    events.push(json_event(&chunk(
                        Vec::new(),
                        Some(total_usage(&finished)),
                        None,
                    )));
                }
            }
            ResponseEvent::Error(e) => events.push(json_event(&e.body())),
        }
        events
    };
    Ok(Sse::new(sse_stream(first, rx, n, to_events))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let permit = state.take_slot()?;
    let valid = state.validate(req, Validator::chat).await?;
    let (stream, include_usage, n) = (valid.stream, valid.include_usage, valid.n);
    let with_logprobs = valid.logprobs.is_some();
    let mut rx = state.submit_choices(valid, permit)?;
    let id = state.response_id("chatcmpl");
    let created = unix_now_s();
    let model = state.validator.card.name.clone();
    if !stream {
        let done = collect(rx, n).await?;
        let usage = total_usage(done.iter().map(|c| &c.info));
        let Some(metrics) = done.first().map(|c| c.info.metrics.clone()) else {
            return Err(ApiError::Internal {
                detail: "a request finished without choices".into(),
            });
        };
        let choices = done
            .into_iter()
            .enumerate()
            .map(|(index, c)| ChatChoice {
                index: index as u32,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: c.text,
                },
                logprobs: with_logprobs.then(|| chat_logprobs(&c.logprobs)),
                finish_reason: Some(c.info.finish_reason.to_string()),
            })
            .collect();
        return Ok(Json(ChatCompletionResponse {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices,
            usage,
            metrics,
        })
        .into_response());
    }
    let first = first_event(&mut rx).await?;
    let chunk = move |choices: Vec<ChatChunkChoice>, usage, metrics| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        metrics,
    };
    let delta = |index: u32,
                 delta: ChatDelta,
                 logprobs: Option<serde_json::Value>,
                 finish_reason| ChatChunkChoice {
        index,
        delta,
        logprobs,
        finish_reason,
    };
    let mut role_pending = vec![true; n as usize];
    let mut finished: Vec<FinishedInfo> = Vec::new();
    let to_events = move |index: u32, event: ResponseEvent| {
        let i = index as usize;
        let mut events = Vec::new();
        if role_pending.get(i).copied().unwrap_or(false) {
            // OpenAI's first chunk of each choice carries the role.
            role_pending[i] = false;
            let role = ChatDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            };
            events.push(json_event(&chunk(
                vec![delta(index, role, None, None)],
                None,
                None,
            )));
        }
        match event {
            ResponseEvent::Text { text, logprobs } => {
                let d = ChatDelta {
                    role: None,
                    content: Some(text),
                };
                let logprobs = with_logprobs.then(|| chat_logprobs(&logprobs));
                events.push(json_event(&chunk(
                    vec![delta(index, d, logprobs, None)],
                    None,
                    None,
                )));
            }
            ResponseEvent::Finished(info) => {
                let last = delta(
                    index,
                    ChatDelta::default(),
                    None,
                    Some(info.finish_reason.to_string()),
                );
                events.push(json_event(&chunk(
                    vec![last],
                    None,
                    Some(info.metrics.clone()),
                )));
                finished.push(*info);
                if include_usage && finished.len() == n as usize {
                    events.push(json_event(&chunk(
                        Vec::new(),
                        Some(total_usage(&finished)),
                        None,
                    )));
                }
            }
            ResponseEvent::Error(e) => events.push(json_event(&e.body())),
        }
        events
    };
    Ok(Sse::new(sse_stream(first, rx, n, to_events))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The completions API's `logprobs` object for `entries`; `text_offset` is where the first
/// token's text starts in the completion (in characters) and is advanced past the last one.
fn completion_logprobs(entries: &[LogprobEntry], text_offset: &mut usize) -> serde_json::Value {
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        offsets.push(*text_offset);
        *text_offset += e.token.chars().count();
    }
    serde_json::json!({
        "tokens": entries.iter().map(|e| e.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
        "top_logprobs": entries
            .iter()
            .map(|e| {
                e.top
                    .iter()
                    .map(|(t, l)| (t.clone(), serde_json::json!(l)))
                    .collect::<serde_json::Map<_, _>>()
            })
            .collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// The chat API's `logprobs` object (`content`: one entry per token, with its UTF-8 bytes).
fn chat_logprobs(entries: &[LogprobEntry]) -> serde_json::Value {
    let item = |token: &str, logprob: f32| serde_json::json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let content: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let mut v = item(&e.token, e.logprob);
            v["top_logprobs"] = e.top.iter().map(|(t, l)| item(t, *l)).collect();
            v
        })
        .collect();
    serde_json::json!({ "content": content })
}

impl AppState {
    fn model_object(&self) -> ModelObject {
        ModelObject {
            id: self.validator.card.name.clone(),
            object: "model".into(),
            created: self.created_unix_s,
            owned_by: "lapsd".into(),
            max_model_len: self.validator.card.context_length,
        }
    }
}

async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![state.model_object()],
    })
}

/// `GET /v1/models/{id}`: the model object, or 404 `model_not_found`.
async fn model_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    if id == state.validator.card.name {
        Ok(Json(state.model_object()))
    } else {
        Err(ApiError::ModelNotFound {
            requested: id,
            served: state.validator.card.name.clone(),
        })
    }
}

async fn health(State(state): State<AppState>) -> Response {
    if state.shutting_down.load(Ordering::Acquire) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "shutting_down"})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    state
        .metrics
        .uptime_s
        .set(state.start.elapsed().as_secs_f64());
    let mut text = state.metrics.render().map_err(|e| ApiError::Internal {
        detail: format!("rendering metrics: {e}"),
    })?;
    if state.metrics_compat_vllm {
        text.push_str(&state.metrics.render_vllm_compat(&state.validator.card.name));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
