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
    ModelList, ModelObject,
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

/// Output collected for a non-streaming response.
struct Collected {
    text: String,
    logprobs: Vec<LogprobEntry>,
    info: FinishedInfo,
}

async fn collect(mut rx: mpsc::UnboundedReceiver<ResponseEvent>) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut all_logprobs = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            ResponseEvent::Text {
                text: t,
                logprobs,
            } => {
                text.push_str(&t);
                all_logprobs.extend(logprobs);
            }
            ResponseEvent::Finished(info) => {
                return Ok(Collected {
                    text,
                    logprobs: all_logprobs,
                    info: *info,
                })
            }
            ResponseEvent::Error(e) => return Err(e),
        }
    }
    Err(ApiError::Internal {
        detail: "the engine worker dropped a request without finishing it".into(),
    })
}

/// Waits for the first event so that an error before any output is a plain HTTP error.
async fn first_event(
    rx: &mut mpsc::UnboundedReceiver<ResponseEvent>,
) -> Result<ResponseEvent, ApiError> {
    match rx.recv().await {
        Some(ResponseEvent::Error(e)) => Err(e),
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

/// Turns worker events into SSE events with `to_events`, then `data: [DONE]` after the terminal
/// event. The receiver lives in the stream: a client that goes away drops it, which cancels the
/// request in the worker.
fn sse_stream<F>(
    first: ResponseEvent,
    rx: mpsc::UnboundedReceiver<ResponseEvent>,
    mut to_events: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnMut(ResponseEvent) -> Vec<Event> + Send + 'static,
{
    let events = stream::unfold(
        (Some(first), rx, false),
        |(first, mut rx, done)| async move {
            if done {
                return None;
            }
            let event = match first {
                Some(e) => Some(e),
                None => rx.recv().await,
            };
            let terminal = !matches!(event, Some(ResponseEvent::Text { .. }));
            Some((event, (None, rx, terminal)))
        },
    );
    events
        .map(move |event| {
            let terminal = !matches!(event, Some(ResponseEvent::Text { .. }));
            let mut out = match event {
                Some(ResponseEvent::Error(e)) => {
                    tracing::warn!(kind = e.kind(), "stream ended with an error");
                    vec![json_event(&e.body())]
                }
                Some(e) => to_events(e),
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
    let (stream, include_usage) = (valid.stream, valid.include_usage);
    let with_logprobs = valid.logprobs.is_some();
    let mut rx = state.submit(valid, permit)?;
    let id = state.response_id("cmpl");
    let created = unix_now_s();
    let model = state.validator.card.name.clone();
    if !stream {
        let done = collect(rx).await?;
        return Ok(Json(CompletionResponse {
            id,
            object: "text_completion".into(),
            created,
            model,
            choices: vec![CompletionChoice {
                index: 0,
                text: done.text,
                logprobs: with_logprobs.then(|| completion_logprobs(&done.logprobs, &mut 0)),
                finish_reason: Some(done.info.finish_reason.to_string()),
            }],
            usage: Some(done.info.usage),
            metrics: Some(done.info.metrics),
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
    // Offsets of the streamed tokens continue from chunk to chunk.
    let mut text_offset = 0usize;
    let to_events = move |event: ResponseEvent| match event {
        ResponseEvent::Text { text, logprobs } => vec![json_event(&chunk(
            vec![CompletionChoice {
                index: 0,
                text,
                logprobs: with_logprobs.then(|| completion_logprobs(&logprobs, &mut text_offset)),
                finish_reason: None,
            }],
            None,
            None,
        ))],
        ResponseEvent::Finished(info) => {
            let mut events = vec![json_event(&chunk(
                vec![CompletionChoice {
                    index: 0,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: Some(info.finish_reason.to_string()),
                }],
                None,
                Some(info.metrics.clone()),
            ))];
            if include_usage {
                events.push(json_event(&chunk(Vec::new(), Some(info.usage), None)));
            }
            events
        }
        ResponseEvent::Error(e) => vec![json_event(&e.body())],
    };
    Ok(Sse::new(sse_stream(first, rx, to_events))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let permit = state.take_slot()?;
    let valid = state.validate(req, Validator::chat).await?;
    let (stream, include_usage) = (valid.stream, valid.include_usage);
    let with_logprobs = valid.logprobs.is_some();
    let mut rx = state.submit(valid, permit)?;
    let id = state.response_id("chatcmpl");
    let created = unix_now_s();
    let model = state.validator.card.name.clone();
    if !stream {
        let done = collect(rx).await?;
        return Ok(Json(ChatCompletionResponse {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: done.text,
                },
                logprobs: with_logprobs.then(|| chat_logprobs(&done.logprobs)),
                finish_reason: Some(done.info.finish_reason.to_string()),
            }],
            usage: done.info.usage,
            metrics: done.info.metrics,
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
    let delta = |delta: ChatDelta, logprobs: Option<serde_json::Value>, finish_reason| {
        ChatChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason,
        }
    };
    let mut sent_role = false;
    let to_events = move |event: ResponseEvent| {
        let mut events = Vec::new();
        if !sent_role {
            // OpenAI's first chunk carries the role.
            sent_role = true;
            let role = ChatDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            };
            events.push(json_event(&chunk(vec![delta(role, None, None)], None, None)));
        }
        match event {
            ResponseEvent::Text { text, logprobs } => {
                let d = ChatDelta {
                    role: None,
                    content: Some(text),
                };
                let logprobs = with_logprobs.then(|| chat_logprobs(&logprobs));
                events.push(json_event(&chunk(vec![delta(d, logprobs, None)], None, None)));
            }
            ResponseEvent::Finished(info) => {
                let last = delta(
                    ChatDelta::default(),
                    None,
                    Some(info.finish_reason.to_string()),
                );
                events.push(json_event(&chunk(
                    vec![last],
                    None,
                    Some(info.metrics.clone()),
                )));
                if include_usage {
                    events.push(json_event(&chunk(Vec::new(), Some(info.usage), None)));
                }
            }
            ResponseEvent::Error(e) => events.push(json_event(&e.body())),
        }
        events
    };
    Ok(Sse::new(sse_stream(first, rx, to_events))
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
    let item = |token: &str, logprob: f32| {
        serde_json::json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
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
