//! `mlfq`: FastServe's skip-join multi-level feedback queue (Wu et al., 2023).
//!
//! - `num_queues` levels; level i has a quantum of `first_threshold_passes * 2^i` target passes
//!   (quanta doubling per level).
//! - Skip-join: a new request does not always enter the top queue. Its first iteration (the
//!   prefill) is expressed in decode-step equivalents, `prefill_s(prompt) / sd_step_s(1, k)`,
//!   and it joins the highest level whose quantum is at least that (long prompts skip levels).
//! - Demotion: once a request has received its level's quantum (passes since it entered the
//!   level), it moves to the tail of the next level; the last level keeps it.
//! - The highest non-empty level runs first, FCFS within a level (by the time of entering it);
//!   preemption at token (step) granularity.
//!
//! Not modelled: FastServe's proactive KV offload to host memory (the scheduler's KV mechanism
//! applies instead) and its starvation promotion. Key: (client priority, level, entry sequence).

use crate::request::IdMap;

use super::queue::{offer_in_order, KeyedQueue};
use super::{BatchBuilder, Policy, ScheduleContext};
use crate::request::{RequestId, RequestState};

#[derive(Debug, Clone, Copy)]
struct Entry {
    level: usize,
    /// Attained passes when it entered its level.
    level_start_passes: u64,
}

#[derive(Debug)]
pub struct Mlfq {
    num_queues: usize,
    first_quantum_passes: u64,
    queue: KeyedQueue<(i32, usize, u64)>,
    entries: IdMap<Entry>,
    /// Arrivals not yet placed (placing needs the cost model, which `select` brings).
    pending: Vec<(RequestId, i32)>,
    next_seq: u64,
}

impl Mlfq {
    pub fn new(num_queues: usize, first_quantum_passes: u64) -> Self {
        Self {
            num_queues: num_queues.max(1),
            first_quantum_passes: first_quantum_passes.max(1),
            queue: KeyedQueue::default(),
            entries: Default::default(),
            pending: Vec::new(),
            next_seq: 0,
        }
    }

    /// Quantum of `level` in target passes.
    pub fn quantum_passes(&self, level: usize) -> u64 {
        self.first_quantum_passes
            .saturating_mul(1u64 << level.min(62))
    }

    /// Skip-join: the highest level whose quantum covers a first iteration of
    /// `first_iteration_passes` decode-step equivalents.
    pub fn join_level(&self, first_iteration_passes: f64) -> usize {
        (0..self.num_queues)
            .find(|&l| self.quantum_passes(l) as f64 >= first_iteration_passes)
            .unwrap_or(self.num_queues - 1)
    }

    fn enqueue(&mut self, id: RequestId, priority: i32, entry: Entry) {
        self.entries.insert(id, entry);
        self.queue
            .insert(id, (priority, entry.level, self.next_seq));
        self.next_seq += 1;
    }

    /// The level `id` is in, if placed.
    pub fn level_of(&self, id: RequestId) -> Option<usize> {
        self.entries.get(&id).map(|e| e.level)
    }
}

impl Policy for Mlfq {
    fn name(&self) -> &str {
        "mlfq"
    }
    fn on_arrival(&mut self, request: &RequestState, _now_s: f64) {
        self.pending
            .push((request.id(), request.spec.priority_or_default()));
    }
    fn on_step(&mut self, request: &RequestState, _now_s: f64) {
        let id = request.id();
        let Some(entry) = self.entries.get(&id).copied() else {
            return;
        };
        let used = request
            .attained_service_passes
            .saturating_sub(entry.level_start_passes);
        if used >= self.quantum_passes(entry.level) && entry.level + 1 < self.num_queues {
            let demoted = Entry {
                level: entry.level + 1,
                level_start_passes: request.attained_service_passes,
            };
            self.enqueue(id, request.spec.priority_or_default(), demoted);
        }
    }
    fn on_finish(&mut self, request: &RequestState) {
        let id = request.id();
        self.queue.remove(id);
        self.entries.remove(&id);
        self.pending.retain(|(p, _)| *p != id);
    }
    fn select(&mut self, ctx: &ScheduleContext<'_>, batch: &mut BatchBuilder<'_>) {
        let step_s = ctx.cost.sd_step_s(1, ctx.speculation_length);
        for (id, priority) in std::mem::take(&mut self.pending) {
            let Some(r) = ctx.requests.get(&id) else {
                continue;
            };
            let first_iteration_passes = if step_s > 0.0 {
                ctx.cost.prefill_s(r.spec.prompt_tokens) / step_s
            } else {
                0.0
            };
            let entry = Entry {
                level: self.join_level(first_iteration_passes),
                level_start_passes: r.attained_service_passes,
            };
            self.enqueue(id, priority, entry);
        }
        offer_in_order(batch, self.queue.ids());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::StepCostModel;
    use crate::testutil::Fixture;

    #[test]
    fn skip_join_picks_the_level_from_prompt_length() {
        let mut f = Fixture::new(4);
        // Test cost: prefill 5 ms + 0.01 ms/token; SD step at k=4: 4 ms + 10.5 ms = 14.5 ms.
        f.arrive(1, 0.0, 100, 50); // 6 ms: < 1 step -> level 0
        f.arrive(2, 0.0, 4000, 50); // 45 ms: ~3.1 steps -> level 2 (quantum 4)
        f.arrive(3, 0.0, 1_000_000, 50); // 10 s: beyond every quantum -> last level
        let step_s = f.cost.sd_step_s(1, 4);
        assert!((step_s - 0.0145).abs() < 1e-12);
        let mut p = Mlfq::new(4, 1);
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1, 2, 3]);
        assert_eq!(p.level_of(1), Some(0));
        assert_eq!(p.level_of(2), Some(2));
        assert_eq!(p.level_of(3), Some(3));
    }

    #[test]
    fn demotes_after_the_quantum_and_fcfs_within_a_level() {
        let mut f = Fixture::new(1);
        f.arrive(1, 0.0, 10, 500);
        f.arrive(2, 1.0, 10, 500);
        let mut p = Mlfq::new(3, 2);
        f.announce(&mut p);
        assert_eq!(f.select(&mut p), vec![1]);
        f.run_steps(&mut p, &[1], 1);
        assert_eq!(p.level_of(1), Some(0));
        assert_eq!(f.select(&mut p), vec![1], "FCFS within level 0");
        f.run_steps(&mut p, &[1], 1);
        assert_eq!(p.level_of(1), Some(1), "quantum 2 used up");
        assert_eq!(f.select(&mut p), vec![2]);
        f.run_steps(&mut p, &[2], 2);
        assert_eq!(p.level_of(2), Some(1));
        // Both in level 1: 1 entered it first.
        assert_eq!(f.select(&mut p), vec![1]);
        f.run_steps(&mut p, &[1], 4);
        assert_eq!(p.level_of(1), Some(2), "quantum 4 at level 1");
        f.run_steps(&mut p, &[1], 100);
        assert_eq!(p.level_of(1), Some(2), "the last level keeps it");
    }
}
