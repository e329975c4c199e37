//! Getting tokens into the store and keeping them fresh (SPEC §6).
//!
//! On-demand acquisition, forced refresh and the sweep all go through one flight
//! per key: in this process a tokio mutex per key, across processes a lease in
//! Redis. Whoever holds both asks the identity provider; everyone else waits for
//! the token (or the failure) it stores.

mod grants;
mod schedule;
mod sweep;

pub use self::grants::UserGrant;
pub use self::schedule::{backoff, due_at};
pub use self::sweep::SweepSummary;

use self::grants::{Acquisition, Grant};
use crate::cache::{Served, Ticket, TokenCache};
use crate::callers::Outcome;
use crate::clock::{unix_now, unix_now_ms};
use crate::domain::{Scope, TokenKey};
use crate::identity::{Acquired, Identity, IdpError};
use crate::secret::Secret;
use crate::store::{
    PutOutcome, RefreshStatus, Sealer, Store, StoreError, TokenMetadata, TokenRecord,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Idp(#[from] IdpError),
    /// An earlier attempt failed and the next is not due yet.
    #[error("refresh backing off for {retry_after} s after {}", status.last_error)]
    BackingOff {
        retry_after: u64,
        status: RefreshStatus,
    },
    /// Another instance held the key's lease longer than any request may take.
    #[error("another instance is still refreshing this token")]
    Busy,
    /// A user token with no usable refresh token stored (none, or sealed with
    /// another `TOKEN_ENCRYPTION_KEY`): nothing to refresh it with.
    #[error("no refresh grant is stored for this user token")]
    NoGrant { undecryptable: bool },
    /// The identity provider rejected the user's refresh token (`invalid_grant`);
    /// the token and its grant were removed.
    #[error("the user's refresh token was rejected; the token was removed")]
    GrantRevoked,
    /// A token handed to the service that has already expired.
    #[error("the token has already expired")]
    Expired,
    /// The task doing the refresh panicked or was cancelled at shutdown.
    #[error("the refresh task stopped before finishing")]
    Aborted,
}

#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub refresh_before_secs: u64,
    pub min_validity_secs: u64,
    pub concurrency: usize,
    /// `TOKEN_SCOPES`: acquired by every sweep when missing, never idle.
    pub warm_scopes: Vec<Scope>,
    pub on_demand: bool,
    /// An on-demand token nobody read for this long is no longer refreshed.
    pub idle_secs: u64,
    /// First retry delay after a failure; doubles per failure up to [`MAX_BACKOFF`].
    pub backoff_base: Duration,
    /// Append audit events to the capped Redis stream `{ns}tokens:audit` too.
    pub audit_stream: bool,
}

/// The longest pause between attempts for one key.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a refresh lease lasts unless renewed: longer than the slowest token
/// request (the HTTP client gives up after 30 s), renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(45);
/// How long a caller waits for another instance's refresh to land.
pub(crate) const LEASE_WAIT: Duration = Duration::from_secs(50);
/// Reads are recorded in Redis at most this often per key and instance, so the
/// idle clock costs nothing on the hot path.
const READ_MARK_EVERY_SECS: i64 = 600;

/// A token as a flight returns it, and whether this flight asked the identity
/// provider for it (or found it stored by someone else).
#[derive(Debug)]
pub struct Landed {
    pub record: TokenRecord,
    pub requested: bool,
}

pub struct Refresher {
    store: Store,
    identity: Identity,
    settings: RefreshSettings,
    flights: Flights,
    /// Lease owner prefix: unique per process.
    instance: String,
    leases_taken: AtomicU64,
    /// Refresh tokens at rest: sealed with `TOKEN_ENCRYPTION_KEY` when set.
    sealer: Sealer,
    /// Stored refresh tokens this instance could not decrypt (key changed).
    undecryptable: AtomicU64,
    /// Served tokens, in front of Redis (none for the memory store: it is in-process).
    cache: Option<TokenCache>,
    /// The identity provider as this instance last saw it, for health.
    idp: Mutex<IdpSeen>,
    /// Counters and histograms for `/api/tokens/metrics`.
    pub metrics: crate::metrics::Metrics,
}

/// When the identity provider last answered with a token, and its last error.
#[derive(Debug, Clone, Default)]
pub struct IdpSeen {
    pub last_success: Option<i64>,
    pub last_error: Option<(i64, String)>,
}

/// Entries and bytes of served bodies the cache holds at most: a few thousand
/// scopes and users fit; every entry is one serialized token (a few KB).
const CACHE_ENTRIES: usize = 10_000;
const CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Refresher {
    pub fn new(
        store: Store,
        identity: Identity,
        settings: RefreshSettings,
        sealer: Sealer,
    ) -> Self {
        let cache =
            matches!(store, Store::Redis(_)).then(|| TokenCache::new(CACHE_ENTRIES, CACHE_BYTES));
        Self {
            metrics: crate::metrics::Metrics::default(),
            idp: Mutex::default(),
            cache,
            sealer,
            undecryptable: AtomicU64::new(0),
            store,
            identity,
            settings,
            flights: Flights::default(),
            instance: format!("{:016x}", rand::random::<u64>()),
            leases_taken: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    /// Whether a token for `key` could ever be acquired with the configured
    /// identity: not an agent token for several scopes from a managed identity.
    pub fn is_obtainable(&self, key: &TokenKey) -> bool {
        !(matches!(key, TokenKey::Agent(_))
            && self.identity.one_resource_per_token()
            && key.scope().is_several())
    }

    /// Callers waiting on or running the flight for `key`: lock contention, for
    /// metrics, and for tests that must know every caller has arrived.
    pub fn flight_waiters(&self, key: &TokenKey) -> usize {
        self.flights.waiters(key)
    }

    /// Emits the audit event (SPEC §7) and, with `TOKEN_AUDIT_STREAM=true`, appends
    /// it to the capped stream `{ns}tokens:audit`.
    pub async fn audit(
        &self,
        caller: &str,
        action: &'static str,
        key: &TokenKey,
        outcome: Outcome,
        token: Option<&Secret>,
    ) {
        crate::callers::audit(caller, action, key, outcome, token);
        if self.settings.audit_stream {
            let record = crate::callers::AuditRecord::new(caller, action, key, outcome, token);
            if let Err(error) = self.store.append_audit(&record).await {
                tracing::warn!(%error, "could not append to the audit stream");
            }
        }
    }

    /// Records an identity-provider answer for health and metrics.
    pub(crate) fn saw_idp(&self, flow: &'static str, result: Result<(), &IdpError>) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(IdpError::Rejected { .. } | IdpError::NotConfigured) => "rejected",
            Err(IdpError::Unavailable { .. }) => "unavailable",
            Err(IdpError::Unreachable(_) | IdpError::Protocol(_)) => "unreachable",
        };
        self.metrics
            .idp_requests
            .get_or_create(&crate::metrics::IdpLabels { flow, outcome })
            .inc();
        let mut seen = self.idp.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => seen.last_success = Some(unix_now()),
            Err(error) => seen.last_error = Some((unix_now(), error.to_string())),
        }
    }

    /// The identity provider as this instance last saw it.
    pub fn idp_seen(&self) -> IdpSeen {
        self.idp.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stored refresh tokens this instance could not decrypt since it started.
    pub fn undecryptable_grants(&self) -> u64 {
        self.undecryptable.load(Ordering::Relaxed)
    }

    /// All callers waiting on or running flights in this instance.
    pub fn all_flight_waiters(&self) -> usize {
        self.flights.total_waiters()
    }

    fn is_warm(&self, key: &TokenKey) -> bool {
        matches!(key, TokenKey::Agent(scope) if self.settings.warm_scopes.contains(scope))
    }

    /// Whether this service may go to the identity provider for `key` unasked.
    fn may_acquire(&self, key: &TokenKey) -> bool {
        match key {
            TokenKey::Agent(_) => self.settings.on_demand || self.is_warm(key),
            TokenKey::User(..) => false,
        }
    }

    /// A token for `key` with at least `min_validity` seconds left: the stored one,
    /// or a new one when on-demand acquisition applies. `None` when there is none to
    /// give. However many callers ask at once, in however many instances, one
    /// request goes to the identity provider.
    pub async fn ensure(
        self: &Arc<Self>,
        key: &TokenKey,
        min_validity: u64,
    ) -> Result<Option<Arc<Served>>, RefreshError> {
        if let Some(cache) = &self.cache {
            let hit = cache.get(key, min_validity);
            let result = if hit.is_some() { "hit" } else { "miss" };
            self.metrics
                .cache
                .get_or_create(&crate::metrics::ResultLabels { result })
                .inc();
            if hit.is_some() {
                return Ok(hit);
            }
        }
        let arrived = Instant::now();
        let ticket = self.cache.as_ref().map(TokenCache::ticket);
        let good = move |r: &TokenRecord| r.seconds_left(unix_now()) >= min_validity as i64;
        let stored = match self.store.get(key).await {
            Ok(stored) => stored,
            Err(error) => {
                // Redis unreachable: a cached token that is still valid is served
                // (health says degraded) rather than failing the caller.
                if let Some(hit) = self.cache.as_ref().and_then(|c| c.peek(key, min_validity)) {
                    return Ok(Some(hit));
                }
                return Err(error.into());
            }
        };
        if let Some(record) = stored.as_ref().filter(|r| good(r)) {
            return Ok(Some(self.remember(key, record, ticket)));
        }
        // A token that is stored but too short-lived is renewed even when on-demand
        // acquisition is off: the service already owns that key.
        if !(stored.is_some() || self.may_acquire(key)) {
            return Ok(None);
        }
        match self.flight(key, arrived, good).await {
            Ok(landed) => Ok(Some(self.remember(key, &landed.record, ticket))),
            // A user token that cannot be renewed is not served below its minimum.
            Err(RefreshError::NoGrant { .. } | RefreshError::GrantRevoked) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The served form of `record`, kept in the cache unless `key` changed since
    /// `ticket` was taken (see [`TokenCache`]).
    fn remember(
        &self,
        key: &TokenKey,
        record: &TokenRecord,
        ticket: Option<Ticket>,
    ) -> Arc<Served> {
        let served = Arc::new(Served::new(record));
        if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
            cache.insert(key, served.clone(), ticket);
        }
        served
    }

    fn forget(&self, key: &TokenKey) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
    }

    pub fn cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }

    /// Removes a token with its refresh token and index entries (and from this
    /// instance's cache at once; other instances hear of it on the channel).
    pub async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let removed = self.store.delete(key).await;
        self.forget(key);
        removed
    }

    /// Listens on the change-event channel and drops the cache entries of tokens
    /// written by any instance, until `stop`. Resubscribes after a lost connection;
    /// while unsubscribed the cache is not trusted (see [`TokenCache::set_live`]).
    pub fn spawn_invalidation(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let Store::Redis(redis) = &self.store else {
            return None;
        };
        self.cache.as_ref()?;
        let this = Arc::clone(self);
        let keys = redis.keys().clone();
        Some(tokio::spawn(async move {
            let (Store::Redis(redis), Some(cache)) = (&this.store, &this.cache) else {
                return;
            };
            let mut pause = Duration::from_millis(100);
            loop {
                match redis.subscribe_events().await {
                    Ok(mut pubsub) => {
                        cache.set_live(true);
                        pause = Duration::from_millis(100);
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(message) => {
                                        let name: String = message.get_payload().unwrap_or_default();
                                        match keys.parse_token(&name) {
                                            Some(key) => cache.invalidate(&key),
                                            None => tracing::debug!("ignoring a change event for an unknown key"),
                                        }
                                    }
                                    None => break,
                                },
                                _ = stop.changed() => {
                                    cache.set_live(false);
                                    return;
                                }
                            }
                        }
                        cache.set_live(false);
                        tracing::warn!("lost the change-event subscription; resubscribing");
                    }
                    Err(error) => tracing::debug!(%error, "cannot subscribe to change events yet"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }))
    }

    /// A new token from the identity provider, bypassing every cache. A refresh
    /// already in flight when this caller arrives (here or in another instance)
    /// answers it too: one request per round of concurrent refreshes.
    /// `None` when the key is not stored and may not be acquired.
    pub async fn force(
        self: &Arc<Self>,
        key: &TokenKey,
    ) -> Result<Option<TokenRecord>, RefreshError> {
        let arrived = Instant::now();
        let ticket = self.cache.as_ref().map(TokenCache::ticket);
        let before = self.store.get(key).await?;
        if !self.may_acquire(key) && before.is_none() {
            // A user token is refreshed with the user's own grant, never with the
            // agent's credentials; with neither token nor grant there is nothing to do.
            return Ok(None);
        }
        let before = before.map(|r| r.token);
        let landed = self.flight(key, arrived, replaces(before)).await?;
        // This instance serves the new token at once (unless a later change has
        // already been heard of); others drop theirs when the change event reaches them.
        self.remember(key, &landed.record, ticket);
        Ok(Some(landed.record))
    }

    /// Notes that `key` was served, for the idle rule. Writes to the store at most
    /// every [`READ_MARK_EVERY_SECS`] per served token, in the background.
    pub fn note_read(self: &Arc<Self>, key: &TokenKey, served: &Served) {
        let now = unix_now();
        let last = served.read_marked.load(Ordering::Relaxed);
        if now - last < READ_MARK_EVERY_SECS
            || served
                .read_marked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let this = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(error) = this.store.mark_read(&key, now).await {
                tracing::debug!(%error, "could not record a read");
            }
        });
    }

    /// Runs one identity-provider request for `key` unless `good_enough` accepts
    /// what is stored (now, or once another instance's refresh lands).
    ///
    /// The work runs in its own task: a caller that goes away (a client hanging up)
    /// does not cancel a request the other waiters depend on.
    async fn flight(
        self: &Arc<Self>,
        key: &TokenKey,
        arrived: Instant,
        good_enough: impl Fn(&TokenRecord) -> bool + Send + Sync + 'static,
    ) -> Result<Landed, RefreshError> {
        let this = Arc::clone(self);
        let key = key.clone();
        let task = tokio::spawn(async move {
            let slot = this.flights.slot(&key);
            let result = {
                let mut flight = slot.lock().await;
                this.fly(&mut flight, &key, arrived, &good_enough).await
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
        good_enough: &(impl Fn(&TokenRecord) -> bool + Send + Sync),
    ) -> Result<Landed, RefreshError> {
        // The failure of a request this caller waited for is its answer too.
        if let Some((finished, error)) = &flight.failure
            && *finished >= arrived
        {
            return Err(error.clone().into());
        }
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            if let Some(record) = self.store.get(key).await?.filter(|r| good_enough(r)) {
                return Ok(Landed {
                    record,
                    requested: false,
                });
            }
            if let Some(status) = self.store.get_status(key).await? {
                let wait = status.next_attempt - unix_now();
                if wait > 0 {
                    return Err(RefreshError::BackingOff {
                        retry_after: wait as u64,
                        status,
                    });
                }
            }
            let owner = format!(
                "{}-{}",
                self.instance,
                self.leases_taken.fetch_add(1, Ordering::Relaxed)
            );
            if self.store.try_lease(key, &owner, LEASE_TTL).await? {
                let result = self.under_lease(key, &owner, good_enough).await;
                if let Err(error) = self.store.release_lease(key, &owner).await {
                    // It expires by itself within LEASE_TTL.
                    tracing::warn!(%error, "could not release a refresh lease");
                }
                flight.failure = match &result {
                    Err(RefreshError::Idp(error)) => Some((Instant::now(), error.clone())),
                    _ => None,
                };
                return result;
            }
            // Another instance is asking; its token, or its failure status, lands
            // in the store when it is done.
            self.wait_for_lease(key, deadline).await?;
        }
    }

    async fn wait_for_lease(&self, key: &TokenKey, deadline: Instant) -> Result<(), RefreshError> {
        self.metrics.lease_waits.inc();
        let mut pause = Duration::from_millis(10);
        while self.store.lease_held(key).await? {
            if Instant::now() >= deadline {
                return Err(RefreshError::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Holding the lease: check once more (a refresh may have landed between the
    /// last read and the lease), then ask, renewing the lease while the request runs.
    async fn under_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        good_enough: &(impl Fn(&TokenRecord) -> bool + Send + Sync),
    ) -> Result<Landed, RefreshError> {
        if let Some(record) = self.store.get(key).await?.filter(|r| good_enough(r)) {
            return Ok(Landed {
                record,
                requested: false,
            });
        }
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match self.store.renew_lease(key, owner, LEASE_TTL).await {
                    Ok(true) => {}
                    // The put script still refuses to store an older token over a
                    // newer one, so losing the lease cannot regress the token.
                    _ => {
                        tracing::warn!(scope = %key.scope(), "lost the refresh lease while the request ran")
                    }
                }
            }
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = self.acquire_and_store(key) => result.map(|record| Landed { record, requested: true }),
            never = renew => never,
        };
        self.metrics
            .refresh_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn acquire_and_store(&self, key: &TokenKey) -> Result<TokenRecord, RefreshError> {
        let requested_at_ms = unix_now_ms();
        let (result, how) = match key {
            TokenKey::Agent(scope) => {
                let refresh_token = match self.identity.uses_refresh_tokens() {
                    true => self.read_grant(key).await?.present(),
                    false => None,
                };
                (
                    self.identity.acquire(scope, refresh_token.as_ref()).await,
                    Acquisition::Agent,
                )
            }
            TokenKey::User(_, scope) => {
                let refresh_token = match self.read_grant(key).await? {
                    Grant::Present(token) => token,
                    Grant::Missing => {
                        return Err(RefreshError::NoGrant {
                            undecryptable: false,
                        });
                    }
                    Grant::Undecryptable => {
                        return Err(RefreshError::NoGrant {
                            undecryptable: true,
                        });
                    }
                };
                (
                    self.identity.refresh_user(scope, &refresh_token).await,
                    Acquisition::UserRefresh,
                )
            }
        };
        let flow = match how {
            Acquisition::Agent => self.identity.flow_name(),
            other => other.flow(),
        };
        self.saw_idp(flow, result.as_ref().map(|_| ()));
        match result {
            Ok(acquired) => {
                self.store_acquired(key, acquired, requested_at_ms, how)
                    .await
            }
            Err(error) if error.is_invalid_grant() && matches!(key, TokenKey::User(..)) => {
                // Revoked, expired, password changed or consent withdrawn: this grant
                // will never work again, and the user's token must not outlive it.
                self.revoke(key, &error).await?;
                Err(RefreshError::GrantRevoked)
            }
            Err(error) => {
                self.record_failure(key, &error).await;
                Err(error.into())
            }
        }
    }

    /// Writes what the identity provider issued: the refresh token (rotated when a
    /// new one came back) under its secret key, the token under its key with its
    /// refresh schedule.
    async fn store_acquired(
        &self,
        key: &TokenKey,
        acquired: Acquired,
        requested_at_ms: i64,
        how: Acquisition,
    ) -> Result<TokenRecord, RefreshError> {
        if let Some(refresh_token) = &acquired.refresh_token {
            self.write_grant(key, refresh_token).await?;
        }
        let stored_at = unix_now();
        let mut record = TokenRecord {
            token: acquired.token,
            expires_on: acquired.expires_on,
            scope: key.scope().as_str().to_owned(),
            stored_at,
            user_id: key.user().map(|u| u.as_str().to_owned()),
            metadata: TokenMetadata {
                acquired_by: how.acquired_by().to_owned(),
                client_id: self.identity.client_id().to_owned(),
                flow: match how {
                    Acquisition::Agent => self.identity.flow_name(),
                    other => other.flow(),
                }
                .to_owned(),
            },
            requested_at_ms,
            refresh_count: 0,
        };
        let due = due_at(
            stored_at,
            record.expires_on,
            acquired.refresh_in,
            self.settings.refresh_before_secs,
        );
        let outcome = self.store.put(key, &record, due).await?;
        // This instance's cache drops the old token now, not when the change event
        // comes back: a read right after a sweep must see the new token. A read
        // waiting on this flight keeps its ticket, so its insert is refused too.
        self.forget(key);
        match outcome {
            PutOutcome::Written { refresh_count } => {
                record.refresh_count = refresh_count;
                Ok(record)
            }
            // A request that began later (another instance whose lease outlived
            // ours) already stored its token; serve that one.
            PutOutcome::Superseded => Ok(self.store.get(key).await?.unwrap_or(record)),
        }
    }

    /// Keeps the old token (it is still served while valid), and records when the
    /// key may be tried again, for every instance to see.
    async fn record_failure(&self, key: &TokenKey, error: &IdpError) {
        let previous = self.store.get_status(key).await.ok().flatten();
        let failures = previous.map_or(0, |s| s.failures) + 1;
        let delay = backoff(
            failures,
            self.settings.backoff_base,
            MAX_BACKOFF,
            error.retry_after(),
        );
        let now = unix_now();
        let (last_error, aadsts) = error.summary();
        let status = RefreshStatus {
            failures,
            last_error,
            aadsts,
            transient: error.is_transient(),
            last_attempt: now,
            next_attempt: now + delay.as_secs().max(1) as i64,
        };
        tracing::warn!(%error, scope = %key.scope(), failures, retry_in_secs = delay.as_secs(), "token request failed");
        if let Err(error) = self.store.put_status(key, &status).await {
            tracing::warn!(%error, "could not record the refresh status");
        }
    }
}

/// Accepts a stored token once it is not the one a caller saw when it arrived.
fn replaces(before: Option<Secret>) -> impl Fn(&TokenRecord) -> bool + Send + Sync + 'static {
    move |record| before.as_ref() != Some(&record.token)
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
    /// The last identity-provider error for this key and when it came back,
    /// shared with the callers that were waiting for it.
    failure: Option<(Instant, IdpError)>,
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

    fn total_waiters(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(|slot| Arc::strong_count(slot) - 1).sum()
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
