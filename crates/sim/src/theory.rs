//! Single-server queueing formulas (Poisson arrivals, rate lambda) that the simulator is checked
//! against, evaluated for a discrete job-size distribution (the simulator's job sizes are whole
//! tokens times a step time, so integrals over the size distribution become exact sums):
//!
//! - M/M/1 FCFS: E[T] = 1 / (mu - lambda).
//! - M/G/1 FCFS (Pollaczek-Khinchine): E[T] = E[S] + lambda E[S^2] / (2 (1 - rho)).
//! - M/G/1 FB / LAS (Kleinrock, Queueing Systems vol. 2, 1976, sec. 4.6): a job of size x sees
//!   E[T(x)] = x / (1 - rho_x) + lambda m2_x / (2 (1 - rho_x)^2), where m1_x = E[min(S, x)],
//!   m2_x = E[min(S, x)^2], rho_x = lambda m1_x.
//! - M/G/1 SRPT (Schrage & Miller, 1966): E[T(x)] = W(x) + R(x),
//!   W(x) = lambda (int_0^x t^2 dF + x^2 (1 - F(x))) / (2 (1 - rho(x)) (1 - rho(x-))),
//!   R(x) = int_0^x dt / (1 - rho(t-)), rho(x) = lambda int_0^x t dF(t).
//!   For continuous F, rho(x-) = rho(x) and this is the textbook formula; with atoms, ties go
//!   first-come-first-served (a later job of the same size does not overtake), which is what the
//!   two factors express (for a single atom it reduces exactly to M/D/1 FCFS, as it must).
//! - M/G/1 Gittins (the optimal size-blind policy for mean response time: Gittins 1989; Aalto,
//!   Ayesta & Righter 2009), through the SOAP analysis (Scully, Harchol-Balter & Scheller-Wolf,
//!   "SOAP: One Clean Analysis of All Age-Based Scheduling Policies", 2018, Theorem 5.5) of its
//!   rank r(a) = min over n > a of E[min(S, n) - a | S > a] / P(S <= n | S > a): a job of size
//!   x waits W = lambda sum_i E[X_i^old[R]^2] / (2 (1 - rho_0^old[R]) (1 - rho_new[R])) with
//!   R = max rank over its ages, then resides sum over ages a of da / (1 - rho_new[worst rank
//!   from a on]); a new job counts until its rank first reaches R (ties favour the older job),
//!   an old one over every stretch of ages where its rank is at most R. Ages advance in quanta
//!   (one token) and the rank is held over each quantum, as the simulator decides at token
//!   boundaries.
//!
//! The simulator slices time at token granularity, so LAS is round-robin per token among equal
//! attained service (FB's processor sharing in the limit) and preemption happens at token
//! boundaries; with hundreds of tokens per job the difference is a fraction of a percent.

use crate::error::SimError;
use crate::workload::LengthDist;

/// A discrete job-size distribution: sizes in seconds, strictly increasing, with probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteDist {
    sizes_s: Vec<f64>,
    probs: Vec<f64>,
}

impl DiscreteDist {
    /// From (size, probability) pairs; probabilities are normalised to sum to 1.
    pub fn new(mut atoms: Vec<(f64, f64)>) -> Result<Self, SimError> {
        atoms.retain(|&(_, p)| p > 0.0);
        atoms.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = atoms.iter().map(|a| a.1).sum();
        let valid = !atoms.is_empty()
            && total.is_finite()
            && atoms.iter().all(|a| a.0 > 0.0 && a.0.is_finite())
            && atoms.windows(2).all(|w| w[0].0 < w[1].0);
        if !valid {
            return Err(SimError::InvalidArgument {
                field: "size distribution",
                reason: "needs positive, distinct sizes with positive probabilities".into(),
            });
        }
        Ok(Self {
            sizes_s: atoms.iter().map(|a| a.0).collect(),
            probs: atoms.iter().map(|a| a.1 / total).collect(),
        })
    }

    /// The distribution of `tokens * seconds_per_token` for a token-length distribution with a
    /// closed-form pmf (exponential / hyper-exponential lengths, constant). `None` for others.
    pub fn from_length_dist(dist: &LengthDist, seconds_per_token: f64) -> Option<Self> {
        // P(ceil(Exp(m)) > n) = exp(-n / m).
        let tail = |n: f64, mean: f64| (-n / mean).exp();
        let mixture: Vec<(f64, f64)> = match *dist {
            LengthDist::Constant(n) => {
                return Self::new(vec![(f64::from(n) * seconds_per_token, 1.0)]).ok()
            }
            LengthDist::Exponential { mean, .. } => vec![(1.0, mean)],
            LengthDist::HyperExponential {
                p_first,
                mean_first,
                mean_second,
                ..
            } => vec![(p_first, mean_first), (1.0 - p_first, mean_second)],
            LengthDist::LogNormal { .. } => return None,
        };
        let max = dist.max_tokens();
        let mut atoms = Vec::new();
        let mut n = 1u32;
        loop {
            let survive = |k: f64| mixture.iter().map(|&(w, m)| w * tail(k, m)).sum::<f64>();
            let before = survive(f64::from(n - 1));
            let after = survive(f64::from(n));
            // At the cap, all the remaining mass sits on `max`.
            let p = if n >= max { before } else { before - after };
            atoms.push((f64::from(n) * seconds_per_token, p));
            if n >= max || after < 1e-13 {
                break;
            }
            n += 1;
        }
        Self::new(atoms).ok()
    }

    pub fn mean_s(&self) -> f64 {
        self.sizes_s
            .iter()
            .zip(&self.probs)
            .map(|(s, p)| s * p)
            .sum()
    }

    pub fn second_moment_s2(&self) -> f64 {
        self.sizes_s
            .iter()
            .zip(&self.probs)
            .map(|(s, p)| s * s * p)
            .sum()
    }

    /// Squared coefficient of variation.
    pub fn scv(&self) -> f64 {
        let m = self.mean_s();
        self.second_moment_s2() / (m * m) - 1.0
    }
}

fn check_stable(lambda: f64, dist: &DiscreteDist) -> Result<f64, SimError> {
    let rho = lambda * dist.mean_s();
    if lambda > 0.0 && rho < 1.0 {
        Ok(rho)
    } else {
        Err(SimError::InvalidArgument {
            field: "lambda",
            reason: format!("load rho = {rho} must be in (0, 1)"),
        })
    }
}

/// M/M/1: 1 / (mu - lambda).
pub fn mm1_mean_latency_s(lambda: f64, mu: f64) -> Result<f64, SimError> {
    if lambda > 0.0 && lambda < mu {
        Ok(1.0 / (mu - lambda))
    } else {
        Err(SimError::InvalidArgument {
            field: "lambda",
            reason: format!("need 0 < lambda ({lambda}) < mu ({mu})"),
        })
    }
}

/// M/G/1 FCFS, Pollaczek-Khinchine mean response time.
pub fn pk_mean_latency_s(lambda: f64, dist: &DiscreteDist) -> Result<f64, SimError> {
    let rho = check_stable(lambda, dist)?;
    Ok(dist.mean_s() + lambda * dist.second_moment_s2() / (2.0 * (1.0 - rho)))
}

/// M/G/1 FB (least attained service), Kleinrock's formula averaged over job sizes.
pub fn fb_mean_latency_s(lambda: f64, dist: &DiscreteDist) -> Result<f64, SimError> {
    check_stable(lambda, dist)?;
    let (mut below1, mut below2, mut below_p) = (0.0, 0.0, 0.0);
    let mut total = 0.0;
    for (&x, &p) in dist.sizes_s.iter().zip(&dist.probs) {
        below1 += p * x;
        below2 += p * x * x;
        below_p += p;
        let tail = (1.0 - below_p).max(0.0);
        let m1 = below1 + x * tail;
        let m2 = below2 + x * x * tail;
        let rho_x = lambda * m1;
        let t = x / (1.0 - rho_x) + lambda * m2 / (2.0 * (1.0 - rho_x).powi(2));
        total += p * t;
    }
    Ok(total)
}

/// M/G/1 SRPT, Schrage and Miller's formula averaged over job sizes (ties FCFS, module header).
pub fn srpt_mean_latency_s(lambda: f64, dist: &DiscreteDist) -> Result<f64, SimError> {
    check_stable(lambda, dist)?;
    let (mut below1, mut below2, mut below_p) = (0.0, 0.0, 0.0);
    let (mut residence, mut prev_x) = (0.0, 0.0);
    let mut total = 0.0;
    for (&x, &p) in dist.sizes_s.iter().zip(&dist.probs) {
        let rho_before = lambda * below1;
        // Remaining work in (prev_x, x]: only jobs strictly smaller than the remaining preempt.
        residence += (x - prev_x) / (1.0 - rho_before);
        below1 += p * x;
        below2 += p * x * x;
        below_p += p;
        let rho_at = lambda * below1;
        let tail = (1.0 - below_p).max(0.0);
        let waiting =
            lambda * (below2 + x * x * tail) / (2.0 * (1.0 - rho_at) * (1.0 - rho_before));
        total += p * (waiting + residence);
        prev_x = x;
    }
    Ok(total)
}

/// M/G/1 Gittins (size-blind optimal) mean response time by SOAP (module header). Every size
/// must be a whole number of `quantum_s` (tokens times the step time, as `from_length_dist`
/// builds them); the rank is evaluated per quantum. Cost: O(M^2) in the largest size M (quanta).
pub fn gittins_mean_latency_s(
    lambda: f64,
    dist: &DiscreteDist,
    quantum_s: f64,
) -> Result<f64, SimError> {
    check_stable(lambda, dist)?;
    let soap = GittinsSoap::new(dist, quantum_s)?;
    let q = quantum_s;
    let mut total = 0.0;
    for (&size_s, &p) in dist.sizes_s.iter().zip(&dist.probs) {
        let x = (size_s / q).round() as usize;
        // Worst rank from each age a to the end (a = x-1 down to 0), and the residence sum.
        let mut residence = 0.0;
        let mut worst = f64::NEG_INFINITY;
        let mut rho_new_at_worst = 0.0;
        for a in (0..x).rev() {
            if soap.rank[a] > worst {
                worst = soap.rank[a];
                rho_new_at_worst = lambda * q * soap.new_work(worst);
            }
            residence += q / (1.0 - rho_new_at_worst);
        }
        let (old_first, old_second_moment) = soap.old_work(worst);
        let waiting = lambda * q * q * old_second_moment
            / (2.0 * (1.0 - lambda * q * old_first) * (1.0 - rho_new_at_worst));
        total += p * (waiting + residence);
    }
    Ok(total)
}

/// Per-quantum survival and Gittins rank of a discrete size distribution (sizes in quanta).
struct GittinsSoap {
    /// `survival[a] = P(S > a)`, a = 0..=M.
    survival: Vec<f64>,
    /// Gittins rank (expected quanta per completion, lower first) at ages 0..M.
    rank: Vec<f64>,
    /// `prefix_max_rank[a] = max rank over ages 0..=a` (non-decreasing: binary-searchable).
    prefix_max_rank: Vec<f64>,
    /// `sum_survival[a] = sum of survival[0..a]` = E[min(S, a)].
    sum_survival: Vec<f64>,
    /// `sum_age_survival[a] = sum of b * survival[b] for b in 0..a`.
    sum_age_survival: Vec<f64>,
}

/// Ranks this close (relative) count as equal: a memoryless distribution's ranks are equal in
/// exact arithmetic and must tie (FCFS) rather than order by rounding.
const RANK_TIE: f64 = 1e-9;

impl GittinsSoap {
    fn new(dist: &DiscreteDist, quantum_s: f64) -> Result<Self, SimError> {
        let not_whole = |size_s: f64| {
            let n = (size_s / quantum_s).round();
            n < 1.0 || (n * quantum_s - size_s).abs() > 1e-9 * size_s
        };
        if !quantum_s.is_finite() || quantum_s <= 0.0 || dist.sizes_s.iter().any(|&s| not_whole(s))
        {
            return Err(SimError::InvalidArgument {
                field: "quantum_s",
                reason: format!("every size must be a whole number of quanta of {quantum_s} s"),
            });
        }
        let max = (dist.sizes_s[dist.sizes_s.len() - 1] / quantum_s).round() as usize;
        let mut pmf = vec![0.0; max + 1];
        for (&s, &p) in dist.sizes_s.iter().zip(&dist.probs) {
            pmf[(s / quantum_s).round() as usize] += p;
        }
        let mut survival = vec![0.0; max + 1];
        let mut above = 1.0;
        for (a, slot) in survival.iter_mut().enumerate() {
            above -= pmf[a];
            *slot = above.max(0.0);
        }
        survival[max] = 0.0;
        // r(a) = min over n of (sum of survival[a..n]) / (survival[a] - survival[n]).
        let rank: Vec<f64> = (0..max)
            .map(|a| {
                let mut service = 0.0;
                let mut best = f64::INFINITY;
                for n in a + 1..=max {
                    service += survival[n - 1];
                    let done = survival[a] - survival[n];
                    if done > 0.0 {
                        best = best.min(service / done);
                    }
                }
                best
            })
            .collect();
        let mut prefix_max_rank = Vec::with_capacity(max);
        let mut running = f64::NEG_INFINITY;
        for &r in &rank {
            running = running.max(r);
            prefix_max_rank.push(running);
        }
        let mut sum_survival = vec![0.0; max + 1];
        let mut sum_age_survival = vec![0.0; max + 1];
        for a in 0..max {
            sum_survival[a + 1] = sum_survival[a] + survival[a];
            sum_age_survival[a + 1] = sum_age_survival[a] + a as f64 * survival[a];
        }
        Ok(Self {
            survival,
            rank,
            prefix_max_rank,
            sum_survival,
            sum_age_survival,
        })
    }

    /// E[X_new[R]] in quanta: a new job is served ahead of one whose worst rank is R until its
    /// own rank first reaches R.
    fn new_work(&self, worst_rank: f64) -> f64 {
        let threshold = worst_rank * (1.0 - RANK_TIE);
        let c = self.prefix_max_rank.partition_point(|&r| r < threshold);
        self.sum_survival[c]
    }

    /// (E[X_0^old[R]], sum_i E[X_i^old[R]^2]) in quanta: an old job is served ahead over every
    /// stretch of ages whose rank is at most R.
    fn old_work(&self, worst_rank: f64) -> (f64, f64) {
        let threshold = worst_rank * (1.0 + RANK_TIE);
        let (mut first, mut second_moment) = (0.0, 0.0);
        let mut a = 0;
        let max = self.rank.len();
        while a < max {
            if self.rank[a] > threshold || self.survival[a] <= 0.0 {
                a += 1;
                continue;
            }
            let b = a;
            while a < max && self.rank[a] <= threshold {
                a += 1;
            }
            // E[(min(S, c) - b)^2; S > b] = sum over ages t in [b, c) of (2 (t - b) + 1) P(S > t).
            let survival_sum = self.sum_survival[a] - self.sum_survival[b];
            let age_survival_sum = self.sum_age_survival[a] - self.sum_age_survival[b];
            second_moment += 2.0 * age_survival_sum - (2.0 * b as f64 - 1.0) * survival_sum;
            if b == 0 {
                first = survival_sum;
            }
        }
        (first, second_moment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn deterministic_sizes_reduce_to_known_closed_forms() {
        let s = 2.0;
        let d = DiscreteDist::new(vec![(s, 1.0)]).expect("valid");
        let lambda = 0.4; // rho = 0.8
        let md1 = s + lambda * s * s / (2.0 * 0.2);
        assert!(close(
            pk_mean_latency_s(lambda, &d).unwrap_or(0.0),
            md1,
            1e-12
        ));
        // SRPT with equal sizes never preempts: it is FCFS.
        assert!(close(
            srpt_mean_latency_s(lambda, &d).unwrap_or(0.0),
            md1,
            1e-12
        ));
        let fb = s / 0.2 + lambda * s * s / (2.0 * 0.04);
        assert!(close(
            fb_mean_latency_s(lambda, &d).unwrap_or(0.0),
            fb,
            1e-12
        ));
    }

    #[test]
    fn fine_exponential_sizes_match_mm1_for_fcfs_and_fb_and_beat_it_with_srpt() {
        // 1 s mean in 1 ms tokens: close to continuous exponential sizes.
        let dist = LengthDist::Exponential {
            mean: 1000.0,
            max: u32::MAX,
        };
        let d = DiscreteDist::from_length_dist(&dist, 1e-3).expect("closed form");
        assert!(close(d.mean_s(), 1.0, 1e-3), "mean {}", d.mean_s());
        assert!(close(d.scv(), 1.0, 2e-3), "scv {}", d.scv());
        for lambda in [0.5, 0.8] {
            let mm1 = mm1_mean_latency_s(lambda, 1.0).unwrap_or(0.0);
            assert!(close(
                pk_mean_latency_s(lambda, &d).unwrap_or(0.0),
                mm1,
                3e-3
            ));
            // For exponential sizes every size-blind policy has FCFS's mean (memorylessness).
            assert!(close(
                fb_mean_latency_s(lambda, &d).unwrap_or(0.0),
                mm1,
                3e-3
            ));
            assert!(srpt_mean_latency_s(lambda, &d).unwrap_or(f64::MAX) < 0.9 * mm1);
        }
    }

    #[test]
    fn srpt_beats_fb_beats_fcfs_for_high_variance_sizes() {
        let dist = LengthDist::HyperExponential {
            p_first: 0.9,
            mean_first: 50.0,
            mean_second: 1000.0,
            max: u32::MAX,
        };
        let d = DiscreteDist::from_length_dist(&dist, 1e-3).expect("closed form");
        assert!(d.scv() > 3.0);
        let lambda = 0.7 / d.mean_s();
        let fcfs = pk_mean_latency_s(lambda, &d).unwrap_or(0.0);
        let fb = fb_mean_latency_s(lambda, &d).unwrap_or(0.0);
        let srpt = srpt_mean_latency_s(lambda, &d).unwrap_or(0.0);
        assert!(srpt < fb && fb < fcfs, "srpt {srpt} fb {fb} fcfs {fcfs}");
    }

    #[test]
    fn gittins_reduces_to_fcfs_for_known_and_memoryless_sizes() {
        // One size: the rank falls with age, no newcomer overtakes, M/D/1 exactly.
        let d = DiscreteDist::new(vec![(0.2, 1.0)]).expect("valid");
        let lambda = 4.0; // rho = 0.8
        let gittins = gittins_mean_latency_s(lambda, &d, 0.005).unwrap_or(0.0);
        let md1 = pk_mean_latency_s(lambda, &d).unwrap_or(f64::MAX);
        assert!(close(gittins, md1, 1e-12), "{gittins} vs {md1}");
        // Geometric sizes: every age has the same rank; ties go FCFS, so P-K (~ M/M/1).
        let dist = LengthDist::Exponential {
            mean: 1000.0,
            max: u32::MAX,
        };
        let d = DiscreteDist::from_length_dist(&dist, 1e-3).expect("closed form");
        let pk = pk_mean_latency_s(0.7, &d).unwrap_or(f64::MAX);
        let gittins = gittins_mean_latency_s(0.7, &d, 1e-3).unwrap_or(0.0);
        assert!(close(gittins, pk, 1e-6), "{gittins} vs {pk}");
    }

    #[test]
    fn gittins_is_las_for_decreasing_hazard_and_between_srpt_and_the_rest() {
        // Hyper-exponential sizes have a falling hazard: the Gittins rank rises with age, which
        // is least attained service. Token quanta vs Kleinrock's processor sharing: within 1%.
        let dist = LengthDist::HyperExponential {
            p_first: 0.8,
            mean_first: 20.0,
            mean_second: 200.0,
            max: u32::MAX,
        };
        let d = DiscreteDist::from_length_dist(&dist, 1e-3).expect("closed form");
        let lambda = 0.8 / d.mean_s();
        let gittins = gittins_mean_latency_s(lambda, &d, 1e-3).unwrap_or(0.0);
        let fb = fb_mean_latency_s(lambda, &d).unwrap_or(f64::MAX);
        assert!(close(gittins, fb, 0.01), "gittins {gittins} vs fb {fb}");
        // Two sizes: Gittins is size-blind optimal, so at most FCFS's and LAS's, and at least
        // SRPT's (which knows the sizes).
        let d = DiscreteDist::new(vec![(0.02, 0.8), (0.2, 0.2)]).expect("valid");
        for rho in [0.5, 0.8, 0.95] {
            let lambda = rho / d.mean_s();
            let gittins = gittins_mean_latency_s(lambda, &d, 1e-3).unwrap_or(f64::MAX);
            let srpt = srpt_mean_latency_s(lambda, &d).unwrap_or(f64::MAX);
            let fb = fb_mean_latency_s(lambda, &d).unwrap_or(0.0);
            let pk = pk_mean_latency_s(lambda, &d).unwrap_or(0.0);
            assert!(
                srpt < gittins && gittins < fb && gittins < pk,
                "rho {rho}: srpt {srpt} gittins {gittins} fb {fb} fcfs {pk}"
            );
        }
    }

    #[test]
    fn gittins_needs_sizes_in_whole_quanta() {
        let d = DiscreteDist::new(vec![(0.0125, 1.0)]).expect("valid");
        assert!(gittins_mean_latency_s(10.0, &d, 0.005).is_err());
        assert!(gittins_mean_latency_s(10.0, &d, 0.0025).is_ok());
    }

    #[test]
    fn unstable_or_invalid_inputs_are_errors() {
        let d = DiscreteDist::new(vec![(1.0, 1.0)]).expect("valid");
        assert!(pk_mean_latency_s(1.0, &d).is_err());
        assert!(mm1_mean_latency_s(2.0, 1.0).is_err());
        assert!(DiscreteDist::new(vec![]).is_err());
        assert!(DiscreteDist::new(vec![(-1.0, 1.0)]).is_err());
    }
}
