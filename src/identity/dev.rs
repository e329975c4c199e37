//! The local development issuer of `handler dev`: a token endpoint in process
//! that answers every grant the service makes (Agent ID's requests 1-5
//! included) with real JWTs (HS256, a key made at start and never written
//! anywhere), so the service runs with nothing configured. Nothing outside this
//! process can verify them, which is the point.

use super::entra::Endpoint;
use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::secret::Secret;
use async_trait::async_trait;
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

    /// A token for `subject` and `scope`, with a refresh token when `delegated`.
    fn issue(&self, subject: &str, scope: &str, delegated: bool) -> Acquired {
        let now = self.clock.now();
        let serial = self.issued.fetch_add(1, Ordering::Relaxed);
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: audience(scope),
            scp: scope,
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
            refresh_token: delegated
                .then(|| Secret::new(format!("dev-rt-{:032x}", rand::random::<u128>()))),
        }
    }
}

#[async_trait]
impl Endpoint for DevIssuer {
    async fn post(&self, form: &[(&str, &str)]) -> Result<Acquired, IdpError> {
        let field = |name: &str| form.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let scope = field("scope").unwrap_or_default();
        let client = field("client_id").unwrap_or("dev-client");
        let refused = |why: &str| IdpError::Rejected {
            status: 400,
            error: why.to_owned(),
            aadsts: None,
        };
        match field("grant_type") {
            // Request 1 names the agent identity the T1 is for.
            Some("client_credentials") => {
                Ok(self.issue(field("fmi_path").unwrap_or(client), scope, false))
            }
            Some("user_fic") => {
                if field("user_federated_identity_credential").is_none() {
                    return Err(refused("invalid_request"));
                }
                let user = field("user_id").or(field("username")).unwrap_or("dev-user");
                Ok(self.issue(user, scope, true))
            }
            Some("password" | "refresh_token" | "urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                Ok(self.issue(field("username").unwrap_or("dev-user"), scope, true))
            }
            _ => Err(refused("unsupported_grant_type")),
        }
    }
}

/// `https://graph.microsoft.com/.default` is a token for `https://graph.microsoft.com`.
fn audience(scope: &str) -> String {
    let first = scope.split(' ').next().unwrap_or_default();
    match first.rsplit_once('/') {
        Some((resource, _)) if first.contains("://") => resource.to_owned(),
        _ => "https://graph.microsoft.com".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_every_grant_with_signed_jwts() {
        let issuer = DevIssuer::new(3600, Clock::System);
        let graph = "https://graph.microsoft.com/.default";
        let app = [("grant_type", "client_credentials"), ("scope", graph)];
        let a = issuer.post(&app).await.unwrap();
        let b = issuer.post(&app).await.unwrap();
        assert!(a.refresh_token.is_none());
        assert_ne!(a.token, b.token);
        assert_eq!(
            a.token.expose().split('.').count(),
            3,
            "header.payload.signature"
        );
        assert!(a.expires_on >= Clock::System.now() + 3599);
        let user = [
            ("grant_type", "user_fic"),
            ("scope", "User.Read offline_access"),
            ("username", "agent-user@dev"),
            ("user_federated_identity_credential", "t2"),
        ];
        assert!(issuer.post(&user).await.unwrap().refresh_token.is_some());
        assert!(issuer.post(&[("grant_type", "nope")]).await.is_err());
        assert_eq!(audience(graph), "https://graph.microsoft.com");
    }
}
