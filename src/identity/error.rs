//! Why the identity provider gave no token, classified the way the refresh
//! logic needs it (retry, wait, revoke), and said in one line.

use super::aadsts;

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
    /// The agent's own credential (T1, T2, a managed identity's assertion) was
    /// refused or could not be had: never a verdict on a user's grant.
    #[error("the agent's credential could not be obtained: {0}")]
    Credential(Box<IdpError>),
    /// Per-user grants need a credential: the app registration's secret or
    /// certificate, or Entra Agent ID.
    #[error(
        "per-user tokens need AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, or Entra Agent ID"
    )]
    NotConfigured,
}

fn aadsts_suffix(code: Option<u32>) -> String {
    code.map(|c| format!(", {}", aadsts::describe(c)))
        .unwrap_or_default()
}

impl IdpError {
    /// An error of the step that gets the agent's own credential.
    pub fn credential(self) -> Self {
        match self {
            Self::Credential(_) => self,
            other => Self::Credential(Box::new(other)),
        }
    }

    /// Seconds the identity provider asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::Credential(inner) => inner.retry_after(),
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
            Self::Credential(inner) => {
                let (title, aadsts) = inner.summary();
                (format!("credential_{title}"), aadsts)
            }
        }
    }

    /// `AADSTS{code}` and what it means, when Entra gave a code.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Rejected { aadsts, .. } | Self::Unavailable { aadsts, .. } => {
                aadsts.map(aadsts::describe)
            }
            Self::Credential(inner) => inner.reason(),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (throttling, outages, network).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Credential(inner) => inner.is_transient(),
            other => !matches!(other, Self::Rejected { .. } | Self::NotConfigured),
        }
    }
}
