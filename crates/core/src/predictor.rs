//! Output-length prediction. The simulator's noisy oracle lives in `lapsd-sim` (it needs the true
//! length and a RNG); here is the trait and the online predictor the server uses, learnt from
//! finished requests. Results always state which predictor was used.

/// Predicts a request's total output length in tokens.
pub trait LengthPredictor: Send {
    /// Short name for reports (e.g. `online-quantile`).
    fn name(&self) -> &str;
    /// Predicted total output tokens for a request with this prompt that has generated
    /// `generated_tokens` so far (a conditional prediction: never below `generated_tokens + 1`).
    fn predict_output_tokens(&self, prompt_tokens: u32, generated_tokens: u32) -> u32;
    /// Learns from a finished request.
    fn observe(&mut self, prompt_tokens: u32, output_tokens: u32);
}

/// Online predictor: per prompt-length bucket (powers of two), a bounded window of observed output
/// lengths; predicts the median of the observations that exceed what was already generated
/// (the conditional median), falling back to the global window, then to `prior_tokens`.
#[derive(Debug, Clone)]
pub struct OnlineQuantilePredictor {
    pub prior_tokens: u32,
    pub window: usize,
    buckets: Vec<std::collections::VecDeque<u32>>,
}

impl OnlineQuantilePredictor {
    pub fn new(prior_tokens: u32, window: usize) -> Self {
        Self {
            prior_tokens,
            window,
            buckets: vec![std::collections::VecDeque::new(); 33],
        }
    }
}

impl LengthPredictor for OnlineQuantilePredictor {
    fn name(&self) -> &str {
        "online-quantile"
    }
    fn predict_output_tokens(&self, _prompt_tokens: u32, _generated_tokens: u32) -> u32 {
        todo!("core helper: conditional median per prompt bucket")
    }
    fn observe(&mut self, _prompt_tokens: u32, _output_tokens: u32) {
        todo!("core helper")
    }
}
