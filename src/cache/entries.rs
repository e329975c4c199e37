//! The cache's entries: a map, and every key once in a vector so that eviction
//! can sample entries at random in constant time.

use super::{STRIPES, Served};
use crate::domain::TokenKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Entries looked at to choose one to evict (Redis's `maxmemory-samples` idea):
/// an expired one if any, else the least recently used of them.
const EVICTION_SAMPLES: usize = 8;

pub(super) struct Entries {
    map: HashMap<TokenKey, Slot>,
    keys: Vec<TokenKey>,
    bytes: usize,
    /// The generation of the last invalidation of any key of each stripe.
    pub stripes: [u64; STRIPES],
    /// Tickets older than this are refused: everything was dropped at it.
    pub floor: u64,
}

struct Slot {
    served: Arc<Served>,
    /// Where its key is in `keys`.
    at: usize,
}

impl Entries {
    pub fn new() -> Self {
        Self {
            map: HashMap::new(),
            keys: Vec::new(),
            bytes: 0,
            stripes: [0; STRIPES],
            floor: 0,
        }
    }

    pub fn get(&self, key: &TokenKey) -> Option<&Arc<Served>> {
        self.map.get(key).map(|slot| &slot.served)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn remove(&mut self, key: &TokenKey) -> Option<Arc<Served>> {
        let Slot { served, at } = self.map.remove(key)?;
        self.keys.swap_remove(at);
        if let Some(moved) = self.keys.get(at)
            && let Some(slot) = self.map.get_mut(moved)
        {
            slot.at = at;
        }
        self.bytes -= served.body.len();
        Some(served)
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.keys.clear();
        self.bytes = 0;
    }

    /// Keeps `served` under `key`, evicting others until it fits in `max_entries`
    /// and `max_bytes`.
    pub fn insert(
        &mut self,
        key: &TokenKey,
        served: Arc<Served>,
        (max_entries, max_bytes): (usize, usize),
        now: i64,
    ) {
        self.remove(key);
        let size = served.body.len();
        while !self.map.is_empty()
            && (self.map.len() >= max_entries || self.bytes + size > max_bytes)
        {
            self.evict_one(now);
        }
        self.bytes += size;
        self.map.insert(
            key.clone(),
            Slot {
                served,
                at: self.keys.len(),
            },
        );
        self.keys.push(key.clone());
    }

    fn evict_one(&mut self, now: i64) {
        let victim = (0..EVICTION_SAMPLES.min(self.keys.len()))
            .map(|_| &self.keys[rand::random_range(0..self.keys.len())])
            .min_by_key(|key| {
                // Expired first, then the least recently used.
                self.map.get(*key).map_or((false, 0), |slot| {
                    let served = &slot.served;
                    (served.expires_on > now, served.used.load(Ordering::Relaxed))
                })
            })
            .cloned();
        if let Some(victim) = victim {
            self.remove(&victim);
        }
    }
}
