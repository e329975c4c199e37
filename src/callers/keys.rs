//! API keys (SPEC §7): configured by the SHA-256 of each key, never the key;
//! a presented key is hashed and compared with every entry in constant time.

use super::{Caller, Policy};
use crate::secret::{Secret, hex};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// One entry of `TOKEN_API_KEYS`, as operators write it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub name: String,
    /// Hex SHA-256 of the key; the key itself is never configured.
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `[]` means agent tokens only.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl ApiKeyEntry {
    pub fn parse_list(json: &str) -> Result<Vec<Self>, String> {
        let entries: Vec<Self> = serde_json::from_str(json).map_err(|e| {
            format!("is not a JSON array of {{\"name\",\"sha256\",\"scopes\",\"users\",\"admin\"}} entries ({e})")
        })?;
        for entry in &entries {
            if entry.name.trim().is_empty() {
                return Err("every key needs a non-empty name".to_owned());
            }
            if decode_hash(&entry.sha256).is_none() {
                return Err(format!(
                    "key {:?}: sha256 must be 64 hex digits (the SHA-256 of the key, not the key)",
                    entry.name
                ));
            }
        }
        Ok(entries)
    }
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A fresh random key and its `TOKEN_API_KEYS` entry (`handler keys new`).
pub fn new_key(
    name: &str,
    scopes: Vec<String>,
    users: Vec<String>,
    admin: bool,
) -> (Secret, ApiKeyEntry) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "tbk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let entry = ApiKeyEntry {
        name: name.to_owned(),
        sha256: hex(&Sha256::digest(key.as_bytes())),
        scopes,
        users,
        admin,
    };
    (Secret::new(key), entry)
}

/// The configured keys: hash and the caller each one stands for.
pub(super) struct ApiKeys(Vec<([u8; 32], Arc<Caller>)>);

impl ApiKeys {
    pub(super) fn new(entries: &[ApiKeyEntry]) -> Self {
        Self(
            entries
                .iter()
                .filter_map(|e| {
                    let hash = decode_hash(&e.sha256)?;
                    let policy = Policy::new(&e.scopes, &e.users, e.admin);
                    Some((hash, Arc::new(Caller::new(e.name.clone(), None, policy))))
                })
                .collect(),
        )
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller whose key this is.
    pub(super) fn find(&self, presented: &str) -> Option<&Arc<Caller>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, in constant time, so the answer's timing says
        // nothing about which entry came close.
        let mut found = None;
        for (hash, caller) in &self.0 {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found
    }
}
