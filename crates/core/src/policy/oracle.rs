//! `oracle`: SRPT on the true remaining execution time, the lower bound for mean latency on one
//! server (Schrage & Miller, 1966). Simulator only: it reads `RequestSpec::true_output_tokens`
//! (falling back to the prediction, then `max_tokens`, when absent) and
//! `RequestSpec::true_acceptance_rate` (falling back to the measured mean accepted length).
//!
//! Remaining time at batch 1: a request that still needs its prefill pays `prefill_s(context)`,
//! which yields one token; the other tokens take `sd_step_s(1, k)` per step at the expected
//! tokens per step of an i.i.d. acceptance probability a: `(1 - a^(k+1)) / (1 - a)` (k + 1 when
//! a = 1; 1 with SD off). Keys are refreshed (lazily, in `select`, which brings the cost model)
//! for arrivals and batch members; a request whose KV is later freed keeps the key it had (its
//! recompute cost is not added).

use super::queue::{offer_in_order, LazyKeyedQueue, OrdF64};
use super::{execution_time_s, BatchBuilder, Policy, ScheduleContext};
use crate::cost::StepCostModel;
use crate::request::RequestState;

#[derive(Debug, Default)]
pub struct Oracle {
    queue: LazyKeyedQueue<(i32, OrdF64, OrdF64)>,
}

/// Expected tokens per SD step with speculation length `k` and per-token acceptance
/// probability `a` (accept one by one until the first rejection, then one target token).
pub fn expected_tokens_per_step(k: u32, a: f64) -> f64 {
    let a = a.clamp(0.0, 1.0);
    if a >= 1.0 {
        f64::from(k) + 1.0
    } else {
        (1.0 - a.powi(k as i32 + 1)) / (1.0 - a)
    }
}

/// True remaining execution time of `r` at batch 1 (see the module docs).
pub fn true_remaining_s(r: &RequestState, k: u32, cost: &dyn StepCostModel) -> f64 {
    let total = r
        .spec
        .true_output_tokens
        .unwrap_or_else(|| r.predicted_output_tokens())
        .min(r.spec.max_tokens);
    let remaining_tokens = f64::from(total.saturating_sub(r.generated_tokens));
    let tokens_per_step = match r.spec.true_acceptance_rate {
        Some(a) => expected_tokens_per_step(k, a),
        None => r.acceptance.mean_accepted_length().unwrap_or(1.0),
    };
    execution_time_s(r, remaining_tokens, tokens_per_step, k, cost)
}

impl Policy for Oracle {
    fn name(&self) -> &str {
        "oracle"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.mark_stale(request.id());
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.mark_stale(request.id());
    }
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.queue.remove(id);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        self.queue.rekey(ctx.requests, |r| {
            (
                r.spec.priority_or_default(),
                OrdF64(true_remaining_s(r, ctx.speculation_length, ctx.cost)),
                OrdF64(r.spec.arrival_s),
            )
        });
        offer_in_order(batch, self.queue.ids());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    #[test]
    fn expected_tokens_per_step_matches_the_geometric_sum() {
        assert_eq!(expected_tokens_per_step(0, 0.7), 1.0);
        assert_eq!(expected_tokens_per_step(4, 1.0), 5.0);
        assert_eq!(expected_tokens_per_step(4, 0.0), 1.0);
        let a: f64 = 0.6;
        let direct = 1.0 + a + a * a + a.powi(3) + a.powi(4);
        assert!((expected_tokens_per_step(4, a) - direct).abs() < 1e-12);
    }

    #[test]
    fn high_acceptance_beats_a_shorter_output() {
        // 200 tokens at a = 0.95 (~4.5 tokens/step) finish sooner than 100 at a = 0.1 (~1.1).
        let mut f = Fixture::new(1);
        f.arrive_with(1, 0.0, 10, 1000, |s| {
            s.true_output_tokens = Some(100);
            s.true_acceptance_rate = Some(0.1);
        });
        f.arrive_with(2, 0.0, 10, 1000, |s| {
            s.true_output_tokens = Some(200);
            s.true_acceptance_rate = Some(0.95);
        });
        let mut p = Oracle::default();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![2]);
    }

    #[test]
    fn preempts_for_a_shorter_remaining_time() {
        let mut f = Fixture::new(1);
        f.k = 0;
        f.arrive_with(1, 0.0, 10, 1000, |s| s.true_output_tokens = Some(50));
        let mut p = Oracle::default();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        f.run_steps(&mut p, &[1], 20); // 30 left
        f.arrive_with(2, 1.0, 10, 1000, |s| s.true_output_tokens = Some(31));
        p.on_arrival(f.get(2), 1.0);
        assert_eq!(f.select(&mut p), vec![1], "31 > 30");
        f.arrive_with(3, 1.0, 10, 1000, |s| s.true_output_tokens = Some(20));
        p.on_arrival(f.get(3), 1.0);
        assert_eq!(f.select(&mut p), vec![3]);
    }
}
