//! The settings every ordering shares, as wrappers around it: aging ([`Aging`], a starvation
//! bound) and marginal batch formation ([`MarginalFormation`]). [`super::build_policy`] wraps an
//! ordering in them as `PolicyConfig` says, so `--max-wait-s` or `--batch-formation marginal`
//! mean the same for every policy, in `lapsd sim` and `lapsd serve` alike.

use super::queue::StarvationGuard;
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::{FinishReason, RequestId, RequestPhase, RequestState};

/// Starvation bound: a request that has not run for the bound is promoted ahead of every
/// unpromoted one until it finishes (longest wait first; see `StarvationGuard` for why the
/// promotion lasts). The wrapped ordering fills what is left of the batch. The bound is
/// `max_wait_s`, or `max_wait_factor` times the mean latency of recently finished requests
/// (an exponential average over about [`LATENCY_AVERAGE_REQUESTS`] of them), whichever is
/// shorter.
pub struct Aging {
    inner: Box<dyn Policy>,
    guard: StarvationGuard,
    max_wait_s: Option<f64>,
    max_wait_factor: Option<f64>,
    mean_latency_s: Option<f64>,
}

/// Finished requests the relative bound's latency average spans (its time constant).
pub const LATENCY_AVERAGE_REQUESTS: f64 = 200.0;

impl Aging {
    /// A fixed bound of `max_wait_s`.
    pub fn new(inner: Box<dyn Policy>, max_wait_s: f64) -> Self {
        Self::with_bounds(inner, Some(max_wait_s), None)
    }

    pub fn with_bounds(
        inner: Box<dyn Policy>,
        max_wait_s: Option<f64>,
        max_wait_factor: Option<f64>,
    ) -> Self {
        Self {
            inner,
            guard: StarvationGuard::default(),
            max_wait_s,
            max_wait_factor,
            mean_latency_s: None,
        }
    }

    /// The bound in force now (`None`: no bound yet, the relative one before any finish).
    pub fn bound_s(&self) -> Option<f64> {
        let relative = match (self.max_wait_factor, self.mean_latency_s) {
            (Some(f), Some(l)) => Some(f * l),
            _ => None,
        };
        match (self.max_wait_s, relative) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Policy for Aging {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn on_arrival(&mut self, request: &RequestState, now_s: f64) {
        self.guard.on_arrival(request.id(), request.spec.arrival_s);
        self.inner.on_arrival(request, now_s);
    }
    fn on_step(&mut self, request: &RequestState, now_s: f64) {
        self.guard.on_step(request.id(), request.last_scheduled_s);
        self.inner.on_step(request, now_s);
    }
    fn on_finish(&mut self, request: &RequestState) {
        self.guard.remove(request.id());
        if matches!(
            request.phase,
            RequestPhase::Finished(FinishReason::Stop | FinishReason::Length)
        ) {
            let latency_s = (request.last_scheduled_s - request.spec.arrival_s).max(0.0);
            self.mean_latency_s = Some(match self.mean_latency_s {
                None => latency_s,
                Some(m) => m + (latency_s - m) / LATENCY_AVERAGE_REQUESTS,
            });
        }
        self.inner.on_finish(request);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        if let Some(bound_s) = self.bound_s() {
            self.guard.offer_starved(batch, ctx.now_s, bound_s);
        }
        self.inner.select(ctx, batch);
    }
    fn kv_victim(&self, ctx: &ScheduleContext<'_>, resident: &[RequestId]) -> Option<RequestId> {
        self.inner.kv_victim(ctx, resident)
    }
}

/// Marginal batch formation (the rule is [`BatchBuilder::use_marginal_formation`]): while fewer
/// than `full_at_queue` requests are in the system, a request joins the step only when the cost
/// model says co-batching it lowers the total latency; from `full_at_queue` on, batches fill.
pub struct MarginalFormation {
    inner: Box<dyn Policy>,
    full_at_queue: usize,
}

impl MarginalFormation {
    pub fn new(inner: Box<dyn Policy>, full_at_queue: usize) -> Self {
        Self {
            inner,
            full_at_queue,
        }
    }
}

impl Policy for MarginalFormation {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn on_arrival(&mut self, request: &RequestState, now_s: f64) {
        self.inner.on_arrival(request, now_s);
    }
    fn on_step(&mut self, request: &RequestState, now_s: f64) {
        self.inner.on_step(request, now_s);
    }
    fn on_finish(&mut self, request: &RequestState) {
        self.inner.on_finish(request);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        batch.use_marginal_formation(self.full_at_queue);
        self.inner.select(ctx, batch);
    }
    fn kv_victim(&self, ctx: &ScheduleContext<'_>, resident: &[RequestId]) -> Option<RequestId> {
        self.inner.kv_victim(ctx, resident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::laps_sd_srpt::LapsSdSrpt;
    use crate::policy::srpt::Srpt;
    use crate::policy::MISS_BUDGET;
    use crate::testutil::Fixture;

    fn arrive(f: &mut Fixture, id: u64, t: f64, prompt: u32, predicted: u32) {
        f.arrive_with(id, t, prompt, 1000, |s| {
            s.predicted_output_tokens = Some(predicted)
        });
    }

    #[test]
    fn aging_promotes_the_long_waiting_for_any_ordering() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 10, 1000);
        arrive(&mut f, 2, 0.0, 10, 10);
        let mut p = Aging::new(Box::<Srpt>::default(), 0.5);
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![2]);
        f.run_steps(&mut p, &[2], 5);
        assert_eq!(f.select(&mut p), vec![2]);
        f.now_s = 0.6;
        assert_eq!(f.select(&mut p), vec![1], "waited 0.6 s > 0.5 s");
        assert_eq!(p.name(), "srpt");
    }

    #[test]
    fn the_relative_bound_follows_the_finished_requests_latency() {
        let mut f = Fixture::new(1);
        let mut p = Aging::with_bounds(Box::<Srpt>::default(), Some(100.0), Some(2.0));
        assert_eq!(p.bound_s(), Some(100.0), "no finish yet: the fixed bound");
        arrive(&mut f, 1, 0.0, 10, 10);
        f.announce(&mut p);
        f.get_mut(1).last_scheduled_s = 3.0;
        f.get_mut(1).phase = RequestPhase::Finished(FinishReason::Stop);
        p.on_finish(f.get(1));
        assert_eq!(p.bound_s(), Some(6.0), "2 x the 3 s latency");
        // A cancelled request says nothing about latency.
        arrive(&mut f, 2, 0.0, 10, 10);
        p.on_arrival(f.get(2), 0.0);
        f.get_mut(2).last_scheduled_s = 50.0;
        f.get_mut(2).phase = RequestPhase::Finished(FinishReason::Cancelled);
        p.on_finish(f.get(2));
        assert_eq!(p.bound_s(), Some(6.0));
    }

    fn marginal(full_at_queue: usize) -> MarginalFormation {
        MarginalFormation::new(Box::new(LapsSdSrpt::new()), full_at_queue)
    }

    /// Little amortization: 13 ms per step, 5 ms per verified position (SmolLM2 on 2 cores),
    /// no draft cost, 8 ms per prompt token.
    fn flat_cost() -> crate::cost::LinearCost {
        crate::cost::LinearCost {
            draft_base_s: 0.0,
            draft_per_seq_s: 0.0,
            verify_base_s: 0.013,
            verify_per_token_s: 0.005,
            prefill_base_s: 0.0,
            prefill_per_token_s: 0.008,
        }
    }

    /// `n` prefilled requests predicted at 10, 20, 30, ... tokens.
    fn decoding(f: &mut Fixture, p: &mut dyn Policy, n: u64) {
        for id in 1..=n {
            arrive(f, id, 0.0, 10, 10 * id as u32);
            f.get_mut(id).prefilled = true;
        }
        f.announce(p);
    }

    #[test]
    fn marginal_formation_runs_a_short_queue_in_a_small_batch() {
        let mut f = Fixture::new(8);
        f.cost = flat_cost();
        let mut p = marginal(64);
        decoding(&mut f, &mut p, 3);
        // Request 2: alone 13 + 25 ms, adds 25 ms; saves 13 ms for itself and request 3
        // (26 > 1 * 25): joins. Request 3: saves 13 ms for itself only, delays two (13 < 50).
        assert_eq!(f.select(&mut p), vec![1, 2]);
        // Full formation takes all three.
        let mut plain = LapsSdSrpt::new();
        let mut g = Fixture::new(8);
        g.cost = flat_cost();
        decoding(&mut g, &mut plain, 3);
        assert_eq!(g.select(&mut plain), vec![1, 2, 3]);
    }

    #[test]
    fn marginal_formation_fills_the_batch_when_the_queue_is_long_or_steps_amortize() {
        let mut f = Fixture::new(8);
        f.cost = flat_cost();
        let mut p = marginal(64);
        decoding(&mut f, &mut p, 40);
        // The 8th joins with 32 behind it: 33 * 13 ms > 7 * 25 ms.
        assert_eq!(f.select(&mut p), (1..=8).collect::<Vec<_>>());
        // test_cost: 10 ms per step, 0.1 ms per position; three requests share it.
        let mut g = Fixture::new(8);
        let mut q = marginal(64);
        decoding(&mut g, &mut q, 3);
        assert_eq!(g.select(&mut q), vec![1, 2, 3]);
    }

    /// The fallback that keeps the server stable: from `full_at_queue` requests on, the batch
    /// fills as under full formation, whatever the rule would say.
    #[test]
    fn marginal_formation_falls_back_to_full_batches_at_the_queue_limit() {
        for (queued, full_at_queue, expected_len) in [(3, 64, 2), (3, 3, 3), (6, 4, 6)] {
            let mut f = Fixture::new(8);
            f.cost = flat_cost();
            let mut p = marginal(full_at_queue);
            decoding(&mut f, &mut p, queued);
            assert_eq!(
                f.select(&mut p).len(),
                expected_len,
                "{queued} queued, full at {full_at_queue}"
            );
        }
    }

    #[test]
    fn marginal_formation_runs_a_prefill_only_when_it_ranks_first() {
        let mut f = Fixture::new(8);
        f.cost = flat_cost();
        let mut p = marginal(64);
        // 1 and 3 decode; 2 still owes a 1-token prefill (8 ms), which ranks it second.
        arrive(&mut f, 1, 0.0, 10, 2);
        arrive(&mut f, 2, 0.0, 1, 12);
        for id in 3..=12 {
            arrive(&mut f, id, 0.0, 10, 100);
        }
        for id in [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] {
            f.get_mut(id).prefilled = true;
        }
        f.announce(&mut p);
        let chosen = f.select(&mut p);
        assert_eq!(chosen[0], 1);
        assert!(!chosen.contains(&2), "{chosen:?}");
        assert!(
            chosen.contains(&3),
            "a decode behind the prefill still joins: {chosen:?}"
        );
        // Alone at the top, the prefill runs.
        p.on_finish(f.get(1));
        f.remove(1);
        assert_eq!(f.select(&mut p)[0], 2);
    }

    /// The rule's refusals count as the builder's misses: behind [`MISS_BUDGET`] declined
    /// prefills the scan stops, so a decision never walks a long queue.
    #[test]
    fn marginal_formation_stops_scanning_after_the_miss_budget() {
        for (prefills, last_joins) in [(10u64, true), (MISS_BUDGET as u64 + 6, false)] {
            let mut f = Fixture::new(8);
            let mut p = marginal(usize::MAX);
            arrive(&mut f, 1, 0.0, 10, 2);
            f.get_mut(1).prefilled = true;
            for id in 2..2 + prefills {
                arrive(&mut f, id, 0.0, 10, 5);
            }
            // Ranked last (predicted 1000 tokens), decoding: with test_cost's 10 ms per step it
            // would join the decode at the top.
            let last = 2 + prefills;
            arrive(&mut f, last, 0.0, 10, 1000);
            f.get_mut(last).prefilled = true;
            f.announce(&mut p);
            let chosen = f.select(&mut p);
            assert_eq!(chosen[0], 1);
            assert_eq!(chosen.contains(&last), last_joins, "{prefills}: {chosen:?}");
        }
    }
}
