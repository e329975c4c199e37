//! The in-process store: same rules as Redis (TTL, `refresh_count`, stale writers,
//! schedule, leases, statuses), nothing another application can read. Meant for
//! `dev` and single-instance use; its schedule is a scan of the map.

use super::keys::Keys;
use super::{
    ChangeFeed, Coordination, Due, DueRule, Events, Forget, Grant, PutOutcome, Reconciled,
    RefreshStatus, Schedule, Store, StoreError, StoredToken, TokenRecord, Tokens, Write,
};
use crate::clock::Clock;
use crate::config::StoreKind;
use crate::domain::TokenKey;
use crate::secret::Secret;
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct MemoryStore {
    keys: Keys,
    clock: Clock,
    // A std Mutex: it is never held across an await, and every critical section is
    // a few map operations.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<TokenKey, TokenRecord>,
    grants: HashMap<TokenKey, Secret>,
    schedule: HashMap<TokenKey, i64>,
    statuses: HashMap<TokenKey, RefreshStatus>,
    reads: HashMap<TokenKey, i64>,
    leases: HashMap<TokenKey, (String, Instant)>,
    quotas: HashMap<(String, TokenKey), (u64, Instant)>,
}

impl MemoryStore {
    pub fn new(namespace: &str, clock: Clock) -> Self {
        Self {
            keys: Keys::new(namespace),
            clock,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live token under `key`, dropping it when it has expired (what Redis's
    /// TTL would have done).
    fn live(&self, state: &mut State, key: &TokenKey) -> Option<TokenRecord> {
        if state.tokens.get(key)?.expires_on <= self.clock.now() {
            state.tokens.remove(key);
            return None;
        }
        state.tokens.get(key).cloned()
    }

    /// The token write of [`Tokens::put`], under the lock.
    fn write_token(
        &self,
        state: &mut State,
        key: &TokenKey,
        record: &TokenRecord,
        due_at: i64,
    ) -> PutOutcome {
        if record.expires_on <= self.clock.now() {
            return PutOutcome::Superseded;
        }
        let mut refresh_count = 0;
        if let Some(old) = self.live(state, key) {
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
}

/// Releases `key`'s lease if `owner` holds it.
fn release(state: &mut State, key: &TokenKey, owner: &str) {
    if state
        .leases
        .get(key)
        .is_some_and(|(holder, _)| holder == owner)
    {
        state.leases.remove(key);
    }
}

#[async_trait]
impl Tokens for MemoryStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.live(&mut self.lock(), key))
    }

    async fn get_many(&self, keys: &[TokenKey]) -> Result<Vec<Option<TokenRecord>>, StoreError> {
        let mut state = self.lock();
        Ok(keys.iter().map(|key| self.live(&mut state, key)).collect())
    }

    async fn state(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<TokenRecord>, Option<RefreshStatus>), StoreError> {
        let mut state = self.lock();
        Ok((self.live(&mut state, key), state.statuses.get(key).cloned()))
    }

    async fn put(&self, key: &TokenKey, write: &Write<'_>) -> Result<PutOutcome, StoreError> {
        let mut state = self.lock();
        if let Some(grant) = write.grant {
            state.grants.insert(key.clone(), grant.clone());
        }
        let outcome = self.write_token(&mut state, key, write.record, write.due_at);
        if let Some(owner) = write.release {
            release(&mut state, key, owner);
        }
        Ok(outcome)
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let removed = self.live(&mut state, key).is_some();
        state.tokens.remove(key);
        state.grants.remove(key);
        state.schedule.remove(key);
        state.statuses.remove(key);
        state.reads.remove(key);
        Ok(removed)
    }

    async fn list(&self) -> Result<Vec<StoredToken>, StoreError> {
        let now = self.clock.now();
        let mut state = self.lock();
        state.tokens.retain(|_, record| record.expires_on > now);
        let mut tokens: Vec<StoredToken> = state
            .tokens
            .iter()
            .map(|(key, record)| StoredToken {
                key: key.clone(),
                name: self.keys.token(key),
                record: record.clone(),
            })
            .collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tokens)
    }

    async fn grant(&self, key: &TokenKey) -> Result<Grant, StoreError> {
        Ok(match self.lock().grants.get(key) {
            Some(secret) => Grant::Present(secret.clone()),
            None => Grant::Missing,
        })
    }

    async fn put_grant(&self, key: &TokenKey, refresh_token: &Secret) -> Result<(), StoreError> {
        self.lock()
            .grants
            .insert(key.clone(), refresh_token.clone());
        Ok(())
    }

    async fn delete_grant(&self, key: &TokenKey) -> Result<(), StoreError> {
        self.lock().grants.remove(key);
        Ok(())
    }
}

#[async_trait]
impl Schedule for MemoryStore {
    async fn due(&self, now: i64, limit: usize) -> Result<Due, StoreError> {
        let state = self.lock();
        let mut due: Vec<(i64, &TokenKey)> = state
            .schedule
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, at)| (*at, key))
            .collect();
        due.sort();
        Ok(Due {
            keys: due
                .into_iter()
                .take(limit)
                .map(|(_, key)| key.clone())
                .collect(),
            dropped: 0,
        })
    }

    async fn unschedule(&self, keys: &[TokenKey], forget: Forget) -> Result<(), StoreError> {
        let mut state = self.lock();
        for key in keys {
            state.schedule.remove(key);
            if forget == Forget::Everywhere {
                state.reads.remove(key);
            }
        }
        Ok(())
    }

    /// Nobody else writes this store: nothing to adopt, only expired tokens to drop.
    async fn reconcile_step(
        &self,
        _count: usize,
        _due_at: &DueRule,
    ) -> Result<Reconciled, StoreError> {
        let now = self.clock.now();
        let mut state = self.lock();
        let expired: Vec<TokenKey> = state
            .tokens
            .iter()
            .filter(|(_, record)| record.expires_on <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            state.tokens.remove(key);
            state.schedule.remove(key);
            state.reads.remove(key);
        }
        Ok(Reconciled {
            pruned: expired.len(),
            adopted: 0,
            wrapped: true,
        })
    }

    async fn statuses(&self, keys: &[TokenKey]) -> Result<Vec<Option<RefreshStatus>>, StoreError> {
        let state = self.lock();
        Ok(keys
            .iter()
            .map(|k| state.statuses.get(k).cloned())
            .collect())
    }

    async fn put_status(&self, key: &TokenKey, status: &RefreshStatus) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.statuses.insert(key.clone(), status.clone());
        state.schedule.insert(key.clone(), status.next_attempt);
        Ok(())
    }

    async fn mark_read(&self, key: &TokenKey, now: i64) -> Result<(), StoreError> {
        self.lock().reads.insert(key.clone(), now);
        Ok(())
    }

    async fn last_reads(&self, keys: &[TokenKey], now: i64) -> Result<Vec<i64>, StoreError> {
        let mut state = self.lock();
        Ok(keys
            .iter()
            .map(|key| *state.reads.entry(key.clone()).or_insert(now))
            .collect())
    }

    async fn active_count(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        Ok(self
            .lock()
            .tokens
            .values()
            .filter(|r| r.expires_on > now)
            .count() as u64)
    }

    async fn soonest_expiry(&self) -> Result<Option<i64>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .lock()
            .tokens
            .values()
            .map(|r| r.expires_on)
            .filter(|at| *at > now)
            .min())
    }
}

#[async_trait]
impl Coordination for MemoryStore {
    async fn try_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        Ok(match state.leases.get(key) {
            Some((holder, until)) if *until > now && holder != owner => false,
            _ => {
                state
                    .leases
                    .insert(key.clone(), (owner.to_owned(), now + ttl));
                true
            }
        })
    }

    async fn renew_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        Ok(match state.leases.get_mut(key) {
            Some((holder, until)) if holder == owner && *until > now => {
                *until = now + ttl;
                true
            }
            _ => false,
        })
    }

    async fn release_lease(&self, key: &TokenKey, owner: &str) -> Result<(), StoreError> {
        release(&mut self.lock(), key, owner);
        Ok(())
    }

    async fn lease_and_read(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<(Option<TokenRecord>, Grant)>, StoreError> {
        if !self.try_lease(key, owner, ttl).await? {
            return Ok(None);
        }
        Ok(Some((self.get(key).await?, self.grant(key).await?)))
    }

    async fn lease_held(&self, key: &TokenKey) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .leases
            .get(key)
            .is_some_and(|(_, until)| *until > Instant::now()))
    }

    async fn count_refresh(
        &self,
        caller: &str,
        key: &TokenKey,
        window_secs: u64,
    ) -> Result<(u64, u64), StoreError> {
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
        Ok((entry.0, left))
    }
}

#[async_trait]
impl Events for MemoryStore {
    /// Nobody else writes this store: a feed that never says anything.
    async fn changes(&self) -> Result<ChangeFeed, StoreError> {
        Ok(ChangeFeed {
            changes: futures::stream::pending().boxed(),
            complete: true,
        })
    }

    /// The audit stream is a Redis feature; log lines carry every event anyway.
    async fn append_audit(&self, _fields: &[(&'static str, String)]) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    fn token_name(&self, key: &TokenKey) -> String {
        self.keys.token(key)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
