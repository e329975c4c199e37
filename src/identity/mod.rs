//! Acquiring tokens from Microsoft Entra ID (SPEC §6).
//!
//! The resource-owner password and refresh-token grants are form posts over
//! reqwest ([`entra`]); `client_credentials` and `managed_identity` go through
//! `azure_identity` ([`azure`]); `dev` mode signs its own JWTs ([`dev`]).
//! `AZURE_AUTHORITY_HOST` points every flow that talks to an authority elsewhere.

mod azure;
mod dev;
mod entra;

pub use self::dev::DevIssuer;
pub use self::entra::TokenEndpoint;

use crate::config::{AgentFlow, Config, ConfigError};
use crate::domain::Scope;
use crate::secret::Secret;
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
        }
    }

    /// Whether trying again later may succeed (throttling, outages, network).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
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

/// The flow that acquires agent tokens.
pub enum Identity {
    Password(entra::PasswordFlow),
    Azure(azure::AzureFlow),
    Dev(DevIssuer),
}

impl Identity {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        config.check_agent_credentials()?;
        let http = http_client()?;
        Ok(match config.agent_flow {
            AgentFlow::Password => Self::Password(entra::PasswordFlow::new(config, http)),
            AgentFlow::ClientCredentials | AgentFlow::ManagedIdentity => {
                Self::Azure(azure::AzureFlow::new(config, http)?)
            }
        })
    }

    pub fn flow_name(&self) -> &'static str {
        match self {
            Self::Password(_) => "password",
            Self::Azure(flow) => flow.name(),
            Self::Dev(_) => "dev",
        }
    }

    pub fn client_id(&self) -> &str {
        match self {
            Self::Password(flow) => flow.client_id(),
            Self::Azure(flow) => flow.client_id(),
            Self::Dev(_) => "dev",
        }
    }

    /// Whether this flow hands out refresh tokens worth keeping.
    pub fn uses_refresh_tokens(&self) -> bool {
        matches!(self, Self::Password(_))
    }

    /// One token for `scope`: with `refresh_token` when the flow has one, falling
    /// back to the flow's primary grant when the identity provider rejects it.
    pub async fn acquire(
        &self,
        scope: &Scope,
        refresh_token: Option<&Secret>,
    ) -> Result<Acquired, IdpError> {
        match self {
            Self::Password(flow) => flow.acquire(scope, refresh_token).await,
            Self::Azure(flow) => flow.acquire(scope).await,
            Self::Dev(issuer) => Ok(issuer.issue(scope)),
        }
    }
}
