//! `laps-sd` without its least-attained-service phase (`las_phase = false`, ours): LAPS-SD's
//! execution-time estimate applied from arrival. Every request, every step, is ranked by its estimated remaining
//! execution time (shortest first, preemptive):
//!
//! `T = prefill_s(context) [if its KV must still be computed]
//!      + L_rem * (n*T_draft + T_target) / (n*A + 1)`
//!
//! with L_rem the predicted remaining tokens, n the speculation length and the step costs at
//! batch 1 as in `laps-sd` (the paper's estimate), and A the acceptance rate *shrunk toward a
//! prior*: `A = (accepted + w*A_prior) / (drafted + w)`, `w` = [`PRIOR_WEIGHT_TOKENS`] drafted
//! tokens, `A_prior` the pooled acceptance rate of the requests finished so far (0 before any).
//! A request's own rate takes over as its drafts accumulate, which is the paper's "acceptance
//! rate learnt while decoding" without a stability test or a phase in which the estimate is
//! ignored.
//!
//! Why: where reply lengths vary little (ShareGPT at 1/8 scale: CV^2 0.40) least attained
//! service, which LAPS-SD uses until a request's rate is stable, loses to FCFS
//! (docs/scheduling.md); and on the embedded model on 2 CPU cores a long prompt's prefill costs
//! as much as dozens of decode steps (docs/results/2026-11-29-served.md), which the paper's
//! estimate (decode only) ignores.
//!
//! This is `laps-sd` with `las_phase = false` (`PolicyConfig`); it reports the name `laps-sd`.
//! Aging and marginal batch formation (first measured with this ordering) are the shared
//! settings of every ordering (`compose`, `BatchFormation`).
//!
//! Keys are refreshed lazily in `select` (which brings the cost model) for arrivals and batch
//! members: O(b log n) per step. The prior changes only when a request finishes (or is
//! cancelled: its drafts count too; a request's last step, which the scheduler reports by
//! finishing it, is not pooled); when it has moved by more than [`PRIOR_REKEY_THRESHOLD`] since
//! the queued keys were computed, every queued request is re-keyed, O(n log n), which happens a
//! bounded number of times as the pooled rate settles. A request whose KV is freed while it waits
//! keeps a key without the recompute cost (no hook reports the eviction), as in `oracle`.

use super::queue::{offer_in_order, LazyKeyedQueue, OrdF64};
use super::{execution_time_s, BatchBuilder, Policy, ScheduleContext};
use crate::cost::StepCostModel;
use crate::request::{IdMap, RequestState};

/// Drafted tokens' worth of weight the prior acceptance rate carries against a request's own.
pub const PRIOR_WEIGHT_TOKENS: f64 = 8.0;

/// How far the pooled prior may move before every queued key is recomputed with it (requests
/// keyed with an older prior would otherwise be ordered against newer ones on different terms).
pub const PRIOR_REKEY_THRESHOLD: f64 = 0.02;

type Key = (i32, OrdF64, OrdF64);

#[derive(Debug, Default)]
pub struct LapsSdSrpt {
    queue: LazyKeyedQueue<Key>,
    /// Latest (accepted, drafted) of each live request, pooled into the prior when it finishes.
    counts: IdMap<(u64, u64)>,
    finished_accepted: u64,
    finished_drafted: u64,
    /// The prior the queued keys were computed with.
    keyed_prior: f64,
}

/// The acceptance rate the estimate uses: the request's own, shrunk toward `prior`.
pub fn shrunk_acceptance_rate(accepted: u64, drafted: u64, prior: f64) -> f64 {
    (accepted as f64 + PRIOR_WEIGHT_TOKENS * prior) / (drafted as f64 + PRIOR_WEIGHT_TOKENS)
}

/// Estimated remaining execution time at batch 1 (module header).
pub fn estimated_remaining_with_prefill_s(
    r: &RequestState,
    speculation_length: u32,
    cost: &dyn StepCostModel,
    prior_acceptance_rate: f64,
) -> f64 {
    let n = f64::from(speculation_length);
    let a = shrunk_acceptance_rate(
        r.acceptance.accepted_tokens,
        r.acceptance.drafted_tokens,
        prior_acceptance_rate,
    );
    execution_time_s(
        r,
        f64::from(r.predicted_remaining_tokens()),
        n * a + 1.0,
        speculation_length,
        cost,
    )
}

impl LapsSdSrpt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pooled acceptance rate of the finished requests (0 before any drafted token).
    pub fn prior_acceptance_rate(&self) -> f64 {
        if self.finished_drafted == 0 {
            0.0
        } else {
            self.finished_accepted as f64 / self.finished_drafted as f64
        }
    }
}

impl Policy for LapsSdSrpt {
    fn name(&self) -> &str {
        "laps-sd"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.mark_stale(request.id());
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        self.queue.mark_stale(request.id());
        self.counts.insert(
            request.id(),
            (
                request.acceptance.accepted_tokens,
                request.acceptance.drafted_tokens,
            ),
        );
    }
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.queue.remove(id);
        if let Some((accepted, drafted)) = self.counts.remove(&id) {
            self.finished_accepted += accepted;
            self.finished_drafted += drafted;
        }
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        let prior = self.prior_acceptance_rate();
        if (prior - self.keyed_prior).abs() > PRIOR_REKEY_THRESHOLD {
            self.queue.mark_all_stale();
            self.keyed_prior = prior;
        }
        self.queue.rekey(ctx.requests, |r| {
            let t = estimated_remaining_with_prefill_s(r, ctx.speculation_length, ctx.cost, prior);
            (
                r.spec.priority_or_default(),
                OrdF64(t),
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

    fn arrive(f: &mut Fixture, id: u64, t: f64, prompt: u32, predicted: u32) {
        f.arrive_with(id, t, prompt, 1000, |s| {
            s.predicted_output_tokens = Some(predicted)
        });
    }

    #[test]
    fn a_long_prompt_counts_against_a_request_before_its_prefill() {
        let mut f = Fixture::new(1);
        // Same predicted length and no acceptance known: request 1 first only by arrival, but
        // its 60000-token prompt costs 0.6 s to prefill, which request 2's does not.
        arrive(&mut f, 1, 0.0, 60_000, 40);
        arrive(&mut f, 2, 0.1, 10, 40);
        let mut p = LapsSdSrpt::new();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![2]);
        let t1 = estimated_remaining_with_prefill_s(f.get(1), 4, &f.cost, 0.0);
        let t2 = estimated_remaining_with_prefill_s(f.get(2), 4, &f.cost, 0.0);
        // Step at batch 1: 4 drafts of 1 ms + verify 10 ms + 5 * 0.1 ms = 14.5 ms; 1 token/step;
        // the prefill yields the first of the 40 tokens.
        assert!(
            (t2 - (0.005 + 10.0 * 0.00001 + 39.0 * 0.0145)).abs() < 1e-9,
            "{t2}"
        );
        assert!(
            (t1 - (0.005 + 60_000.0 * 0.00001 + 39.0 * 0.0145)).abs() < 1e-9,
            "{t1}"
        );
    }

    #[test]
    fn a_shorter_newcomer_preempts_and_acceptance_shortens_the_estimate() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 10, 100);
        let mut p = LapsSdSrpt::new();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        // Request 1 accepts every draft: A = (40 + 0) / (40 + 8) after 10 steps of 4/4.
        for _ in 0..10 {
            f.step_one(&mut p, 1, 4, 4);
        }
        let a = shrunk_acceptance_rate(40, 40, 0.0);
        assert!((a - 40.0 / 48.0).abs() < 1e-12);
        // 100 - 50 = 50 tokens left at 4a + 1 tokens per step.
        let t1 = estimated_remaining_with_prefill_s(f.get(1), 4, &f.cost, 0.0);
        assert!((t1 - 50.0 * 0.0145 / (4.0 * a + 1.0)).abs() < 1e-9, "{t1}");
        // A newcomer predicted at 40 tokens, no drafts yet (A = prior 0): 40 steps ~ 0.58 s
        // + its prefill, longer than request 1's ~0.17 s: request 1 keeps running.
        arrive(&mut f, 2, 0.2, 10, 40);
        p.on_arrival(f.get(2), 0.2);
        assert_eq!(f.select(&mut p), vec![1]);
        // A newcomer predicted at 5 tokens is shorter: it preempts.
        arrive(&mut f, 3, 0.3, 10, 5);
        p.on_arrival(f.get(3), 0.3);
        assert_eq!(f.select(&mut p), vec![3]);
    }

    #[test]
    fn the_prior_pools_finished_requests() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 10, 10);
        let mut p = LapsSdSrpt::new();
        f.announce(&mut p);
        assert_eq!(p.prior_acceptance_rate(), 0.0);
        f.select(&mut p);
        f.step_one(&mut p, 1, 4, 3);
        f.step_one(&mut p, 1, 4, 1);
        p.on_finish(f.get(1));
        f.remove(1);
        assert!((p.prior_acceptance_rate() - 0.5).abs() < 1e-12);
        assert_eq!(p.keyed_prior, 0.0, "re-keyed on the next select");
        arrive(&mut f, 2, 0.0, 10, 500);
        p.on_arrival(f.get(2), 0.0);
        assert_eq!(f.select(&mut p), vec![2]);
        assert_eq!(p.keyed_prior, 0.5);
    }

    /// A request keyed before the prior moved is re-keyed with the new prior, so it is not
    /// ordered against a later arrival with the same prediction on different terms.
    #[test]
    fn queued_keys_follow_the_prior() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 10, 4);
        arrive(&mut f, 2, 0.0, 10, 40);
        let mut p = LapsSdSrpt::new();
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        let before = p.queue.key(2).expect("queued").1 .0;
        f.step_one(&mut p, 1, 4, 4);
        p.on_finish(f.get(1));
        f.remove(1);
        assert_eq!(f.select(&mut p), vec![2]);
        let after = p.queue.key(2).expect("queued").1 .0;
        // Prior 0 -> 1 (4 of 4 accepted) and request 2 has not drafted: its 39 decode tokens
        // take 1 / (4 * 8/8 + 1) of the steps; its prefill part is unchanged.
        let prefill_s = 0.005 + 10.0 * 0.00001;
        assert!(
            (before - (prefill_s + 39.0 * 0.0145)).abs() < 1e-9,
            "{before}"
        );
        assert!(
            (after - (prefill_s + 39.0 * 0.0145 / 5.0)).abs() < 1e-9,
            "{after}"
        );
    }
}
