//! Ordered structures shared by the policies: a keyed ordered set with O(log n) re-keying, an
//! aging index (who has waited longest), and the two ways of offering requests to a
//! [`BatchBuilder`] (strictly in key order, or with pinned requests that keep their slot).
//!
//! Every key starts with the client priority (lower first, vLLM's convention), so every policy
//! honours `priority` as its first sort key.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::policy::BatchBuilder;
use crate::request::RequestId;

/// An `f64` with a total order (`f64::total_cmp`), usable in ordered keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OrdF64(pub f64);

impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Keys that start with a client priority.
pub(crate) trait PriorityKey: Ord + Clone {
    fn priority(&self) -> i32;
}

impl<A: Ord + Clone> PriorityKey for (i32, A) {
    fn priority(&self) -> i32 {
        self.0
    }
}
impl<A: Ord + Clone, B: Ord + Clone> PriorityKey for (i32, A, B) {
    fn priority(&self) -> i32 {
        self.0
    }
}
impl<A: Ord + Clone, B: Ord + Clone, C: Ord + Clone> PriorityKey for (i32, A, B, C) {
    fn priority(&self) -> i32 {
        self.0
    }
}

/// A set of requests ordered by `(key, id)`; re-keying one request is O(log n).
#[derive(Debug, Clone)]
pub(crate) struct KeyedQueue<K: Ord + Clone> {
    set: BTreeSet<(K, RequestId)>,
    keys: HashMap<RequestId, K>,
}

impl<K: Ord + Clone> Default for KeyedQueue<K> {
    fn default() -> Self {
        Self {
            set: BTreeSet::new(),
            keys: HashMap::new(),
        }
    }
}

impl<K: Ord + Clone> KeyedQueue<K> {
    /// Inserts `id` with `key`, replacing its previous key.
    pub fn insert(&mut self, id: RequestId, key: K) {
        if let Some(old) = self.keys.insert(id, key.clone()) {
            self.set.remove(&(old, id));
        }
        self.set.insert((key, id));
    }
    pub fn remove(&mut self, id: RequestId) -> Option<K> {
        let old = self.keys.remove(&id)?;
        self.set.remove(&(old.clone(), id));
        Some(old)
    }
    pub fn key(&self, id: RequestId) -> Option<&K> {
        self.keys.get(&id)
    }
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// Entries in key order (best first).
    pub fn iter(&self) -> impl Iterator<Item = &(K, RequestId)> {
        self.set.iter()
    }
    pub fn ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.set.iter().map(|(_, id)| *id)
    }
}

/// Who has waited longest since it last ran (or arrived): `(last_scheduled_s, id)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgingIndex {
    queue: KeyedQueue<OrdF64>,
}

impl AgingIndex {
    /// Records that `id` last ran (or arrived) at `last_scheduled_s`.
    pub fn touch(&mut self, id: RequestId, last_scheduled_s: f64) {
        self.queue.insert(id, OrdF64(last_scheduled_s));
    }
    pub fn remove(&mut self, id: RequestId) {
        self.queue.remove(id);
    }
    /// Requests that have waited more than `max_wait_s` at `now_s`, longest wait first.
    pub fn starved(&self, now_s: f64, max_wait_s: f64) -> impl Iterator<Item = RequestId> + '_ {
        let limit_s = now_s - max_wait_s;
        self.queue
            .iter()
            .take_while(move |(t, _)| t.0 < limit_s)
            .map(|(_, id)| *id)
    }
}

/// Offers `ids` in order until the batch is full or the builder's miss budget is spent.
pub(crate) fn offer_in_order(batch: &mut BatchBuilder<'_>, ids: impl Iterator<Item = RequestId>) {
    for id in ids {
        if batch.should_stop() {
            break;
        }
        batch.try_add(id);
    }
}

/// Offers the queue in key order, except that `pinned` requests (running requests of a
/// non-preemptive policy) go first within their client-priority class: a pinned request keeps
/// its slot against everything of equal or worse priority, but a waiting request of strictly
/// better (lower) client priority goes ahead of it (fixing the complaint of vLLM #40004).
pub(crate) fn offer_with_pinned<K: PriorityKey>(
    queue: &KeyedQueue<K>,
    pinned: &[RequestId],
    batch: &mut BatchBuilder<'_>,
) {
    let mut pinned_sorted: Vec<(K, RequestId)> = pinned
        .iter()
        .filter_map(|&id| queue.key(id).map(|k| (k.clone(), id)))
        .collect();
    pinned_sorted.sort();
    let pinned_set: HashSet<RequestId> = pinned_sorted.iter().map(|(_, id)| *id).collect();
    let mut next_pinned = 0;
    for (key, id) in queue.iter() {
        if batch.should_stop() {
            break;
        }
        if pinned_set.contains(id) {
            continue;
        }
        while next_pinned < pinned_sorted.len()
            && pinned_sorted[next_pinned].0.priority() <= key.priority()
        {
            batch.try_add(pinned_sorted[next_pinned].1);
            next_pinned += 1;
        }
        batch.try_add(*id);
    }
    // Pinned requests not yet offered keep their slot whatever the miss budget says.
    for (_, id) in &pinned_sorted[next_pinned..] {
        batch.try_add(*id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_queue_rekeys_and_orders() {
        let mut q: KeyedQueue<(i32, u64)> = KeyedQueue::default();
        q.insert(1, (0, 5));
        q.insert(2, (0, 3));
        q.insert(3, (-1, 9));
        assert_eq!(q.ids().collect::<Vec<_>>(), vec![3, 2, 1]);
        q.insert(2, (0, 7));
        assert_eq!(q.ids().collect::<Vec<_>>(), vec![3, 1, 2]);
        assert_eq!(q.remove(3), Some((-1, 9)));
        assert_eq!(q.remove(3), None);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn aging_lists_only_the_starved_longest_first() {
        let mut a = AgingIndex::default();
        a.touch(1, 5.0);
        a.touch(2, 1.0);
        a.touch(3, 9.0);
        assert_eq!(a.starved(10.0, 4.0).collect::<Vec<_>>(), vec![2, 1]);
        a.touch(2, 10.0);
        assert_eq!(a.starved(10.0, 4.0).collect::<Vec<_>>(), vec![1]);
    }
}
