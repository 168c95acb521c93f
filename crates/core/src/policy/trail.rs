//! `trail`: TRAIL, "Don't Stop Me Now" (Shahout et al., 2024): SRPT on the predicted remaining
//! length with limited preemption. A running request that has generated at least
//! `trail_no_preempt_fraction` of its predicted output length is not preempted (it keeps its slot
//! like a non-preemptive request); earlier in its life a shorter request may preempt it. TRAIL
//! refines its prediction every token from the model's embeddings; here the prediction is the one
//! the scheduler holds (re-predicted when outgrown if it has a predictor). Key: (client priority,
//! predicted remaining tokens, arrival, id).

use super::queue::{offer_with_pinned, KeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::{RequestId, RequestState};

#[derive(Debug)]
pub struct Trail {
    queue: KeyedQueue<(i32, u32, OrdF64)>,
    no_preempt_fraction: f64,
}

impl Trail {
    pub fn new(no_preempt_fraction: f64) -> Self {
        Self {
            queue: KeyedQueue::default(),
            no_preempt_fraction,
        }
    }
    fn key(request: &RequestState) -> (i32, u32, OrdF64) {
        (
            request.spec.priority_or_default(),
            request.predicted_remaining_tokens(),
            OrdF64(request.spec.arrival_s),
        )
    }
    /// Past the no-preemption point?
    pub fn is_protected(&self, request: &RequestState) -> bool {
        f64::from(request.generated_tokens)
            >= self.no_preempt_fraction * f64::from(request.predicted_output_tokens())
    }
}

impl Policy for Trail {
    fn name(&self) -> &str {
        "trail"
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
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        let protected: Vec<RequestId> = ctx
            .running
            .iter()
            .copied()
            .filter(|id| ctx.requests.get(id).is_some_and(|r| self.is_protected(r)))
            .collect();
        offer_with_pinned(&self.queue, &protected, batch);
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
    fn preempts_early_but_not_past_the_fraction() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 100);
        let mut p = Trail::new(0.5);
        f.announce(&mut p);
        f.select(&mut p);
        f.run_steps(&mut p, &[1], 40); // 40 of 100: still preemptible
        arrive(&mut f, 2, 1.0, 30);
        p.on_arrival(f.get(2), 1.0);
        assert_eq!(f.select(&mut p), vec![2], "early: SRPT preempts");
        // Back to request 1 (request 2 leaves), run it past half its prediction.
        p.on_finish(f.get(2));
        f.remove(2);
        assert_eq!(f.select(&mut p), vec![1]);
        f.run_steps(&mut p, &[1], 10); // 50 of 100: protected
        arrive(&mut f, 3, 2.0, 5);
        p.on_arrival(f.get(3), 2.0);
        assert_eq!(
            f.select(&mut p),
            vec![1],
            "past the fraction: not preempted"
        );
    }

    #[test]
    fn waiting_requests_in_srpt_order() {
        let mut f = Fixture::new(2);
        arrive(&mut f, 1, 0.0, 100);
        arrive(&mut f, 2, 0.0, 10);
        arrive(&mut f, 3, 0.0, 50);
        let mut p = Trail::new(0.5);
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![2, 3]);
    }
}
