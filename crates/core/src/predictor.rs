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
/// A prediction costs O(window) (a copy and a linear-time selection).
#[derive(Debug, Clone)]
pub struct OnlineQuantilePredictor {
    pub prior_tokens: u32,
    pub window: usize,
    buckets: Vec<std::collections::VecDeque<u32>>,
    global: std::collections::VecDeque<u32>,
}

/// Fewest conditional observations a window needs before its median is trusted.
pub const MIN_OBSERVATIONS: usize = 8;

impl OnlineQuantilePredictor {
    pub fn new(prior_tokens: u32, window: usize) -> Self {
        Self {
            prior_tokens,
            window: window.max(1),
            buckets: vec![std::collections::VecDeque::new(); 33],
            global: std::collections::VecDeque::new(),
        }
    }

    /// Bucket of a prompt length: 0 for 0, else 1 + floor(log2(len)).
    fn bucket(prompt_tokens: u32) -> usize {
        (u32::BITS - prompt_tokens.leading_zeros()) as usize
    }

    /// Median of the observations above `generated_tokens`, if there are enough.
    fn conditional_median(
        window: &std::collections::VecDeque<u32>,
        generated_tokens: u32,
    ) -> Option<u32> {
        let mut above: Vec<u32> = window
            .iter()
            .copied()
            .filter(|&o| o > generated_tokens)
            .collect();
        if above.len() < MIN_OBSERVATIONS {
            return None;
        }
        let mid = above.len() / 2;
        let (_, median, _) = above.select_nth_unstable(mid);
        Some(*median)
    }

    fn push(window: &mut std::collections::VecDeque<u32>, value: u32, cap: usize) {
        window.push_back(value);
        while window.len() > cap {
            window.pop_front();
        }
    }
}

impl LengthPredictor for OnlineQuantilePredictor {
    fn name(&self) -> &str {
        "online-quantile"
    }
    fn predict_output_tokens(&self, prompt_tokens: u32, generated_tokens: u32) -> u32 {
        let floor = generated_tokens.saturating_add(1);
        Self::conditional_median(&self.buckets[Self::bucket(prompt_tokens)], generated_tokens)
            .or_else(|| Self::conditional_median(&self.global, generated_tokens))
            .unwrap_or(self.prior_tokens)
            .max(floor)
    }
    fn observe(&mut self, prompt_tokens: u32, output_tokens: u32) {
        let cap = self.window;
        Self::push(
            &mut self.buckets[Self::bucket(prompt_tokens)],
            output_tokens,
            cap,
        );
        Self::push(&mut self.global, output_tokens, cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_until_enough_observations() {
        let mut p = OnlineQuantilePredictor::new(100, 64);
        assert_eq!(p.predict_output_tokens(10, 0), 100);
        assert_eq!(
            p.predict_output_tokens(10, 150),
            151,
            "never below generated + 1"
        );
        for _ in 0..(MIN_OBSERVATIONS - 1) {
            p.observe(10, 20);
        }
        assert_eq!(p.predict_output_tokens(10, 0), 100);
        p.observe(10, 20);
        assert_eq!(p.predict_output_tokens(10, 0), 20);
    }

    #[test]
    fn conditional_median_per_bucket_with_global_fallback() {
        let mut p = OnlineQuantilePredictor::new(100, 64);
        // Bucket of prompts 8..16: outputs 10, 20, ..., 160.
        for i in 1..=16 {
            p.observe(12, 10 * i);
        }
        assert_eq!(p.predict_output_tokens(9, 0), 90);
        // Conditional on 100 generated: the 6 observations above are too few, the global window
        // (the same 16) too: prior, floored at 101.
        assert_eq!(p.predict_output_tokens(9, 100), 101);
        // Conditional on 50: 110..160 above... plus 60..100: 11 values, median 110.
        assert_eq!(p.predict_output_tokens(9, 50), 110);
        // Another bucket falls back to the global window.
        assert_eq!(p.predict_output_tokens(1000, 0), 90);
    }

    #[test]
    fn window_is_bounded() {
        let mut p = OnlineQuantilePredictor::new(1, 8);
        for _ in 0..8 {
            p.observe(5, 1000);
        }
        for _ in 0..8 {
            p.observe(5, 10);
        }
        assert_eq!(p.predict_output_tokens(5, 0), 10);
    }
}
