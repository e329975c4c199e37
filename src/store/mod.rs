//! The token store (SPEC §4): Redis in the layout other applications read, or an
//! in-process map with the same behaviour for `dev` and `TOKEN_STORE=memory`.

mod keys;
mod memory;
mod redis;
mod seal;

pub use self::keys::Keys;
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use self::seal::{Sealer, Unsealable};

use crate::callers::AuditRecord;
use crate::domain::TokenKey;
use crate::secret::{Secret, serialize_exposed};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The token JSON of SPEC §4.
///
/// `refresh_count` is never serialized from here: the store writes it in the same
/// atomic step that reads the previous count, so concurrent writers cannot lose an
/// increment (see [`RedisStore::put`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    #[serde(serialize_with = "serialize_exposed")]
    pub token: Secret,
    pub expires_on: i64,
    pub scope: String,
    pub stored_at: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub metadata: TokenMetadata,
    /// Unix milliseconds when the identity-provider request for this token began.
    /// A write whose request began earlier than the stored token's is stale and is
    /// refused, whatever the two tokens' lifetimes.
    #[serde(default)]
    pub requested_at_ms: i64,
    #[serde(skip_serializing, default)]
    pub refresh_count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenMetadata {
    #[serde(default)]
    pub acquired_by: String,
    #[serde(default)]
    pub client_id: String,
    /// How the token was obtained: `password`, `client_credentials`, `managed_identity`, `dev`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub flow: String,
}

impl TokenRecord {
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.expires_on - now
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The record is stored with this `refresh_count`.
    Written { refresh_count: u64 },
    /// A token from a later request was already stored; it was kept.
    Superseded,
}

/// Why the last refresh of a key failed and when the next may be tried. Kept in
/// Redis so every instance backs off the same way; removed by the next success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshStatus {
    /// Failures in a row.
    pub failures: u32,
    /// The identity provider's error title (`invalid_grant`, `temporarily_unavailable`, ...).
    pub last_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<u32>,
    /// Throttling or an outage (worth waiting for), not a refusal.
    #[serde(default)]
    pub transient: bool,
    /// Unix seconds.
    pub last_attempt: i64,
    /// Unix seconds; no request for this key before then.
    pub next_attempt: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("stored value under {key} is not token JSON: {reason}")]
    Corrupt { key: String, reason: String },
}

/// How long a refresh token is kept: Entra's sliding window for refresh tokens is
/// 90 days, so a key older than that could not be redeemed anyway.
pub const SECRET_TTL_SECS: u64 = 90 * 24 * 3600;

pub enum Store {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// Forwards a call to whichever store this is; the memory store answers at once.
macro_rules! each {
    ($self:ident, $s:ident => $redis:expr, $memory:expr) => {
        match $self {
            Store::Redis($s) => $redis,
            #[allow(unused_variables)]
            Store::Memory($s) => Ok($memory),
        }
    };
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    /// The key names of SPEC §4 (the memory store names its entries the same way).
    pub fn keys(&self) -> &Keys {
        match self {
            Self::Redis(s) => s.keys(),
            Self::Memory(s) => s.keys(),
        }
    }

    /// Requests sent to Redis so far (a pipeline or script is one): what a sweep
    /// costs, for benchmarks. Always 0 for the memory store.
    pub fn round_trips(&self) -> u64 {
        match self {
            Self::Redis(s) => s.round_trips(),
            Self::Memory(_) => 0,
        }
    }

    pub async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        each!(self, s => s.get(key).await, s.get(key))
    }

    /// Many tokens in one round trip, in the order of `keys`.
    pub async fn get_many(
        &self,
        keys: &[TokenKey],
    ) -> Result<Vec<Option<TokenRecord>>, StoreError> {
        each!(self, s => s.get_many(keys).await, keys.iter().map(|k| s.get(k)).collect())
    }

    /// Stores `record` with TTL = seconds until it expires (atomically incrementing
    /// `refresh_count` when it replaces a token, and refusing an older one), then
    /// adds it to the active set, schedules its refresh at `due_at` and clears its
    /// failure status.
    pub async fn put(
        &self,
        key: &TokenKey,
        record: &TokenRecord,
        due_at: i64,
    ) -> Result<PutOutcome, StoreError> {
        each!(self, s => s.put(key, record, due_at).await, s.put(key, record, due_at))
    }

    /// Removes the token, its refresh token and every index entry. `true` when a
    /// token was stored.
    pub async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        each!(self, s => s.delete(key).await, s.delete(key))
    }

    /// Every stored token (for the list endpoint; the sweep does not use it).
    pub async fn list(&self) -> Result<Vec<(TokenKey, TokenRecord)>, StoreError> {
        each!(self, s => s.list().await, s.list())
    }

    /// `expires_on` of the stored token that expires first.
    pub async fn soonest_expiry(&self) -> Result<Option<i64>, StoreError> {
        each!(self, s => s.soonest_expiry().await, s.soonest_expiry())
    }

    pub async fn active_count(&self) -> Result<u64, StoreError> {
        each!(self, s => s.active_count().await, s.active_count())
    }

    pub async fn get_secret(&self, key: &TokenKey) -> Result<Option<Secret>, StoreError> {
        each!(self, s => s.get_secret(key).await, s.get_secret(key))
    }

    pub async fn put_secret(&self, key: &TokenKey, secret: &Secret) -> Result<(), StoreError> {
        each!(self, s => s.put_secret(key, secret).await, s.put_secret(key, secret))
    }

    pub async fn delete_secret(&self, key: &TokenKey) -> Result<(), StoreError> {
        each!(self, s => s.delete_secret(key).await, s.delete_secret(key))
    }

    /// Appends an audit event to the capped stream `{ns}tokens:audit`.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        each!(self, s => s.append_audit(record).await, ())
    }

    /// Counts one forced refresh of `key` by `caller` in the current window of
    /// `window_secs`; returns the count so far and the seconds until the window ends.
    pub async fn count_refresh(
        &self,
        caller: &str,
        key: &TokenKey,
        window_secs: u64,
    ) -> Result<(u64, u64), StoreError> {
        each!(self, s => s.count_refresh(caller, key, window_secs).await, s.count_refresh(caller, key, window_secs))
    }

    /// Whether the backing store answers. The memory store always does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping().await, ())
    }

    /// Full keys whose refresh is due at `now`, soonest first, at most `limit`.
    pub async fn due(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.due(now, limit).await, s.due(now, limit))
    }

    /// Moves a key's next refresh to `at`.
    pub async fn reschedule(&self, key: &TokenKey, at: i64) -> Result<(), StoreError> {
        each!(self, s => s.reschedule(key, at).await, s.reschedule(key, at))
    }

    /// Takes full keys out of the schedule, and out of the active set too when
    /// `inactive` (their token is gone).
    pub async fn unschedule(&self, full_keys: &[String], inactive: bool) -> Result<(), StoreError> {
        each!(self, s => s.unschedule(full_keys, inactive).await, s.unschedule(full_keys, inactive))
    }

    /// Checks the next `count` members of the active set and removes those whose
    /// key has expired; resumes where the last call stopped. Returns how many went.
    pub async fn prune_step(&self, count: usize) -> Result<usize, StoreError> {
        each!(self, s => s.prune_step(count).await, 0)
    }

    /// Takes the refresh lease of `key` for `ttl` unless another owner holds it.
    pub async fn try_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.try_lease(key, owner, ttl).await, s.try_lease(key, owner, ttl))
    }

    /// Extends the lease if `owner` still holds it.
    pub async fn renew_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.renew_lease(key, owner, ttl).await, s.try_lease(key, owner, ttl))
    }

    /// Releases the lease if `owner` still holds it; never someone else's.
    pub async fn release_lease(&self, key: &TokenKey, owner: &str) -> Result<(), StoreError> {
        each!(self, s => s.release_lease(key, owner).await, s.release_lease(key, owner))
    }

    /// Whether anyone holds the lease of `key`.
    pub async fn lease_held(&self, key: &TokenKey) -> Result<bool, StoreError> {
        each!(self, s => s.lease_held(key).await, s.lease_held(key))
    }

    pub async fn get_status(&self, key: &TokenKey) -> Result<Option<RefreshStatus>, StoreError> {
        each!(self, s => s.get_status(key).await, s.get_status(key))
    }

    /// Many statuses in one round trip, in the order of `keys`.
    pub async fn statuses(
        &self,
        keys: &[TokenKey],
    ) -> Result<Vec<Option<RefreshStatus>>, StoreError> {
        each!(self, s => s.statuses(keys).await, keys.iter().map(|k| s.get_status(k)).collect())
    }

    /// Records a failure and schedules the retry at `status.next_attempt`.
    pub async fn put_status(
        &self,
        key: &TokenKey,
        status: &RefreshStatus,
    ) -> Result<(), StoreError> {
        each!(self, s => s.put_status(key, status).await, s.put_status(key, status))
    }

    /// Notes that `key` was read at `now`.
    pub async fn mark_read(&self, key: &TokenKey, now: i64) -> Result<(), StoreError> {
        each!(self, s => s.mark_read(key, now).await, s.mark_read(key, now))
    }

    /// When each of `keys` was last read; a key never seen starts its idle clock at
    /// `now` (so a token is idle only after a full idle period without readers).
    pub async fn last_reads(&self, keys: &[TokenKey], now: i64) -> Result<Vec<i64>, StoreError> {
        each!(self, s => s.last_reads(keys, now).await, s.last_reads(keys, now))
    }
}
