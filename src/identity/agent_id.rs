//! Microsoft Entra Agent ID (SPEC §6): an agent identity, made from an agent
//! identity blueprint, gets tokens of its own (`agent_identity`), and its agent
//! user delegated ones (`agent_user`), through exchange tokens:
//!
//! 1. T1: the blueprint asks for `api://AzureADTokenExchange` with `fmi_path` =
//!    the agent identity.
//! 2. App token: the agent identity (T1 as its client assertion) asks for a
//!    resource with `client_credentials`.
//! 3. T2: request 2 for `api://AzureADTokenExchange`.
//! 4. Agent user token: the agent identity asks with `grant_type=user_fic`, the
//!    agent user, and T2 as `user_federated_identity_credential`.
//! 5. Refreshes and on-behalf-of exchanges: the agent identity as the client.
//!
//! T1 and T2 are held by [`Exchange`]: in memory only, one request per lifetime.

use super::client::{Actor, Client, JWT_BEARER, TOKEN_EXCHANGE, with_offline_access};
use super::entra::Endpoint;
use super::exchange::Exchange;
use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::domain::Scope;
use crate::secret::Secret;
use std::sync::Arc;

/// Which user an agent user token is for.
#[derive(Debug, Clone)]
pub enum AgentUser {
    /// `AGENT_USER_ID`: the agent user's object id.
    Id(String),
    /// `AGENT_USER_NAME`: its UPN.
    Name(String),
}

pub struct AgentIdentity {
    /// The blueprint, with its credential: what asks for T1.
    blueprint: Client,
    /// `AGENT_IDENTITY_ID`: the agent identity's client id.
    pub id: String,
    user: Option<AgentUser>,
    endpoint: Arc<dyn Endpoint>,
    t1: Exchange,
    t2: Exchange,
}

impl AgentIdentity {
    pub fn new(
        blueprint: Client,
        id: String,
        user: Option<AgentUser>,
        endpoint: Arc<dyn Endpoint>,
        clock: Clock,
    ) -> Self {
        Self {
            blueprint,
            id,
            user,
            endpoint,
            t1: Exchange::new(clock.clone()),
            t2: Exchange::new(clock),
        }
    }

    /// Request 1: T1, from the blueprint, for this agent identity.
    async fn t1(&self) -> Result<Secret, IdpError> {
        self.t1
            .get(|| async {
                self.blueprint
                    .post(&[
                        ("grant_type", "client_credentials"),
                        ("scope", TOKEN_EXCHANGE),
                        ("fmi_path", &self.id),
                    ])
                    .await
            })
            .await
    }

    /// Posts `grant` as the agent identity: its id, T1 as its assertion. A T1
    /// the endpoint refuses as a client credential is dropped, not reused.
    pub async fn post(&self, grant: &[(&str, &str)]) -> Result<Acquired, IdpError> {
        let t1 = self.t1().await?;
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", t1.expose()),
        ];
        form.extend_from_slice(grant);
        let result = self.endpoint.post(&form).await;
        if let Err(IdpError::Rejected { error, .. }) = &result
            && error == "invalid_client"
        {
            self.t1.forget().await;
        }
        result
    }

    /// Request 2: an app-only token of the agent identity.
    pub async fn app_token(&self, scope: &Scope) -> Result<Acquired, IdpError> {
        self.post(&[
            ("grant_type", "client_credentials"),
            ("scope", scope.as_str()),
        ])
        .await
    }

    /// Request 4 (with T2 from request 3): the agent user's delegated token.
    pub async fn user_token(&self, scope: &Scope) -> Result<Acquired, IdpError> {
        let user = self.user.as_ref().ok_or(IdpError::NotConfigured)?;
        let t2 = self
            .t2
            .get(|| async {
                self.post(&[
                    ("grant_type", "client_credentials"),
                    ("scope", TOKEN_EXCHANGE),
                ])
                .await
            })
            .await?;
        let scope = with_offline_access(scope);
        let (field, value) = match user {
            AgentUser::Id(id) => ("user_id", id.as_str()),
            AgentUser::Name(name) => ("username", name.as_str()),
        };
        let result = self
            .post(&[
                ("grant_type", "user_fic"),
                ("scope", &scope),
                (field, value),
                ("user_federated_identity_credential", t2.expose()),
            ])
            .await;
        // The T2 may be what was refused: the next exchange gets a new one.
        if let Err(IdpError::Rejected { .. }) = &result {
            self.t2.forget().await;
        }
        result
    }

    /// The agent user's token: its refresh token when there is one (request 5),
    /// a new `user_fic` exchange when there is none or it is rejected.
    pub async fn agent_user(
        &self,
        scope: &Scope,
        refresh_token: Option<&Secret>,
    ) -> Result<Acquired, IdpError> {
        if let Some(refresh_token) = refresh_token {
            match Actor::Agent(self).refresh(scope, refresh_token).await {
                Err(error) if error.is_invalid_grant() => {
                    tracing::info!(%error, scope = %scope, "agent user's refresh token rejected; exchanging again");
                }
                other => return other,
            }
        }
        self.user_token(scope).await
    }
}
