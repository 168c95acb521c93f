//! Ordered structures shared by the policies: a keyed ordered set with O(log n) re-keying, an
//! aging index (who has waited longest), and the two ways of offering requests to a
//! [`BatchBuilder`] (strictly in key order, or with pinned requests that keep their slot).
//!
//! Every key starts with the client priority (lower first, vLLM's convention), so every policy
//! honours `priority` as its first sort key.

use crate::request::{IdMap, IdSet, RequestState};
use std::collections::BTreeSet;

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
    keys: IdMap<K>,
}

impl<K: Ord + Clone> Default for KeyedQueue<K> {
    fn default() -> Self {
        Self {
            set: BTreeSet::new(),
            keys: Default::default(),
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

/// A [`KeyedQueue`] whose keys are recomputed only when they can have changed: a request's key
/// depends on its own state, which changes when it arrives or runs, so the policy marks those
/// requests stale and the next decision re-keys only them (O(b log n) per decision, not O(n)).
/// When what every key depends on moves (a learnt prior), the policy marks them all.
#[derive(Debug, Clone)]
pub(crate) struct LazyKeyedQueue<K: Ord + Clone> {
    queue: KeyedQueue<K>,
    stale: Vec<RequestId>,
}

impl<K: Ord + Clone> Default for LazyKeyedQueue<K> {
    fn default() -> Self {
        Self {
            queue: KeyedQueue::default(),
            stale: Vec::new(),
        }
    }
}

impl<K: Ord + Clone> LazyKeyedQueue<K> {
    /// `id` arrived or ran: its key is recomputed at the next [`Self::rekey`].
    pub fn mark_stale(&mut self, id: RequestId) {
        self.stale.push(id);
    }
    /// Every queued key is recomputed at the next [`Self::rekey`] (O(n), when beliefs move).
    pub fn mark_all_stale(&mut self) {
        self.stale.extend(self.queue.ids());
    }
    pub fn remove(&mut self, id: RequestId) {
        self.queue.remove(id);
    }
    /// Recomputes the stale keys of requests still in `requests` (finished ones are dropped).
    pub fn rekey(
        &mut self,
        requests: &IdMap<RequestState>,
        mut key: impl FnMut(&RequestState) -> K,
    ) {
        for id in std::mem::take(&mut self.stale) {
            if let Some(r) = requests.get(&id) {
                self.queue.insert(id, key(r));
            }
        }
    }
    #[cfg(test)]
    pub fn key(&self, id: RequestId) -> Option<&K> {
        self.queue.key(id)
    }
    /// Queued ids in key order (best first).
    pub fn ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.queue.ids()
    }
}

/// Starvation bound behind the aging setting of every ordering (`compose::Aging`): a request that
/// has not run for `max_wait_s` is *promoted*: from then until it finishes it goes ahead of every
/// unpromoted request, promoted requests in the order they started waiting. Promotion lasts to
/// the end (instead of one step) so that an overloaded server does not thrash, preempting each
/// starved request after a single step. Each request is promoted at most once and only as many
/// as the batch can take are promoted per decision, so the cost stays O(log n) per step.
#[derive(Debug, Clone, Default)]
pub(crate) struct StarvationGuard {
    /// Unpromoted requests by the time they last ran (or arrived).
    waiting: KeyedQueue<OrdF64>,
    /// Promoted requests by the time they started waiting.
    promoted: KeyedQueue<OrdF64>,
}

impl StarvationGuard {
    /// `id` arrived at `arrival_s`.
    pub fn on_arrival(&mut self, id: RequestId, arrival_s: f64) {
        self.waiting.insert(id, OrdF64(arrival_s));
    }
    /// `id` ran in a step ending at `last_scheduled_s`.
    pub fn on_step(&mut self, id: RequestId, last_scheduled_s: f64) {
        if !self.is_promoted(id) {
            self.waiting.insert(id, OrdF64(last_scheduled_s));
        }
    }
    pub fn remove(&mut self, id: RequestId) {
        self.waiting.remove(id);
        self.promoted.remove(id);
    }
    pub fn is_promoted(&self, id: RequestId) -> bool {
        self.promoted.key(id).is_some()
    }
    /// Offers the promoted requests, then promotes (and offers) requests that waited more than
    /// `max_wait_s`, longest wait first, while the batch takes more.
    pub fn offer_starved(&mut self, batch: &mut BatchBuilder<'_>, now_s: f64, max_wait_s: f64) {
        offer_in_order(batch, self.promoted.ids());
        let limit_s = now_s - max_wait_s;
        while !batch.should_stop() {
            let Some(&(since, id)) = self.waiting.iter().next() else {
                break;
            };
            if since.0 >= limit_s {
                break;
            }
            self.waiting.remove(id);
            self.promoted.insert(id, since);
            batch.try_add(id);
        }
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
    let pinned_set: IdSet = pinned_sorted.iter().map(|(_, id)| *id).collect();
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
    fn starved_requests_are_promoted_until_they_finish() {
        use crate::testutil::Fixture;
        let mut f = Fixture::new(1);
        for id in 1..=3 {
            f.arrive(id, 0.0, 10, 100);
        }
        let mut g = StarvationGuard::default();
        g.on_arrival(1, 5.0);
        g.on_arrival(2, 1.0);
        g.on_arrival(3, 9.0);
        let offer = |g: &mut StarvationGuard, now_s: f64| {
            let mut b = BatchBuilder::new(f.capacity, &f.requests, f.k, &f.cost);
            g.offer_starved(&mut b, now_s, 4.0);
            b.chosen().to_vec()
        };
        assert_eq!(
            offer(&mut g, 4.0),
            Vec::<RequestId>::new(),
            "nobody waited 4 s"
        );
        assert_eq!(offer(&mut g, 10.0), vec![2]);
        assert!(
            g.is_promoted(2) && !g.is_promoted(1),
            "batch of 1: promote one at a time"
        );
        g.on_step(2, 10.0);
        assert_eq!(offer(&mut g, 10.0), vec![2], "promoted until it finishes");
        g.remove(2);
        assert_eq!(offer(&mut g, 10.0), vec![1]);
        g.remove(1);
        assert_eq!(
            offer(&mut g, 10.0),
            Vec::<RequestId>::new(),
            "3 waited 1 s only"
        );
    }
}
