//! KV-cache memory accounting in tokens: which requests hold KV, how much, and whether a request
//! fits now, later, or never (mistral.rs's `AllocStatus`). Always reserves room for the next step's
//! lookahead (k draft tokens + 1), as vLLM's lookahead slots and TGI's `+ speculate` do.

use crate::request::IdMap;

use crate::request::RequestId;

/// Answer to "can this request's KV be held?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvFit {
    /// Fits in what is free now.
    Now,
    /// Fits once other requests' KV is freed.
    Later,
    /// Larger than the whole budget: can never run.
    Never,
}

/// Tracks KV tokens held per request against a budget.
#[derive(Debug, Clone, Default)]
pub struct KvAccountant {
    budget_tokens: u64,
    in_use_tokens: u64,
    resident: IdMap<u64>,
}

impl KvAccountant {
    pub fn new(budget_tokens: u64) -> Self {
        Self {
            budget_tokens,
            in_use_tokens: 0,
            resident: Default::default(),
        }
    }
    pub fn budget_tokens(&self) -> u64 {
        self.budget_tokens
    }
    pub fn in_use_tokens(&self) -> u64 {
        self.in_use_tokens
    }
    pub fn free_tokens(&self) -> u64 {
        self.budget_tokens.saturating_sub(self.in_use_tokens)
    }
    /// KV tokens held by `id` (0 if none).
    pub fn held_tokens(&self, id: RequestId) -> u64 {
        self.resident.get(&id).copied().unwrap_or(0)
    }
    pub fn is_resident(&self, id: RequestId) -> bool {
        self.resident.contains_key(&id)
    }
    /// Would `id` fit if it needed `needed_tokens` in total (what it already holds counts)?
    pub fn fit(&self, id: RequestId, needed_tokens: u64) -> KvFit {
        if needed_tokens > self.budget_tokens {
            KvFit::Never
        } else if needed_tokens.saturating_sub(self.held_tokens(id)) <= self.free_tokens() {
            KvFit::Now
        } else {
            KvFit::Later
        }
    }
    /// Sets what `id` holds to `tokens` (grow or shrink). The caller checked [`Self::fit`].
    pub fn set(&mut self, id: RequestId, tokens: u64) {
        let old = self.resident.insert(id, tokens).unwrap_or(0);
        self.in_use_tokens = self.in_use_tokens - old + tokens;
    }
    /// Frees everything `id` holds; returns how many tokens that was.
    pub fn free(&mut self, id: RequestId) -> u64 {
        let old = self.resident.remove(&id).unwrap_or(0);
        self.in_use_tokens -= old;
        old
    }
    /// Requests holding KV, in no particular order.
    pub fn resident_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.resident.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_now_later_never() {
        let mut kv = KvAccountant::new(100);
        assert_eq!(kv.fit(1, 60), KvFit::Now);
        kv.set(1, 60);
        assert_eq!(kv.fit(2, 50), KvFit::Later);
        assert_eq!(kv.fit(2, 101), KvFit::Never);
        assert_eq!(
            kv.fit(1, 100),
            KvFit::Now,
            "what a request holds counts toward its need"
        );
        assert_eq!(kv.free(1), 60);
        assert_eq!(kv.in_use_tokens(), 0);
        assert_eq!(kv.fit(2, 50), KvFit::Now);
    }
}
