//! Open-loop arrival process, as `vllm bench serve` generates it: inter-arrival gaps drawn from a
//! gamma distribution with shape = burstiness and mean = 1/rate (burstiness 1 is a Poisson process;
//! < 1 burstier, > 1 more regular). Rate infinity sends everything at t = 0. The first request is
//! sent at t = 0 and each later one after one gap. Deterministic given the RNG seed.
use rand::Rng;
use rand_distr::{Distribution, Gamma};

use crate::error::BenchError;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalProcess {
    /// Mean arrival rate in requests per second; `f64::INFINITY` sends all at once.
    pub rate_per_s: f64,
    /// Gamma shape of the inter-arrival gaps (coefficient of variation = 1/sqrt(burstiness)).
    pub burstiness: f64,
}

impl ArrivalProcess {
    /// Validates the parameters.
    pub fn new(rate_per_s: f64, burstiness: f64) -> Result<Self, BenchError> {
        if rate_per_s.is_nan() || rate_per_s <= 0.0 {
            return Err(BenchError::InvalidArgument {
                flag: "rate",
                message: format!("must be > 0 (or inf), got {rate_per_s}"),
            });
        }
        if !burstiness.is_finite() || burstiness <= 0.0 {
            return Err(BenchError::InvalidArgument {
                flag: "burstiness",
                message: format!("must be a finite number > 0, got {burstiness}"),
            });
        }
        Ok(Self {
            rate_per_s,
            burstiness,
        })
    }

    /// Arrival offsets in seconds from the start of the run, non-decreasing, first one 0.
    pub fn offsets_s<R: Rng + ?Sized>(&self, n_requests: usize, rng: &mut R) -> Vec<f64> {
        if self.rate_per_s.is_infinite() {
            return vec![0.0; n_requests];
        }
        let scale_s = 1.0 / (self.rate_per_s * self.burstiness);
        // Parameters were validated in `new`: shape > 0 and scale > 0 are finite.
        let gamma = Gamma::new(self.burstiness, scale_s).expect("validated gamma parameters");
        let mut now_s = 0.0;
        let mut offsets = Vec::with_capacity(n_requests);
        for i in 0..n_requests {
            if i > 0 {
                now_s += gamma.sample(rng);
            }
            offsets.push(now_s);
        }
        offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gaps(process: ArrivalProcess, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let offsets = process.offsets_s(n, &mut rng);
        assert_eq!(offsets[0], 0.0);
        offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_and_cv(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate_and_cv_one() {
        let process = ArrivalProcess::new(4.0, 1.0).unwrap();
        let (mean, cv) = mean_and_cv(&gaps(process, 200_001, 7));
        // 200k samples: standard error of the mean is 0.25/sqrt(2e5) ~ 0.00056 s.
        assert!((mean - 0.25).abs() < 0.005, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.02, "cv {cv}");
    }

    #[test]
    fn gamma_burstiness_sets_the_coefficient_of_variation() {
        for (burstiness, seed) in [(0.25, 1), (4.0, 2)] {
            let process = ArrivalProcess::new(10.0, burstiness).unwrap();
            let (mean, cv) = mean_and_cv(&gaps(process, 200_001, seed));
            let expected_cv = 1.0 / f64::sqrt(burstiness);
            assert!(
                (mean - 0.1).abs() < 0.003,
                "burstiness {burstiness}: mean {mean}"
            );
            assert!(
                (cv - expected_cv).abs() < 0.05 * expected_cv,
                "burstiness {burstiness}: cv {cv}, expected {expected_cv}"
            );
        }
    }

    #[test]
    fn infinite_rate_sends_everything_at_zero() {
        let process = ArrivalProcess::new(f64::INFINITY, 1.0).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(process.offsets_s(5, &mut rng), vec![0.0; 5]);
    }

    #[test]
    fn same_seed_same_arrivals() {
        let process = ArrivalProcess::new(2.0, 0.5).unwrap();
        let a = process.offsets_s(100, &mut ChaCha8Rng::seed_from_u64(42));
        let b = process.offsets_s(100, &mut ChaCha8Rng::seed_from_u64(42));
        let c = process.offsets_s(100, &mut ChaCha8Rng::seed_from_u64(43));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bad_parameters_are_rejected_with_the_flag_named() {
        for (rate, burst, flag) in [
            (0.0, 1.0, "rate"),
            (f64::NAN, 1.0, "rate"),
            (1.0, 0.0, "burstiness"),
        ] {
            match ArrivalProcess::new(rate, burst) {
                Err(BenchError::InvalidArgument { flag: f, .. }) => assert_eq!(f, flag),
                other => panic!("expected InvalidArgument for {flag}, got {other:?}"),
            }
        }
    }
}
