//! `fcfs`: first come, first served, vLLM's default policy. Requests run in arrival order and
//! are not preempted by later arrivals: running requests keep their slot (they are offered
//! first), free slots go to the earliest waiting requests. Key: (client priority, arrival, id).
//! A waiting request of strictly better client priority does take the slot of a running one
//! (vLLM's `priority` policy; see [`super::queue::offer_with_pinned`]). Running requests still
//! lose their slot when their KV no longer fits (vLLM preempts under memory pressure too).

use super::queue::{offer_with_pinned, KeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::RequestState;

#[derive(Debug, Default)]
pub struct Fcfs {
    queue: KeyedQueue<(i32, OrdF64)>,
}

impl Policy for Fcfs {
    fn name(&self) -> &str {
        "fcfs"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        let key = (
            request.spec.priority_or_default(),
            OrdF64(request.spec.arrival_s),
        );
        self.queue.insert(request.id(), key);
    }
    fn on_step(&mut self, _request: &RequestState, _now_s: f64) {}
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.queue.remove(id);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        offer_with_pinned(&self.queue, ctx.running, batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    #[test]
    fn serves_in_arrival_order() {
        let mut f = Fixture::new(2);
        f.arrive(3, 3.0, 10, 100);
        f.arrive(1, 1.0, 10, 100);
        f.arrive(2, 2.0, 10, 100);
        let mut p = Fcfs::default();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1, 2]);
    }

    #[test]
    fn running_requests_keep_their_slot() {
        let mut f = Fixture::new(1);
        f.arrive(5, 5.0, 10, 100);
        let mut p = Fcfs::default();
        f.announce(&mut p);
        f.run_steps(&mut p, &[5], 3);
        f.arrive(1, 1.0, 10, 100); // an earlier timestamp, but it arrives while 5 runs
        p.on_arrival(f.get(1), 6.0);
        assert_eq!(f.select(&mut p), vec![5], "non-preemptive");
    }

    #[test]
    fn better_client_priority_takes_the_slot() {
        let mut f = Fixture::new(1);
        f.arrive(5, 5.0, 10, 100);
        let mut p = Fcfs::default();
        f.announce(&mut p);
        f.run_steps(&mut p, &[5], 3);
        f.arrive_with(6, 6.0, 10, 100, |s| s.priority = Some(-1));
        p.on_arrival(f.get(6), 6.0);
        assert_eq!(f.select(&mut p), vec![6]);
    }

    #[test]
    fn finished_requests_are_forgotten() {
        let mut f = Fixture::new(4);
        f.arrive(1, 1.0, 10, 100);
        f.arrive(2, 2.0, 10, 100);
        let mut p = Fcfs::default();
        f.announce(&mut p);
        p.on_finish(f.get(1));
        f.remove(1);
        assert_eq!(f.select(&mut p), vec![2]);
    }
}
