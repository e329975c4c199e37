//! The in-process store: same rules as Redis (TTL, `refresh_count`, stale writers),
//! nothing another application can read.

use super::{Listing, PutOutcome, TokenRecord};
use crate::clock::unix_now;
use crate::domain::TokenKey;
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

pub struct MemoryStore {
    keys: super::Keys,
    // A std Mutex: it is never held across an await, and every critical section is
    // a few map operations.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<TokenKey, TokenRecord>,
    secrets: HashMap<TokenKey, Secret>,
}

impl MemoryStore {
    pub fn new(namespace: &str) -> Self {
        Self {
            keys: super::Keys::new(namespace),
            state: Mutex::default(),
        }
    }

    pub fn keys(&self) -> &super::Keys {
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

    pub fn put(&self, key: &TokenKey, record: &TokenRecord) -> PutOutcome {
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
            if old.expires_on > record.expires_on {
                return PutOutcome::Superseded;
            }
            refresh_count = old.refresh_count + 1;
        }
        let mut stored = record.clone();
        stored.refresh_count = refresh_count;
        state.tokens.insert(key.clone(), stored);
        PutOutcome::Written { refresh_count }
    }

    pub fn delete(&self, key: &TokenKey) -> bool {
        let mut state = self.lock();
        state.secrets.remove(key);
        state
            .tokens
            .remove(key)
            .is_some_and(|old| old.expires_on > unix_now())
    }

    pub fn list(&self) -> Listing {
        let now = unix_now();
        let mut state = self.lock();
        state.tokens.retain(|_, record| record.expires_on > now);
        let mut tokens: Vec<_> = state
            .tokens
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        tokens.sort_by(|a, b| a.0.cmp(&b.0));
        Listing {
            tokens,
            dangling: Vec::new(),
        }
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
}
