//! Acquiring tokens from Microsoft Entra ID (SPEC §6).
//!
//! The resource-owner password and refresh-token grants are form posts over
//! reqwest ([`entra`]); `client_credentials` and `managed_identity` go through
//! `azure_identity` ([`azure`]); `dev` mode signs its own JWTs ([`dev`]).
//! `AZURE_AUTHORITY_HOST` points every flow that talks to an authority elsewhere.
//! Every answer is counted by flow and outcome, and the last success and error are
//! kept for health.

mod azure;
mod dev;
mod entra;

pub use self::dev::DevIssuer;
pub use self::entra::TokenEndpoint;

use crate::clock::Clock;
use crate::config::{AgentFlow, Config, ConfigError};
use crate::domain::Scope;
use crate::metrics::{IdpLabels, Metrics};
use crate::secret::Secret;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A token as the identity provider issued it.
#[derive(Debug)]
pub struct Acquired {
    pub token: Secret,
    /// Unix seconds.
    pub expires_on: i64,
    /// Entra's hint for when to refresh a long-lived token, in seconds from now.
    pub refresh_in: Option<u64>,
    pub refresh_token: Option<Secret>,
}

/// Why the identity provider gave no token. Carries Entra's error title and
/// `AADSTS` code, never its full description or anything sent to it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdpError {
    #[error("identity provider refused the request (HTTP {status}, {error}{})", aadsts_suffix(*.aadsts))]
    Rejected {
        status: u16,
        error: String,
        aadsts: Option<u32>,
    },
    #[error("identity provider unavailable (HTTP {status}{})", aadsts_suffix(*.aadsts))]
    Unavailable {
        status: u16,
        retry_after: Option<u64>,
        aadsts: Option<u32>,
    },
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
    #[error("identity provider answered something unexpected: {0}")]
    Protocol(String),
    /// Per-user grants need the app registration's secret.
    #[error("per-user tokens need AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET")]
    NotConfigured,
}

fn aadsts_suffix(code: Option<u32>) -> String {
    code.map(|c| format!(", AADSTS{c}")).unwrap_or_default()
}

impl IdpError {
    /// Seconds the identity provider asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A refresh token (or password) that will never work again.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Rejected { error, .. } if error == "invalid_grant")
    }

    /// The error title and `AADSTS` code, for the key's refresh status.
    pub fn summary(&self) -> (String, Option<u32>) {
        match self {
            Self::Rejected { error, aadsts, .. } => (error.clone(), *aadsts),
            Self::Unavailable { status, aadsts, .. } => (format!("http_{status}"), *aadsts),
            Self::Unreachable(_) => ("unreachable".to_owned(), None),
            Self::Protocol(_) => ("bad_response".to_owned(), None),
            Self::NotConfigured => ("not_configured".to_owned(), None),
        }
    }

    /// Whether trying again later may succeed (throttling, outages, network).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Rejected { .. } | Self::NotConfigured)
    }
}

/// Timeouts for every call to the identity provider: a stuck token endpoint must not
/// hold callers (and the refresh lock) forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The one HTTP client of the service: reqwest with rustls, shared with azure_identity.
pub fn http_client() -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ConfigError(format!("HTTP client: {e}")))
}

/// How agent tokens are acquired.
enum AgentGrant {
    Password(entra::PasswordFlow),
    Azure(azure::AzureFlow),
    Dev(Arc<DevIssuer>),
}

/// How user tokens are exchanged and refreshed.
enum UserFlow {
    Entra(entra::DelegatedClient),
    Dev(Arc<DevIssuer>),
    /// No client secret (managed identity): Entra has no delegated grant for us.
    Unavailable,
}

/// When the identity provider last answered with a token, and its last error.
#[derive(Debug, Clone, Default)]
pub struct IdpSeen {
    pub last_success: Option<i64>,
    pub last_error: Option<(i64, String)>,
}

/// The identity provider as the service uses it: agent tokens by the configured
/// flow, user tokens by on-behalf-of exchange and refresh tokens.
pub struct Identity {
    agent: AgentGrant,
    users: UserFlow,
    clock: Clock,
    metrics: Metrics,
    seen: Mutex<IdpSeen>,
}

impl Identity {
    pub fn from_config(
        config: &Config,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        config.check_agent_credentials()?;
        let identity = &config.identity;
        let http = http_client()?;
        let agent = match identity.agent_flow {
            AgentFlow::Password => AgentGrant::Password(entra::PasswordFlow::new(
                identity,
                http.clone(),
                clock.clone(),
            )),
            AgentFlow::ClientCredentials | AgentFlow::ManagedIdentity => AgentGrant::Azure(
                azure::AzureFlow::new(identity, http.clone(), clock.clone())?,
            ),
        };
        let users = if identity.is_confidential() {
            UserFlow::Entra(entra::DelegatedClient::new(identity, http, clock.clone()))
        } else {
            UserFlow::Unavailable
        };
        Ok(Self::new(agent, users, clock, metrics))
    }

    /// `handler dev`: everything from the local development issuer.
    pub fn dev(lifetime_secs: u64, clock: Clock, metrics: Metrics) -> Self {
        let issuer = Arc::new(DevIssuer::new(lifetime_secs, clock.clone()));
        Self::new(
            AgentGrant::Dev(issuer.clone()),
            UserFlow::Dev(issuer),
            clock,
            metrics,
        )
    }

    fn new(agent: AgentGrant, users: UserFlow, clock: Clock, metrics: Metrics) -> Self {
        Self {
            agent,
            users,
            clock,
            metrics,
            seen: Mutex::default(),
        }
    }

    pub fn flow_name(&self) -> &'static str {
        match &self.agent {
            AgentGrant::Password(_) => "password",
            AgentGrant::Azure(flow) => flow.name(),
            AgentGrant::Dev(_) => "dev",
        }
    }

    /// Whether agent tokens can each be for one resource only (managed identity):
    /// a multi-scope agent token is then refused at the edge.
    pub fn one_resource_per_token(&self) -> bool {
        matches!(&self.agent, AgentGrant::Azure(flow) if flow.one_resource_per_token())
    }

    pub fn client_id(&self) -> &str {
        match &self.agent {
            AgentGrant::Password(flow) => flow.client_id(),
            AgentGrant::Azure(flow) => flow.client_id(),
            AgentGrant::Dev(_) => "dev",
        }
    }

    /// Whether agent tokens come with refresh tokens worth keeping.
    pub fn uses_refresh_tokens(&self) -> bool {
        matches!(self.agent, AgentGrant::Password(_))
    }

    /// The identity provider as this instance last saw it.
    pub fn seen(&self) -> IdpSeen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One agent token for `scope`: with `refresh_token` when the flow has one,
    /// falling back to the flow's primary grant when the identity provider rejects it.
    pub async fn acquire(
        &self,
        scope: &Scope,
        refresh_token: Option<&Secret>,
    ) -> Result<Acquired, IdpError> {
        let result = match &self.agent {
            AgentGrant::Password(flow) => flow.acquire(scope, refresh_token).await,
            AgentGrant::Azure(flow) => flow.acquire(scope).await,
            AgentGrant::Dev(issuer) => Ok(issuer.issue(scope, None)),
        };
        self.saw(self.flow_name(), result)
    }

    /// Exchanges a user's token for this app (`assertion`) for the user's token
    /// for `scope`, with a refresh token.
    pub async fn on_behalf_of(
        &self,
        scope: &Scope,
        assertion: &Secret,
    ) -> Result<Acquired, IdpError> {
        self.for_user("on_behalf_of", scope, |client| {
            client.on_behalf_of(scope, assertion)
        })
        .await
    }

    /// Redeems a user's refresh token.
    pub async fn refresh_user(
        &self,
        scope: &Scope,
        refresh_token: &Secret,
    ) -> Result<Acquired, IdpError> {
        self.for_user("refresh_token", scope, |client| {
            client.refresh(scope, refresh_token)
        })
        .await
    }

    /// A user's token by the delegated `flow`: `entra` against the token endpoint,
    /// the dev issuer's, or none without the app registration's secret.
    async fn for_user<'a, F>(
        &'a self,
        flow: &'static str,
        scope: &Scope,
        entra: impl FnOnce(&'a entra::DelegatedClient) -> F,
    ) -> Result<Acquired, IdpError>
    where
        F: Future<Output = Result<Acquired, IdpError>> + 'a,
    {
        let result = match &self.users {
            UserFlow::Entra(client) => entra(client).await,
            UserFlow::Dev(issuer) => Ok(issuer.issue(scope, Some("dev-user"))),
            UserFlow::Unavailable => Err(IdpError::NotConfigured),
        };
        self.saw(flow, result)
    }

    /// Counts an answer for metrics and keeps it for health.
    fn saw(
        &self,
        flow: &'static str,
        result: Result<Acquired, IdpError>,
    ) -> Result<Acquired, IdpError> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(IdpError::Rejected { .. } | IdpError::NotConfigured) => "rejected",
            Err(IdpError::Unavailable { .. }) => "unavailable",
            Err(IdpError::Unreachable(_) | IdpError::Protocol(_)) => "unreachable",
        };
        self.metrics
            .idp_requests
            .get_or_create(&IdpLabels { flow, outcome })
            .inc();
        let now = self.clock.now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => seen.last_success = Some(now),
            Err(error) => seen.last_error = Some((now, error.to_string())),
        }
        result
    }
}
