//! A request's scheduling state: identity, progress, attained service, acceptance statistics and
//! the perceptibility test of LAPS-SD. Changed only by the [`crate::Scheduler`].

use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}

/// Request identifier, unique within one scheduler.
pub type RequestId = u64;

/// Map keyed by request id. Ids are small integers chosen by the caller, so the fast non-keyed
/// Fx hash replaces SipHash: these maps are touched several times per request per step, and
/// SipHash was ~30% of a 100k-request simulation's time.
pub type IdMap<V> = rustc_hash::FxHashMap<RequestId, V>;
/// Set of request ids (see [`IdMap`]).
pub type IdSet = rustc_hash::FxHashSet<RequestId>;

/// What a caller submits: everything the scheduler may know about a request at arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub id: RequestId,
    /// Arrival time in seconds on the caller's clock.
    pub arrival_s: f64,
    /// Prompt length in tokens (the prefill).
    pub prompt_tokens: u32,
    /// Upper bound on generated tokens (the request may stop earlier on EOS / stop strings).
    pub max_tokens: u32,
    /// Client priority, lower runs first (vLLM's convention). `None` = default (0).
    pub priority: Option<i32>,
    /// Predicted total output length in tokens, if a predictor was consulted at arrival.
    pub predicted_output_tokens: Option<u32>,
    /// Whether length-aware policies may treat `max_tokens` as a bound on the output length (the
    /// default, and true of real traffic). Benchmarks that force exact lengths (`ignore_eos` with
    /// `max_tokens` = the target length) turn it off so `max_tokens` does not leak the true length.
    #[serde(default = "default_true")]
    pub max_tokens_bounds_prediction: bool,
    /// True output length in tokens. Simulator only (the `oracle` policy reads it); the server
    /// never sets it.
    #[serde(default)]
    pub true_output_tokens: Option<u32>,
    /// True (latent) per-token acceptance probability of the draft model. Simulator only (the
    /// `oracle` policy reads it; without it the oracle uses the measured rate).
    #[serde(default)]
    pub true_acceptance_rate: Option<f64>,
}

impl RequestSpec {
    /// A spec with no priority, no prediction and no simulator-only truth; set the optional
    /// fields with struct update syntax or the `with_*` methods.
    pub fn new(id: RequestId, arrival_s: f64, prompt_tokens: u32, max_tokens: u32) -> Self {
        Self {
            id,
            arrival_s,
            prompt_tokens,
            max_tokens,
            priority: None,
            predicted_output_tokens: None,
            max_tokens_bounds_prediction: true,
            true_output_tokens: None,
            true_acceptance_rate: None,
        }
    }
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
    pub fn with_predicted_output_tokens(mut self, tokens: u32) -> Self {
        self.predicted_output_tokens = Some(tokens);
        self
    }
    /// Whether `max_tokens` may bound predictions (see the field).
    pub fn with_max_tokens_bounds_prediction(mut self, bounds: bool) -> Self {
        self.max_tokens_bounds_prediction = bounds;
        self
    }
    pub fn with_truth(mut self, output_tokens: u32, acceptance_rate: Option<f64>) -> Self {
        self.true_output_tokens = Some(output_tokens);
        self.true_acceptance_rate = acceptance_rate;
        self
    }
    /// Client priority with the default (0) filled in; lower runs first.
    pub fn priority_or_default(&self) -> i32 {
        self.priority.unwrap_or(0)
    }
}

/// Why a request left the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// Hit `max_tokens`.
    Length,
    /// End-of-sequence token or a stop string.
    Stop,
    /// The client went away or asked to cancel.
    Cancelled,
    /// It can never fit in the KV budget (prompt + max_tokens + lookahead > budget).
    NeverFits,
}

/// Lifecycle of a request. Changed in one place: the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestPhase {
    /// Arrived, never run; its prompt is not prefilled.
    Waiting,
    /// In the batch of the last scheduled step.
    Running,
    /// Was running, not in the current batch. `kv_resident` says whether its KV cache is kept
    /// (resume is free) or was freed (resume recomputes the prefill of prompt + generated tokens).
    Preempted {
        kv_resident: bool,
    },
    Finished(FinishReason),
}

/// The acceptance-rate stability test that makes a request *perceptible* (LAPS-SD, Algorithm 1:
/// "when a request's acceptance rate becomes stable"). The paper does not give the test; ours:
/// after at least `min_steps` SD steps, the running acceptance rate moved by less than `epsilon`
/// (absolute) over the last `window` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StabilityRule {
    pub min_steps: u32,
    pub window: u32,
    pub epsilon: f64,
}

impl Default for StabilityRule {
    fn default() -> Self {
        Self {
            min_steps: 8,
            window: 4,
            epsilon: 0.05,
        }
    }
}

/// Per-request acceptance statistics, updated after every SD step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceTracker {
    /// SD steps taken after the prefill that drafted at least one token (the scheduler records
    /// only those; steps whose drafter proposed nothing are plain decoding).
    pub sd_steps: u32,
    /// Draft tokens proposed, in total.
    pub drafted_tokens: u64,
    /// Draft tokens accepted, in total.
    pub accepted_tokens: u64,
    /// `drafted_per_position[i]`: steps whose draft had a token at position i (0-based).
    pub drafted_per_position: Vec<u64>,
    /// `accepted_per_position[i]`: steps that accepted the draft token at position i.
    pub accepted_per_position: Vec<u64>,
    /// Acceptance rate (accepted / drafted) after each of the last `window + 1` steps, oldest first.
    pub recent_rates: std::collections::VecDeque<f64>,
}

impl AcceptanceTracker {
    /// Records one SD step that proposed `drafted` tokens and accepted the first `accepted`.
    pub fn record_step(&mut self, drafted: u32, accepted: u32, window: u32) {
        debug_assert!(accepted <= drafted);
        self.sd_steps += 1;
        self.drafted_tokens += u64::from(drafted);
        self.accepted_tokens += u64::from(accepted);
        let k = drafted as usize;
        if self.drafted_per_position.len() < k {
            self.drafted_per_position.resize(k, 0);
            self.accepted_per_position.resize(k, 0);
        }
        for i in 0..k {
            self.drafted_per_position[i] += 1;
            if i < accepted as usize {
                self.accepted_per_position[i] += 1;
            }
        }
        if let Some(rate) = self.acceptance_rate() {
            self.recent_rates.push_back(rate);
            while self.recent_rates.len() > window as usize + 1 {
                self.recent_rates.pop_front();
            }
        }
    }

    /// Accepted / drafted so far; `None` before any draft token.
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.drafted_tokens > 0).then(|| self.accepted_tokens as f64 / self.drafted_tokens as f64)
    }

    /// Mean tokens produced per SD step (accepted + the target's one), `None` before any step.
    pub fn mean_accepted_length(&self) -> Option<f64> {
        (self.sd_steps > 0).then(|| {
            (self.accepted_tokens + u64::from(self.sd_steps)) as f64 / f64::from(self.sd_steps)
        })
    }

    /// The stability test of [`StabilityRule`].
    pub fn is_stable(&self, rule: &StabilityRule) -> bool {
        if self.sd_steps < rule.min_steps || self.recent_rates.len() <= rule.window as usize {
            return false;
        }
        let (lo, hi) = self
            .recent_rates
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            });
        hi - lo < rule.epsilon
    }
}

/// Everything the scheduler knows about one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestState {
    pub spec: RequestSpec,
    pub phase: RequestPhase,
    /// Output tokens generated so far.
    pub generated_tokens: u32,
    /// Whether the prompt has been prefilled (and the KV is resident or was once).
    pub prefilled: bool,
    /// Context tokens whose KV an unfinished (chunked) prefill or recompute has computed so far;
    /// 0 when no prefill is under way. A prompt longer than the step budget is prefilled in
    /// chunks across steps, and this is where the next chunk starts.
    #[serde(default)]
    pub prefill_progress_tokens: u32,
    /// Attained service in target forward passes (prefill counts as one).
    pub attained_service_passes: u64,
    /// Attained service in seconds of step time (a batched step's time counts fully for each member).
    pub attained_service_s: f64,
    pub acceptance: AcceptanceTracker,
    /// LAPS-SD: set once the acceptance rate is stable; never cleared.
    pub perceptible: bool,
    /// Time the request became perceptible, if it did.
    pub perceptible_at_s: Option<f64>,
    /// Time of its first generated token.
    pub first_token_s: Option<f64>,
    /// Time it was first put in a batch (the `now_s` of that `schedule` call): the end of its
    /// queueing time.
    #[serde(default)]
    pub first_scheduled_s: Option<f64>,
    /// Times it was preempted (removed from the batch while unfinished).
    pub preemptions: u32,
    /// Times its KV was freed and the prefill recomputed.
    pub recomputes: u32,
    /// Last time it was in a batch (for aging / starvation bounds).
    pub last_scheduled_s: f64,
}

impl RequestState {
    pub fn new(spec: RequestSpec) -> Self {
        let arrival_s = spec.arrival_s;
        Self {
            spec,
            phase: RequestPhase::Waiting,
            generated_tokens: 0,
            prefilled: false,
            prefill_progress_tokens: 0,
            attained_service_passes: 0,
            attained_service_s: 0.0,
            acceptance: AcceptanceTracker::default(),
            perceptible: false,
            perceptible_at_s: None,
            first_token_s: None,
            first_scheduled_s: None,
            preemptions: 0,
            recomputes: 0,
            last_scheduled_s: arrival_s,
        }
    }

    pub fn id(&self) -> RequestId {
        self.spec.id
    }

    /// Tokens the KV cache holds (or will hold after prefill): prompt + generated.
    pub fn context_tokens(&self) -> u32 {
        self.spec.prompt_tokens + self.generated_tokens
    }

    /// Tokens still allowed before `max_tokens`.
    pub fn remaining_max_tokens(&self) -> u32 {
        self.spec.max_tokens.saturating_sub(self.generated_tokens)
    }

    /// Whether its next step must (re)compute its KV: never prefilled, preempted with its KV
    /// freed, or in the middle of a chunked prefill.
    pub fn needs_prefill(&self) -> bool {
        !self.prefilled
            || self.prefill_progress_tokens > 0
            || matches!(self.phase, RequestPhase::Preempted { kv_resident: false })
    }

    /// Context tokens its (re)prefill still has to compute (0 when it needs none).
    pub fn prefill_remaining_tokens(&self) -> u32 {
        if self.needs_prefill() {
            self.context_tokens()
                .saturating_sub(self.prefill_progress_tokens)
        } else {
            0
        }
    }

    /// Predicted total output tokens: the prediction, else `max_tokens`.
    pub fn predicted_output_tokens(&self) -> u32 {
        self.spec
            .predicted_output_tokens
            .unwrap_or(self.spec.max_tokens)
    }

    /// Predicted tokens still to generate, at least 1 (a request that outgrew its prediction is
    /// predicted to be about to finish unless a predictor re-predicts it). Bounded by `max_tokens`
    /// unless the spec says `max_tokens` must not inform predictions.
    pub fn predicted_remaining_tokens(&self) -> u32 {
        let predicted = self.predicted_output_tokens();
        let bounded = if self.spec.max_tokens_bounds_prediction {
            predicted.min(self.spec.max_tokens)
        } else {
            predicted
        };
        bounded.saturating_sub(self.generated_tokens).max(1)
    }

    /// Speculation length of its next decode step: `min(k, remaining_max_tokens - 1)` (never
    /// draft past `max_tokens`).
    pub fn step_speculation_length(&self, speculation_length: u32) -> u32 {
        speculation_length.min(self.remaining_max_tokens().saturating_sub(1))
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, RequestPhase::Finished(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_per_position_and_rates() {
        let mut t = AcceptanceTracker::default();
        t.record_step(4, 2, 4);
        t.record_step(4, 4, 4);
        assert_eq!(t.sd_steps, 2);
        assert_eq!(t.drafted_tokens, 8);
        assert_eq!(t.accepted_tokens, 6);
        assert_eq!(t.accepted_per_position, vec![2, 2, 1, 1]);
        assert_eq!(t.drafted_per_position, vec![2, 2, 2, 2]);
        assert_eq!(t.acceptance_rate(), Some(0.75));
        assert_eq!(t.mean_accepted_length(), Some(4.0));
    }

    #[test]
    fn stability_needs_min_steps_and_a_flat_window() {
        let rule = StabilityRule {
            min_steps: 3,
            window: 2,
            epsilon: 0.01,
        };
        let mut t = AcceptanceTracker::default();
        t.record_step(4, 4, rule.window);
        t.record_step(4, 0, rule.window);
        assert!(!t.is_stable(&rule));
        for _ in 0..200 {
            t.record_step(4, 2, rule.window);
        }
        assert!(t.is_stable(&rule));
    }

    #[test]
    fn max_tokens_bounds_predictions_unless_the_spec_says_not() {
        let spec = RequestSpec::new(1, 0.0, 10, 20).with_predicted_output_tokens(100);
        assert_eq!(
            RequestState::new(spec.clone()).predicted_remaining_tokens(),
            20
        );
        let blind = spec.with_max_tokens_bounds_prediction(false);
        assert_eq!(RequestState::new(blind).predicted_remaining_tokens(), 100);
        // A spec serialized before the field existed keeps the bound.
        let old = r#"{"id":1,"arrival_s":0.0,"prompt_tokens":10,"max_tokens":20,"priority":null,"predicted_output_tokens":100}"#;
        let spec: RequestSpec = serde_json::from_str(old).expect("parses");
        assert!(spec.max_tokens_bounds_prediction);
    }
}
