//! The in-process store: same rules as Redis (TTL, `refresh_count`, stale writers,
//! schedule, leases, statuses), nothing another application can read. Meant for
//! `dev` and single-instance use; its schedule is a scan of the map.

use super::{Keys, PutOutcome, RefreshStatus, TokenRecord};
use crate::clock::unix_now;
use crate::domain::TokenKey;
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct MemoryStore {
    keys: Keys,
    // A std Mutex: it is never held across an await, and every critical section is
    // a few map operations.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<TokenKey, TokenRecord>,
    secrets: HashMap<TokenKey, Secret>,
    schedule: HashMap<TokenKey, i64>,
    statuses: HashMap<TokenKey, RefreshStatus>,
    reads: HashMap<TokenKey, i64>,
    leases: HashMap<TokenKey, (String, Instant)>,
    quotas: HashMap<(String, TokenKey), (u64, Instant)>,
}

impl MemoryStore {
    pub fn new(namespace: &str) -> Self {
        Self {
            keys: Keys::new(namespace),
            state: Mutex::default(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &TokenKey) -> Option<TokenRecord> {
        let mut state = self.lock();
        let expired = state.tokens.get(key)?.expires_on <= unix_now();
        if expired {
            // What Redis' TTL would have done.
            state.tokens.remove(key);
            return None;
        }
        state.tokens.get(key).cloned()
    }

    pub fn put(&self, key: &TokenKey, record: &TokenRecord, due_at: i64) -> PutOutcome {
        if record.expires_on <= unix_now() {
            return PutOutcome::Superseded;
        }
        let mut state = self.lock();
        let mut refresh_count = 0;
        if let Some(old) = state
            .tokens
            .get(key)
            .filter(|old| old.expires_on > unix_now())
        {
            if old.token == record.token {
                // The same token written twice (a retried write) is not a refresh.
                return PutOutcome::Written {
                    refresh_count: old.refresh_count,
                };
            }
            if old.requested_at_ms > record.requested_at_ms {
                return PutOutcome::Superseded;
            }
            refresh_count = old.refresh_count + 1;
        }
        let mut stored = record.clone();
        stored.refresh_count = refresh_count;
        state.tokens.insert(key.clone(), stored);
        state.schedule.insert(key.clone(), due_at);
        state.statuses.remove(key);
        PutOutcome::Written { refresh_count }
    }

    pub fn delete(&self, key: &TokenKey) -> bool {
        let mut state = self.lock();
        state.secrets.remove(key);
        state.schedule.remove(key);
        state.statuses.remove(key);
        state.reads.remove(key);
        state
            .tokens
            .remove(key)
            .is_some_and(|old| old.expires_on > unix_now())
    }

    pub fn list(&self) -> Vec<(TokenKey, TokenRecord)> {
        let now = unix_now();
        let mut state = self.lock();
        state.tokens.retain(|_, record| record.expires_on > now);
        let mut tokens: Vec<_> = state
            .tokens
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        tokens.sort_by(|a, b| a.0.cmp(&b.0));
        tokens
    }

    pub fn soonest_expiry(&self) -> Option<i64> {
        let now = unix_now();
        self.lock()
            .tokens
            .values()
            .map(|r| r.expires_on)
            .filter(|at| *at > now)
            .min()
    }

    pub fn active_count(&self) -> u64 {
        let now = unix_now();
        self.lock()
            .tokens
            .values()
            .filter(|r| r.expires_on > now)
            .count() as u64
    }

    pub fn get_secret(&self, key: &TokenKey) -> Option<Secret> {
        self.lock().secrets.get(key).cloned()
    }

    pub fn put_secret(&self, key: &TokenKey, secret: &Secret) {
        self.lock().secrets.insert(key.clone(), secret.clone());
    }

    pub fn count_refresh(&self, caller: &str, key: &TokenKey, window_secs: u64) -> (u64, u64) {
        let mut state = self.lock();
        let now = Instant::now();
        let window = Duration::from_secs(window_secs);
        let entry = state
            .quotas
            .entry((caller.to_owned(), key.clone()))
            .or_insert((0, now));
        if now.duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        entry.0 += 1;
        let left = window
            .saturating_sub(now.duration_since(entry.1))
            .as_secs()
            .max(1);
        (entry.0, left)
    }

    pub fn delete_secret(&self, key: &TokenKey) {
        self.lock().secrets.remove(key);
    }

    pub fn due(&self, now: i64, limit: usize) -> Vec<String> {
        let state = self.lock();
        let mut due: Vec<(i64, &TokenKey)> = state
            .schedule
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, at)| (*at, key))
            .collect();
        due.sort();
        due.into_iter()
            .take(limit)
            .map(|(_, key)| self.keys.token(key))
            .collect()
    }

    pub fn reschedule(&self, key: &TokenKey, at: i64) {
        self.lock().schedule.insert(key.clone(), at);
    }

    pub fn unschedule(&self, full_keys: &[String], inactive: bool) {
        let mut state = self.lock();
        for key in full_keys.iter().filter_map(|k| self.keys.parse_token(k)) {
            state.schedule.remove(&key);
            if inactive {
                state.reads.remove(&key);
            }
        }
    }

    pub fn try_lease(&self, key: &TokenKey, owner: &str, ttl: Duration) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        match state.leases.get(key) {
            Some((holder, until)) if *until > now && holder != owner => false,
            _ => {
                state
                    .leases
                    .insert(key.clone(), (owner.to_owned(), now + ttl));
                true
            }
        }
    }

    pub fn release_lease(&self, key: &TokenKey, owner: &str) {
        let mut state = self.lock();
        if state
            .leases
            .get(key)
            .is_some_and(|(holder, _)| holder == owner)
        {
            state.leases.remove(key);
        }
    }

    pub fn lease_held(&self, key: &TokenKey) -> bool {
        self.lock()
            .leases
            .get(key)
            .is_some_and(|(_, until)| *until > Instant::now())
    }

    pub fn get_status(&self, key: &TokenKey) -> Option<RefreshStatus> {
        self.lock().statuses.get(key).cloned()
    }

    pub fn put_status(&self, key: &TokenKey, status: &RefreshStatus) {
        let mut state = self.lock();
        state.statuses.insert(key.clone(), status.clone());
        state.schedule.insert(key.clone(), status.next_attempt);
    }

    pub fn mark_read(&self, key: &TokenKey, now: i64) {
        self.lock().reads.insert(key.clone(), now);
    }

    pub fn last_reads(&self, keys: &[TokenKey], now: i64) -> Vec<i64> {
        let mut state = self.lock();
        keys.iter()
            .map(|key| *state.reads.entry(key.clone()).or_insert(now))
            .collect()
    }
}
