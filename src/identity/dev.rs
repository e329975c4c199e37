//! The local development issuer of `handler dev`: signs real JWTs (HS256, a key
//! made at start and never written anywhere) so the service runs with nothing
//! configured. Nothing outside this process can verify them, which is the point.

use super::Acquired;
use crate::clock::Clock;
use crate::domain::Scope;
use crate::secret::Secret;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct DevIssuer {
    key: EncodingKey,
    issuer: String,
    lifetime_secs: u64,
    issued: AtomicU64,
    clock: Clock,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: String,
    scp: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    ver: &'static str,
}

impl DevIssuer {
    pub fn new(lifetime_secs: u64, clock: Clock) -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            key: EncodingKey::from_secret(&secret),
            issuer: "urn:token-broker:dev-issuer".to_owned(),
            lifetime_secs,
            issued: AtomicU64::new(0),
            clock,
        }
    }

    /// A token for the agent (`user: None`) or for a user, with a refresh token
    /// for users (any later refresh is answered with a new token).
    pub fn issue(&self, scope: &Scope, user: Option<&str>) -> Acquired {
        let now = self.clock.now();
        let serial = self.issued.fetch_add(1, Ordering::Relaxed);
        let claims = Claims {
            iss: &self.issuer,
            sub: user.unwrap_or("dev-agent"),
            aud: audience(scope),
            scp: scope.as_str(),
            iat: now,
            nbf: now,
            exp: now + self.lifetime_secs as i64,
            jti: format!("{serial}-{:016x}", rand::random::<u64>()),
            ver: "2.0",
        };
        // HS256 over a serializable struct cannot fail.
        let token = encode(&Header::default(), &claims, &self.key).unwrap_or_default();
        Acquired {
            token: Secret::new(token),
            expires_on: claims.exp,
            refresh_in: None,
            refresh_token: user
                .map(|_| Secret::new(format!("dev-rt-{:032x}", rand::random::<u128>()))),
        }
    }
}

/// `https://graph.microsoft.com/.default` is a token for `https://graph.microsoft.com`.
fn audience(scope: &Scope) -> String {
    let first = scope.parts().next().unwrap_or_default();
    match first.rsplit_once('/') {
        Some((resource, _)) if first.contains("://") => resource.to_owned(),
        _ => "https://graph.microsoft.com".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_signed_jwts_for_the_scope() {
        let issuer = DevIssuer::new(3600, Clock::System);
        let scope = Scope::parse("https://graph.microsoft.com/.default").unwrap();
        let a = issuer.issue(&scope, None);
        let b = issuer.issue(&scope, None);
        assert!(a.refresh_token.is_none());
        assert!(issuer.issue(&scope, Some("u")).refresh_token.is_some());
        assert_ne!(a.token, b.token);
        let parts: Vec<&str> = a.token.expose().split('.').collect();
        assert_eq!(parts.len(), 3, "header.payload.signature");
        assert!(a.expires_on >= Clock::System.now() + 3599);
        assert_eq!(audience(&scope), "https://graph.microsoft.com");
    }
}
