//! `laps-sd-srpt` (ours): LAPS-SD's execution-time estimate applied from arrival, without the
//! least-attained-service phase. Every request, every step, is ranked by its estimated remaining
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
//! Why (measured, docs/e2e-results.md): on the embedded model on 2 CPU cores, reply lengths
//! vary little (ShareGPT CV^2 0.47) and least attained service, which LAPS-SD uses until a
//! request's rate is stable, loses to FCFS by far near saturation; and a long prompt's prefill
//! costs as much as dozens of decode steps, which the paper's estimate (decode only) ignores.
//!
//! Starvation bound (optional, `PolicyConfig::max_wait_s`, as `srpt`): a request that has not
//! run for `max_wait_s` is promoted ahead of all others until it finishes.
//!
//! Marginal batching (`laps-sd-srpt-mb`, ours): the same order, but a request joins the batch
//! only if the cost model says co-batching it saves more than it costs. Adding request j (the
//! batch already holds b requests, m requests rank behind j) makes this step longer by
//! `delta_j` (the marginal cost: its positions, plus the step's fixed part if it is the first
//! decode member) and saves the server `alone_j - delta_j` (its step run by itself later). The
//! delay hits the b members; the saving advances j and the m behind it. So j joins iff
//! `(1 + m) * (alone_j - delta_j) > b * delta_j`. With a cost that barely amortizes (SmolLM2 on
//! 2 CPU cores: ~13 ms fixed per step against ~26 ms per sequence at k = 4), a short queue runs a
//! small batch, shortest first (SRPT at batch 1 minimizes mean latency on a server with no
//! batching gain), and a long queue fills the batch for throughput. A prefill is charged in full
//! whether batched or not (the engine runs each prompt on its own), so it joins a non-empty
//! batch never: it runs when it ranks first. A request the rule declines is skipped, not a
//! stop: a decode ranked behind a prefill may still join.
//!
//! Keys are refreshed lazily in `select` (which brings the cost model) for arrivals and batch
//! members: O(b log n) per step. The prior changes only when a request finishes (or is
//! cancelled: its drafts count too; a request's last step, which the scheduler reports by
//! finishing it, is not pooled); when it has moved by more than [`PRIOR_REKEY_THRESHOLD`] since
//! the queued keys were computed, every queued request is re-keyed, O(n log n), which happens a
//! bounded number of times as the pooled rate settles. A request whose KV is freed while it waits
//! keeps a key without the recompute cost (no hook reports the eviction), as in `oracle`.

use super::queue::{offer_in_order, KeyedQueue, OrdF64, StarvationGuard};
use super::{execution_time_s, AddOutcome, BatchBuilder, Policy, ScheduleContext, MISS_BUDGET};
use crate::cost::StepCostModel;
use crate::request::{IdMap, RequestId, RequestState};

/// Drafted tokens' worth of weight the prior acceptance rate carries against a request's own.
pub const PRIOR_WEIGHT_TOKENS: f64 = 8.0;

/// How far the pooled prior may move before every queued key is recomputed with it (requests
/// keyed with an older prior would otherwise be ordered against newer ones on different terms).
pub const PRIOR_REKEY_THRESHOLD: f64 = 0.02;

type Key = (i32, OrdF64, OrdF64);

#[derive(Debug, Default)]
pub struct LapsSdSrpt {
    /// Marginal batching (`laps-sd-srpt-mb`, module header) instead of filling the batch.
    marginal_batching: bool,
    queue: KeyedQueue<Key>,
    aging: StarvationGuard,
    max_wait_s: Option<f64>,
    dirty: Vec<RequestId>,
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
    pub fn new(max_wait_s: Option<f64>) -> Self {
        Self {
            max_wait_s,
            ..Self::default()
        }
    }

    /// `laps-sd-srpt-mb`: the same order with marginal batching (module header).
    pub fn with_marginal_batching(max_wait_s: Option<f64>) -> Self {
        Self {
            marginal_batching: true,
            ..Self::new(max_wait_s)
        }
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
        if self.marginal_batching {
            "laps-sd-srpt-mb"
        } else {
            "laps-sd-srpt"
        }
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        self.dirty.push(request.id());
        if self.max_wait_s.is_some() {
            self.aging.on_arrival(request.id(), request.spec.arrival_s);
        }
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        self.dirty.push(request.id());
        self.counts.insert(
            request.id(),
            (
                request.acceptance.accepted_tokens,
                request.acceptance.drafted_tokens,
            ),
        );
        if self.max_wait_s.is_some() {
            self.aging.on_step(request.id(), request.last_scheduled_s);
        }
    }
    fn on_finish(&mut self, id: RequestId) {
        self.queue.remove(id);
        self.aging.remove(id);
        if let Some((accepted, drafted)) = self.counts.remove(&id) {
            self.finished_accepted += accepted;
            self.finished_drafted += drafted;
        }
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        let prior = self.prior_acceptance_rate();
        if (prior - self.keyed_prior).abs() > PRIOR_REKEY_THRESHOLD {
            let queued: Vec<RequestId> = self.queue.ids().collect();
            self.dirty.extend(queued);
            self.keyed_prior = prior;
        }
        for id in std::mem::take(&mut self.dirty) {
            if let Some(r) = ctx.requests.get(&id) {
                let t =
                    estimated_remaining_with_prefill_s(r, ctx.speculation_length, ctx.cost, prior);
                let key = (
                    r.spec.priority_or_default(),
                    OrdF64(t),
                    OrdF64(r.spec.arrival_s),
                );
                self.queue.insert(id, key);
            }
        }
        if let Some(max_wait_s) = self.max_wait_s {
            self.aging.offer_starved(batch, ctx.now_s, max_wait_s);
        }
        if self.marginal_batching {
            offer_marginal(ctx, batch, &self.queue);
        } else {
            offer_in_order(batch, self.queue.ids());
        }
    }
}

/// Offers `queue` in key order under the marginal batching rule (module header).
fn offer_marginal(
    ctx: &ScheduleContext<'_>,
    batch: &mut BatchBuilder<'_>,
    queue: &KeyedQueue<Key>,
) {
    let k = ctx.speculation_length;
    let decode_s =
        |members: usize, positions: u64| ctx.cost.decode_s(members, k, positions as usize);
    // Decode members and verified positions chosen so far (aging may have promoted some).
    let (mut members, mut positions) = (0usize, 0u64);
    // What a request adds to the decode part of the step: (members, positions).
    let decode_share = |r: &RequestState| {
        if r.needs_prefill() {
            (0, 0)
        } else {
            (1, BatchBuilder::step_tokens_of(r, k))
        }
    };
    for r in batch.chosen().iter().filter_map(|id| ctx.requests.get(id)) {
        let (m, p) = decode_share(r);
        members += m;
        positions += p;
    }
    // Requests the rule declined: bounded like the builder's misses, so a decision stays
    // O(b + MISS_BUDGET) however many prefills wait (a decode is declined only when fewer than
    // about b * delta / gain requests rank behind it).
    let mut declined = 0;
    let queued = queue.len();
    for (rank, id) in queue.ids().enumerate() {
        if batch.should_stop() || declined >= MISS_BUDGET {
            break;
        }
        let Some(r) = ctx.requests.get(&id) else {
            continue;
        };
        let (delta_s, alone_s) = if r.needs_prefill() {
            let prefill_s = ctx.cost.prefill_s(r.context_tokens());
            (prefill_s, prefill_s)
        } else {
            let own = BatchBuilder::step_tokens_of(r, k);
            (
                decode_s(members + 1, positions + own) - decode_s(members, positions),
                decode_s(1, own),
            )
        };
        let behind = queued.saturating_sub(rank + 1) as f64;
        let worth =
            batch.is_empty() || (1.0 + behind) * (alone_s - delta_s) > batch.len() as f64 * delta_s;
        if !worth {
            declined += 1;
        } else if batch.try_add(id) == AddOutcome::Added {
            let (m, p) = decode_share(r);
            members += m;
            positions += p;
        }
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
        let mut p = LapsSdSrpt::new(None);
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
        let mut p = LapsSdSrpt::new(None);
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
    fn the_prior_pools_finished_requests_and_aging_bounds_the_wait() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 10, 10);
        let mut p = LapsSdSrpt::new(Some(1.0));
        f.announce(&mut p);
        assert_eq!(p.prior_acceptance_rate(), 0.0);
        f.select(&mut p);
        f.step_one(&mut p, 1, 4, 3);
        f.step_one(&mut p, 1, 4, 1);
        p.on_finish(1);
        f.remove(1);
        assert!((p.prior_acceptance_rate() - 0.5).abs() < 1e-12);
        assert_eq!(p.keyed_prior, 0.0, "re-keyed on the next select");
        // A long request waits behind a stream of short ones until aging promotes it.
        arrive(&mut f, 2, 0.0, 10, 500);
        p.on_arrival(f.get(2), 0.0);
        arrive(&mut f, 3, 0.0, 10, 5);
        p.on_arrival(f.get(3), 0.0);
        assert_eq!(f.select(&mut p), vec![3]);
        f.now_s = 2.0;
        assert_eq!(f.select(&mut p), vec![2], "waited 2 s > 1 s");
        assert_eq!(p.keyed_prior, 0.5);
    }

    /// A request keyed before the prior moved is re-keyed with the new prior, so it is not
    /// ordered against a later arrival with the same prediction on different terms.
    #[test]
    fn queued_keys_follow_the_prior() {
        let mut f = Fixture::new(1);
        arrive(&mut f, 1, 0.0, 10, 4);
        arrive(&mut f, 2, 0.0, 10, 40);
        let mut p = LapsSdSrpt::new(None);
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        let before = p.queue.key(2).expect("queued").1 .0;
        f.step_one(&mut p, 1, 4, 4);
        p.on_finish(1);
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
    fn decoding(f: &mut Fixture, p: &mut LapsSdSrpt, n: u64) {
        for id in 1..=n {
            arrive(f, id, 0.0, 10, 10 * id as u32);
            f.get_mut(id).prefilled = true;
        }
        f.announce(p);
    }

    #[test]
    fn marginal_batching_runs_a_short_queue_in_a_small_batch() {
        let mut f = Fixture::new(8);
        f.cost = flat_cost();
        let mut p = LapsSdSrpt::with_marginal_batching(None);
        decoding(&mut f, &mut p, 3);
        // Request 2: alone 13 + 25 ms, adds 25 ms; saves 13 ms for itself and request 3
        // (26 > 1 * 25): joins. Request 3: saves 13 ms for itself only, delays two (13 < 50).
        assert_eq!(f.select(&mut p), vec![1, 2]);
        // Without the rule the batch takes all three.
        let mut plain = LapsSdSrpt::new(None);
        let mut g = Fixture::new(8);
        g.cost = flat_cost();
        decoding(&mut g, &mut plain, 3);
        assert_eq!(g.select(&mut plain), vec![1, 2, 3]);
    }

    #[test]
    fn marginal_batching_fills_the_batch_when_the_queue_is_long_or_steps_amortize() {
        let mut f = Fixture::new(8);
        f.cost = flat_cost();
        let mut p = LapsSdSrpt::with_marginal_batching(None);
        decoding(&mut f, &mut p, 40);
        // The 8th joins with 32 behind it: 33 * 13 ms > 7 * 25 ms.
        assert_eq!(f.select(&mut p), (1..=8).collect::<Vec<_>>());
        // test_cost: 10 ms per step, 0.1 ms per position; three requests share it.
        let mut g = Fixture::new(8);
        let mut q = LapsSdSrpt::with_marginal_batching(None);
        decoding(&mut g, &mut q, 3);
        assert_eq!(g.select(&mut q), vec![1, 2, 3]);
    }

    #[test]
    fn marginal_batching_runs_a_prefill_only_when_it_ranks_first() {
        let mut f = Fixture::new(8);
        f.cost = flat_cost();
        let mut p = LapsSdSrpt::with_marginal_batching(None);
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
        f.remove(1);
        p.on_finish(1);
        assert_eq!(f.select(&mut p)[0], 2);
    }

    /// The rule's refusals are bounded like the builder's misses: behind [`MISS_BUDGET`]
    /// declined prefills the scan stops, so a decision never walks a long queue.
    #[test]
    fn marginal_batching_stops_scanning_after_the_miss_budget() {
        for (prefills, last_joins) in [(10u64, true), (MISS_BUDGET as u64 + 6, false)] {
            let mut f = Fixture::new(8);
            let mut p = LapsSdSrpt::with_marginal_batching(None);
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
