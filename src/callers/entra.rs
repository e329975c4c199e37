//! Callers with Entra ID access tokens (SPEC §7): an RS256 signature by one of
//! the tenant's keys ([`SigningKeys`]), this tenant's issuer, this service's
//! audience, the tenant id, and the time, with 60 s of leeway; then the first
//! `TOKEN_API_CALLERS` entry that names the token's app, object or role.
//!
//! A token's verdict is kept under its SHA-256 until it expires, so a caller
//! that presents the same token again costs a hash and a lookup, not an RS256
//! verification.

use super::signing_keys::SigningKeys;
use super::{AuthError, Caller, Policy};
use crate::clock::Clock;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 60;
/// Verdicts kept at most; past this the expired ones go, then all.
const MAX_VERDICTS: usize = 10_000;

/// One entry of `TOKEN_API_CALLERS`, as operators write it: one of `app_id`,
/// `object_id` or `role`, and what the caller may read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerEntry {
    pub name: String,
    /// The caller's application (client) id: the token's `azp` (v2) or `appid` (v1).
    #[serde(default)]
    pub app_id: Option<String>,
    /// The caller's object id: the token's `oid`.
    #[serde(default)]
    pub object_id: Option<String>,
    /// An app role of this service assigned to the caller: a value in `roles`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl CallerEntry {
    pub fn parse_list(json: &str) -> Result<Vec<Self>, String> {
        let entries: Vec<Self> = serde_json::from_str(json).map_err(|e| {
            format!("is not a JSON array of {{\"name\", one of \"app_id\"/\"object_id\"/\"role\", \"scopes\",\"users\",\"admin\"}} entries ({e})")
        })?;
        for entry in &entries {
            if entry.name.trim().is_empty() {
                return Err("every caller needs a non-empty name".to_owned());
            }
            let named = [&entry.app_id, &entry.object_id, &entry.role]
                .iter()
                .filter(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
                .count();
            if named != 1 {
                return Err(format!(
                    "caller {:?}: name exactly one of app_id, object_id or role",
                    entry.name
                ));
            }
        }
        Ok(entries)
    }

    fn matches(&self, claims: &Claims) -> bool {
        let app = claims.azp.as_deref().or(claims.appid.as_deref());
        (self.app_id.is_some() && self.app_id.as_deref() == app)
            || (self.object_id.is_some() && self.object_id.as_deref() == claims.oid.as_deref())
            || self
                .role
                .as_ref()
                .is_some_and(|role| claims.roles.iter().any(|r| r == role))
    }
}

/// What checking Entra callers needs, from the configuration.
#[derive(Clone, Debug)]
pub struct EntraSettings {
    /// `AZURE_AUTHORITY_HOST`, without a trailing slash.
    pub authority: String,
    pub tenant: String,
    /// `TOKEN_API_AUDIENCE`, and `AZURE_CLIENT_ID` when set: what `aud` may be.
    pub audiences: Vec<String>,
    pub entries: Vec<CallerEntry>,
}

/// The claims a decision needs.
#[derive(Deserialize)]
struct Claims {
    /// Required by the validation; a default here lets its error name it.
    #[serde(default)]
    exp: i64,
    tid: Option<String>,
    oid: Option<String>,
    azp: Option<String>,
    appid: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// A valid token's verdict, until `exp`.
#[derive(Clone)]
enum Verdict {
    Allowed(Arc<Caller>),
    Unlisted,
}

pub(super) struct EntraCallers {
    tenant: String,
    audience: String,
    authorize_uri: String,
    validation: Validation,
    entries: Vec<(CallerEntry, Arc<Policy>)>,
    keys: SigningKeys,
    /// Verdicts, their `exp`, and the signing keys' generation they were reached
    /// under.
    verdicts: RwLock<HashMap<[u8; 32], (Verdict, i64, u64)>>,
    clock: Clock,
}

impl EntraCallers {
    pub(super) fn new(settings: EntraSettings, http: reqwest::Client, clock: Clock) -> Self {
        let EntraSettings {
            authority,
            tenant,
            audiences,
            entries,
        } = settings;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECS as u64;
        validation.validate_nbf = true;
        validation.set_audience(&audiences);
        validation.set_issuer(&[
            format!("{authority}/{tenant}/v2.0"),
            format!("https://sts.windows.net/{tenant}/"),
        ]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let keys_url = format!("{authority}/{tenant}/discovery/v2.0/keys");
        Self {
            audience: audiences.first().cloned().unwrap_or_default(),
            authorize_uri: format!("{authority}/{tenant}/oauth2/v2.0/authorize"),
            tenant,
            validation,
            entries: entries
                .into_iter()
                .map(|e| {
                    let policy = Policy::new(&e.scopes, &e.users, e.admin);
                    (e, policy)
                })
                .collect(),
            keys: SigningKeys::new(keys_url, http, clock.clone()),
            verdicts: RwLock::default(),
            clock,
        }
    }

    pub(super) fn challenge(&self) -> String {
        format!(
            "Bearer realm=\"token-broker\", authorization_uri=\"{}\", resource_id=\"{}\"",
            self.authorize_uri, self.audience
        )
    }

    pub(super) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The signing keys' generation: verdicts reached under another are made
    /// again.
    pub(super) fn generation(&self) -> u64 {
        self.keys.generation()
    }

    /// The caller `token` proves, and until when (its `exp` and the leeway).
    /// Only allowed callers' verdicts are remembered: a valid but unlisted token
    /// costs its sender a verification each time, and cannot crowd out others.
    pub(super) async fn authenticate(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(Arc<Caller>, i64), AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.keys.generation();
        let known = self
            .verdicts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        let (caller, exp) = match known {
            Some((Verdict::Allowed(caller), exp, seen)) if seen == generation => {
                if now > exp + LEEWAY_SECS {
                    return Err(AuthError::InvalidToken("expired"));
                }
                (caller, exp)
            }
            _ => match self.verify(token).await? {
                (Verdict::Allowed(caller), exp) => {
                    self.remember(digest, caller.clone(), exp, now, generation);
                    (caller, exp)
                }
                (Verdict::Unlisted, _) => return Err(AuthError::Unlisted),
            },
        };
        Ok((caller, exp + LEEWAY_SECS))
    }

    /// The full check of a token not seen before.
    async fn verify(&self, token: &str) -> Result<(Verdict, i64), AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::InvalidToken("malformed"))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::InvalidToken("not signed with RS256"));
        }
        let kid = header
            .kid
            .ok_or(AuthError::InvalidToken("no key id (kid)"))?;
        let key = self.keys.get(&kid).await.ok_or(AuthError::InvalidToken(
            "signed by a key the tenant does not publish",
        ))?;
        let claims = decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError::InvalidToken(match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::MissingRequiredClaim(_) => "missing claim",
                    _ => "malformed",
                })
            })?
            .claims;
        if claims.tid.as_deref() != Some(self.tenant.as_str()) {
            return Err(AuthError::InvalidToken("another tenant"));
        }
        let verdict = match self.entries.iter().find(|(e, _)| e.matches(&claims)) {
            Some((entry, policy)) => Verdict::Allowed(Arc::new(Caller::new(
                entry.name.clone(),
                claims.oid.clone(),
                policy.clone(),
            ))),
            None => Verdict::Unlisted,
        };
        Ok((verdict, claims.exp))
    }

    fn remember(&self, digest: [u8; 32], caller: Arc<Caller>, exp: i64, now: i64, generation: u64) {
        let mut verdicts = self.verdicts.write().unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.retain(|_, (_, exp, seen)| now <= *exp + LEEWAY_SECS && *seen == generation);
            if verdicts.len() >= MAX_VERDICTS {
                verdicts.clear();
            }
        }
        verdicts.insert(digest, (Verdict::Allowed(caller), exp, generation));
    }
}
