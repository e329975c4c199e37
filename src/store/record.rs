//! What the store keeps, as the rest of the service sees it.

use crate::domain::TokenKey;
use crate::secret::{Secret, serialize_exposed};
use serde::{Deserialize, Serialize};

/// The token JSON of SPEC §4.
///
/// `refresh_count` is never serialized from here: the store writes it in the same
/// atomic step that reads the previous count, so concurrent writers cannot lose an
/// increment (see [`super::Tokens::put`]).
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
    /// How the token was obtained: `password`, `client_credentials`,
    /// `managed_identity`, `agent_identity`, `agent_user`, `on_behalf_of`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub flow: String,
    /// The Entra Agent ID agent identity that holds the token, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_identity: Option<String>,
}

impl TokenRecord {
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.expires_on - now
    }
}

/// A stored token as the list endpoint shows it: its key, the name other
/// applications read it under, and its record.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub key: TokenKey,
    pub name: String,
    pub record: TokenRecord,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The record is stored with this `refresh_count`.
    Written { refresh_count: u64 },
    /// A token from a later request was already stored; it was kept.
    Superseded,
}

/// A stored refresh token, as far as it can be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    Present(Secret),
    Missing,
    /// Sealed with another `TOKEN_ENCRYPTION_KEY` (or damaged): treated as missing.
    Undecryptable,
}

impl Grant {
    pub fn present(self) -> Option<Secret> {
        match self {
            Self::Present(secret) => Some(secret),
            _ => None,
        }
    }
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
    /// The failure in one line (with the `AADSTS` code's meaning), no secrets.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Throttling or an outage (worth waiting for), not a refusal.
    #[serde(default)]
    pub transient: bool,
    /// Unix seconds.
    pub last_attempt: i64,
    /// Unix seconds; no request for this key before then.
    pub next_attempt: i64,
}

/// How much of a key's index entries [`super::Schedule::unschedule`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Stop refreshing it; the token is still served until it expires.
    Schedule,
    /// The token is gone: every index entry goes.
    Everywhere,
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
