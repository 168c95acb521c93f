//! `las`: least attained service first (foreground-background, Kleinrock's FB), preemptive at
//! token granularity: every step the requests with the fewest target forward passes so far run
//! (prefill counts as one pass); ties by arrival. Needs no size knowledge. Key:
//! (client priority, attained passes, arrival, id); only batch members change key each step, so a
//! step costs O(b log n).

use super::queue::{offer_in_order, KeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::RequestState;

#[derive(Debug, Default)]
pub struct Las {
    queue: KeyedQueue<(i32, u64, OrdF64)>,
}

impl Las {
    fn key(request: &RequestState) -> (i32, u64, OrdF64) {
        (
            request.spec.priority_or_default(),
            request.attained_service_passes,
            OrdF64(request.spec.arrival_s),
        )
    }
}

impl Policy for Las {
    fn name(&self) -> &str {
        "las"
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

    #[test]
    fn preempts_a_long_served_request_for_a_new_one() {
        let mut f = Fixture::new(1);
        f.arrive(1, 0.0, 10, 100);
        let mut p = Las::default();
        f.announce(&mut p);
        f.run_steps(&mut p, &[1], 5);
        f.arrive(2, 5.0, 10, 100);
        p.on_arrival(f.get(2), 5.0);
        assert_eq!(f.select(&mut p), vec![2]);
    }

    #[test]
    fn equal_service_round_robins_by_arrival() {
        let mut f = Fixture::new(1);
        f.arrive(1, 0.0, 10, 100);
        f.arrive(2, 1.0, 10, 100);
        let mut p = Las::default();
        f.announce(&mut p);
        let mut order = Vec::new();
        for _ in 0..4 {
            let chosen = f.select(&mut p);
            f.run_steps(&mut p, &chosen, 1);
            order.extend(chosen);
        }
        assert_eq!(order, vec![1, 2, 1, 2]);
    }

    #[test]
    fn batch_takes_the_least_served() {
        let mut f = Fixture::new(2);
        for (id, t) in [(1, 0.0), (2, 1.0), (3, 2.0)] {
            f.arrive(id, t, 10, 100);
        }
        let mut p = Las::default();
        f.announce(&mut p);
        f.run_steps(&mut p, &[1], 3);
        f.run_steps(&mut p, &[3], 1);
        assert_eq!(f.select(&mut p), vec![2, 3]);
    }
}
