//! Getting tokens into the store and keeping them fresh (SPEC §6).
//!
//! [`TokenService`] owns every way a token changes: a read that needs one
//! ([`TokenService::ensure`]), a forced refresh, a delete, a user's grant, and the
//! sweep. Every request to the identity provider for a key goes through one
//! flight per key: in this process a tokio mutex per key, across processes a
//! lease in Redis. Whoever holds both asks; everyone else waits for the token (or
//! the failure) it stores. Storing a user's grant takes the same lease; a delete
//! takes neither.

mod flight;
mod grants;
mod lease;
mod schedule;
mod sweep;

pub use self::grants::{Stored, UserGrant};
pub use self::schedule::{backoff, due_at};
pub use self::sweep::SweepSummary;

use self::flight::{Flights, replaces};
use self::lease::Leases;
use crate::audit::Audit;
use crate::cache::{Served, Ticket, TokenCache};
use crate::clock::Clock;
use crate::config::RefreshConfig;
use crate::domain::TokenKey;
use crate::identity::{Identity, IdpError};
use crate::metrics::{Metrics, ResultLabels};
use crate::store::{RefreshStatus, SharedStore, StoreError, TokenRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// The longest pause between attempts for one key.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Reads are recorded in Redis at most this often per key and instance, so the
/// idle clock costs nothing on the hot path.
const READ_MARK_EVERY_SECS: i64 = 600;

/// The peers the token service works with, and shares with the rest of the app.
pub struct Peers {
    pub store: SharedStore,
    pub identity: Arc<Identity>,
    /// In front of a shared store; `None` for the in-process one.
    pub cache: Option<Arc<TokenCache>>,
    pub audit: Audit,
    pub metrics: Metrics,
    pub clock: Clock,
}

/// Cheap to clone: one handle onto the service's state.
#[derive(Clone)]
pub struct TokenService(Arc<Inner>);

struct Inner {
    store: SharedStore,
    identity: Arc<Identity>,
    cache: Option<Arc<TokenCache>>,
    audit: Audit,
    metrics: Metrics,
    clock: Clock,
    settings: RefreshConfig,
    flights: Flights,
    leases: Leases,
    /// Stored refresh tokens this instance could not decrypt (key changed).
    undecryptable: AtomicU64,
}

impl TokenService {
    pub fn new(peers: Peers, settings: RefreshConfig) -> Self {
        let Peers {
            store,
            identity,
            cache,
            audit,
            metrics,
            clock,
        } = peers;
        Self(Arc::new(Inner {
            store,
            identity,
            cache,
            audit,
            metrics,
            clock,
            settings,
            flights: Flights::default(),
            leases: Leases::new(),
            undecryptable: AtomicU64::new(0),
        }))
    }

    pub fn settings(&self) -> &RefreshConfig {
        &self.0.settings
    }

    /// The identity provider, as this service uses it.
    pub fn identity(&self) -> &Identity {
        &self.0.identity
    }

    /// Whether a token for `key` could ever be acquired with the configured
    /// identity: not an agent token for several scopes from a managed identity.
    pub fn is_obtainable(&self, key: &TokenKey) -> bool {
        !(matches!(key, TokenKey::Agent(_))
            && self.0.identity.one_resource_per_token()
            && key.scope().is_several())
    }

    /// Callers waiting on or running the flight for `key`: lock contention, for
    /// metrics, and for tests that must know every caller has arrived.
    pub fn flight_waiters(&self, key: &TokenKey) -> usize {
        self.0.flights.waiters(key)
    }

    /// All callers waiting on or running flights in this instance.
    pub fn all_flight_waiters(&self) -> usize {
        self.0.flights.total_waiters()
    }

    /// Stored refresh tokens this instance could not decrypt since it started.
    pub fn undecryptable_grants(&self) -> u64 {
        self.0.undecryptable.load(Ordering::Relaxed)
    }

    fn is_warm(&self, key: &TokenKey) -> bool {
        matches!(key, TokenKey::Agent(scope) if self.settings().warm_scopes.contains(scope))
    }

    /// Whether this service may go to the identity provider for `key` unasked.
    fn may_acquire(&self, key: &TokenKey) -> bool {
        match key {
            TokenKey::Agent(_) => self.settings().on_demand || self.is_warm(key),
            TokenKey::User(..) => false,
        }
    }

    /// A token for `key` with at least `min_validity` seconds left: the cached or
    /// stored one, or a new one when on-demand acquisition applies. `None` when
    /// there is none to give. However many callers ask at once, in however many
    /// instances, one request goes to the identity provider.
    pub async fn ensure(
        &self,
        key: &TokenKey,
        min_validity: u64,
    ) -> Result<Option<Arc<Served>>, RefreshError> {
        if let Some(cache) = &self.0.cache {
            let hit = cache.get(key, min_validity);
            let result = if hit.is_some() { "hit" } else { "miss" };
            self.0
                .metrics
                .cache
                .get_or_create(&ResultLabels { result })
                .inc();
            if hit.is_some() {
                return Ok(hit);
            }
        }
        let arrived = Instant::now();
        let ticket = self.0.cache.as_ref().map(|c| c.ticket());
        let clock = self.0.clock.clone();
        let good = move |r: &TokenRecord| r.seconds_left(clock.now()) >= min_validity as i64;
        let stored = match self.0.store.get(key).await {
            Ok(stored) => stored,
            Err(error) => {
                // Redis unreachable: a cached token that is still valid is served
                // (health says degraded) rather than failing the caller.
                if let Some(hit) = self
                    .0
                    .cache
                    .as_ref()
                    .and_then(|c| c.peek(key, min_validity))
                {
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
            // Written by this flight: already in the cache.
            Ok(landed) => Ok(Some(match landed.served {
                Some(served) => served,
                None => self.remember(key, &landed.record, ticket),
            })),
            // A user token that cannot be renewed is not served below its minimum.
            Err(RefreshError::NoGrant { .. } | RefreshError::GrantRevoked) => Ok(None),
            // Redis went away during the flight: as above, a cached token that is
            // still valid enough is served rather than failing the caller.
            Err(RefreshError::Store(error)) => match self
                .0
                .cache
                .as_ref()
                .and_then(|c| c.peek(key, min_validity))
            {
                Some(hit) => Ok(Some(hit)),
                None => Err(error.into()),
            },
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
        if let (Some(cache), Some(ticket)) = (&self.0.cache, ticket) {
            cache.insert(key, served.clone(), ticket);
        }
        served
    }

    fn forget(&self, key: &TokenKey) {
        if let Some(cache) = &self.0.cache {
            cache.invalidate(key);
        }
    }

    /// Removes a token with its refresh token and index entries (and from this
    /// instance's cache at once; other instances hear of it on the channel).
    pub async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let removed = self.0.store.delete(key).await;
        self.forget(key);
        removed
    }

    /// A new token from the identity provider, bypassing every cache. A refresh
    /// already in flight when this caller arrives (here or in another instance)
    /// answers it too: one request per round of concurrent refreshes.
    /// `None` when the key is not stored and may not be acquired.
    pub async fn force(&self, key: &TokenKey) -> Result<Option<TokenRecord>, RefreshError> {
        let arrived = Instant::now();
        let ticket = self.0.cache.as_ref().map(|c| c.ticket());
        let before = self.0.store.get(key).await?;
        if !self.may_acquire(key) && before.is_none() {
            // A user token is refreshed with the user's own grant, never with the
            // agent's credentials; with neither token nor grant there is nothing to do.
            return Ok(None);
        }
        let before = before.map(|r| r.token);
        let landed = self.flight(key, arrived, replaces(before)).await?;
        // This instance serves the new token at once (unless a later change has
        // already been heard of); others drop theirs when the change event reaches them.
        if landed.served.is_none() {
            self.remember(key, &landed.record, ticket);
        }
        Ok(Some(landed.record))
    }

    /// Notes that `key` was served, for the idle rule (which only on-demand agent
    /// tokens have). Writes to the store at most every [`READ_MARK_EVERY_SECS`]
    /// per served token, in the background.
    pub fn note_read(&self, key: &TokenKey, served: &Served) {
        if matches!(key, TokenKey::User(..)) {
            return;
        }
        let now = self.0.clock.now();
        if !claim_read_mark(&served.read_marked, now) {
            return;
        }
        let store = self.0.store.clone();
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(error) = store.mark_read(&key, now).await {
                tracing::debug!(%error, "could not record a read");
            }
        });
    }
}

/// Whether this read is the one to record, at most one per [`READ_MARK_EVERY_SECS`].
fn claim_read_mark(marked: &AtomicI64, now: i64) -> bool {
    let last = marked.load(Ordering::Relaxed);
    now - last >= READ_MARK_EVERY_SECS
        && marked
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
