//! `srpt`: preemptive shortest predicted remaining length, as learning-to-rank scheduling
//! (Fu et al., NeurIPS 2024): every step the requests with the fewest predicted remaining tokens
//! (prediction minus generated, at least 1) run; a shorter newcomer preempts. Key: (client
//! priority, predicted remaining tokens, arrival, id), re-keyed for batch members each step.
//!
//! Fu et al.'s starvation counter is the shared aging setting (`PolicyConfig::max_wait_s`, see
//! `compose::Aging`): counted in time instead of skipped steps.

use super::queue::{offer_in_order, KeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::RequestState;

#[derive(Debug, Default)]
pub struct Srpt {
    queue: KeyedQueue<(i32, u32, OrdF64)>,
}

impl Srpt {
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
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.insert(request.id(), Self::key(request));
    }
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.queue.remove(id);
    }
    fn select(&mut self, _ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
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
        let mut p = Srpt::default();
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
}
