//! `srpt`: preemptive shortest predicted remaining length, as learning-to-rank scheduling
//! (Fu et al., NeurIPS 2024): every step the requests with the fewest predicted remaining tokens
//! (prediction minus generated, at least 1) run; a shorter newcomer preempts. Key: (client
//! priority, predicted remaining tokens, arrival, id), re-keyed for batch members each step.
//!
//! Starvation counter (optional, `PolicyConfig::max_wait_s`): Fu et al. promote a request whose
//! starvation count reaches a threshold; we count in time instead of skipped steps (an O(log n)
//! index of the last time each request ran): a request that has not run for `max_wait_s` is
//! promoted ahead of all others until it finishes (Fu et al. promote for a quantum; see
//! `StarvationGuard` for why we keep the promotion), longest wait first.

use super::queue::{offer_in_order, KeyedQueue, OrdF64, StarvationGuard};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::{RequestId, RequestState};

#[derive(Debug, Default)]
pub struct Srpt {
    queue: KeyedQueue<(i32, u32, OrdF64)>,
    aging: StarvationGuard,
    max_wait_s: Option<f64>,
}

impl Srpt {
    pub fn new(max_wait_s: Option<f64>) -> Self {
        Self {
            max_wait_s,
            ..Self::default()
        }
    }
    fn key(request: &RequestState) -> (i32, u32, OrdF64) {
        (
            request.spec.priority_or_default(),
            request.predicted_remaining_tokens(),
            OrdF64(request.spec.arrival_s),
        )
    }
}

impl Policy for Srpt {
    fn name(&self) -> &str {
        "srpt"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.insert(request.id(), Self::key(request));
        if self.max_wait_s.is_some() {
            self.aging.on_arrival(request.id(), request.spec.arrival_s);
        }
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.insert(request.id(), Self::key(request));
        if self.max_wait_s.is_some() {
            self.aging.on_step(request.id(), request.last_scheduled_s);
        }
    }
    fn on_finish(&mut self, id: RequestId) {
        self.queue.remove(id);
        self.aging.remove(id);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        if let Some(max_wait_s) = self.max_wait_s {
            self.aging.offer_starved(batch, ctx.now_s, max_wait_s);
        }
        offer_in_order(batch, self.queue.ids());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    fn arrive(f: &mut Fixture, id: u64, t: f64, predicted: u32) {
        f.arrive_with(id, t, 10, 1000, |s| {
            s.predicted_output_tokens = Some(predicted)
        });
    }

    #[test]
    fn a_shorter_newcomer_preempts() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 100);
        let mut p = Srpt::new(None);
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        f.run_steps(&mut p, &[1], 10); // 90 left
        arrive(&mut f, 2, 1.0, 95);
        p.on_arrival(f.get(2), 1.0);
        assert_eq!(f.select(&mut p), vec![1], "95 > 90 remaining");
        arrive(&mut f, 3, 1.0, 80);
        p.on_arrival(f.get(3), 1.0);
        assert_eq!(f.select(&mut p), vec![3]);
    }

    #[test]
    fn starvation_counter_promotes_the_long_waiting() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 1000);
        arrive(&mut f, 2, 0.0, 10);
        let mut p = Srpt::new(Some(0.5));
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![2]);
        f.run_steps(&mut p, &[2], 5);
        assert_eq!(f.select(&mut p), vec![2]);
        f.now_s = 0.6;
        assert_eq!(f.select(&mut p), vec![1], "waited 0.6 s > 0.5 s");
    }
}
