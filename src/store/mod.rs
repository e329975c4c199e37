//! The token store (SPEC §4): Redis in the layout other applications read, or an
//! in-process map with the same behaviour for `dev` and `TOKEN_STORE=memory`.

mod keys;
mod memory;
mod redis;

pub use self::keys::Keys;
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use crate::domain::TokenKey;
use crate::secret::{Secret, serialize_exposed};
use serde::{Deserialize, Serialize};

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
    /// A token that expires later was already stored; it was kept.
    Superseded,
}

/// All stored tokens, and members of the active set whose key has expired.
#[derive(Debug, Default)]
pub struct Listing {
    pub tokens: Vec<(TokenKey, TokenRecord)>,
    pub dangling: Vec<String>,
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

    pub async fn get(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        match self {
            Self::Redis(s) => s.get(key).await,
            Self::Memory(s) => Ok(s.get(key)),
        }
    }

    /// Stores `record` with TTL = seconds until it expires and adds it to the active
    /// set; increments `refresh_count` when it replaces a token.
    pub async fn put(
        &self,
        key: &TokenKey,
        record: &TokenRecord,
    ) -> Result<PutOutcome, StoreError> {
        match self {
            Self::Redis(s) => s.put(key, record).await,
            Self::Memory(s) => Ok(s.put(key, record)),
        }
    }

    /// Removes the token, its refresh token and its active-set entry. `true` when a
    /// token was stored.
    pub async fn delete(&self, key: &TokenKey) -> Result<bool, StoreError> {
        match self {
            Self::Redis(s) => s.delete(key).await,
            Self::Memory(s) => Ok(s.delete(key)),
        }
    }

    pub async fn list(&self) -> Result<Listing, StoreError> {
        match self {
            Self::Redis(s) => s.list().await,
            Self::Memory(s) => Ok(s.list()),
        }
    }

    /// Removes members of the active set whose key has expired.
    pub async fn prune(&self, dangling: &[String]) -> Result<usize, StoreError> {
        match self {
            Self::Redis(s) => s.prune(dangling).await,
            Self::Memory(_) => Ok(0),
        }
    }

    pub async fn active_count(&self) -> Result<u64, StoreError> {
        match self {
            Self::Redis(s) => s.active_count().await,
            Self::Memory(s) => Ok(s.active_count()),
        }
    }

    pub async fn get_secret(&self, key: &TokenKey) -> Result<Option<Secret>, StoreError> {
        match self {
            Self::Redis(s) => s.get_secret(key).await,
            Self::Memory(s) => Ok(s.get_secret(key)),
        }
    }

    pub async fn put_secret(&self, key: &TokenKey, secret: &Secret) -> Result<(), StoreError> {
        match self {
            Self::Redis(s) => s.put_secret(key, secret).await,
            Self::Memory(s) => {
                s.put_secret(key, secret);
                Ok(())
            }
        }
    }

    /// Whether the backing store answers. The memory store always does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Redis(s) => s.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }
}
