//! The settings every ordering shares, as wrappers around it: aging ([`Aging`], a starvation
//! bound) and marginal batch formation ([`MarginalFormation`]). [`super::build_policy`] wraps an
//! ordering in them as `PolicyConfig` says, so `--max-wait-s` or `--batch-formation marginal`
//! mean the same for every policy, in `lapsd sim` and `lapsd serve` alike.

use super::queue::{offer_in_order, KeyedQueue, OrdF64, StarvationGuard};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::{FinishReason, IdMap, RequestId, RequestPhase, RequestState};

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

/// Tail bound relative to FCFS (`fcfs-slack`): the p99 latency should not exceed `slack` times
/// the p99 FCFS would have given the same requests. A request older than that bound is promoted
/// ahead of every unpromoted one, oldest first; the wrapped ordering fills the rest of the batch.
///
/// Why FCFS's p99: with light-tailed sizes FCFS has the best tail of any order (Stolyar and
/// Ramanan 2001; Boxma and Zwart 2007) while size-based orders (SRPT, Gittins) win the mean by
/// delaying long requests, which is what their p99 pays for; with heavy tails FCFS's p99 is
/// itself poor (everyone waits behind the giants). No order is best for both tails at once
/// (Wierman and Zwart, "Is tail-optimal scheduling possible?", Operations Research 2012), hence
/// a bound in FCFS's own units on top of the ordering rather than a second ordering.
///
/// - **FCFS's p99 is measured, not modelled**: [`ShadowFcfs`] replays the arrivals through a
///   FCFS queue of `max batch` slots with each request's measured service time, and the bound
///   is `slack` times the 99th percentile of the last [`SHADOW_WINDOW`] replayed latencies.
///   Exact at batch 1 (FCFS's waits are the work ahead); at larger batches the service times
///   are those measured in the wrapped ordering's batches. No bound before
///   [`SHADOW_MIN_SAMPLES`] replays.
/// - **Only when needed**: a p99 target lets 1% of requests run past it. Promotion is on only
///   while more than [`TAIL_BUDGET`] of the last [`REACHED_WINDOW`] finished requests reached
///   the bound; when fewer do (a heavy tail's few giants under a size-based order) they are
///   left to the ordering, since promoting them would hold the server for everyone else.
/// - **Giants are not carried**: a promoted request keeps its promotion for at most the 99th
///   percentile of service times; one that needs more is longer than 99% of requests and goes
///   back to the ordering for good (promoted for good, a heavy tail's giant turns the server
///   into FCFS, which measured 5x the mean of the plain ordering).
pub struct FcfsPromise {
    inner: Box<dyn Policy>,
    slack: f64,
    /// Unpromoted requests by arrival.
    waiting: KeyedQueue<OrdF64>,
    /// Promoted requests by arrival.
    promoted: KeyedQueue<OrdF64>,
    shadow: ShadowFcfs,
    /// Whether promotion is on (more than [`TAIL_BUDGET`] of recent requests reached the bound).
    active: bool,
    /// Whether each of the last [`REACHED_WINDOW`] finished requests reached the bound, and how
    /// many did.
    reached_bound: std::collections::VecDeque<bool>,
    reached_count: usize,
    /// Attained service of each promoted request when it was promoted.
    promoted_service_s: IdMap<f64>,
    max_batch: usize,
}

/// Finished requests over which the share that reached the bound is counted.
const REACHED_WINDOW: usize = 1000;
/// Promotion is on while more than this share of recent requests reached the bound (half of
/// what a p99 target allows, for margin).
pub const TAIL_BUDGET: f64 = 0.005;
/// Shadow latencies the bound's percentile is taken over.
pub const SHADOW_WINDOW: usize = 2000;
/// Shadow latencies needed before the bound applies.
pub const SHADOW_MIN_SAMPLES: usize = 100;
/// The bound's percentile is recomputed every this many replays.
const SHADOW_REFRESH: u64 = 50;

impl FcfsPromise {
    pub fn new(inner: Box<dyn Policy>, slack: f64) -> Self {
        Self {
            inner,
            slack,
            waiting: KeyedQueue::default(),
            promoted: KeyedQueue::default(),
            shadow: ShadowFcfs::default(),
            active: false,
            reached_bound: Default::default(),
            reached_count: 0,
            promoted_service_s: IdMap::default(),
            max_batch: 1,
        }
    }

    /// The latency bound in force (`None` until the shadow queue has enough replays).
    pub fn bound_s(&self) -> Option<f64> {
        self.shadow.p99_s().map(|p| self.slack * p)
    }
}

impl Policy for FcfsPromise {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn on_arrival(&mut self, request: &RequestState, now_s: f64) {
        self.waiting
            .insert(request.id(), OrdF64(request.spec.arrival_s));
        self.shadow.arrive(request.id(), request.spec.arrival_s);
        self.inner.on_arrival(request, now_s);
    }
    fn on_step(&mut self, request: &RequestState, now_s: f64) {
        let id = request.id();
        if let (Some(&since_s), Some(quantum_s)) = (
            self.promoted_service_s.get(&id),
            self.shadow.service_p99_s(),
        ) {
            if request.attained_service_s - since_s > quantum_s {
                // Longer than 99% of requests: a giant, left to the ordering for good.
                self.promoted.remove(id);
                self.promoted_service_s.remove(&id);
            }
        }
        self.inner.on_step(request, now_s);
    }
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.waiting.remove(id);
        self.promoted.remove(id);
        self.promoted_service_s.remove(&id);
        self.shadow
            .finish(id, request.attained_service_s, self.max_batch);
        let latency_s = (request.last_scheduled_s - request.spec.arrival_s).max(0.0);
        if let Some(bound_s) = self.bound_s() {
            if self.reached_bound.len() == REACHED_WINDOW
                && self.reached_bound.pop_front() == Some(true)
            {
                self.reached_count -= 1;
            }
            let reached = latency_s > bound_s;
            self.reached_bound.push_back(reached);
            self.reached_count += usize::from(reached);
            self.active = self.reached_bound.len() >= SHADOW_MIN_SAMPLES
                && self.reached_count as f64 > TAIL_BUDGET * self.reached_bound.len() as f64;
        }
        self.inner.on_finish(request);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        self.max_batch = batch.capacity().max_batch;
        if let Some(bound_s) = self.bound_s().filter(|_| self.active) {
            loop {
                let oldest = self.waiting.iter().next().copied();
                let Some((arrival, id)) = oldest else { break };
                if arrival.0 + bound_s > ctx.now_s {
                    break;
                }
                self.waiting.remove(id);
                self.promoted.insert(id, arrival);
                let service_s = ctx.requests.get(&id).map_or(0.0, |r| r.attained_service_s);
                self.promoted_service_s.insert(id, service_s);
            }
        }
        offer_in_order(batch, self.promoted.ids());
        self.inner.select(ctx, batch);
    }
    fn kv_victim(&self, ctx: &ScheduleContext<'_>, resident: &[RequestId]) -> Option<RequestId> {
        self.inner.kv_victim(ctx, resident)
    }
}

#[derive(Debug, Clone, Copy)]
struct ShadowEntry {
    arrival_s: f64,
    /// Its service time, once it finished.
    service_s: Option<f64>,
}

/// FCFS replayed on the side: requests in arrival order, each taking its measured service time
/// on the first of `slots` free servers (a multi-server FCFS queue). A request is replayed once
/// it and every earlier arrival have finished, so the replay lags the live system by the
/// longest request in it; the replayed latencies feed a rolling 99th percentile.
#[derive(Debug, Default)]
pub struct ShadowFcfs {
    /// Arrivals not yet replayed, in arrival order.
    pending: std::collections::VecDeque<ShadowEntry>,
    /// Where each pending id sits: its arrival sequence number.
    sequence: IdMap<u64>,
    /// Sequence number of `pending.front()`.
    front_sequence: u64,
    next_sequence: u64,
    /// When each FCFS slot frees (min-heap by time).
    slot_free_s: std::collections::BinaryHeap<std::cmp::Reverse<OrdF64>>,
    /// (shadow FCFS latency, service time) of the last replayed requests.
    replays_s: std::collections::VecDeque<(f64, f64)>,
    replayed: u64,
    p99_s: Option<f64>,
    service_p99_s: Option<f64>,
}

impl ShadowFcfs {
    pub fn arrive(&mut self, id: RequestId, arrival_s: f64) {
        self.sequence.insert(id, self.next_sequence);
        self.next_sequence += 1;
        self.pending.push_back(ShadowEntry {
            arrival_s,
            service_s: None,
        });
    }

    /// `id` left after `service_s` seconds in steps; replays what can be replayed on `slots`.
    pub fn finish(&mut self, id: RequestId, service_s: f64, slots: usize) {
        let Some(seq) = self.sequence.remove(&id) else {
            return;
        };
        if let Some(entry) = self.pending.get_mut((seq - self.front_sequence) as usize) {
            entry.service_s = Some(service_s.max(0.0));
        }
        while let Some(&ShadowEntry {
            arrival_s,
            service_s: Some(service_s),
        }) = self.pending.front()
        {
            self.pending.pop_front();
            self.front_sequence += 1;
            while self.slot_free_s.len() < slots.max(1) {
                self.slot_free_s
                    .push(std::cmp::Reverse(OrdF64(f64::NEG_INFINITY)));
            }
            let free_s = self
                .slot_free_s
                .pop()
                .map_or(f64::NEG_INFINITY, |std::cmp::Reverse(t)| t.0);
            let done_s = arrival_s.max(free_s) + service_s;
            self.slot_free_s.push(std::cmp::Reverse(OrdF64(done_s)));
            if self.replays_s.len() == SHADOW_WINDOW {
                self.replays_s.pop_front();
            }
            self.replays_s.push_back((done_s - arrival_s, service_s));
            self.replayed += 1;
            if self.replays_s.len() >= SHADOW_MIN_SAMPLES
                && self.replayed.is_multiple_of(SHADOW_REFRESH)
            {
                let p99 = |values: Vec<f64>| {
                    let mut sorted = values;
                    sorted.sort_by(f64::total_cmp);
                    let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
                    sorted.get(rank.saturating_sub(1)).copied()
                };
                self.p99_s = p99(self.replays_s.iter().map(|r| r.0).collect());
                self.service_p99_s = p99(self.replays_s.iter().map(|r| r.1).collect());
            }
        }
    }

    /// The rolling 99th percentile of the replayed latencies.
    pub fn p99_s(&self) -> Option<f64> {
        self.p99_s
    }

    /// The 99th percentile of the same requests' service times.
    pub fn service_p99_s(&self) -> Option<f64> {
        self.service_p99_s
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

    #[test]
    fn the_shadow_replays_fcfs_in_arrival_order_once_earlier_requests_finished() {
        let mut shadow = ShadowFcfs::default();
        for id in 1..=3 {
            shadow.arrive(id, 0.0);
        }
        // The third finishes first: nothing can be replayed before the first two are known.
        shadow.finish(3, 3.0, 1);
        assert!(shadow.replays_s.is_empty());
        shadow.finish(1, 1.0, 1);
        shadow.finish(2, 2.0, 1);
        let fcfs: Vec<f64> = shadow.replays_s.iter().map(|r| r.0).collect();
        assert_eq!(
            fcfs,
            vec![1.0, 3.0, 6.0],
            "one slot: waits are the work ahead"
        );
        // Two slots: the long first request holds one, the others share the second.
        let mut two = ShadowFcfs::default();
        for id in 1..=3 {
            two.arrive(id, 0.0);
        }
        for (id, service_s) in [(1, 4.0), (2, 1.0), (3, 1.0)] {
            two.finish(id, service_s, 2);
        }
        let fcfs: Vec<f64> = two.replays_s.iter().map(|r| r.0).collect();
        assert_eq!(fcfs, vec![4.0, 1.0, 2.0]);
    }

    /// Feeds `n` finished requests 10 s apart, 1 s of service each (shadow FCFS latency 1 s, so
    /// the bound is `slack` s); every `late_every`-th took 50 s instead of 1 s.
    fn warm_up(p: &mut FcfsPromise, f: &mut Fixture, n: u64, late_every: u64) {
        for i in 0..n {
            let id = 10_000 + i;
            let arrival_s = i as f64 * 10.0;
            arrive(f, id, arrival_s, 10, 10);
            p.on_arrival(f.get(id), arrival_s);
            let r = f.get_mut(id);
            r.generated_tokens = 10;
            r.attained_service_s = 1.0;
            r.last_scheduled_s = arrival_s + if i % late_every == 0 { 50.0 } else { 1.0 };
            r.phase = RequestPhase::Finished(FinishReason::Stop);
            p.on_finish(f.get(id));
            f.remove(id);
        }
    }

    fn tail_bound_case(late_every: u64) -> (FcfsPromise, Fixture) {
        let mut f = Fixture::new(1);
        let mut p = FcfsPromise::new(Box::<Srpt>::default(), 1.5);
        warm_up(&mut p, &mut f, 200, late_every);
        assert_eq!(p.bound_s(), Some(1.5), "1.5 x the shadow p99 of 1 s");
        // An old long request and a young short one: SRPT alone runs the short one.
        f.now_s = 3000.0;
        arrive(&mut f, 1, 2998.0, 10, 1000);
        arrive(&mut f, 2, 2999.9, 10, 10);
        p.on_arrival(f.get(1), 2998.0);
        p.on_arrival(f.get(2), 2999.9);
        (p, f)
    }

    #[test]
    fn the_tail_bound_promotes_requests_past_it_when_many_reach_it() {
        // One in ten took 50 s (past the bound): promotion on.
        let (mut p, mut f) = tail_bound_case(10);
        assert_eq!(f.select(&mut p), vec![1], "2 s old > 1.5 s bound");
        // A promoted request that needs more than the p99 service time (1 s) is a giant: it
        // goes back to the ordering for good.
        f.get_mut(1).attained_service_s = 1.5;
        p.on_step(f.get(1), 3000.0);
        assert_eq!(f.select(&mut p), vec![2]);
    }

    #[test]
    fn the_tail_bound_leaves_the_order_alone_when_few_reach_it() {
        // One in 1000 (less than the 0.5% budget): the ordering decides.
        let (mut p, mut f) = tail_bound_case(1000);
        assert_eq!(f.select(&mut p), vec![2]);
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
