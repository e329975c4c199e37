//! The cache's entries: a map to where each entry is in a vector of slots, so
//! that eviction can sample entries at random in constant time, without hashing
//! and without following pointers to compare them.

use super::{STRIPES, Served};
use crate::domain::TokenKey;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries looked at to choose one to evict (Redis's `maxmemory-samples`):
/// an expired one if any, else the least recently used of them.
const EVICTION_SAMPLES: usize = 5;

pub(super) struct Entries {
    /// Where each key's entry is in `slots` (the key shared with its slot).
    map: HashMap<Arc<TokenKey>, usize>,
    slots: Vec<Slot>,
    bytes: usize,
    /// Picks the samples: speed matters here, not unpredictability.
    rng: SmallRng,
    /// The generation of the last invalidation of any key of each stripe.
    pub stripes: [u64; STRIPES],
    /// Tickets older than this are refused: everything was dropped at it.
    pub floor: u64,
}

struct Slot {
    key: Arc<TokenKey>,
    served: Arc<Served>,
    expires_on: i64,
    /// The change feed it was stored under (see [`super::TokenCache::set_live`]).
    feed: u64,
    /// When it was last served, on the cache's count of hits.
    used: AtomicU64,
}

impl Entries {
    pub fn new() -> Self {
        Self {
            map: HashMap::new(),
            slots: Vec::new(),
            bytes: 0,
            rng: SmallRng::seed_from_u64(rand::random()),
            stripes: [0; STRIPES],
            floor: 0,
        }
    }

    pub fn get(&self, key: &TokenKey) -> Option<&Arc<Served>> {
        let at = *self.map.get(key)?;
        self.slots.get(at).map(|slot| &slot.served)
    }

    /// The entry if it was stored under change feed `feed`, noting that it was
    /// used at `tick`.
    pub fn touch(&self, key: &TokenKey, feed: u64, tick: u64) -> Option<&Arc<Served>> {
        let slot = self.slots.get(*self.map.get(key)?)?;
        if slot.feed != feed {
            return None;
        }
        slot.used.store(tick, Ordering::Relaxed);
        Some(&slot.served)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn remove(&mut self, key: &TokenKey) -> Option<Arc<Served>> {
        let at = self.map.remove(key)?;
        Some(self.remove_at(at))
    }

    /// Removes the entry at `at` of `slots`, whose key has left the map already.
    fn remove_at(&mut self, at: usize) -> Arc<Served> {
        let slot = self.slots.swap_remove(at);
        if let Some(moved) = self.slots.get(at)
            && let Some(index) = self.map.get_mut(&*moved.key)
        {
            *index = at;
        }
        self.bytes -= slot.served.body.len();
        slot.served
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.bytes = 0;
    }

    /// Keeps `served` under `key` (under change feed `feed`, used at `tick`),
    /// evicting others until it fits in `max_entries` and `max_bytes`; whether
    /// any was evicted.
    pub fn insert(
        &mut self,
        key: &TokenKey,
        served: Arc<Served>,
        (max_entries, max_bytes): (usize, usize),
        now: i64,
        (feed, tick): (u64, u64),
    ) -> bool {
        self.remove(key);
        let size = served.body.len();
        let mut evicted = false;
        while !self.slots.is_empty()
            && (self.slots.len() >= max_entries || self.bytes + size > max_bytes)
        {
            self.evict_one(now);
            evicted = true;
        }
        self.bytes += size;
        let key = Arc::new(key.clone());
        self.map.insert(key.clone(), self.slots.len());
        self.slots.push(Slot {
            key,
            expires_on: served.expires_on,
            served,
            feed,
            used: AtomicU64::new(tick),
        });
        evicted
    }

    fn evict_one(&mut self, now: i64) {
        let len = self.slots.len();
        let mut victim = None;
        for _ in 0..EVICTION_SAMPLES.min(len) {
            let at = self.rng.random_range(0..len);
            let slot = &self.slots[at];
            // Expired first, then the least recently used.
            let rank = (slot.expires_on > now, slot.used.load(Ordering::Relaxed));
            if victim.is_none_or(|(best, _)| rank < best) {
                victim = Some((rank, at));
            }
        }
        if let Some((_, at)) = victim {
            let key = self.slots[at].key.clone();
            self.map.remove(&*key);
            self.remove_at(at);
        }
    }
}
