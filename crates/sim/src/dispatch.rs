//! Dispatch rules: how a front-end router assigns each arriving request to one of R replicas
//! (`lapsd sim --replicas R --dispatch RULE`). A request stays on the replica it was sent to (no
//! migration). What a rule may look at is a [`ReplicaLoad`] per replica, taken at the arrival:
//!
//! - `round-robin`: replicas in turn, whatever their load (a router without load feedback);
//! - `jsq` (join the shortest queue): fewest unfinished requests (waiting + running), ties to the
//!   lowest index;
//! - `power-of-two`: two distinct replicas drawn uniformly (a seeded stream), the one with fewer
//!   unfinished requests, ties to the first drawn (Mitzenmacher's "power of two choices");
//! - `least-work`: smallest estimated outstanding work in seconds, ties to fewer requests, then
//!   the lowest index. The work of a replica is the sum over its unfinished requests of the
//!   remaining execution time the policies estimate
//!   ([`lapsd_core::policy::laps_sd_srpt::estimated_remaining_with_prefill_s`]: the prefill still
//!   owed plus predicted remaining tokens / expected tokens per SD step x the SD step's cost, with
//!   the request's measured acceptance shrunk toward the replica's pooled rate). It is the
//!   speculation-aware rule: two replicas with as many requests differ in work when one holds
//!   long or poorly-accepted ones.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::rng::stream_rng;

/// The random stream of the `power-of-two` draws (see `run.rs` for the others).
const POWER_OF_TWO_STREAM: u64 = 21;

/// A dispatch rule (module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dispatch {
    /// Replicas in turn.
    RoundRobin,
    /// Fewest unfinished requests (join the shortest queue).
    Jsq,
    /// The less loaded of two replicas drawn at random.
    PowerOfTwo,
    /// Smallest estimated outstanding work (speculation-aware).
    LeastWork,
}

impl Dispatch {
    pub const ALL: [Dispatch; 4] = [
        Dispatch::RoundRobin,
        Dispatch::Jsq,
        Dispatch::PowerOfTwo,
        Dispatch::LeastWork,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Dispatch::RoundRobin => "round-robin",
            Dispatch::Jsq => "jsq",
            Dispatch::PowerOfTwo => "power-of-two",
            Dispatch::LeastWork => "least-work",
        }
    }

    /// Whether the rule reads [`ReplicaLoad::work_s`] (the others need only the counts).
    pub fn needs_work(&self) -> bool {
        matches!(self, Dispatch::LeastWork)
    }
}

impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a dispatcher sees of one replica when a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplicaLoad {
    /// Unfinished requests sent to it (waiting, running or preempted).
    pub requests: usize,
    /// Estimated outstanding work in seconds (module header); 0 when the rule does not need it
    /// and nobody asked for it.
    pub work_s: f64,
}

/// A dispatch rule with its state (the round-robin pointer, the power-of-two draws).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    rule: Dispatch,
    next: usize,
    rng: ChaCha8Rng,
}

impl Dispatcher {
    /// `seed` is the experiment's: the power-of-two draws are its own stream of it, so every
    /// policy and every rule sees the same arrivals and the draws do not depend on them.
    pub fn new(rule: Dispatch, seed: u64) -> Self {
        Self {
            rule,
            next: 0,
            rng: stream_rng(seed, POWER_OF_TWO_STREAM),
        }
    }

    pub fn rule(&self) -> Dispatch {
        self.rule
    }

    /// The replica the next request goes to (an index into `loads`, which must not be empty).
    pub fn choose(&mut self, loads: &[ReplicaLoad]) -> usize {
        let n = loads.len();
        if n <= 1 {
            return 0;
        }
        match self.rule {
            Dispatch::RoundRobin => {
                let chosen = self.next % n;
                self.next = (chosen + 1) % n;
                chosen
            }
            Dispatch::Jsq => argmin_by(loads, |a, b| a.requests.cmp(&b.requests)),
            Dispatch::PowerOfTwo => {
                let first = self.rng.gen_range(0..n);
                let mut second = self.rng.gen_range(0..n - 1);
                if second >= first {
                    second += 1;
                }
                if loads[second].requests < loads[first].requests {
                    second
                } else {
                    first
                }
            }
            Dispatch::LeastWork => argmin_by(loads, |a, b| {
                a.work_s
                    .total_cmp(&b.work_s)
                    .then(a.requests.cmp(&b.requests))
            }),
        }
    }
}

/// Index of the first smallest element under `cmp`.
fn argmin_by(
    loads: &[ReplicaLoad],
    cmp: impl Fn(&ReplicaLoad, &ReplicaLoad) -> std::cmp::Ordering,
) -> usize {
    let mut best = 0;
    for (i, load) in loads.iter().enumerate().skip(1) {
        if cmp(load, &loads[best]).is_lt() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(requests: &[usize], work_s: &[f64]) -> Vec<ReplicaLoad> {
        requests
            .iter()
            .zip(work_s)
            .map(|(&requests, &work_s)| ReplicaLoad { requests, work_s })
            .collect()
    }

    #[test]
    fn round_robin_cycles_whatever_the_load() {
        let mut d = Dispatcher::new(Dispatch::RoundRobin, 0);
        let l = loads(&[9, 0, 5], &[9.0, 0.0, 5.0]);
        let picks: Vec<usize> = (0..7).map(|_| d.choose(&l)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn jsq_takes_the_fewest_requests_first_index_on_ties() {
        let mut d = Dispatcher::new(Dispatch::Jsq, 0);
        assert_eq!(d.choose(&loads(&[3, 1, 2, 1], &[0.0; 4])), 1);
        assert_eq!(d.choose(&loads(&[0, 0], &[5.0, 0.0])), 0);
        assert_eq!(d.choose(&loads(&[4, 2, 0], &[0.0; 3])), 2);
    }

    #[test]
    fn least_work_takes_the_least_work_then_fewer_requests() {
        let mut d = Dispatcher::new(Dispatch::LeastWork, 0);
        // More requests but less work wins: the rule weighs requests by their size.
        assert_eq!(d.choose(&loads(&[1, 3], &[10.0, 2.0])), 1);
        // Equal work (e.g. all zero): fewer requests, then the lowest index.
        assert_eq!(d.choose(&loads(&[2, 0, 0], &[0.0, 0.0, 0.0])), 1);
        assert_eq!(d.choose(&loads(&[1, 1], &[3.0, 3.0])), 0);
    }

    #[test]
    fn power_of_two_picks_the_lighter_of_two_distinct_draws() {
        let mut d = Dispatcher::new(Dispatch::PowerOfTwo, 3);
        // With one light replica among four, it wins whenever drawn (half the draws), and a
        // heavy one otherwise; never anything else.
        let l = loads(&[5, 5, 0, 5], &[0.0; 4]);
        let n = 4000;
        let light = (0..n).filter(|_| d.choose(&l) == 2).count();
        // P(replica 2 among two distinct draws of four) = 1/2; SE ~ 0.008.
        let share = light as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.04, "share {share}");
        // Two replicas: always the lighter one.
        let two = loads(&[4, 1], &[0.0; 2]);
        assert!((0..100).all(|_| d.choose(&two) == 1));
        // Same seed, same draws.
        let mut a = Dispatcher::new(Dispatch::PowerOfTwo, 9);
        let mut b = Dispatcher::new(Dispatch::PowerOfTwo, 9);
        let even = loads(&[1, 1, 1, 1, 1], &[0.0; 5]);
        let pa: Vec<usize> = (0..50).map(|_| a.choose(&even)).collect();
        let pb: Vec<usize> = (0..50).map(|_| b.choose(&even)).collect();
        assert_eq!(pa, pb);
        assert!(pa.iter().any(|&i| i != pa[0]), "draws vary: {pa:?}");
    }

    #[test]
    fn one_replica_always_gets_everything() {
        for rule in Dispatch::ALL {
            let mut d = Dispatcher::new(rule, 0);
            assert!((0..10).all(|_| d.choose(&loads(&[3], &[1.0])) == 0));
        }
    }
}
