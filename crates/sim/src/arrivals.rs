//! Arrival processes: Poisson, or gamma-distributed inter-arrival times for bursty traffic (as
//! `vllm bench serve --burstiness`: shape k, coefficient of variation 1/sqrt(k); k = 1 is Poisson).
//!
//! Arrivals are drawn at unit rate once and scaled by 1/rate, so a load sweep replays the same
//! arrival pattern at every load (common random numbers: differences between loads are not noise).

use rand::Rng;
use rand_distr::{Distribution, Exp1, Gamma};
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// Inter-arrival time distribution (mean 1 before scaling).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ArrivalProcess {
    Poisson,
    /// Gamma inter-arrivals with this shape (CV = 1/sqrt(shape)).
    Gamma {
        shape: f64,
    },
}

impl ArrivalProcess {
    /// `burstiness` is the gamma shape; exactly 1 is Poisson.
    pub fn from_burstiness(burstiness: f64) -> Result<Self, SimError> {
        if !(burstiness > 0.0 && burstiness.is_finite()) {
            return Err(SimError::InvalidArgument {
                field: "burstiness",
                reason: format!("must be a positive number, got {burstiness}"),
            });
        }
        Ok(if burstiness == 1.0 {
            ArrivalProcess::Poisson
        } else {
            ArrivalProcess::Gamma { shape: burstiness }
        })
    }

    /// Coefficient of variation of the inter-arrival times.
    pub fn cv(&self) -> f64 {
        match self {
            ArrivalProcess::Poisson => 1.0,
            ArrivalProcess::Gamma { shape } => 1.0 / shape.sqrt(),
        }
    }

    /// Cumulative arrival times of `count` requests at rate 1 (mean gap 1 s); the first request
    /// arrives after one gap.
    pub fn unit_rate_times<R: Rng + ?Sized>(&self, count: usize, rng: &mut R) -> Vec<f64> {
        let gamma = match *self {
            ArrivalProcess::Gamma { shape } => Gamma::new(shape, 1.0 / shape).ok(),
            ArrivalProcess::Poisson => None,
        };
        let mut t = 0.0;
        (0..count)
            .map(|_| {
                let gap: f64 = match &gamma {
                    Some(g) => g.sample(rng),
                    None => Exp1.sample(rng),
                };
                t += gap;
                t
            })
            .collect()
    }
}

/// Scales unit-rate arrival times to `rate_rps` requests per second.
pub fn scale_to_rate(unit_times: &[f64], rate_rps: f64) -> Result<Vec<f64>, SimError> {
    if !(rate_rps > 0.0 && rate_rps.is_finite()) {
        return Err(SimError::InvalidArgument {
            field: "rate",
            reason: format!("must be a positive number of requests per second, got {rate_rps}"),
        });
    }
    Ok(unit_times.iter().map(|t| t / rate_rps).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gaps(times: &[f64]) -> Vec<f64> {
        let mut prev = 0.0;
        times
            .iter()
            .map(|&t| {
                let g = t - prev;
                prev = t;
                g
            })
            .collect()
    }

    fn mean_cv(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let v = x.iter().map(|g| (g - m) * (g - m)).sum::<f64>() / (n - 1.0);
        (m, v.sqrt() / m)
    }

    #[test]
    fn poisson_and_gamma_gaps_have_unit_mean_and_the_right_cv() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (process, cv) in [
            (ArrivalProcess::Poisson, 1.0),
            (ArrivalProcess::Gamma { shape: 0.25 }, 2.0),
            (ArrivalProcess::Gamma { shape: 4.0 }, 0.5),
        ] {
            let (m, c) = mean_cv(&gaps(&process.unit_rate_times(200_000, &mut rng)));
            // SE of the mean is cv/sqrt(n) <= 0.0045; of the CV a few times that.
            assert!((m - 1.0).abs() < 0.02, "{process:?}: mean {m}");
            assert!((c - cv).abs() < 0.05 * cv, "{process:?}: cv {c} vs {cv}");
            assert!((process.cv() - cv).abs() < 1e-12);
        }
    }

    #[test]
    fn scaling_divides_by_the_rate_and_rejects_bad_rates() {
        let t = scale_to_rate(&[1.0, 3.0], 2.0).expect("valid rate");
        assert_eq!(t, vec![0.5, 1.5]);
        assert!(scale_to_rate(&[1.0], 0.0).is_err());
        assert!(ArrivalProcess::from_burstiness(-1.0).is_err());
        assert_eq!(
            ArrivalProcess::from_burstiness(1.0).expect("valid"),
            ArrivalProcess::Poisson
        );
    }
}
