//! Managed identities through the azure_identity crate: the platform's identity
//! endpoint (App Service's `IDENTITY_ENDPOINT`, or the VM's IMDS).

use super::entra::{classify, parse_retry_after};
use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::domain::Scope;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use std::sync::Arc;

pub struct ManagedIdentity {
    /// A user-assigned identity's client id; the system-assigned one without.
    client_id: Option<String>,
    http: reqwest::Client,
    clock: Clock,
}

impl ManagedIdentity {
    pub fn new(
        client_id: Option<String>,
        http: reqwest::Client,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            client_id: client_id.filter(|id| !id.is_empty()),
            http,
            clock,
        })
    }

    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or_default()
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            transport: Some(Transport::new(Arc::new(self.http.clone()))),
            // Retries, backoff and Retry-After are the refresh engine's job; the SDK's
            // own retries would make one failing call take seconds and hide the status.
            retry: RetryOptions::none(),
            ..Default::default()
        }
    }

    /// A fresh credential per call: azure_identity caches tokens inside each
    /// credential until five minutes before expiry, and a forced refresh must reach
    /// the identity provider. The transport (and its connection pool) is shared.
    fn credential(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: self.client_id.clone().map(UserAssignedId::ClientId),
            client_options: self.client_options(),
        };
        Ok(ManagedIdentityCredential::new(Some(options))?)
    }

    /// A token for the resource of `scope` (one resource per token).
    pub async fn acquire(&self, scope: &str) -> Result<Acquired, IdpError> {
        let credential = self.credential().map_err(map_error)?;
        let token = credential
            .get_token(&[scope], None)
            .await
            .map_err(map_error)?;
        Ok(Acquired {
            token: crate::secret::Secret::new(token.token.secret().to_owned()),
            // The SDK reads the system clock; this service may run on another.
            expires_on: self.clock.now()
                + (token.expires_on.unix_timestamp() - Clock::System.now()),
            refresh_in: None,
            refresh_token: None,
        })
    }

    pub async fn acquire_scope(&self, scope: &Scope) -> Result<Acquired, IdpError> {
        self.acquire(scope.as_str()).await
    }
}

/// Finds the HTTP answer inside azure_identity's wrapped error and classifies it
/// like the direct flows do.
fn map_error(error: azure_core::Error) -> IdpError {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = current {
        if let Some(az) = e.downcast_ref::<azure_core::Error>() {
            match az.kind() {
                ErrorKind::HttpResponse {
                    status,
                    raw_response,
                    ..
                } => {
                    let body = raw_response
                        .as_ref()
                        .map(|r| r.body().to_vec())
                        .unwrap_or_default();
                    let retry_after = raw_response.as_ref().and_then(|r| {
                        parse_retry_after(
                            r.headers()
                                .get_optional_str(&azure_core::http::headers::RETRY_AFTER),
                        )
                    });
                    return classify(u16::from(*status), &body, retry_after);
                }
                ErrorKind::Connection | ErrorKind::Io => {
                    return IdpError::Unreachable(az.kind().to_string());
                }
                _ => {}
            }
        }
        current = e.source();
    }
    IdpError::Protocol(error.kind().to_string())
}
