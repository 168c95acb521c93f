//! Test fixtures shared by the policy tests: a request table, a running set and a way to run a
//! policy's `select` and fake steps without the full scheduler.

use crate::request::IdMap;

use crate::batch::Capacity;
use crate::cost::LinearCost;
use crate::policy::{BatchBuilder, Policy, ScheduleContext};
use crate::request::{RequestId, RequestPhase, RequestSpec, RequestState};

/// A cheap linear cost: draft 1 ms, verify 10 ms + 0.1 ms per token, prefill 5 ms + 0.01 ms/token.
pub(crate) fn test_cost() -> LinearCost {
    LinearCost {
        draft_base_s: 0.001,
        draft_per_seq_s: 0.0,
        verify_base_s: 0.010,
        verify_per_token_s: 0.0001,
        prefill_base_s: 0.005,
        prefill_per_token_s: 0.00001,
    }
}

pub(crate) struct Fixture {
    pub requests: IdMap<RequestState>,
    pub running: Vec<RequestId>,
    pub capacity: Capacity,
    pub k: u32,
    pub cost: LinearCost,
    pub now_s: f64,
    arrivals: Vec<RequestId>,
}

impl Fixture {
    /// Batch of `max_batch`, no token or KV limits to speak of, k = 4.
    pub fn new(max_batch: usize) -> Self {
        Self {
            requests: IdMap::default(),
            running: Vec::new(),
            capacity: Capacity {
                max_batch,
                max_step_tokens: 1 << 20,
                kv_budget_tokens: 1 << 30,
            },
            k: 4,
            cost: test_cost(),
            now_s: 0.0,
            arrivals: Vec::new(),
        }
    }

    pub fn arrive(&mut self, id: RequestId, arrival_s: f64, prompt: u32, max_tokens: u32) {
        self.arrive_with(id, arrival_s, prompt, max_tokens, |_| {});
    }

    pub fn arrive_with(
        &mut self,
        id: RequestId,
        arrival_s: f64,
        prompt: u32,
        max_tokens: u32,
        edit: impl FnOnce(&mut RequestSpec),
    ) {
        let mut spec = RequestSpec::new(id, arrival_s, prompt, max_tokens);
        edit(&mut spec);
        self.requests.insert(id, RequestState::new(spec));
        self.arrivals.push(id);
        self.now_s = self.now_s.max(arrival_s);
    }

    /// Tells `policy` of every request added so far, in the order they were added.
    pub fn announce(&self, policy: &mut dyn Policy) {
        for id in &self.arrivals {
            policy.on_arrival(&self.requests[id], self.now_s);
        }
    }

    pub fn get(&self, id: RequestId) -> &RequestState {
        &self.requests[&id]
    }

    pub fn get_mut(&mut self, id: RequestId) -> &mut RequestState {
        self.requests.get_mut(&id).expect("fixture: unknown id")
    }

    pub fn remove(&mut self, id: RequestId) {
        self.requests.remove(&id);
        self.running.retain(|&r| r != id);
    }

    /// Runs `policy.select` on the fixture; the chosen batch becomes the running set.
    pub fn select(&mut self, policy: &mut dyn Policy) -> Vec<RequestId> {
        let chosen = {
            let ctx = ScheduleContext {
                now_s: self.now_s,
                requests: &self.requests,
                running: &self.running,
                speculation_length: self.k,
                cost: &self.cost,
            };
            let mut batch = BatchBuilder::new(self.capacity, &self.requests, self.k, &self.cost);
            policy.select(&ctx, &mut batch);
            batch.chosen().to_vec()
        };
        for (id, r) in self.requests.iter_mut() {
            if chosen.contains(id) {
                r.phase = RequestPhase::Running;
            } else if r.phase == RequestPhase::Running {
                r.phase = RequestPhase::Preempted { kv_resident: true };
            }
        }
        self.running = chosen.clone();
        chosen
    }

    /// `steps` fake steps of `ids`: each produces one token (no drafts) and takes 10 ms.
    pub fn run_steps(&mut self, policy: &mut dyn Policy, ids: &[RequestId], steps: u32) {
        for _ in 0..steps {
            for &id in ids {
                self.step_one(policy, id, 0, 0);
            }
            self.now_s += 0.01;
        }
        self.running = ids.to_vec();
    }

    /// One fake step of `id` that drafted `drafted` tokens and accepted `accepted`.
    pub fn step_one(
        &mut self,
        policy: &mut dyn Policy,
        id: RequestId,
        drafted: u32,
        accepted: u32,
    ) {
        let now_s = self.now_s + 0.01;
        let r = self.get_mut(id);
        r.prefilled = true;
        r.phase = RequestPhase::Running;
        if drafted > 0 {
            r.acceptance.record_step(drafted, accepted, 4);
        }
        r.generated_tokens += accepted + 1;
        r.attained_service_passes += 1;
        r.attained_service_s += 0.01;
        r.last_scheduled_s = now_s;
        policy.on_step(&self.requests[&id], now_s);
    }
}
