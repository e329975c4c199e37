//! The domain types of SPEC §4 and §8, parsed once at the edge.
//! Past the edge nothing re-checks these strings.

use std::fmt;

/// Why a caller's input was refused. Every variant becomes a `400` with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the scope is empty")]
    EmptyScope,
    #[error("the scope is longer than {max} bytes", max = Scope::MAX_LEN)]
    ScopeTooLong,
    #[error("the scope may contain only printable ASCII characters")]
    ScopeCharacters,
    #[error(
        "a scope is made of letters, digits and . _ - : / ~ @ = , with no '.' or '..' path segments"
    )]
    ScopeShape,
    #[error("'{0}' is a reserved word in the path; ask for that scope with ?scope=")]
    ReservedPath(&'static str),
    #[error("user_id must be 1 to {max} characters from A-Z a-z 0-9 . _ @ + -", max = UserId::MAX_LEN)]
    UserId,
    #[error("the {0} is not valid percent-encoding")]
    PercentEncoding(&'static str),
    #[error("the {0} is not valid UTF-8 once decoded")]
    Utf8(&'static str),
    #[error("min_validity must be a whole number of seconds from 0 to {max}", max = MAX_MIN_VALIDITY)]
    MinValidity,
    #[error("the query parameter {0} is given more than once")]
    RepeatedParameter(&'static str),
    #[error("give the scope in the path or as ?scope=, not both")]
    ScopeTwice,
    #[error("{0}")]
    Body(&'static str),
}

impl InputError {
    /// The stable `error` title of the JSON body.
    pub fn title(&self) -> &'static str {
        match self {
            Self::EmptyScope
            | Self::ScopeTooLong
            | Self::ScopeCharacters
            | Self::ScopeShape
            | Self::ScopeTwice
            | Self::ReservedPath(_) => "Invalid scope",
            Self::UserId => "Invalid user_id",
            Self::Body(_) => "Invalid body",
            Self::MinValidity => "Invalid min_validity",
            Self::PercentEncoding(_) | Self::Utf8(_) | Self::RepeatedParameter(_) => {
                "Invalid request"
            }
        }
    }
}

/// A day: asking for a token valid longer than that can never be satisfied.
pub const MAX_MIN_VALIDITY: u64 = 86_400;

/// A scope string as SPEC §4 keys it: trimmed, whitespace runs folded to one
/// space, otherwise exactly as requested (no sorting, no encoding).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub const MAX_LEN: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, InputError> {
        // Control characters (tabs and newlines included) are refused, not folded:
        // a scope is one line of printable ASCII.
        if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(InputError::ScopeCharacters);
        }
        // Most scopes arrive already folded: no allocation beyond the copy then.
        let folded = if raw.starts_with(' ') || raw.ends_with(' ') || raw.contains("  ") {
            raw.split(' ')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            raw.to_owned()
        };
        if folded.is_empty() {
            return Err(InputError::EmptyScope);
        }
        if folded.len() > Self::MAX_LEN {
            return Err(InputError::ScopeTooLong);
        }
        if !folded.split(' ').all(scope_part_is_sound) {
            return Err(InputError::ScopeShape);
        }
        Ok(Self(folded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The space-separated scopes, as the token endpoint's `scope` parameter lists them.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split(' ')
    }

    /// Whether this asks for several scopes in one token (which a managed identity
    /// cannot get).
    pub fn is_several(&self) -> bool {
        self.0.contains(' ')
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stricter than SPEC §8's printable ASCII, because every scope ends up in a Redis
/// key, a log line and a request to the identity provider: Entra scopes are
/// permission names (`User.Read`) and resource URIs (`https://host/.default`,
/// `api://guid/.default`, ARM's `https://management.core.windows.net//.default`),
/// never quotes, backslashes, `%`, `?`, `#`, or `.`/`..` path segments.
fn scope_part_is_sound(part: &str) -> bool {
    let charset = part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:/~@=,".contains(&b));
    let path = part.split_once("://").map_or(part, |(_, rest)| rest);
    charset
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// A user id as SPEC §8 allows it. No `:`, so `tokens:user:{user_id}:{scope}`
/// splits back into exactly one user and one scope.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InputError::UserId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which token: the agent's for a scope, or one user's for a scope. A user token is
/// never answered with the agent's, nor the reverse, because they are different keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum TokenKey {
    Agent(Scope),
    User(UserId, Scope),
}

impl TokenKey {
    pub fn new(scope: Scope, user: Option<UserId>) -> Self {
        match user {
            Some(user) => Self::User(user, scope),
            None => Self::Agent(scope),
        }
    }

    pub fn scope(&self) -> &Scope {
        match self {
            Self::Agent(scope) | Self::User(_, scope) => scope,
        }
    }

    pub fn user(&self) -> Option<&UserId> {
        match self {
            Self::Agent(_) => None,
            Self::User(user, _) => Some(user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_trimmed_and_whitespace_folded_but_otherwise_kept() {
        let scope = Scope::parse("  User.Read    Mail.Send  ").unwrap();
        assert_eq!(scope.as_str(), "User.Read Mail.Send");
        let scope = Scope::parse("Mail.Send User.Read").unwrap();
        assert_eq!(scope.as_str(), "Mail.Send User.Read", "no sorting");
    }

    #[test]
    fn scope_rejects_empty_long_and_non_printable() {
        assert_eq!(Scope::parse("   "), Err(InputError::EmptyScope));
        assert_eq!(
            Scope::parse(&"a".repeat(1025)),
            Err(InputError::ScopeTooLong)
        );
        assert!(Scope::parse(&"a".repeat(1024)).is_ok());
        assert_eq!(Scope::parse("a\u{0}b"), Err(InputError::ScopeCharacters));
        assert_eq!(Scope::parse("a\u{7f}"), Err(InputError::ScopeCharacters));
        assert_eq!(Scope::parse("café"), Err(InputError::ScopeCharacters));
        assert_eq!(Scope::parse("a\tb"), Err(InputError::ScopeCharacters));
        for hostile in [
            "..",
            "a/../b",
            "./x",
            "a\\b",
            "a\"b",
            "a%41",
            "a?b",
            "a#b",
            "<x>",
            "https://x/./y",
        ] {
            assert_eq!(
                Scope::parse(hostile),
                Err(InputError::ScopeShape),
                "{hostile}"
            );
        }
        for real in [
            "https://graph.microsoft.com/.default",
            "api://00000000-0000-0000-0000-000000000000/.default",
            "https://management.core.windows.net//.default",
            "User.Read offline_access openid",
        ] {
            assert!(Scope::parse(real).is_ok(), "{real}");
        }
        assert_eq!(Scope::parse("a\nb"), Err(InputError::ScopeCharacters));
    }

    #[test]
    fn user_id_allows_only_the_spec_alphabet() {
        assert!(UserId::parse("alice.smith+x@contoso-1.com_2").is_ok());
        for bad in ["", "a:b", "a b", "a/b", "ü", "a%3Ab"] {
            assert_eq!(UserId::parse(bad), Err(InputError::UserId), "{bad:?}");
        }
        assert!(UserId::parse(&"u".repeat(256)).is_ok());
        assert!(UserId::parse(&"u".repeat(257)).is_err());
    }
}
