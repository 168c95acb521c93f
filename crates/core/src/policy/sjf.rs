//! `sjf`: SSJF (Qiu et al., 2024), non-preemptive shortest predicted job first. Waiting requests
//! are ordered by predicted total output length (the prediction made at arrival, else
//! `max_tokens`); running requests keep their slot. Key: (client priority, predicted output
//! tokens, arrival, id).

use super::queue::{offer_with_pinned, KeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::RequestState;

#[derive(Debug, Default)]
pub struct Sjf {
    queue: KeyedQueue<(i32, u32, OrdF64)>,
}

impl Policy for Sjf {
    fn name(&self) -> &str {
        "sjf"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        let key = (
            request.spec.priority_or_default(),
            request.predicted_output_tokens(),
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

    fn arrive(f: &mut Fixture, id: u64, t: f64, predicted: u32) {
        f.arrive_with(id, t, 10, 1000, |s| {
            s.predicted_output_tokens = Some(predicted)
        });
    }

    #[test]
    fn shortest_predicted_first() {
        let mut f = Fixture::new(2);
        arrive(&mut f, 1, 0.0, 300);
        arrive(&mut f, 2, 1.0, 20);
        arrive(&mut f, 3, 2.0, 100);
        let mut p = Sjf::default();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![2, 3]);
    }

    #[test]
    fn does_not_preempt_a_running_long_request() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 500);
        let mut p = Sjf::default();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        f.run_steps(&mut p, &[1], 2);
        arrive(&mut f, 2, 1.0, 5);
        p.on_arrival(f.get(2), 1.0);
        assert_eq!(f.select(&mut p), vec![1]);
        p.on_finish(f.get(1));
        f.remove(1);
        assert_eq!(f.select(&mut p), vec![2]);
    }

    #[test]
    fn missing_prediction_falls_back_to_max_tokens() {
        let mut f = Fixture::new(1);
        f.arrive(1, 0.0, 10, 50);
        arrive(&mut f, 2, 1.0, 60);
        let mut p = Sjf::default();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
    }
}
