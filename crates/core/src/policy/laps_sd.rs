//! `laps-sd` and its variants: LAPS-SD, "Semi-Clairvoyant Scheduling of Speculative Decoding
//! Requests to Minimize LLM Inference Latency" (Li, Chen, Li; arXiv 2505.17074, IJCAI 2025),
//! Algorithm 1.
//!
//! - K = `num_queues` priority queues with cumulative attained-service thresholds
//!   `first_threshold_passes * 2^i` target passes (16, 32, 64, ... by default). Every new request
//!   is non-perceptible and enters the highest queue (attained service 0).
//! - Inter-queue: the highest non-empty queue is served first; requests are preempted across
//!   queues (every step re-selects). A non-perceptible request moves down when its attained
//!   service crosses its queue's threshold; the last queue keeps it. Within a queue,
//!   non-perceptible requests are served FCFS.
//! - Intra-queue, semi-clairvoyant: once the scheduler marks a request *perceptible* (its
//!   acceptance rate passed the `StabilityRule`), its remaining execution time is estimated as
//!   `T = L_rem * (n*T_draft + T_target) / (n*A + 1)`, with L_rem the predicted remaining tokens
//!   (prediction minus generated, at least 1), A the measured acceptance rate (accepted /
//!   drafted), n the speculation length, T_draft = `draft_s(1)` and T_target = `verify_s(1, n)`.
//!   Perceptible requests are served shortest T first. We take the step costs at batch 1: at any
//!   one step the batch size is common to every request, so it scales every T alike and cannot
//!   change the order (and keys need not be recomputed when the batch size changes).
//!
//! Where perceptible requests rank (the paper is not explicit). Default (`laps-sd`): a request
//! stays in the queue where it became perceptible (it is no longer demoted) and, within that
//! queue, comes after the non-perceptible requests, ordered by T among the perceptible ones.
//! Reasoning: the queues keep their meaning (less attained service first, as in Algorithm 1's
//! inter-queue rule), newcomers keep the short exploration phase that makes them perceptible
//! (ordering them behind every known-remaining request would starve them before their size is
//! learnt), and inside a queue the semi-clairvoyant order applies to those whose estimate exists.
//! Ablations (`perceptible_placement`): `laps-sd[perceptible-placement=first]` (every perceptible request, by T, ahead of every
//! non-perceptible one) and `laps-sd[perceptible-placement=last]` (behind every non-perceptible one).
//!
//! Settings (fields of `PolicyConfig`, never changing the default reading above):
//! `tokens_per_step = mean-accepted-length` estimates tokens per step from the measured mean
//! accepted length (accepted + 1 per step) instead of n*A + 1; with a fixed n,
//! accepted/drafted = mean accepted / n, so the two differ only where steps drafted fewer than
//! n tokens (the last steps before `max_tokens`). Aging (`max_wait_s`) and batch formation are
//! the shared settings of every ordering (`compose`). `las_phase = false` replaces the algorithm
//! by its estimate-only form (`laps_sd_srpt`).
//!
//! Key: (client priority, (rank class, level), sub-key, arrival, id) where the sub-key is the
//! arrival time for non-perceptible requests and T for perceptible ones. Keys of arrivals and
//! batch members are refreshed lazily in `select` (which brings the cost model): O(b log n).

use crate::request::IdMap;
use serde::{Deserialize, Serialize};

use super::queue::{offer_in_order, LazyKeyedQueue, OrdF64};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::cost::StepCostModel;
use crate::request::{RequestId, RequestState};

/// Where perceptible requests rank relative to non-perceptible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PerceptiblePlacement {
    #[default]
    /// In the queue where they became perceptible, after its non-perceptible requests.
    WithinQueue,
    /// Ahead of every non-perceptible request.
    First,
    /// Behind every non-perceptible request.
    Last,
}

/// How LAPS-SD is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct LapsSdConfig {
    pub num_queues: usize,
    pub first_threshold_passes: u64,
    pub placement: PerceptiblePlacement,
    /// Tokens per step from the measured mean accepted length instead of n*A + 1.
    pub mean_accepted_length: bool,
}

type Key = (i32, (u8, usize), OrdF64, OrdF64);

#[derive(Debug)]
pub struct LapsSd {
    config: LapsSdConfig,
    queue: LazyKeyedQueue<Key>,
    /// Queue a perceptible request was in when it became perceptible.
    frozen_level: IdMap<usize>,
    /// Queue each request is in (as of its last key refresh).
    levels: IdMap<usize>,
}

/// LAPS-SD's estimate of the remaining execution time (seconds at batch 1), or `None` before
/// any SD step. `mean_accepted_length` selects our variant's tokens-per-step estimate.
pub fn estimated_remaining_s(
    r: &RequestState,
    speculation_length: u32,
    cost: &dyn StepCostModel,
    mean_accepted_length: bool,
) -> Option<f64> {
    let n = f64::from(speculation_length);
    let tokens_per_step = if mean_accepted_length {
        r.acceptance.mean_accepted_length()?
    } else if speculation_length == 0 {
        1.0
    } else {
        n * r.acceptance.acceptance_rate()? + 1.0
    };
    let step_s = cost.sd_step_s(1, speculation_length);
    Some(f64::from(r.predicted_remaining_tokens()) * step_s / tokens_per_step)
}

/// The queue of LAPS-SD's least-attained-service phase for `attained_passes`: queue `l` holds
/// requests below a cumulative threshold of `first_threshold_passes * 2^l` passes, the last
/// queue the rest (the server reports the levels a request visited with the same rule).
pub fn attained_service_level(
    attained_passes: u64,
    first_threshold_passes: u64,
    num_queues: usize,
) -> usize {
    let last = num_queues.saturating_sub(1);
    (0..last)
        .find(|&l| attained_passes < first_threshold_passes.saturating_mul(1u64 << l.min(62)))
        .unwrap_or(last)
}

impl LapsSd {
    pub fn new(config: LapsSdConfig) -> Self {
        Self {
            config,
            queue: LazyKeyedQueue::default(),
            frozen_level: Default::default(),
            levels: Default::default(),
        }
    }

    /// Cumulative attained-service threshold (passes) of queue `level`.
    pub fn threshold_passes(&self, level: usize) -> u64 {
        self.config
            .first_threshold_passes
            .saturating_mul(1u64 << level.min(62))
    }

    /// Queue of a non-perceptible request with this attained service.
    pub fn level_for(&self, attained_passes: u64) -> usize {
        attained_service_level(
            attained_passes,
            self.config.first_threshold_passes,
            self.config.num_queues,
        )
    }

    /// The queue `id` is in (perceptible: frozen), if known to the policy.
    pub fn level_of(&self, id: RequestId) -> Option<usize> {
        self.levels.get(&id).copied()
    }

    fn key(&mut self, r: &RequestState, k: u32, cost: &dyn StepCostModel) -> Key {
        let priority = r.spec.priority_or_default();
        let arrival = OrdF64(r.spec.arrival_s);
        let estimate = if r.perceptible {
            estimated_remaining_s(r, k, cost, self.config.mean_accepted_length)
        } else {
            None
        };
        let Some(t) = estimate else {
            let level = self.level_for(r.attained_service_passes);
            self.levels.insert(r.id(), level);
            let rank = match self.config.placement {
                PerceptiblePlacement::WithinQueue => (0, 2 * level),
                PerceptiblePlacement::First => (1, level),
                PerceptiblePlacement::Last => (0, level),
            };
            return (priority, rank, arrival, arrival);
        };
        let current = self.level_for(r.attained_service_passes);
        let level = *self.frozen_level.entry(r.id()).or_insert(current);
        self.levels.insert(r.id(), level);
        let rank = match self.config.placement {
            PerceptiblePlacement::WithinQueue => (0, 2 * level + 1),
            PerceptiblePlacement::First => (0, 0),
            PerceptiblePlacement::Last => (1, 0),
        };
        (priority, rank, OrdF64(t), arrival)
    }
}

impl Policy for LapsSd {
    fn name(&self) -> &str {
        "laps-sd"
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
        self.frozen_level.remove(&id);
        self.levels.remove(&id);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.rekey(ctx.requests, |r| {
            self.key(r, ctx.speculation_length, ctx.cost)
        });
        self.queue = queue;
        offer_in_order(batch, self.queue.ids());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    #[test]
    fn attained_service_levels_double_and_cap() {
        assert_eq!(attained_service_level(0, 16, 4), 0);
        assert_eq!(attained_service_level(15, 16, 4), 0);
        assert_eq!(attained_service_level(16, 16, 4), 1);
        assert_eq!(attained_service_level(31, 16, 4), 1);
        assert_eq!(attained_service_level(32, 16, 4), 2);
        assert_eq!(attained_service_level(64, 16, 4), 3);
        assert_eq!(attained_service_level(10_000, 16, 4), 3);
        assert_eq!(attained_service_level(10_000, 16, 1), 0);
    }

    fn config(placement: PerceptiblePlacement) -> LapsSdConfig {
        LapsSdConfig {
            num_queues: 3,
            first_threshold_passes: 4,
            placement,
            mean_accepted_length: false,
        }
    }

    /// Runs `steps` SD steps of `id` drafting 4 and accepting `accepted`; marks it perceptible
    /// when `perceptible` (the scheduler's job, done by hand here).
    fn sd_steps(
        f: &mut Fixture,
        p: &mut dyn Policy,
        id: u64,
        steps: u32,
        accepted: u32,
        perceptible: bool,
    ) {
        for _ in 0..steps {
            f.get_mut(id).perceptible = perceptible;
            f.step_one(p, id, 4, accepted);
            f.now_s += 0.01;
        }
        f.running = vec![id];
    }

    #[test]
    fn thresholds_double_and_the_last_queue_keeps() {
        let p = LapsSd::new(config(PerceptiblePlacement::WithinQueue));
        assert_eq!(
            (0..4).map(|l| p.threshold_passes(l)).collect::<Vec<_>>(),
            vec![4, 8, 16, 32]
        );
        assert_eq!(p.level_for(3), 0);
        assert_eq!(p.level_for(4), 1);
        assert_eq!(p.level_for(7), 1);
        assert_eq!(p.level_for(8), 2);
        assert_eq!(p.level_for(10_000), 2);
    }

    #[test]
    fn non_perceptible_request_moves_down_at_the_threshold() {
        let mut f = Fixture::new(1);
        f.arrive(1, 0.0, 10, 1000);
        f.arrive(2, 0.5, 10, 1000);
        let mut p = LapsSd::new(config(PerceptiblePlacement::WithinQueue));
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1], "both in queue 0: FCFS");
        sd_steps(&mut f, &mut p, 1, 3, 2, false);
        assert_eq!(f.select(&mut p), vec![1]);
        assert_eq!(p.level_of(1), Some(0));
        sd_steps(&mut f, &mut p, 1, 1, 2, false);
        assert_eq!(f.select(&mut p), vec![2], "1 crossed 4 passes: queue 1");
        assert_eq!(p.level_of(1), Some(1));
    }

    #[test]
    fn perceptible_requests_stop_moving_down_and_run_by_estimate() {
        let mut f = Fixture::new(1);
        // Same predicted remaining length; request 2 accepts more, so its T is smaller.
        for (id, t) in [(1, 0.0), (2, 0.1)] {
            f.arrive_with(id, t, 10, 1000, |s| s.predicted_output_tokens = Some(400));
        }
        let mut p = LapsSd::new(config(PerceptiblePlacement::WithinQueue));
        f.announce(&mut p);
        f.select(&mut p);
        sd_steps(&mut f, &mut p, 1, 2, 1, false);
        sd_steps(&mut f, &mut p, 1, 1, 1, true);
        sd_steps(&mut f, &mut p, 2, 2, 3, false);
        sd_steps(&mut f, &mut p, 2, 1, 3, true);
        assert_eq!(f.select(&mut p), vec![2]);
        assert_eq!((p.level_of(1), p.level_of(2)), (Some(0), Some(0)));
        // Past every threshold it stays in queue 0.
        sd_steps(&mut f, &mut p, 2, 20, 3, true);
        assert_eq!(f.select(&mut p), vec![2]);
        assert_eq!(p.level_of(2), Some(0));
        // T(1) = (400 - 6) * 14.5 ms / (4 * 0.25 + 1); T(2) = (400 - 12 - 4*20) * 14.5 ms / 4.
        let t1 = estimated_remaining_s(f.get(1), 4, &f.cost, false).unwrap();
        let t2 = estimated_remaining_s(f.get(2), 4, &f.cost, false).unwrap();
        assert!((t1 - 394.0 * 0.0145 / 2.0).abs() < 1e-9, "t1 = {t1}");
        assert!((t2 - 308.0 * 0.0145 / 4.0).abs() < 1e-9, "t2 = {t2}");
    }

    #[test]
    fn within_queue_non_perceptible_first_then_by_estimate() {
        let mut f = Fixture::new(3);
        for (id, t) in [(1, 0.0), (2, 0.1), (3, 0.2)] {
            f.arrive_with(id, t, 10, 1000, |s| s.predicted_output_tokens = Some(100));
        }
        let mut p = LapsSd::new(config(PerceptiblePlacement::WithinQueue));
        f.announce(&mut p);
        f.select(&mut p);
        sd_steps(&mut f, &mut p, 1, 1, 0, true); // perceptible, slow: T large
        sd_steps(&mut f, &mut p, 2, 1, 4, true); // perceptible, fast: T small
        f.get_mut(3).perceptible = false;
        assert_eq!(f.select(&mut p), vec![3, 2, 1]);
    }

    #[test]
    fn ablation_placements_order_differently() {
        let setup = |placement| {
            let mut f = Fixture::new(2);
            f.arrive_with(1, 0.0, 10, 1000, |s| s.predicted_output_tokens = Some(100));
            f.arrive(2, 1.0, 10, 1000);
            let mut p = LapsSd::new(config(placement));
            f.announce(&mut p);
            f.select(&mut p);
            // 1 perceptible in queue 0; 2 non-perceptible demoted to queue 2.
            sd_steps(&mut f, &mut p, 1, 1, 2, true);
            sd_steps(&mut f, &mut p, 2, 9, 2, false);
            (f, p)
        };
        let (mut f, mut p) = setup(PerceptiblePlacement::WithinQueue);
        assert_eq!(f.select(&mut p), vec![1, 2], "queue 0 before queue 2");
        assert_eq!(p.level_of(2), Some(2));
        let (mut f, mut p) = setup(PerceptiblePlacement::First);
        assert_eq!(f.select(&mut p), vec![1, 2]);
        let (mut f, mut p) = setup(PerceptiblePlacement::Last);
        assert_eq!(f.select(&mut p), vec![2, 1]);
    }

    #[test]
    fn aging_serves_the_starved_first() {
        let mut f = Fixture::new(1);
        f.arrive(1, 0.0, 10, 1000);
        f.arrive(2, 0.0, 10, 1000);
        let mut p = crate::policy::compose::Aging::new(
            Box::new(LapsSd::new(config(PerceptiblePlacement::WithinQueue))),
            1.0,
        );
        f.announce(&mut p);
        sd_steps(&mut f, &mut p, 2, 10, 2, false); // 2: queue 2, last ran at 0.1 s
        f.now_s = 0.5;
        sd_steps(&mut f, &mut p, 1, 2, 2, false); // 1: queue 0, last ran at 0.52 s
        f.now_s = 1.15;
        let mut plain = LapsSd::new(config(PerceptiblePlacement::WithinQueue));
        f.announce(&mut plain);
        assert_eq!(f.select(&mut plain), vec![1], "queue 0 first");
        assert_eq!(f.select(&mut p), vec![2], "2 waited 1.05 s > 1 s");
    }

    #[test]
    fn mean_accepted_length_variant_uses_measured_tokens_per_step() {
        let mut f = Fixture::new(1);
        f.arrive_with(1, 0.0, 10, 6, |s| s.predicted_output_tokens = Some(1000));
        let mut p = LapsSd::new(config(PerceptiblePlacement::WithinQueue));
        f.announce(&mut p);
        // Steps that drafted only 2 tokens (near max_tokens) and accepted both: A = 1,
        // n*A + 1 = 5 with n = 4, but the measured mean accepted length is 3.
        f.step_one(&mut p, 1, 2, 2);
        let r = f.get(1);
        let linear = estimated_remaining_s(r, 4, &f.cost, false).unwrap();
        let mal = estimated_remaining_s(r, 4, &f.cost, true).unwrap();
        assert!((linear * 5.0 - mal * 3.0).abs() < 1e-12);
    }
}
