//! Output-length prediction in the simulator: a noisy oracle (true length times log-normal error,
//! drawn once per request so every policy sees the same prediction), or the core's online
//! predictor learnt from finished requests (`lapsd_core::OnlineQuantilePredictor`, attached to the
//! scheduler). Results always say which one was used.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::workload::SimRequest;

/// Which predictor informs the policies that use predicted lengths (sjf, srpt, trail, laps-sd).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum PredictorChoice {
    /// `round(true * exp(sigma * Z))`, Z ~ N(0, 1), at least 1. sigma = 0 is a perfect predictor;
    /// the default 0.5 means the prediction is within a factor 1.65 of the truth ~68% of the time
    /// (a rough stand-in for the learnt length predictors of SSJF / learning-to-rank; assumption).
    NoisyOracle { sigma: f64 },
    /// `lapsd_core::OnlineQuantilePredictor`: conditional median of finished lengths per
    /// prompt-length bucket; `prior_tokens` before anything finished, `window` observations kept.
    Online { prior_tokens: u32, window: usize },
}

impl PredictorChoice {
    /// Label for reports.
    pub fn label(&self) -> String {
        match self {
            PredictorChoice::NoisyOracle { sigma } => format!("noisy-oracle(sigma={sigma})"),
            PredictorChoice::Online { .. } => "online-quantile".to_string(),
        }
    }
}

/// Fills `predicted_output_tokens` of every request for the noisy oracle (clears it for the online
/// predictor, which predicts inside the scheduler, starting from a served trace's
/// `served_predicted_output_tokens` where there is one).
pub fn assign_predictions<R: Rng + ?Sized>(
    requests: &mut [SimRequest],
    predictor: &PredictorChoice,
    rng: &mut R,
) {
    for r in requests.iter_mut() {
        r.predicted_output_tokens = match *predictor {
            PredictorChoice::NoisyOracle { sigma } => {
                let z: f64 = StandardNormal.sample(rng);
                let p = (f64::from(r.size.output_tokens) * (sigma * z).exp()).round();
                Some(p.clamp(1.0, f64::from(u32::MAX)) as u32)
            }
            PredictorChoice::Online { .. } => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::RequestSize;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn req(output_tokens: u32) -> SimRequest {
        SimRequest {
            id: 0,
            arrival_s: 0.0,
            size: RequestSize {
                prompt_tokens: 10,
                output_tokens,
                acceptance_rate: 0.5,
                draft_length: None,
            },
            max_tokens: 4096,
            predicted_output_tokens: None,
            served_predicted_output_tokens: None,
        }
    }

    #[test]
    fn sigma_zero_is_exact_and_noise_is_lognormal() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut reqs = vec![req(200); 20_000];
        assign_predictions(
            &mut reqs,
            &PredictorChoice::NoisyOracle { sigma: 0.0 },
            &mut rng,
        );
        assert!(reqs.iter().all(|r| r.predicted_output_tokens == Some(200)));
        assign_predictions(
            &mut reqs,
            &PredictorChoice::NoisyOracle { sigma: 0.5 },
            &mut rng,
        );
        let logs: Vec<f64> = reqs
            .iter()
            .map(|r| (f64::from(r.predicted_output_tokens.unwrap_or(1)) / 200.0).ln())
            .collect();
        let n = logs.len() as f64;
        let mean = logs.iter().sum::<f64>() / n;
        let sd = (logs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.02, "mean log error {mean}");
        assert!((sd - 0.5).abs() < 0.02, "sd of log error {sd}");
        assign_predictions(
            &mut reqs,
            &PredictorChoice::Online {
                prior_tokens: 100,
                window: 10,
            },
            &mut rng,
        );
        // The online predictor clears the oracle's draws (they come from the true lengths).
        assert!(reqs.iter().all(|r| r.predicted_output_tokens.is_none()));
    }
}
