//! Who may call (SPEC §7): API keys compared by hash, and the scopes and users
//! each caller may read.

use crate::domain::TokenKey;
use crate::secret::Secret;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// `TOKEN_API_AUTH`: how callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Keys,
    None,
}

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An allowlist entry: exact, or a prefix when it ends in `*` (`"*"` allows all).
#[derive(Clone, Debug)]
struct Pattern(String);

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => self.0 == value,
        }
    }
}

/// An authenticated caller and what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    scopes: Vec<Pattern>,
    users: Vec<Pattern>,
    pub admin: bool,
}

impl Caller {
    /// With `TOKEN_API_AUTH=none` every request acts as this caller.
    fn anonymous() -> Self {
        Self {
            name: "anonymous".to_owned(),
            scopes: vec![Pattern("*".to_owned())],
            users: vec![Pattern("*".to_owned())],
            admin: true,
        }
    }

    /// Whether this caller may read (and refresh) the token under `key`.
    pub fn may_read(&self, key: &TokenKey) -> bool {
        if self.admin {
            return true;
        }
        let scope_ok = self.scopes.iter().any(|p| p.matches(key.scope().as_str()));
        let user_ok = match key.user() {
            None => true,
            Some(user) => self.users.iter().any(|p| p.matches(user.as_str())),
        };
        scope_ok && user_ok
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` or `x-functions-key` header.
    Missing,
    /// A key was sent but matches no configured entry.
    Unknown,
    /// `TOKEN_API_AUTH=keys` and not a single key is configured.
    NoneConfigured,
}

/// The configured callers.
pub struct Callers {
    mode: AuthMode,
    // Shared, so authenticating a request copies a pointer, not the allowlists.
    keys: Vec<([u8; 32], Arc<Caller>)>,
    anonymous: Arc<Caller>,
}

impl Callers {
    pub fn new(mode: AuthMode, entries: &[ApiKeyEntry]) -> Self {
        let keys = entries
            .iter()
            .filter_map(|e| {
                let hash = decode_hash(&e.sha256)?;
                let caller = Caller {
                    name: e.name.clone(),
                    scopes: e.scopes.iter().cloned().map(Pattern).collect(),
                    users: e.users.iter().cloned().map(Pattern).collect(),
                    admin: e.admin,
                };
                Some((hash, Arc::new(caller)))
            })
            .collect();
        Self {
            mode,
            keys,
            anonymous: Arc::new(Caller::anonymous()),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn authenticate(&self, presented: Option<&str>) -> Result<&Arc<Caller>, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(&self.anonymous);
        }
        if self.keys.is_empty() {
            return Err(AuthError::NoneConfigured);
        }
        let presented = presented.ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, in constant time, so the answer's timing says
        // nothing about which entry came close.
        let mut found = None;
        for (hash, caller) in &self.keys {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found.ok_or(AuthError::Unknown)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Scope, UserId};

    fn callers(entries: &[ApiKeyEntry]) -> Callers {
        Callers::new(AuthMode::Keys, entries)
    }

    #[test]
    fn a_new_key_authenticates_by_its_hash_only() {
        let (key, entry) = new_key("app", vec!["User.*".into()], vec![], false);
        let callers = callers(std::slice::from_ref(&entry));
        assert_eq!(
            callers.authenticate(Some(key.expose())).unwrap().name,
            "app"
        );
        assert_eq!(
            callers.authenticate(Some("tbk_wrong")).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(callers.authenticate(None).unwrap_err(), AuthError::Missing);
        assert!(!entry.sha256.contains(key.expose()));
    }

    #[test]
    fn no_configured_keys_is_its_own_error() {
        assert_eq!(
            callers(&[]).authenticate(Some("x")).unwrap_err(),
            AuthError::NoneConfigured
        );
        let open = Callers::new(AuthMode::None, &[]);
        assert!(open.authenticate(None).unwrap().admin);
    }

    #[test]
    fn allowlists_are_exact_or_prefix() {
        let (_, mut entry) = new_key(
            "app",
            vec![
                "User.*".into(),
                "https://graph.microsoft.com/.default".into(),
            ],
            vec!["alice".into()],
            false,
        );
        entry.name = "app".into();
        let caller = &callers(&[entry]).keys[0].1;
        let scope = |s: &str| Scope::parse(s).unwrap();
        let user = |u: &str| UserId::parse(u).unwrap();
        assert!(caller.may_read(&TokenKey::Agent(scope("User.Read"))));
        assert!(caller.may_read(&TokenKey::Agent(scope(
            "https://graph.microsoft.com/.default"
        ))));
        assert!(!caller.may_read(&TokenKey::Agent(scope(
            "https://graph.microsoft.com/.default2"
        ))));
        assert!(!caller.may_read(&TokenKey::Agent(scope("Mail.Send"))));
        assert!(caller.may_read(&TokenKey::User(user("alice"), scope("User.Read"))));
        assert!(!caller.may_read(&TokenKey::User(user("bob"), scope("User.Read"))));
    }

    #[test]
    fn empty_users_means_agent_tokens_only() {
        let (_, entry) = new_key("app", vec!["*".into()], vec![], false);
        let caller = &callers(&[entry]).keys[0].1;
        let scope = Scope::parse("User.Read").unwrap();
        assert!(caller.may_read(&TokenKey::Agent(scope.clone())));
        assert!(!caller.may_read(&TokenKey::User(UserId::parse("alice").unwrap(), scope)));
    }

    #[test]
    fn entries_are_checked_when_parsed() {
        assert!(ApiKeyEntry::parse_list(r#"[{"name":"a","sha256":"abc"}]"#).is_err());
        assert!(ApiKeyEntry::parse_list(r#"[{"name":"a","sha256":"00","extra":1}]"#).is_err());
        let ok = format!(r#"[{{"name":"a","sha256":"{}"}}]"#, "ab".repeat(32));
        assert_eq!(ApiKeyEntry::parse_list(&ok).unwrap()[0].scopes.len(), 0);
    }
}
