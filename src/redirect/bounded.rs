//! A `DashMap` with a size bound and FIFO eviction: the redirect cache's two maps (`cache`).

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// A key of a [`Bounded`] map: looked up by code.
pub(super) trait Keyed: Borrow<str> + Hash + Eq {
    /// The code, shared with the eviction queue.
    fn code(&self) -> Arc<str>;
}

impl Keyed for Arc<str> {
    fn code(&self) -> Arc<str> {
        Arc::clone(self)
    }
}

/// A `DashMap` with a size bound and FIFO eviction.
pub(super) struct Bounded<K, V> {
    /// foldhash rather than the default SipHash: a lookup hashes a short code on every request, and
    /// keys only enter after passing code validation (check characters), so flooding one bucket is
    /// not in an attacker's hands (`cargo bench --bench resolve`, docs/PERFORMANCE.md).
    pub(super) map: DashMap<K, V, foldhash::fast::RandomState>,
    /// Insertion order of keys, for eviction. May hold keys already removed (they are skipped).
    order: Mutex<VecDeque<Arc<str>>>,
    len: AtomicUsize,
    capacity: usize,
}

impl<K: Keyed, V> Bounded<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            order: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn insert(&self, key: K, value: V) {
        let code = key.code();
        let is_new = match self.map.entry(key) {
            Entry::Occupied(slot) => {
                // The key itself may carry data (a `LinkKey`): replace both.
                slot.replace_entry(value);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(value);
                true
            }
        };
        // The shard guard is released here: the order lock is never taken while holding a shard
        // lock, so the two cannot deadlock.
        if !is_new {
            return;
        }
        let len = self.len.fetch_add(1, Ordering::AcqRel) + 1;
        let mut order = self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        order.push_back(code);
        let mut len = len;
        while len > self.capacity {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            if self.map.remove(&*oldest).is_some() {
                len = self.len.fetch_sub(1, Ordering::AcqRel) - 1;
            }
        }
        // Keys removed by `remove` linger in the queue; compact when they pile up (rare: only
        // invalidations remove keys outside eviction).
        if order.len() > self.capacity * 2 + 1024 {
            order.retain(|k| self.map.contains_key(&**k));
        }
    }

    pub(super) fn remove(&self, key: &str) {
        if self.map.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Empties the map (the order queue's keys are then skipped as removed ones are).
    pub(super) fn clear(&self) {
        self.map.clear();
        self.len.store(0, Ordering::Release);
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}
