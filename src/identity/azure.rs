//! `client_credentials` and `managed_identity` through the azure_identity crate.

use super::entra::{classify, parse_retry_after};
use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::config::{AgentFlow, ConfigError, IdentityConfig, is_loopback};
use crate::domain::Scope;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{
    AsyncRawResponse, ClientOptions, HttpClient, Request, RetryOptions, Transport,
};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use std::sync::Arc;

pub struct AzureFlow {
    flow: AgentFlow,
    tenant_id: String,
    client_id: String,
    client_secret: Option<azure_core::credentials::Secret>,
    /// Handed to azure_identity as `https://`; see [`LoopbackHttp`].
    authority_host: String,
    transport: Arc<dyn HttpClient>,
    clock: Clock,
}

impl AzureFlow {
    pub fn new(
        config: &IdentityConfig,
        http: reqwest::Client,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        // azure_identity refuses non-https authorities. A loopback issuer (tests, a
        // local emulator) is given to it as https:// and reached over http:// by the
        // transport; config has already refused http:// for any other host.
        let mut authority = config.authority_host.clone();
        let transport: Arc<dyn HttpClient> = if authority.scheme() == "http" {
            authority.set_scheme("https").map_err(|()| {
                ConfigError("AZURE_AUTHORITY_HOST: cannot be used as an authority".into())
            })?;
            Arc::new(LoopbackHttp(http))
        } else {
            Arc::new(http)
        };
        Ok(Self {
            flow: config.agent_flow,
            tenant_id: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            client_secret: config
                .client_secret
                .as_ref()
                .map(|s| azure_core::credentials::Secret::new(s.expose().to_owned())),
            authority_host: authority.as_str().trim_end_matches('/').to_owned(),
            transport,
            clock,
        })
    }

    pub fn name(&self) -> &'static str {
        match self.flow {
            AgentFlow::ManagedIdentity => "managed_identity",
            _ => "client_credentials",
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A managed identity gets a token for one resource, never for several scopes.
    pub fn one_resource_per_token(&self) -> bool {
        self.flow == AgentFlow::ManagedIdentity
    }

    fn client_options(&self) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.authority_host.clone();
        ClientOptions {
            transport: Some(Transport::new(self.transport.clone())),
            // Retries, backoff and Retry-After are the refresh engine's job; the SDK's
            // own retries would make one failing call take seconds and hide the status.
            retry: RetryOptions::none(),
            cloud: Some(Arc::new(CloudConfiguration::from(cloud))),
            ..Default::default()
        }
    }

    /// A fresh credential per call: azure_identity caches tokens inside each
    /// credential until five minutes before expiry, and a forced refresh must reach
    /// the identity provider. The transport (and its connection pool) is shared.
    fn credential(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        match self.flow {
            AgentFlow::ManagedIdentity => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: (!self.client_id.is_empty())
                        .then(|| UserAssignedId::ClientId(self.client_id.clone())),
                    client_options: self.client_options(),
                };
                Ok(ManagedIdentityCredential::new(Some(options))?)
            }
            _ => {
                let options = ClientSecretCredentialOptions {
                    client_options: self.client_options(),
                };
                let secret = self
                    .client_secret
                    .clone()
                    .unwrap_or_else(|| azure_core::credentials::Secret::new(String::new()));
                Ok(ClientSecretCredential::new(
                    &self.tenant_id,
                    self.client_id.clone(),
                    secret,
                    Some(options),
                )?)
            }
        }
    }

    pub async fn acquire(&self, scope: &Scope) -> Result<Acquired, IdpError> {
        let credential = self.credential().map_err(map_error)?;
        let scopes: Vec<&str> = scope.parts().collect();
        let token = credential
            .get_token(&scopes, None)
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

/// Sends azure_identity's `https://` requests for a loopback authority over plain
/// HTTP. Only ever built when `AZURE_AUTHORITY_HOST` is `http://` on loopback.
#[derive(Debug)]
struct LoopbackHttp(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for LoopbackHttp {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut request = request.clone();
        if is_loopback(request.url()) {
            // Cannot fail: https -> http keeps a special scheme.
            let _ = request.url_mut().set_scheme("http");
        }
        self.0.execute_request(&request).await
    }
}
