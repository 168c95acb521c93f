//! Arrival processes: Poisson, or gamma-distributed inter-arrival gaps for bursty traffic (as
//! `vllm bench serve --burstiness`: shape k, coefficient of variation 1/sqrt(k); k = 1 is Poisson,
//! k < 1 burstier, k > 1 more regular).
//!
//! The simulator and the benchmark client draw from the same process but in two ways, each kept
//! exactly as it was so that fixed seeds still give the same numbers:
//!
//! - [`ArrivalProcess::unit_rate_times_s`] (the simulator): arrivals drawn at rate 1 once and
//!   scaled by 1/rate with [`scale_to_rate`], so a load sweep replays the same arrival pattern at
//!   every load (common random numbers: differences between loads are not noise). The first
//!   request arrives after one gap.
//! - [`ArrivalProcess::offsets_s`] (the benchmark client): gaps drawn at the requested rate, the
//!   first request sent at t = 0, and rate infinity sending everything at once.

use rand::Rng;
use rand_distr::{Distribution, Exp1, Gamma};

/// A rejected arrival parameter; each message names the bad value.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum ArrivalError {
    /// The gamma shape must be a finite number > 0.
    #[error("invalid burstiness: must be a finite number > 0, got {burstiness}")]
    Burstiness { burstiness: f64 },
    /// A rate to scale unit-rate arrivals by must be finite and > 0.
    #[error("invalid rate: must be a positive number of requests per second, got {rate_per_s}")]
    Rate { rate_per_s: f64 },
    /// An open-loop send rate must be > 0; infinity (send all at once) is allowed.
    #[error("invalid rate: must be > 0 requests per second (or inf), got {rate_per_s}")]
    OpenLoopRate { rate_per_s: f64 },
    /// Rate and shape together give no gamma distribution (e.g. a scale that overflows).
    #[error(
        "no gamma distribution with shape {shape} and scale {scale_s} s (rate {rate_per_s} per s)"
    )]
    Gamma {
        shape: f64,
        scale_s: f64,
        rate_per_s: f64,
    },
}

/// Inter-arrival time distribution, without a rate: the rate is given where times are drawn,
/// because the simulator sweeps it over one draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalProcess {
    Poisson,
    /// Gamma inter-arrivals with this shape (CV = 1/sqrt(shape)).
    Gamma {
        shape: f64,
    },
}

impl ArrivalProcess {
    /// `burstiness` is the gamma shape; exactly 1 is Poisson.
    pub fn from_burstiness(burstiness: f64) -> Result<Self, ArrivalError> {
        if !(burstiness > 0.0 && burstiness.is_finite()) {
            return Err(ArrivalError::Burstiness { burstiness });
        }
        Ok(if burstiness == 1.0 {
            ArrivalProcess::Poisson
        } else {
            ArrivalProcess::Gamma { shape: burstiness }
        })
    }

    /// The gamma shape (1 for Poisson).
    pub fn burstiness(&self) -> f64 {
        match *self {
            ArrivalProcess::Poisson => 1.0,
            ArrivalProcess::Gamma { shape } => shape,
        }
    }

    /// Coefficient of variation of the inter-arrival times.
    pub fn cv(&self) -> f64 {
        match self {
            ArrivalProcess::Poisson => 1.0,
            ArrivalProcess::Gamma { shape } => 1.0 / shape.sqrt(),
        }
    }

    /// Cumulative arrival times of `count` requests at rate 1 (mean gap 1 s); the first request
    /// arrives after one gap. Poisson gaps are drawn from `Exp1` directly (not as a gamma of
    /// shape 1, which consumes the generator differently), and a `Gamma` whose shape rand_distr
    /// rejects falls back to Poisson gaps: both as the simulator always drew them, so its output
    /// on a fixed seed does not change.
    pub fn unit_rate_times_s<R: Rng + ?Sized>(&self, count: usize, rng: &mut R) -> Vec<f64> {
        let gamma = match *self {
            ArrivalProcess::Gamma { shape } => Gamma::new(shape, 1.0 / shape).ok(),
            ArrivalProcess::Poisson => None,
        };
        let mut t_s = 0.0;
        (0..count)
            .map(|_| {
                let gap_s: f64 = match &gamma {
                    Some(g) => g.sample(rng),
                    None => Exp1.sample(rng),
                };
                t_s += gap_s;
                t_s
            })
            .collect()
    }

    /// Send offsets in seconds from the start of an open-loop run at `rate_per_s`: non-decreasing,
    /// the first one 0 (a benchmark should not idle before its first request), each later one
    /// after one gamma gap of mean 1/rate. Rate infinity sends everything at t = 0.
    pub fn offsets_s<R: Rng + ?Sized>(
        &self,
        rate_per_s: f64,
        count: usize,
        rng: &mut R,
    ) -> Result<Vec<f64>, ArrivalError> {
        validate_open_loop_rate(rate_per_s)?;
        if rate_per_s.is_infinite() {
            return Ok(vec![0.0; count]);
        }
        let shape = self.burstiness();
        let scale_s = 1.0 / (rate_per_s * shape);
        let gamma = Gamma::new(shape, scale_s).map_err(|_| ArrivalError::Gamma {
            shape,
            scale_s,
            rate_per_s,
        })?;
        let mut now_s = 0.0;
        let mut offsets_s = Vec::with_capacity(count);
        for i in 0..count {
            if i > 0 {
                now_s += gamma.sample(rng);
            }
            offsets_s.push(now_s);
        }
        Ok(offsets_s)
    }
}

/// Checks an open-loop send rate before any work is built, so a bad `--rate` is reported even for
/// workloads (traces) that bring their own arrival times.
pub fn validate_open_loop_rate(rate_per_s: f64) -> Result<(), ArrivalError> {
    if rate_per_s.is_nan() || rate_per_s <= 0.0 {
        return Err(ArrivalError::OpenLoopRate { rate_per_s });
    }
    Ok(())
}

/// Scales unit-rate arrival times to `rate_per_s` requests per second.
pub fn scale_to_rate(unit_times_s: &[f64], rate_per_s: f64) -> Result<Vec<f64>, ArrivalError> {
    if !(rate_per_s > 0.0 && rate_per_s.is_finite()) {
        return Err(ArrivalError::Rate { rate_per_s });
    }
    Ok(unit_times_s.iter().map(|t| t / rate_per_s).collect())
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

    fn offsets(process: ArrivalProcess, rate_per_s: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        process
            .offsets_s(rate_per_s, n, &mut rng)
            .expect("valid rate")
    }

    fn process(burstiness: f64) -> ArrivalProcess {
        ArrivalProcess::from_burstiness(burstiness).expect("valid burstiness")
    }

    #[test]
    fn poisson_and_gamma_gaps_have_unit_mean_and_the_right_cv() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (process, cv) in [
            (ArrivalProcess::Poisson, 1.0),
            (ArrivalProcess::Gamma { shape: 0.25 }, 2.0),
            (ArrivalProcess::Gamma { shape: 4.0 }, 0.5),
        ] {
            let (m, c) = mean_cv(&gaps(&process.unit_rate_times_s(200_000, &mut rng)));
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

    #[test]
    fn poisson_offsets_have_mean_one_over_rate_and_cv_one() {
        let o = offsets(process(1.0), 4.0, 200_001, 7);
        assert_eq!(o[0], 0.0);
        let (mean, cv) = mean_cv(&o.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>());
        // 200k samples: standard error of the mean is 0.25/sqrt(2e5) ~ 0.00056 s.
        assert!((mean - 0.25).abs() < 0.005, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.02, "cv {cv}");
    }

    #[test]
    fn gamma_burstiness_sets_the_coefficient_of_variation_of_offsets() {
        for (burstiness, seed) in [(0.25, 1), (4.0, 2)] {
            let o = offsets(process(burstiness), 10.0, 200_001, seed);
            assert_eq!(o[0], 0.0);
            let (mean, cv) = mean_cv(&o.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>());
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
        assert_eq!(offsets(process(1.0), f64::INFINITY, 5, 0), vec![0.0; 5]);
    }

    #[test]
    fn same_seed_same_offsets() {
        let a = offsets(process(0.5), 2.0, 100, 42);
        assert_eq!(a, offsets(process(0.5), 2.0, 100, 42));
        assert_ne!(a, offsets(process(0.5), 2.0, 100, 43));
    }

    #[test]
    fn bad_parameters_are_rejected_and_the_message_names_the_value() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for rate_per_s in [0.0, -2.0, f64::NAN] {
            let err = process(1.0)
                .offsets_s(rate_per_s, 3, &mut rng)
                .expect_err("bad rate");
            assert!(matches!(err, ArrivalError::OpenLoopRate { .. }), "{err:?}");
            assert!(err.to_string().contains(&rate_per_s.to_string()), "{err}");
        }
        for burstiness in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = ArrivalProcess::from_burstiness(burstiness).expect_err("bad burstiness");
            assert!(matches!(err, ArrivalError::Burstiness { .. }), "{err:?}");
            assert!(err.to_string().contains(&burstiness.to_string()), "{err}");
        }
        let err = scale_to_rate(&[1.0], f64::INFINITY).expect_err("infinite scale");
        assert_eq!(
            err.to_string(),
            "invalid rate: must be a positive number of requests per second, got inf"
        );
        // A shape no gamma takes is an error here, not a panic.
        assert!(matches!(
            ArrivalProcess::Gamma { shape: -1.0 }.offsets_s(1.0, 3, &mut rng),
            Err(ArrivalError::Gamma { .. })
        ));
    }

    /// The simulator's arrivals as its own module computed them before this crate existed
    /// (Exp1 for Poisson, Gamma(shape, 1/shape) otherwise, cumulated, then divided by the rate).
    fn old_sim_times(burstiness: f64, count: usize, rate_per_s: f64, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let gamma = (burstiness != 1.0).then(|| Gamma::new(burstiness, 1.0 / burstiness).unwrap());
        let mut t = 0.0;
        let unit: Vec<f64> = (0..count)
            .map(|_| {
                let gap: f64 = match &gamma {
                    Some(g) => g.sample(&mut rng),
                    None => Exp1.sample(&mut rng),
                };
                t += gap;
                t
            })
            .collect();
        unit.iter().map(|t| t / rate_per_s).collect()
    }

    /// The benchmark client's offsets as its own module computed them before this crate existed
    /// (Gamma(burstiness, 1/(rate * burstiness)), first request at 0).
    fn old_bench_offsets(burstiness: f64, count: usize, rate_per_s: f64, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let gamma = Gamma::new(burstiness, 1.0 / (rate_per_s * burstiness)).unwrap();
        let mut now = 0.0;
        (0..count)
            .map(|i| {
                if i > 0 {
                    now += gamma.sample(&mut rng);
                }
                now
            })
            .collect()
    }

    #[test]
    fn both_callers_get_bit_for_bit_what_their_old_code_drew() {
        for (burstiness, rate_per_s, seed) in [(1.0, 3.7, 1), (0.5, 0.9, 2), (4.0, 12.0, 3)] {
            let p = process(burstiness);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let sim =
                scale_to_rate(&p.unit_rate_times_s(500, &mut rng), rate_per_s).expect("valid rate");
            assert_eq!(sim, old_sim_times(burstiness, 500, rate_per_s, seed));
            assert_eq!(
                offsets(p, rate_per_s, 500, seed),
                old_bench_offsets(burstiness, 500, rate_per_s, seed)
            );
        }
        // Values printed by the two old modules on these seeds (ChaCha8, seed 5, rate 2).
        let sim = scale_to_rate(
            &process(1.0).unit_rate_times_s(3, &mut ChaCha8Rng::seed_from_u64(5)),
            2.0,
        )
        .expect("valid rate");
        assert_eq!(sim, PINNED_SIM_POISSON_SEED5_RATE2);
        assert_eq!(
            offsets(process(0.5), 2.0, 3, 5),
            PINNED_BENCH_BURSTINESS_HALF_SEED5_RATE2
        );
    }

    const PINNED_SIM_POISSON_SEED5_RATE2: [f64; 3] =
        [0.22041259612725883, 0.3178606596769977, 1.1675821969841809];
    const PINNED_BENCH_BURSTINESS_HALF_SEED5_RATE2: [f64; 3] =
        [0.0, 0.05750602984801848, 0.6882398532605104];
}
