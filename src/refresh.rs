//! Getting tokens into the store and keeping them fresh (SPEC §6): on-demand
//! acquisition, forced refresh and the sweep, all through one per-key flight so a
//! key is fetched by one identity-provider request at a time in this process.
//!
//! Seams for the refresh engine: the sweep below lists every stored token (the
//! due-time index replaces that), and flights are per process (a Redis lease makes
//! them span instances).

use crate::callers::{Outcome, audit};
use crate::clock::unix_now;
use crate::domain::{Scope, TokenKey};
use crate::identity::{Identity, IdpError};
use crate::store::{PutOutcome, Store, StoreError, TokenMetadata, TokenRecord};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Idp(#[from] IdpError),
    /// The task doing the refresh panicked or was cancelled at shutdown.
    #[error("the refresh task stopped before finishing")]
    Aborted,
}

#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub refresh_before_secs: u64,
    pub min_validity_secs: u64,
    pub concurrency: usize,
    /// `TOKEN_SCOPES`: acquired by every sweep when missing.
    pub warm_scopes: Vec<Scope>,
    pub on_demand: bool,
}

/// What one sweep did; printed by `handler sweep` and logged by the timer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SweepSummary {
    /// Stored agent tokens within the refresh window, plus warm scopes not stored.
    pub due: usize,
    pub refreshed: usize,
    pub failed: usize,
    /// Due user tokens: refreshing them needs their grant (not in this build yet).
    pub skipped: usize,
    /// Members of the active set whose key had expired.
    pub pruned: usize,
    pub duration_ms: u64,
}

impl SweepSummary {
    pub fn line(&self) -> String {
        format!(
            "sweep: due={} refreshed={} failed={} skipped={} pruned={} duration_ms={}",
            self.due, self.refreshed, self.failed, self.skipped, self.pruned, self.duration_ms
        )
    }
}

pub struct Refresher {
    store: Store,
    identity: Identity,
    settings: RefreshSettings,
    flights: Flights,
}

impl Refresher {
    pub fn new(store: Store, identity: Identity, settings: RefreshSettings) -> Self {
        Self {
            store,
            identity,
            settings,
            flights: Flights::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    /// Callers waiting on or running the flight for `key`: lock contention, for
    /// metrics, and for tests that must know every caller has arrived.
    pub fn flight_waiters(&self, key: &TokenKey) -> usize {
        self.flights.waiters(key)
    }

    /// Whether this service may go to the identity provider for `key` unasked.
    fn may_acquire(&self, key: &TokenKey) -> bool {
        match key {
            TokenKey::Agent(scope) => {
                self.settings.on_demand || self.settings.warm_scopes.contains(scope)
            }
            TokenKey::User(..) => false,
        }
    }

    /// A token for `key` with at least `min_validity` seconds left: the stored one,
    /// or a new one when on-demand acquisition applies. `None` when there is none to
    /// give. However many callers ask at once, one request goes to the identity
    /// provider.
    pub async fn ensure(
        self: &Arc<Self>,
        key: &TokenKey,
        min_validity: u64,
    ) -> Result<Option<TokenRecord>, RefreshError> {
        let arrived = Instant::now();
        let good = move |r: &TokenRecord| r.seconds_left(unix_now()) >= min_validity as i64;
        let stored = self.store.get(key).await?;
        if let Some(record) = stored.as_ref().filter(|r| good(r)) {
            return Ok(Some(record.clone()));
        }
        // An agent token that is stored but too short-lived is renewed even when
        // on-demand acquisition is off: the service already owns that scope.
        let renewable = matches!(key, TokenKey::Agent(_)) && stored.is_some();
        if !(renewable || self.may_acquire(key)) {
            return Ok(None);
        }
        self.flight(key, arrived, good).await.map(Some)
    }

    /// A new token from the identity provider, bypassing every cache. Callers that
    /// arrive while a request is already out share the one that starts after them.
    /// `None` when the key is not stored and may not be acquired.
    pub async fn force(
        self: &Arc<Self>,
        key: &TokenKey,
    ) -> Result<Option<TokenRecord>, RefreshError> {
        let arrived = Instant::now();
        if matches!(key, TokenKey::User(..)) {
            // A user token is refreshed with the user's own grant, which this build
            // does not store yet; never with the agent's credentials.
            return Ok(None);
        }
        if !self.may_acquire(key) && self.store.get(key).await?.is_none() {
            return Ok(None);
        }
        self.flight(key, arrived, |_| false).await.map(Some)
    }

    /// Refreshes every due agent token and acquires missing warm scopes, at most
    /// `TOKEN_REFRESH_CONCURRENCY` at a time; prunes dangling active-set members.
    /// Fails only when the store cannot be read.
    pub async fn sweep(self: &Arc<Self>) -> Result<SweepSummary, StoreError> {
        let started = Instant::now();
        let listing = self.store.list().await?;
        let mut summary = SweepSummary {
            pruned: self.store.prune(&listing.dangling).await?,
            ..SweepSummary::default()
        };
        let now = unix_now();
        let window = self.settings.refresh_before_secs as i64;
        let mut due = Vec::new();
        let mut stored_agents = HashSet::new();
        for (key, record) in &listing.tokens {
            if let TokenKey::Agent(scope) = key {
                stored_agents.insert(scope.clone());
            }
            if record.seconds_left(now) <= window {
                match key {
                    TokenKey::Agent(_) => due.push(key.clone()),
                    TokenKey::User(..) => summary.skipped += 1,
                }
            }
        }
        for scope in &self.settings.warm_scopes {
            if !stored_agents.contains(scope) {
                due.push(TokenKey::Agent(scope.clone()));
            }
        }
        summary.due = due.len();
        let outcomes: Vec<bool> = futures::stream::iter(due)
            .map(|key| async move {
                let arrived = Instant::now();
                // Another trigger may have refreshed it since the listing.
                let fresh = move |r: &TokenRecord| r.seconds_left(unix_now()) > window;
                let result = self.flight(&key, arrived, fresh).await;
                let outcome = if result.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                };
                if let Err(error) = &result {
                    tracing::warn!(%error, scope = %key.scope(), "sweep could not refresh a token");
                }
                audit(
                    "sweep",
                    "refresh",
                    &key,
                    outcome,
                    result.as_ref().ok().map(|r| &r.token),
                );
                result.is_ok()
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        summary.refreshed = outcomes.iter().filter(|ok| **ok).count();
        summary.failed = outcomes.len() - summary.refreshed;
        summary.duration_ms = started.elapsed().as_millis() as u64;
        Ok(summary)
    }

    /// Runs one identity-provider request for `key` unless `good_enough` accepts
    /// what is stored, or a request that started after `arrived` already finished.
    ///
    /// The work runs in its own task: a caller that goes away (a client hanging up)
    /// does not cancel a request the other waiters depend on.
    async fn flight(
        self: &Arc<Self>,
        key: &TokenKey,
        arrived: Instant,
        good_enough: impl Fn(&TokenRecord) -> bool + Send + 'static,
    ) -> Result<TokenRecord, RefreshError> {
        let this = Arc::clone(self);
        let key = key.clone();
        let task = tokio::spawn(async move {
            let slot = this.flights.slot(&key);
            let result = {
                let mut flight = slot.lock().await;
                this.fly(&mut flight, &key, arrived, good_enough).await
            };
            this.flights.release(&key, slot);
            result
        });
        task.await.unwrap_or(Err(RefreshError::Aborted))
    }

    async fn fly(
        &self,
        flight: &mut Flight,
        key: &TokenKey,
        arrived: Instant,
        good_enough: impl Fn(&TokenRecord) -> bool,
    ) -> Result<TokenRecord, RefreshError> {
        if flight.started.is_some_and(|started| started >= arrived) {
            // A request that began after this caller arrived has finished: its answer
            // is as fresh as a new one, so share it instead of asking again.
            if let Some(error) = &flight.failure {
                return Err(error.clone().into());
            }
            if let Some(record) = self.store.get(key).await? {
                return Ok(record);
            }
        }
        if let Some(record) = self.store.get(key).await?.filter(|r| good_enough(r)) {
            return Ok(record);
        }
        flight.started = Some(Instant::now());
        let result = self.acquire_and_store(key).await;
        flight.failure = match &result {
            Err(RefreshError::Idp(error)) => Some(error.clone()),
            _ => None,
        };
        result
    }

    async fn acquire_and_store(&self, key: &TokenKey) -> Result<TokenRecord, RefreshError> {
        let refresh_token = if self.identity.uses_refresh_tokens() {
            self.store.get_secret(key).await?
        } else {
            None
        };
        let acquired = self
            .identity
            .acquire(key.scope(), refresh_token.as_ref())
            .await?;
        if let Some(refresh_token) = &acquired.refresh_token {
            self.store.put_secret(key, refresh_token).await?;
        }
        let mut record = TokenRecord {
            token: acquired.token,
            expires_on: acquired.expires_on,
            scope: key.scope().as_str().to_owned(),
            stored_at: unix_now(),
            user_id: key.user().map(|u| u.as_str().to_owned()),
            metadata: TokenMetadata {
                // The seed's value: applications reading Redis may match on it.
                acquired_by: "agent_auth_manager".to_owned(),
                client_id: self.identity.client_id().to_owned(),
                flow: self.identity.flow_name().to_owned(),
            },
            refresh_count: 0,
        };
        match self.store.put(key, &record).await? {
            PutOutcome::Written { refresh_count } => {
                record.refresh_count = refresh_count;
                Ok(record)
            }
            // Another instance stored a token that lives longer; serve that one.
            PutOutcome::Superseded => Ok(self.store.get(key).await?.unwrap_or(record)),
        }
    }
}

/// One in-process flight per key.
#[derive(Default)]
struct Flights {
    // A std Mutex around the map: held only to find or drop a slot, never across an
    // await. The per-key tokio Mutex is what callers wait on.
    slots: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<Flight>>>>,
}

#[derive(Default)]
struct Flight {
    /// When the last identity-provider request for this key began.
    started: Option<Instant>,
    /// Its error, shared with the callers that waited for it.
    failure: Option<IdpError>,
}

impl Flights {
    fn slot(&self, key: &TokenKey) -> Arc<tokio::sync::Mutex<Flight>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    fn waiters(&self, key: &TokenKey) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Every caller holds one clone; the map holds one more.
        slots.get(key).map_or(0, |slot| Arc::strong_count(slot) - 1)
    }

    /// Drops the slot once nobody else holds it, so the map does not grow with
    /// every scope ever asked for.
    fn release(&self, key: &TokenKey, slot: Arc<tokio::sync::Mutex<Flight>>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours. Clones are only made under this lock.
        if Arc::strong_count(&slot) == 2 {
            slots.remove(key);
        }
    }
}
