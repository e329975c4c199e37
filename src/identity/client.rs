//! An application as a client of the token endpoint: its id, how it proves it
//! (a secret, a certificate, or a managed identity's token as a federated
//! credential), and the grants it makes.

use super::agent_id::AgentIdentity;
use super::certificate::Certificate;
use super::entra::Endpoint;
use super::exchange::Exchange;
use super::{Acquired, IdpError};
use crate::domain::Scope;
use crate::secret::Secret;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// `client_assertion_type` of every assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience of federated credentials (T1, T2, managed-identity assertions).
pub const TOKEN_EXCHANGE: &str = "api://AzureADTokenExchange/.default";

/// A managed identity's token for [`TOKEN_EXCHANGE`], fetched when asked.
pub type AssertionSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Acquired, IdpError>> + Send>> + Send + Sync>;

/// How a client proves who it is. Clones share the certificate and the held
/// managed-identity token.
#[derive(Clone)]
pub enum Credential {
    /// A client secret (a development credential for agent blueprints).
    Secret(Secret),
    /// A client assertion signed with a certificate's key, fresh per request.
    Certificate(Arc<Certificate>),
    /// A managed identity's token as the client assertion (a federated identity
    /// credential), reused until 5 minutes before it expires.
    ManagedIdentity {
        source: AssertionSource,
        held: Arc<Exchange>,
    },
}

impl Credential {
    /// The form fields that prove `client_id` to the endpoint at `audience`.
    async fn fields(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<Vec<(&'static str, Secret)>, IdpError> {
        Ok(match self {
            Self::Secret(secret) => vec![("client_secret", secret.clone())],
            Self::Certificate(certificate) => vec![
                ("client_assertion_type", Secret::new(JWT_BEARER)),
                (
                    "client_assertion",
                    certificate.assertion(client_id, audience)?,
                ),
            ],
            Self::ManagedIdentity { source, held } => vec![
                ("client_assertion_type", Secret::new(JWT_BEARER)),
                ("client_assertion", held.get(|| source()).await?),
            ],
        })
    }
}

/// One application at one token endpoint.
pub struct Client {
    pub id: String,
    credential: Credential,
    endpoint: Arc<dyn Endpoint>,
    /// The endpoint's URL: the audience of certificate assertions.
    audience: String,
}

impl Client {
    pub fn new(
        id: String,
        credential: Credential,
        endpoint: Arc<dyn Endpoint>,
        audience: String,
    ) -> Self {
        Self {
            id,
            credential,
            endpoint,
            audience,
        }
    }

    /// Posts `grant` with the client's id and proof.
    pub async fn post(&self, grant: &[(&str, &str)]) -> Result<Acquired, IdpError> {
        let proof = self.credential.fields(&self.id, &self.audience).await?;
        let mut form: Vec<(&str, &str)> = vec![("client_id", &self.id)];
        form.extend(proof.iter().map(|(name, value)| (*name, value.expose())));
        form.extend_from_slice(grant);
        self.endpoint.post(&form).await
    }

    /// An app-only token.
    pub async fn client_credentials(&self, scope: &Scope) -> Result<Acquired, IdpError> {
        self.post(&[
            ("grant_type", "client_credentials"),
            ("scope", scope.as_str()),
        ])
        .await
    }
}

/// Who acts for a user: the app registration, or an agent identity (then the
/// agent identity is the client, with T1 as its assertion). Every grant asks
/// for `offline_access`, so each answer carries a refresh token.
#[derive(Clone, Copy)]
pub enum Actor<'a> {
    App(&'a Client),
    Agent(&'a AgentIdentity),
}

impl Actor<'_> {
    async fn post(&self, grant: &[(&str, &str)]) -> Result<Acquired, IdpError> {
        match self {
            Self::App(client) => client.post(grant).await,
            Self::Agent(agent) => agent.post(grant).await,
        }
    }

    pub async fn refresh(
        &self,
        scope: &Scope,
        refresh_token: &Secret,
    ) -> Result<Acquired, IdpError> {
        let scope = with_offline_access(scope);
        self.post(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("scope", &scope),
        ])
        .await
    }

    /// The on-behalf-of exchange: a user's token for this app becomes the user's
    /// token for `scope`.
    pub async fn on_behalf_of(
        &self,
        scope: &Scope,
        assertion: &Secret,
    ) -> Result<Acquired, IdpError> {
        let scope = with_offline_access(scope);
        self.post(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("requested_token_use", "on_behalf_of"),
            ("assertion", assertion.expose()),
            ("scope", &scope),
        ])
        .await
    }

    /// The resource-owner password grant (the seed's agent user; retiring).
    pub async fn password(
        &self,
        scope: &Scope,
        username: &str,
        password: &Secret,
    ) -> Result<Acquired, IdpError> {
        let scope = with_offline_access(scope);
        self.post(&[
            ("grant_type", "password"),
            ("username", username),
            ("password", password.expose()),
            ("scope", &scope),
        ])
        .await
    }
}

pub fn with_offline_access(scope: &Scope) -> String {
    if scope.parts().any(|p| p == "offline_access") {
        scope.as_str().to_owned()
    } else {
        format!("{scope} offline_access")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_access_is_added_once() {
        let s = Scope::parse("User.Read").unwrap();
        assert_eq!(with_offline_access(&s), "User.Read offline_access");
        let s = Scope::parse("offline_access User.Read").unwrap();
        assert_eq!(with_offline_access(&s), "offline_access User.Read");
    }
}
