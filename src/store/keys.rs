//! Every Redis key name of SPEC §4, in one place.

use crate::domain::{Scope, TokenKey, UserId};

#[derive(Clone, Debug)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_owned(),
        }
    }

    /// `{ns}tokens:agent:{scope}` or `{ns}tokens:user:{user_id}:{scope}`.
    pub fn token(&self, key: &TokenKey) -> String {
        format!("{}tokens:{}", self.ns, self.token_suffix(key))
    }

    /// What every token key starts with (Redis's tracking watches these).
    pub fn token_prefixes(&self) -> [String; 2] {
        [
            format!("{}tokens:agent:", self.ns),
            format!("{}tokens:user:", self.ns),
        ]
    }

    /// The set of full keys of stored tokens.
    pub fn active(&self) -> String {
        format!("{}tokens:active", self.ns)
    }

    /// Where a token's refresh token lives: never inside the token JSON that other
    /// applications read. `secret:` cannot collide with `agent:`/`user:` keys.
    pub fn secret(&self, key: &TokenKey) -> String {
        format!("{}tokens:secret:{}", self.ns, self.token_suffix(key))
    }

    /// Sorted set of full token keys by the Unix second their refresh is due: a
    /// sweep reads the due ones with one range query, whatever else is stored.
    pub fn schedule(&self) -> String {
        format!("{}tokens:schedule", self.ns)
    }

    /// Sorted set of full token keys by their `expires_on`: the soonest expiry for
    /// health, in one range query.
    pub fn expiry(&self) -> String {
        format!("{}tokens:expiry", self.ns)
    }

    /// Sorted set of full token keys by the Unix second they were last read, so
    /// on-demand scopes nobody reads any more stop being refreshed.
    pub fn reads(&self) -> String {
        format!("{}tokens:reads", self.ns)
    }

    /// The refresh lease of one token: held by one instance while it asks the
    /// identity provider for that key.
    pub fn lease(&self, key: &TokenKey) -> String {
        format!("{}tokens:lease:{}", self.ns, self.token_suffix(key))
    }

    /// The refresh status of one token after a failure (last error, next attempt).
    pub fn status(&self, key: &TokenKey) -> String {
        format!("{}tokens:status:{}", self.ns, self.token_suffix(key))
    }

    /// The pub/sub channel on which every write of a token publishes that token's
    /// full key, so instances (and other applications) can drop cached copies.
    pub fn events(&self) -> String {
        format!("{}tokens:events", self.ns)
    }

    /// The capped audit stream (`TOKEN_AUDIT_STREAM=true`).
    pub fn audit(&self) -> String {
        format!("{}tokens:audit", self.ns)
    }

    /// Forced refreshes by one API key of one token in the current minute.
    pub fn refresh_quota(&self, caller: &str, key: &TokenKey) -> String {
        format!(
            "{}tokens:quota:{caller}:{}",
            self.ns,
            self.token_suffix(key)
        )
    }

    /// Where the incremental prune of the active set resumes.
    pub fn prune_cursor(&self) -> String {
        format!("{}tokens:prune-cursor", self.ns)
    }

    fn token_suffix(&self, key: &TokenKey) -> String {
        match key {
            TokenKey::Agent(scope) => format!("agent:{scope}"),
            TokenKey::User(user, scope) => format!("user:{user}:{scope}"),
        }
    }

    /// The inverse of [`Keys::token`], for members of the active set. `None` for a
    /// member this service would never have written.
    pub fn parse_token(&self, full: &str) -> Option<TokenKey> {
        let rest = full.strip_prefix(&self.ns)?.strip_prefix("tokens:")?;
        if let Some(scope) = rest.strip_prefix("agent:") {
            return Some(TokenKey::Agent(Scope::parse(scope).ok()?));
        }
        // A user id never contains ':', so the first ':' ends it.
        let (user, scope) = rest.strip_prefix("user:")?.split_once(':')?;
        Some(TokenKey::User(
            UserId::parse(user).ok()?,
            Scope::parse(scope).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout_and_parse_back() {
        let keys = Keys::new("annika:");
        let scope = Scope::parse("https://graph.microsoft.com/.default").unwrap();
        let agent = TokenKey::Agent(scope.clone());
        let user = TokenKey::User(
            UserId::parse("user123").unwrap(),
            Scope::parse("User.Read Mail.Send").unwrap(),
        );
        assert_eq!(
            keys.token(&agent),
            "annika:tokens:agent:https://graph.microsoft.com/.default"
        );
        assert_eq!(
            keys.token(&user),
            "annika:tokens:user:user123:User.Read Mail.Send"
        );
        assert_eq!(keys.active(), "annika:tokens:active");
        assert_eq!(
            keys.secret(&agent),
            "annika:tokens:secret:agent:https://graph.microsoft.com/.default"
        );
        assert_eq!(
            keys.lease(&agent),
            "annika:tokens:lease:agent:https://graph.microsoft.com/.default"
        );
        assert_eq!(
            keys.status(&user),
            "annika:tokens:status:user:user123:User.Read Mail.Send"
        );
        assert_eq!(keys.parse_token(&keys.token(&agent)), Some(agent));
        assert_eq!(keys.parse_token(&keys.token(&user)), Some(user));
        assert_eq!(keys.parse_token("other:tokens:agent:x"), None);
        assert_eq!(keys.parse_token("annika:tokens:secret:agent:x"), None);
    }
}
