//! The token store (SPEC §4): Redis in the layout other applications read, or an
//! in-process map with the same behaviour for `dev` and `TOKEN_STORE=memory`.
//!
//! The rest of the service speaks [`TokenKey`]s and typed records to it, through
//! four traits by concern; key names and the sealing of refresh tokens stay in
//! here. Both implementations pass the same contract tests (`tests/it/store.rs`).

mod keys;
mod memory;
mod record;
mod redis;
mod seal;

pub use self::memory::MemoryStore;
pub use self::record::{
    Forget, Grant, PutOutcome, RefreshStatus, SECRET_TTL_SECS, StoreError, StoredToken,
    TokenMetadata, TokenRecord,
};
pub use self::redis::RedisStore;
pub use self::seal::{Sealer, Unsealable};

use crate::clock::Clock;
use crate::config::{ConfigError, RedisConfig, StoreConfig, StoreKind};
use crate::domain::TokenKey;
use crate::secret::Secret;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;

/// When a token's refresh is due, from its record (the refresh engine's rule,
/// for tokens the store adopts).
pub type DueRule = dyn for<'r> Fn(&'r TokenRecord) -> i64 + Sync;

/// What [`Schedule::reconcile_step`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Members whose token was gone, removed from every index.
    pub pruned: usize,
    /// Tokens another writer stored, now indexed and scheduled.
    pub adopted: usize,
    /// Whether the scan of the active set came round to its start.
    pub wrapped: bool,
}

/// A token write: the record, when its refresh is due, and what goes with it.
pub struct Write<'a> {
    pub record: &'a TokenRecord,
    pub due_at: i64,
    /// A refresh token to keep with it (sealed when an encryption key is set).
    pub grant: Option<&'a Secret>,
    /// The owner of the key's lease, released once the write is done.
    pub release: Option<&'a str>,
}

impl<'a> Write<'a> {
    /// The record alone.
    pub fn token(record: &'a TokenRecord, due_at: i64) -> Self {
        Self {
            record,
            due_at,
            grant: None,
            release: None,
        }
    }
}

/// What [`Schedule::due`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub keys: Vec<TokenKey>,
    /// Schedule entries naming no token key, removed.
    pub dropped: usize,
}

/// The store as the service holds it: one per process, shared by every peer.
pub type SharedStore = Arc<dyn Store>;

/// Opens the configured store. Does no I/O: Redis is reached on first use, so the
/// process starts (and answers the host's probe) while Redis is still away.
pub fn open(
    store: &StoreConfig,
    redis: &RedisConfig,
    clock: Clock,
) -> Result<SharedStore, ConfigError> {
    let sealer = Sealer::new(store.encryption_key.as_ref().map(|k| &k.0));
    Ok(match store.kind {
        StoreKind::Redis => Arc::new(RedisStore::new(redis, &store.namespace, sealer, clock)?),
        StoreKind::Memory => Arc::new(MemoryStore::new(&store.namespace, clock)),
    })
}

/// Tokens and their refresh tokens.
#[async_trait]
pub trait Tokens: Send + Sync {
    async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError>;

    /// Many tokens in one round trip, in the order of `keys`.
    async fn get_many(&self, keys: &[TokenKey]) -> Result<Vec<Option<TokenRecord>>, StoreError>;

    /// The token and its failure status, in one round trip.
    async fn state(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<TokenRecord>, Option<RefreshStatus>), StoreError>;

    /// Stores the record with TTL = seconds until it expires (atomically
    /// incrementing `refresh_count` when it replaces a token, and refusing an
    /// older one) with its refresh token; then adds it to the active set,
    /// schedules its refresh, clears its failure status, announces the change and
    /// releases the lease named, in two round trips.
    async fn put(&self, key: &TokenKey, write: &Write<'_>) -> Result<PutOutcome, StoreError>;

    /// Removes the token, its refresh token and every index entry. `true` when a
    /// token was stored.
    async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError>;

    /// Every stored token (for the list endpoint; the sweep does not use it).
    async fn list(&self) -> Result<Vec<StoredToken>, StoreError>;

    /// The refresh token kept for `key`, opened.
    async fn grant(&self, key: &TokenKey) -> Result<Grant, StoreError>;

    /// Keeps `refresh_token` for `key` (sealed when an encryption key is set).
    async fn put_grant(&self, key: &TokenKey, refresh_token: &Secret) -> Result<(), StoreError>;

    async fn delete_grant(&self, key: &TokenKey) -> Result<(), StoreError>;
}

/// When each token is due, how it failed last, when it was last read.
#[async_trait]
pub trait Schedule: Send + Sync {
    /// Keys whose refresh is due at `now`, soonest first, at most `limit`. Entries
    /// that name no token this service could have written are dropped here, and
    /// counted.
    async fn due(&self, now: i64, limit: usize) -> Result<Due, StoreError>;

    async fn unschedule(&self, keys: &[TokenKey], forget: Forget) -> Result<(), StoreError>;

    /// Checks the next `count` members of the active set, resuming where the last
    /// call stopped: removes those whose token is gone, and indexes those no index
    /// knows (tokens another writer stored, such as the service this one
    /// replaces), due by the usual rules from their `expires_on` (`due_at`).
    async fn reconcile_step(
        &self,
        count: usize,
        due_at: &DueRule,
    ) -> Result<Reconciled, StoreError>;

    /// Many statuses in one round trip, in the order of `keys`.
    async fn statuses(&self, keys: &[TokenKey]) -> Result<Vec<Option<RefreshStatus>>, StoreError>;

    async fn status(&self, key: &TokenKey) -> Result<Option<RefreshStatus>, StoreError> {
        Ok(self
            .statuses(std::slice::from_ref(key))
            .await?
            .pop()
            .flatten())
    }

    /// Records a failure and schedules the retry at `status.next_attempt`.
    async fn put_status(&self, key: &TokenKey, status: &RefreshStatus) -> Result<(), StoreError>;

    /// Notes that `key` was read at `now`.
    async fn mark_read(&self, key: &TokenKey, now: i64) -> Result<(), StoreError>;

    /// When each of `keys` was last read; a key never seen starts its idle clock at
    /// `now` (so a token is idle only after a full idle period without readers).
    async fn last_reads(&self, keys: &[TokenKey], now: i64) -> Result<Vec<i64>, StoreError>;

    async fn active_count(&self) -> Result<u64, StoreError>;

    /// `expires_on` of the stored token that expires first.
    async fn soonest_expiry(&self) -> Result<Option<i64>, StoreError>;
}

/// What instances agree on through the store: refresh leases and rate limits.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Takes the refresh lease of `key` for `ttl` unless another owner holds it.
    async fn try_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// The same, and what the holder needs, read in the same round trip: the
    /// token and its refresh token as they are under the lease. `None` when
    /// another owner holds it.
    async fn lease_and_read(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<(Option<TokenRecord>, Grant)>, StoreError>;

    /// Extends the lease if `owner` still holds it.
    async fn renew_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Releases the lease if `owner` still holds it; never someone else's.
    async fn release_lease(&self, key: &TokenKey, owner: &str) -> Result<(), StoreError>;

    /// Whether anyone holds the lease of `key`.
    async fn lease_held(&self, key: &TokenKey) -> Result<bool, StoreError>;

    /// Counts one forced refresh of `key` by `caller` in the current window of
    /// `window_secs`; returns the count so far and the seconds until the window ends.
    async fn count_refresh(
        &self,
        caller: &str,
        key: &TokenKey,
        window_secs: u64,
    ) -> Result<(u64, u64), StoreError>;
}

/// A change to the stored tokens, by this instance or any other writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This token was written, deleted, renamed or expired.
    Key(TokenKey),
    /// Anything may have changed (the database was flushed).
    All,
}

/// What the store reports of changes, live until the stream ends (a connection
/// behind it dropped: whatever was cached meanwhile is not to be trusted).
pub struct ChangeFeed {
    pub changes: BoxStream<'static, Change>,
    /// Every change by any writer is reported (Redis's server-assisted tracking).
    /// When not, only this service's own writes are, and cached entries must be
    /// revalidated every second.
    pub complete: bool,
}

/// What the store tells others, and hears from them.
#[async_trait]
pub trait Events: Send + Sync {
    /// A live feed of changed keys.
    async fn changes(&self) -> Result<ChangeFeed, StoreError>;

    /// Appends an audit event (field name, value) to the capped audit stream.
    async fn append_audit(&self, fields: &[(&'static str, String)]) -> Result<(), StoreError>;
}

#[async_trait]
pub trait Store: Tokens + Schedule + Coordination + Events {
    fn kind(&self) -> StoreKind;

    /// Whether other processes read and write it: only then do caches in front of
    /// it need [`Events::changes`].
    fn is_shared(&self) -> bool {
        self.kind() == StoreKind::Redis
    }

    /// The name other applications read `key` under (SPEC §4).
    fn token_name(&self, key: &TokenKey) -> String;

    /// Requests sent so far (a pipeline or script is one): what a sweep costs, for
    /// benchmarks. Always 0 in process.
    fn round_trips(&self) -> u64 {
        0
    }

    /// Whether the store is thought reachable: false while requests fail at once
    /// after Redis could not be reached (until a background probe reaches it).
    fn reachable(&self) -> bool {
        true
    }

    /// Whether the backing store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A first connection, at start: `Err` with one line when the configuration
    /// cannot work (an untrusted certificate, a refused login); a store that is
    /// only unreachable is not an error here (it may come later).
    async fn check_at_start(&self) -> Result<(), String> {
        Ok(())
    }
}
