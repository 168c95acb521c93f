//! Building one step's batch: what a step may hold ([`Capacity`]) and the builder every policy
//! offers requests to ([`BatchBuilder`]), which enforces the batch, step-token and KV limits and
//! marginal batch formation. The scheduler owns the mechanism; policies only choose the order
//! (vLLM's split of policy and mechanism).

use serde::{Deserialize, Serialize};

use crate::cost::StepCostModel;
use crate::request::{IdMap, IdSet, RequestId, RequestState};

/// What one step may hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Most requests in one step.
    pub max_batch: usize,
    /// Most tokens processed in one step: prefill tokens plus (k + 1) per decoding request.
    /// A prefill larger than this runs in chunks of at most this many tokens, one per step.
    pub max_step_tokens: u64,
    /// KV memory budget in tokens, summed over resident requests (with lookahead).
    pub kv_budget_tokens: u64,
}

/// Why [`BatchBuilder::try_add`] did not add a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    /// The batch is at `max_batch`: stop offering.
    BatchFull,
    /// This request does not fit the step-token or KV budget next to those already chosen;
    /// a smaller one might.
    DoesNotFit,
    /// Already in the batch, or not a runnable request.
    Rejected,
    /// Marginal formation: co-batching it would raise the total latency (see
    /// [`BatchBuilder::use_marginal_formation`]); counted as a miss.
    NotWorthBatching,
}

/// How many `DoesNotFit` answers one selection may collect before [`BatchBuilder::should_stop`]
/// says stop. Bounds the work of a decision when memory is tight (without it, a policy could scan
/// the whole queue every step looking for something small enough). Work conservation is not
/// affected: the first request offered to an empty batch always fits.
pub const MISS_BUDGET: usize = 64;

/// The batch being built for the next step; enforces [`Capacity`] (max batch, step-token budget,
/// KV budget including the lookahead of k+1 tokens).
pub struct BatchBuilder<'a> {
    pub(crate) capacity: Capacity,
    pub(crate) requests: &'a IdMap<RequestState>,
    pub(crate) cost: &'a dyn StepCostModel,
    pub(crate) speculation_length: u32,
    pub(crate) chosen: Vec<RequestId>,
    pub(crate) chosen_set: IdSet,
    pub(crate) step_tokens: u64,
    pub(crate) kv_tokens: u64,
    /// Prefill tokens each chosen prefill computes this step (its whole remaining prefill, or a
    /// chunk of it when that exceeds the step budget).
    pub(crate) prefill_chunks: IdMap<u32>,
    /// The request whose chunked prefill is under way, if any, and the KV it holds. At most one
    /// runs at a time (vLLM's default `max_num_partial_prefills` is 1 too): its chunks' KV is
    /// never evicted (evicting it would throw the chunks away, and a policy that alternates
    /// between two long prompts would then never finish either), so others fit beside it.
    pub(crate) partial_prefill: Option<(RequestId, u64)>,
    pub(crate) misses: usize,
    /// Offers that reached the size checks (rank of the next offer).
    offers: usize,
    /// Decode members chosen and the positions they verify (the marginal rule's step shape).
    decode_members: usize,
    decode_positions: u64,
    /// `Some(full_at_queue)` under marginal formation.
    marginal_until: Option<usize>,
}

impl<'a> BatchBuilder<'a> {
    pub fn new(
        capacity: Capacity,
        requests: &'a IdMap<RequestState>,
        speculation_length: u32,
        cost: &'a dyn StepCostModel,
    ) -> Self {
        Self {
            capacity,
            requests,
            cost,
            speculation_length,
            chosen: Vec::with_capacity(capacity.max_batch.min(1024)),
            chosen_set: IdSet::with_capacity_and_hasher(
                capacity.max_batch.min(1024),
                Default::default(),
            ),
            step_tokens: 0,
            kv_tokens: 0,
            prefill_chunks: IdMap::default(),
            partial_prefill: None,
            misses: 0,
            offers: 0,
            decode_members: 0,
            decode_positions: 0,
            marginal_until: None,
        }
    }

    /// Marginal batch formation for the rest of this selection (ours; first measured as
    /// `laps-sd-srpt-mb`, docs/scheduling.md). A request offered at rank r, with the batch
    /// already holding b requests and m = n - r - 1 of the n requests in the system behind it,
    /// joins only if `(1 + m) * (alone - delta) > b * delta`: delta is how much longer it makes
    /// this step (its verified positions and draft share, plus the step's fixed part if it is
    /// the first decode member), alone what its step would cost by itself later. The delay hits
    /// the b members; the saving advances it and the m behind it. A prefill costs the same
    /// batched or alone, so it joins only an empty batch (it runs when it ranks first).
    ///
    /// The rule is myopic (it ignores arrivals still to come) and on its own can starve the
    /// server of throughput: with cheap batching and prefills waiting behind decodes, batches
    /// stay small while the queue grows without bound. So it applies only while fewer than
    /// `full_at_queue` requests are in the system; from there on every offer that fits joins,
    /// exactly as under full formation. Stability follows: above the limit every step is a full
    /// batch, which drains the queue wherever full-batch FCFS is stable.
    pub fn use_marginal_formation(&mut self, full_at_queue: usize) {
        self.marginal_until = Some(full_at_queue);
    }

    /// Whether the marginal rule declines `request` at this point (see
    /// [`BatchBuilder::use_marginal_formation`]).
    fn marginal_declines(&self, request: &RequestState, prefill_tokens: u32) -> bool {
        let Some(full_at_queue) = self.marginal_until else {
            return false;
        };
        let in_system = self.requests.len();
        if in_system >= full_at_queue || self.chosen.is_empty() {
            return false;
        }
        let k = self.speculation_length;
        let (delta_s, alone_s) = if request.needs_prefill() {
            let prefill_s = self.cost.prefill_s(prefill_tokens);
            (prefill_s, prefill_s)
        } else {
            let own = Self::step_tokens_of(request, k);
            let (members, positions) = (self.decode_members, self.decode_positions);
            (
                self.cost
                    .decode_s(members + 1, k, (positions + own) as usize)
                    - self.cost.decode_s(members, k, positions as usize),
                self.cost.decode_s(1, k, own as usize),
            )
        };
        let behind = in_system.saturating_sub(self.offers) as f64;
        (1.0 + behind) * (alone_s - delta_s) <= self.chosen.len() as f64 * delta_s
    }

    /// Tokens `request` would process in its next step if nothing limited it: what its
    /// (re)prefill still has to compute, else `min(k, remaining - 1) + 1` for an SD step.
    pub fn step_tokens_of(request: &RequestState, speculation_length: u32) -> u64 {
        if request.needs_prefill() {
            u64::from(request.prefill_remaining_tokens())
        } else {
            u64::from(request.step_speculation_length(speculation_length)) + 1
        }
    }

    /// KV tokens `request` needs for its next step: context + k + 1 (the lookahead).
    pub fn kv_need_of(request: &RequestState, speculation_length: u32) -> u64 {
        u64::from(request.context_tokens()) + u64::from(speculation_length) + 1
    }

    /// KV tokens `request` needs for a step that computes `prefill_tokens` of its prefill: a
    /// chunk that leaves part of it for later holds only what is computed so far (it produces no
    /// token, so it needs no lookahead); the last chunk needs [`BatchBuilder::kv_need_of`].
    pub fn kv_need_of_prefill(
        request: &RequestState,
        prefill_tokens: u32,
        speculation_length: u32,
    ) -> u64 {
        if prefill_tokens < request.prefill_remaining_tokens() {
            u64::from(request.prefill_progress_tokens) + u64::from(prefill_tokens)
        } else {
            Self::kv_need_of(request, speculation_length)
        }
    }

    /// The prefill tokens `request` computes if it joins now, `None` if it does not fit the step
    /// budget. A prefill that fits the whole budget runs whole, in a batch with room for it (so
    /// steps of prompts that fit one step are what they were before chunking); a longer one is
    /// cut to the room left, so it runs in chunks between other requests' steps instead of
    /// holding the engine for one long step. A chunk joins only an empty batch, i.e. when its
    /// request ranks first: on a compute-bound engine (the CPU this server runs on) a step costs
    /// about the sum of its tokens, so riding along with requests ranked above it saves nothing
    /// and would slow each of their steps by the chunk's time. (On a GPU, where decode steps are
    /// memory-bound, vLLM lets chunks fill the room decodes leave; the linear cost model this
    /// core plans with has no such saving.)
    pub fn prefill_chunk_tokens(&self, request: &RequestState) -> Option<u32> {
        let remaining = u64::from(request.prefill_remaining_tokens());
        let budget = self.capacity.max_step_tokens.max(1);
        let room = budget.saturating_sub(self.step_tokens);
        let another_is_partial = self
            .partial_prefill
            .is_some_and(|(id, _)| id != request.id());
        if remaining <= room {
            Some(remaining as u32)
        } else if remaining > budget && self.chosen.is_empty() && !another_is_partial {
            Some(room as u32)
        } else {
            None
        }
    }

    /// KV held by the chunked prefill under way when it is neither `id` nor already chosen: it
    /// cannot be evicted, so it is not there for `id`.
    fn pinned_kv_tokens_besides(&self, id: RequestId) -> u64 {
        match self.partial_prefill {
            Some((pid, held)) if pid != id && !self.chosen_set.contains(&pid) => held,
            _ => 0,
        }
    }

    /// Offers `id` for the next step. Policies call this in their priority order.
    ///
    /// Checks, in order: already chosen or unknown/finished (`Rejected`), batch size
    /// (`BatchFull`), step tokens (a lone request in an empty batch is always allowed; a prefill
    /// longer than the whole step budget is cut to the room left, see
    /// [`BatchBuilder::prefill_chunk_tokens`]), and KV: the needs of everything chosen must fit the
    /// whole budget (residents not chosen can be evicted by the scheduler, so they do not count).
    pub fn try_add(&mut self, id: RequestId) -> AddOutcome {
        let Some(request) = self.requests.get(&id) else {
            return AddOutcome::Rejected;
        };
        if request.is_finished() || self.contains(id) {
            return AddOutcome::Rejected;
        }
        if self.is_full() {
            return AddOutcome::BatchFull;
        }
        self.offers += 1;
        let k = self.speculation_length;
        let prefill_chunk = request
            .needs_prefill()
            .then(|| self.prefill_chunk_tokens(request));
        let wanted_prefill_tokens = match prefill_chunk {
            Some(Some(chunk)) => chunk,
            _ => request.prefill_remaining_tokens(),
        };
        if self.marginal_declines(request, wanted_prefill_tokens) {
            self.misses += 1;
            return AddOutcome::NotWorthBatching;
        }
        let (fits_tokens, step_tokens, kv_need) = match prefill_chunk {
            Some(Some(chunk)) => (
                true,
                u64::from(chunk),
                Self::kv_need_of_prefill(request, chunk, k),
            ),
            Some(None) => (false, 0, 0),
            None => {
                let step_tokens = Self::step_tokens_of(request, k);
                (
                    self.chosen.is_empty()
                        || self.step_tokens + step_tokens <= self.capacity.max_step_tokens,
                    step_tokens,
                    Self::kv_need_of(request, k),
                )
            }
        };
        let fits_kv = self.kv_tokens + kv_need + self.pinned_kv_tokens_besides(id)
            <= self.capacity.kv_budget_tokens;
        if !(fits_tokens && fits_kv) {
            self.misses += 1;
            return AddOutcome::DoesNotFit;
        }
        self.chosen.push(id);
        self.chosen_set.insert(id);
        self.step_tokens += step_tokens;
        self.kv_tokens += kv_need;
        if request.needs_prefill() {
            self.prefill_chunks.insert(id, step_tokens as u32);
        } else {
            self.decode_members += 1;
            self.decode_positions += step_tokens;
        }
        AddOutcome::Added
    }
    pub fn is_full(&self) -> bool {
        self.chosen.len() >= self.capacity.max_batch
    }
    /// Full, or [`MISS_BUDGET`] offers did not fit (or were not worth batching): a policy
    /// should stop offering.
    pub fn should_stop(&self) -> bool {
        self.is_full() || self.misses >= MISS_BUDGET
    }
    pub fn len(&self) -> usize {
        self.chosen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }
    pub fn contains(&self, id: RequestId) -> bool {
        self.chosen_set.contains(&id)
    }
    pub fn chosen(&self) -> &[RequestId] {
        &self.chosen
    }
    /// Step tokens of the chosen requests.
    pub fn step_tokens(&self) -> u64 {
        self.step_tokens
    }
    /// KV tokens the chosen requests need (context + lookahead each).
    pub fn kv_tokens(&self) -> u64 {
        self.kv_tokens
    }
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }
}
