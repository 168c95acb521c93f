//! Per-request state the engine worker keeps beside the scheduler's: the response channel, the
//! streaming detokenizer and stop-string matcher, and the timings and queue levels reported in
//! the final response. Also the events sent back to the HTTP handler.

use std::time::Instant;

use lapsd_core::{FinishReason, RequestState};
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;

use crate::api::openai::{RequestMetrics, SchedulingStats, SpecDecodeStats, Usage};
use crate::error::ApiError;
use crate::model_text::StopMatcher;
use crate::validation::ValidRequest;
use lapsd_engine::DecodeStream;

/// What the worker sends a handler about its request, in order: any number of `Text`, then
/// exactly one `Finished` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseEvent {
    /// New output text (never a broken UTF-8 character, never part of a stop string) and, when
    /// the request asked for them, the log probabilities of the tokens generated since the last
    /// event (a token's text may still be held back, e.g. as a possible stop-string prefix).
    Text {
        text: String,
        logprobs: Vec<LogprobEntry>,
    },
    Finished(Box<FinishedInfo>),
    Error(ApiError),
}

/// One generated token as the client sees it, with the target's log probability and its most
/// likely alternatives (OpenAI's `logprobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobEntry {
    /// The token's own text.
    pub token: String,
    pub logprob: f32,
    /// `(text, logprob)` of the most likely tokens, most likely first.
    pub top: Vec<(String, f32)>,
}

/// The end of a request: why, token counts, statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedInfo {
    /// OpenAI `finish_reason`: `stop` or `length`.
    pub finish_reason: &'static str,
    pub usage: Usage,
    pub metrics: RequestMetrics,
}

/// A request handed to the worker by a handler.
pub struct GenerateCommand {
    pub request: ValidRequest,
    /// Events for the handler; when the handler drops its end, the request is cancelled.
    pub events_tx: mpsc::UnboundedSender<ResponseEvent>,
    /// Admission slot, released when the worker forgets the request.
    pub permit: OwnedSemaphorePermit,
    pub received_at: Instant,
}

/// Worker-side state of one admitted request.
pub struct Inflight {
    pub events_tx: mpsc::UnboundedSender<ResponseEvent>,
    pub _permit: OwnedSemaphorePermit,
    pub prompt_tokens: u32,
    pub arrival_s: f64,
    pub decoder: DecodeStream,
    pub stop: StopMatcher,
    /// A stop string ended the output (nothing more is sent).
    pub stopped_by_string: bool,
    /// Tokens generated (up to and including the one that completed a stop string).
    pub completion_tokens: u32,
    /// When the step that produced its first token ended (its tokens are sent then).
    pub first_token_s: Option<f64>,
    /// Queue levels visited, in order of first visit.
    pub queue_levels: Vec<u32>,
    /// The `--length-model` prediction made at admission.
    pub text_predicted_output_tokens: Option<u32>,
}

impl Inflight {
    pub fn new(cmd: GenerateCommand, arrival_s: f64) -> Self {
        Self {
            prompt_tokens: cmd.request.prompt_ids.len() as u32,
            text_predicted_output_tokens: cmd.request.predicted_output_tokens,
            stop: StopMatcher::new(cmd.request.stop.clone()),
            events_tx: cmd.events_tx,
            _permit: cmd.permit,
            arrival_s,
            decoder: DecodeStream::new(),
            stopped_by_string: false,
            completion_tokens: 0,
            first_token_s: None,
            queue_levels: Vec::new(),
        }
    }

    /// Sends an event; a closed channel is noticed (and the request cancelled) by the worker's
    /// next disconnect check, so the error is ignored here.
    pub fn send(&self, event: ResponseEvent) {
        let _ = self.events_tx.send(event);
    }

    pub fn visit_level(&mut self, level: usize) {
        let level = u32::try_from(level).unwrap_or(u32::MAX);
        if !self.queue_levels.contains(&level) {
            self.queue_levels.push(level);
        }
    }

    /// The final statistics, from the scheduler's last state of the request.
    pub fn finished_info(&self, state: &RequestState, policy: &str, now_s: f64) -> FinishedInfo {
        let finish_reason = match state.phase {
            lapsd_core::RequestPhase::Finished(FinishReason::Length) if !self.stopped_by_string => {
                "length"
            }
            _ => "stop",
        };
        let acc = &state.acceptance;
        FinishedInfo {
            finish_reason,
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                total_tokens: self.prompt_tokens + self.completion_tokens,
            },
            metrics: RequestMetrics {
                speculative_decoding: SpecDecodeStats {
                    drafted_tokens: acc.drafted_tokens,
                    accepted_tokens: acc.accepted_tokens,
                    acceptance_rate: acc.acceptance_rate(),
                    mean_acceptance_length: acc.mean_accepted_length(),
                    verify_steps: acc.sd_steps,
                    accepted_per_position: acc.accepted_per_position.clone(),
                },
                scheduling: SchedulingStats {
                    policy: policy.to_string(),
                    queue_levels_visited: self.queue_levels.clone(),
                    attained_service_passes: state.attained_service_passes,
                    attained_service_s: state.attained_service_s,
                    perceptible: state.perceptible,
                    perceptible_at_s: state.perceptible_at_s.map(|t| t - self.arrival_s),
                    preemptions: state.preemptions,
                    recomputes: state.recomputes,
                    text_predicted_output_tokens: self.text_predicted_output_tokens,
                    ttft_s: self.first_token_s.map(|t| t - self.arrival_s),
                    e2e_s: now_s - self.arrival_s,
                    // From arrival to the start of its first step (TTFT also counts that step).
                    queue_time_s: state.first_scheduled_s.map(|t| t - self.arrival_s),
                },
            },
        }
    }
}
