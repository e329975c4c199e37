//! Who may call (SPEC §7): callers prove themselves with an API key ([`keys`])
//! or an Entra ID access token for this service ([`entra`]), and each is allowed
//! the scopes and users of its entry.

mod entra;
mod keys;
mod signing_keys;

pub use self::entra::{CallerEntry, EntraSettings};
pub use self::keys::{ApiKeyEntry, new_key};

use self::entra::EntraCallers;
use self::keys::ApiKeys;
use crate::clock::Clock;
use crate::domain::TokenKey;
use std::sync::Arc;

/// `TOKEN_API_AUTH`: `none`, or any of `keys` and `entra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthMethods {
    pub keys: bool,
    pub entra: bool,
}

impl AuthMethods {
    pub const KEYS: Self = Self {
        keys: true,
        entra: false,
    };

    pub fn is_none(self) -> bool {
        !self.keys && !self.entra
    }

    /// `none`, `keys`, `entra` or `keys,entra` (in any order).
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut methods = Self {
            keys: false,
            entra: false,
        };
        if value.trim() == "none" {
            return Ok(methods);
        }
        for part in value.split(',').map(str::trim) {
            match part {
                "keys" => methods.keys = true,
                "entra" => methods.entra = true,
                other => {
                    return Err(format!(
                        "{other:?} is not one of none, keys, entra (a comma-separated list of keys and entra)"
                    ));
                }
            }
        }
        Ok(methods)
    }
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

/// What one entry (a key, or an Entra caller entry) may read.
#[derive(Debug)]
struct Policy {
    scopes: Vec<Pattern>,
    users: Vec<Pattern>,
    admin: bool,
}

impl Policy {
    fn new(scopes: &[String], users: &[String], admin: bool) -> Arc<Self> {
        Arc::new(Self {
            scopes: scopes.iter().cloned().map(Pattern).collect(),
            users: users.iter().cloned().map(Pattern).collect(),
            admin,
        })
    }
}

/// An authenticated caller and what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The entry's name: the API key's, or the Entra caller entry's.
    pub name: String,
    /// An Entra caller's object id (`oid`), for the audit trail.
    pub oid: Option<String>,
    pub admin: bool,
    policy: Arc<Policy>,
}

impl Caller {
    fn new(name: String, oid: Option<String>, policy: Arc<Policy>) -> Self {
        Self {
            name,
            oid,
            admin: policy.admin,
            policy,
        }
    }

    /// With `TOKEN_API_AUTH=none` every request acts as this caller.
    fn anonymous() -> Self {
        let all = ["*".to_owned()];
        Self::new("anonymous".to_owned(), None, Policy::new(&all, &all, true))
    }

    /// Whether this caller may read (and refresh) the token under `key`.
    pub fn may_read(&self, key: &TokenKey) -> bool {
        if self.admin {
            return true;
        }
        let policy = &self.policy;
        let scope_ok = policy
            .scopes
            .iter()
            .any(|p| p.matches(key.scope().as_str()));
        let user_ok = match key.user() {
            None => true,
            Some(user) => policy.users.iter().any(|p| p.matches(user.as_str())),
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
    /// An Entra token that does not prove anything: why, in a few words.
    InvalidToken(&'static str),
    /// A valid Entra token of a caller no `TOKEN_API_CALLERS` entry names.
    Unlisted,
}

/// A connection's last Entra caller: the token it sent, who it proved, and
/// until when. A client sends the same token on every request of a kept-alive
/// connection, and recognising it again costs a comparison, not a hash and a
/// lookup. Never printed; dropped with the connection.
#[derive(Default)]
pub struct Remembered(std::sync::Mutex<Option<LastCaller>>);

struct LastCaller {
    token: Box<str>,
    caller: Arc<Caller>,
    /// Unix seconds: the token's `exp` and the leeway.
    until: i64,
    /// The signing keys' generation it was proved under.
    generation: u64,
}

impl Remembered {
    fn recall(&self, presented: &str, now: i64, generation: u64) -> Option<Arc<Caller>> {
        use subtle::ConstantTimeEq;
        let last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Constant time: under the Functions host one connection carries many
        // callers' requests.
        last.as_ref()
            .filter(|last| {
                now <= last.until
                    && last.generation == generation
                    && last.token.len() == presented.len()
                    && bool::from(last.token.as_bytes().ct_eq(presented.as_bytes()))
            })
            .map(|last| last.caller.clone())
    }

    fn keep(&self, presented: &str, caller: &Arc<Caller>, until: i64, generation: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastCaller {
            token: presented.into(),
            caller: caller.clone(),
            until,
            generation,
        });
    }
}

/// The configured callers.
pub struct Callers {
    methods: AuthMethods,
    keys: ApiKeys,
    entra: Option<EntraCallers>,
    anonymous: Arc<Caller>,
}

impl Callers {
    /// `entra` is set when `TOKEN_API_AUTH` names `entra`.
    pub fn new(
        methods: AuthMethods,
        keys: &[ApiKeyEntry],
        entra: Option<EntraSettings>,
        http: reqwest::Client,
        clock: Clock,
    ) -> Self {
        Self {
            methods,
            keys: ApiKeys::new(keys),
            entra: entra
                .filter(|_| methods.entra)
                .map(|settings| EntraCallers::new(settings, http, clock)),
            anonymous: Arc::new(Caller::anonymous()),
        }
    }

    pub fn methods(&self) -> AuthMethods {
        self.methods
    }

    /// The caller `presented` (the bearer value or `x-functions-key`) proves,
    /// on a connection that remembers its last Entra caller in `remembered`.
    pub async fn authenticate(
        &self,
        presented: Option<&str>,
        remembered: &Remembered,
    ) -> Result<Arc<Caller>, AuthError> {
        if self.methods.is_none() {
            return Ok(self.anonymous.clone());
        }
        let presented = presented.ok_or(AuthError::Missing)?;
        // An Entra token is a JWT, whose header starts `{"` (base64url `eyJ`);
        // API keys are `tbk_...`.
        if let Some(entra) = &self.entra
            && presented.starts_with("eyJ")
        {
            let (now, generation) = (entra.now(), entra.generation());
            if let Some(caller) = remembered.recall(presented, now, generation) {
                return Ok(caller);
            }
            let (caller, expires) = entra.authenticate(presented, now).await?;
            remembered.keep(presented, &caller, expires, generation);
            return Ok(caller);
        }
        if !self.methods.keys {
            return Err(AuthError::InvalidToken("not a JWT"));
        }
        if self.keys.is_empty() {
            return Err(AuthError::NoneConfigured);
        }
        self.keys.find(presented).cloned().ok_or(AuthError::Unknown)
    }

    /// The `WWW-Authenticate` value of a `401`: `Bearer`, naming the audience
    /// when Entra tokens are accepted; `error="invalid_token"` when one was sent.
    pub fn challenge(&self, error: AuthError) -> String {
        let mut challenge = match &self.entra {
            Some(entra) => entra.challenge(),
            None => "Bearer realm=\"token-broker\"".to_owned(),
        };
        if matches!(error, AuthError::Unknown | AuthError::InvalidToken(_)) {
            challenge.push_str(", error=\"invalid_token\"");
        }
        challenge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Scope, UserId};

    fn callers(entries: &[ApiKeyEntry]) -> Callers {
        let http = reqwest::Client::new();
        Callers::new(AuthMethods::KEYS, entries, None, http, Clock::System)
    }

    #[tokio::test]
    async fn a_new_key_authenticates_by_its_hash_only() {
        let (key, entry) = new_key("app", vec!["User.*".into()], vec![], false);
        let callers = callers(std::slice::from_ref(&entry));
        let caller = callers
            .authenticate(Some(key.expose()), &Remembered::default())
            .await
            .unwrap();
        assert_eq!((caller.name.as_str(), caller.oid.as_deref()), ("app", None));
        assert_eq!(
            callers
                .authenticate(Some("tbk_wrong"), &Remembered::default())
                .await
                .unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            callers
                .authenticate(None, &Remembered::default())
                .await
                .unwrap_err(),
            AuthError::Missing
        );
        assert!(!entry.sha256.contains(key.expose()));
    }

    #[tokio::test]
    async fn no_configured_keys_is_its_own_error() {
        assert_eq!(
            callers(&[])
                .authenticate(Some("x"), &Remembered::default())
                .await
                .unwrap_err(),
            AuthError::NoneConfigured
        );
        let none = AuthMethods::parse("none").unwrap();
        let open = Callers::new(none, &[], None, reqwest::Client::new(), Clock::System);
        assert!(
            open.authenticate(None, &Remembered::default())
                .await
                .unwrap()
                .admin
        );
    }

    #[test]
    fn auth_methods_are_a_list() {
        assert_eq!(AuthMethods::parse("keys").unwrap(), AuthMethods::KEYS);
        let both = AuthMethods::parse("entra, keys").unwrap();
        assert!(both.keys && both.entra);
        assert!(AuthMethods::parse("none").unwrap().is_none());
        assert!(AuthMethods::parse("keys,magic").is_err());
    }

    fn caller(scopes: &[&str], users: &[&str]) -> Caller {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Caller::new(
            "app".into(),
            None,
            Policy::new(&owned(scopes), &owned(users), false),
        )
    }

    #[test]
    fn allowlists_are_exact_or_prefix() {
        let caller = caller(
            &["User.*", "https://graph.microsoft.com/.default"],
            &["alice"],
        );
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
        let caller = caller(&["*"], &[]);
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
