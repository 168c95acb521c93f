//! Per-request KV cache: one growable, contiguous K and V buffer per decoder layer, laid out
//! `[position][kv_head][head_dim]`, so appending a step is one copy and rolling back rejected draft
//! tokens is a `truncate` (what candle's own caches cannot do).

/// K and V of one decoder layer for one sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerKv {
    /// Keys, `len * kv_dim` floats, RoPE already applied.
    pub(crate) k: Vec<f32>,
    /// Values, `len * kv_dim` floats.
    pub(crate) v: Vec<f32>,
}

/// One request's keys and values for one model, per layer. Created by `Model::new_cache` (all
/// layers) or `Model::new_cache_layers` (the first N layers, for self-speculative drafting).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// One entry per decoder layer the cache covers.
    pub(crate) layers: Vec<LayerKv>,
    /// Number of cached positions (the same in every layer between forward calls).
    pub(crate) len_tokens: usize,
    /// Floats per position per layer in K (and in V): `n_kv_heads * head_dim`.
    pub(crate) kv_dim: usize,
    /// Identifies the model the cache belongs to, so a cache is never run through another model.
    pub(crate) model_id: u64,
    /// Positions below this run through the f32 copy of the weights (see `llama::Projection`):
    /// fixed by the sequence's first forward (its prompt, when that has at least
    /// `DENSE_MIN_ROWS` tokens) and kept by `clear`, so that a recomputed cache and every later
    /// step take the same arithmetic path per position whatever the batch around them.
    pub(crate) dense_prefix: Option<usize>,
}

impl KvCache {
    pub(crate) fn new(n_layers: usize, kv_dim: usize, model_id: u64) -> Self {
        Self {
            layers: vec![LayerKv::default(); n_layers],
            len_tokens: 0,
            kv_dim,
            model_id,
            dense_prefix: None,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len_tokens
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len_tokens == 0
    }

    /// Keeps the first `len` positions (no-op if `len >= self.len()`), e.g. to drop rejected drafts.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len_tokens {
            return;
        }
        let floats = len * self.kv_dim;
        for layer in &mut self.layers {
            layer.k.truncate(floats);
            layer.v.truncate(floats);
        }
        self.len_tokens = len;
    }

    /// Drops every position and frees the memory (the request can be recomputed later).
    pub fn clear(&mut self) {
        for layer in &mut self.layers {
            layer.k = Vec::new();
            layer.v = Vec::new();
        }
        self.len_tokens = 0;
    }

    /// Fixes which positions take the f32 weights before a prefill that may run in chunks:
    /// the positions of the whole first prefill (`prefill_tokens`), as when it runs in one
    /// forward (see `llama::DENSE_MIN_ROWS`), so that chunked and whole prefills compute every
    /// position through the same weights. No effect once the cache has been used.
    pub fn plan_dense_prefix(&mut self, prefill_tokens: usize) {
        if self.len_tokens == 0 && self.dense_prefix.is_none() {
            self.dense_prefix = Some(if prefill_tokens >= super::llama::DENSE_MIN_ROWS {
                prefill_tokens
            } else {
                0
            });
        }
    }

    /// Makes positions take the same weights as in `other` (the target's cache, for a draft
    /// model's copy of the same sequence): a draft cache that first catches up on the prompt
    /// plus generated tokens would otherwise put those generated positions through the f32
    /// weights, while the target computed them on the quantized ones. No effect once used.
    pub(crate) fn follow_dense_prefix(&mut self, other: &KvCache) {
        if self.len_tokens == 0 && self.dense_prefix.is_none() {
            self.dense_prefix = other.dense_prefix;
        }
    }

    /// Number of decoder layers this cache covers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes allocated for K and V (capacity, not only the used part).
    pub fn memory_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.capacity() + l.v.capacity()) * std::mem::size_of::<f32>())
            .sum()
    }

    /// Bytes one cached position takes across the covered layers.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.kv_dim * self.layers.len() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n_layers: usize, kv_dim: usize, len: usize) -> KvCache {
        let mut c = KvCache::new(n_layers, kv_dim, 7);
        for layer in &mut c.layers {
            layer.k = (0..len * kv_dim).map(|i| i as f32).collect();
            layer.v = (0..len * kv_dim).map(|i| -(i as f32)).collect();
        }
        c.len_tokens = len;
        c
    }

    #[test]
    fn truncate_keeps_prefix_and_ignores_longer_lengths() {
        let mut c = filled(2, 4, 5);
        c.truncate(9);
        assert_eq!(c.len(), 5);
        c.truncate(3);
        assert_eq!(c.len(), 3);
        for layer in &c.layers {
            assert_eq!(layer.k, (0..12).map(|i| i as f32).collect::<Vec<_>>());
            assert_eq!(layer.v.len(), 12);
        }
    }

    #[test]
    fn clear_frees_memory_and_cache_is_reusable() {
        let mut c = filled(3, 4, 5);
        assert!(c.memory_bytes() >= 3 * 2 * 5 * 4 * 4);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.memory_bytes(), 0);
        assert_eq!(c.n_layers(), 3);
        assert_eq!(c.bytes_per_token(), 2 * 4 * 3 * 4);
    }
}
