//! Latency statistics, computed exactly from the sorted samples (no histogram buckets): mean,
//! median and percentiles with linear interpolation between closest ranks (numpy's default, which
//! `vllm bench serve` uses), and goodput under SLOs as vLLM defines it.
use serde::{Deserialize, Serialize};

/// Summary of one latency metric, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: usize,
    pub mean_ms: f64,
    pub median_ms: f64,
    /// Sample standard deviation (n - 1 denominator); 0 for fewer than two samples.
    pub std_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises samples given in milliseconds; `None` when there are none (or only NaNs).
    pub fn from_ms(samples_ms: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples_ms.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self {
            count: n,
            mean_ms: mean,
            median_ms: percentile_sorted(&sorted, 50.0),
            std_ms: std,
            p90_ms: percentile_sorted(&sorted, 90.0),
            p99_ms: percentile_sorted(&sorted, 99.0),
            min_ms: sorted[0],
            max_ms: sorted[n - 1],
        })
    }
}

/// The `q`-th percentile (0..=100) of ascending `sorted` values, linearly interpolated between the
/// two closest ranks: rank = q/100 * (n - 1). Panics on an empty slice (callers check).
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (q / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = rank.ceil() as usize;
    let fraction = rank - lower as f64;
    sorted[lower] + (sorted[upper] - sorted[lower]) * fraction
}

/// Service-level objectives for goodput; a request meets them when every given bound holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Upper bound on time to first token.
    pub ttft_ms: Option<f64>,
    /// Upper bound on time per output token.
    pub tpot_ms: Option<f64>,
}

impl Slo {
    /// Whether any bound is set (goodput is reported only then).
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some()
    }

    /// Whether a successful request with these latencies meets every bound. A request with one
    /// output token has no TPOT; it meets a TPOT bound trivially (vLLM counts its TPOT as 0).
    pub fn is_met(&self, ttft_ms: f64, tpot_ms: Option<f64>) -> bool {
        let ttft_ok = !matches!(self.ttft_ms, Some(bound) if ttft_ms > bound);
        let tpot_ok = !matches!(self.tpot_ms, Some(bound) if tpot_ms.unwrap_or(0.0) > bound);
        ttft_ok && tpot_ok
    }
}

/// Goodput: requests per second that completed successfully and met the SLO.
pub fn goodput_per_s(slo: &Slo, successes: &[(f64, Option<f64>)], duration_s: f64) -> f64 {
    if duration_s <= 0.0 {
        return 0.0;
    }
    let good = successes
        .iter()
        .filter(|(ttft_ms, tpot_ms)| slo.is_met(*ttft_ms, *tpot_ms))
        .count();
    good as f64 / duration_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 10.0];
        // numpy.percentile([1,2,3,4,10], q): 50 -> 3.0, 90 -> 7.6, 99 -> 9.76, 25 -> 2.0
        assert_eq!(percentile_sorted(&sorted, 50.0), 3.0);
        assert!((percentile_sorted(&sorted, 90.0) - 7.6).abs() < 1e-12);
        assert!((percentile_sorted(&sorted, 99.0) - 9.76).abs() < 1e-12);
        assert_eq!(percentile_sorted(&sorted, 25.0), 2.0);
        assert_eq!(percentile_sorted(&sorted, 0.0), 1.0);
        assert_eq!(percentile_sorted(&sorted, 100.0), 10.0);
        assert_eq!(percentile_sorted(&[5.0], 99.0), 5.0);
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let s = LatencySummary::from_ms(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.mean_ms, 2.5);
        assert_eq!(s.median_ms, 2.5);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 4.0);
        // sample std of 1,2,3,4 = sqrt(5/3)
        assert!((s.std_ms - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.p99_ms - 3.97).abs() < 1e-12);
        assert!(LatencySummary::from_ms(&[]).is_none());
    }

    #[test]
    fn goodput_counts_only_requests_meeting_every_bound() {
        let slo = Slo {
            ttft_ms: Some(100.0),
            tpot_ms: Some(20.0),
        };
        let successes = [
            (50.0, Some(10.0)),  // good
            (150.0, Some(10.0)), // ttft too slow
            (50.0, Some(30.0)),  // tpot too slow
            (100.0, None),       // one token: good (boundary ttft included)
        ];
        assert_eq!(goodput_per_s(&slo, &successes, 2.0), 1.0);
        let ttft_only = Slo {
            ttft_ms: Some(100.0),
            tpot_ms: None,
        };
        assert_eq!(goodput_per_s(&ttft_only, &successes, 1.0), 3.0);
        assert!(!Slo::default().is_set());
        assert_eq!(goodput_per_s(&Slo::default(), &successes, 4.0), 1.0);
    }
}
