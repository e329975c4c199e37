//! Acquiring tokens from Microsoft Entra ID (SPEC §6).
//!
//! Every flow but managed identity is a form post to the v2.0 token endpoint
//! ([`entra`]) by a client ([`client`]) proving itself with a secret, a
//! certificate ([`certificate`]) or a managed identity's token; Entra Agent ID's
//! agent identity and agent user ([`agent_id`]) hold their exchange tokens in
//! memory ([`exchange`]); managed identities go through `azure_identity`
//! ([`azure`]); `dev` mode answers every grant in process ([`dev`]).
//! `AZURE_AUTHORITY_HOST` points every flow that talks to an authority elsewhere.
//! Every answer is counted by flow and outcome, and the last success and error are
//! kept for health.

mod aadsts;
mod agent_id;
mod azure;
mod certificate;
mod client;
mod dev;
mod entra;
mod error;
mod exchange;

pub use self::aadsts::describe as describe_aadsts;
pub use self::dev::DevIssuer;
pub use self::entra::{Endpoint, TokenEndpoint};
pub use self::error::IdpError;

use self::agent_id::{AgentIdentity, AgentUser};
use self::azure::ManagedIdentity;
use self::certificate::Certificate;
use self::client::{Actor, Client, Credential, TOKEN_EXCHANGE};
use self::exchange::Exchange;

use crate::clock::Clock;
use crate::config::{AgentFlow, BlueprintCredential, Config, ConfigError, IdentityConfig};
use crate::domain::Scope;
use crate::metrics::{IdpLabels, Metrics};
use crate::secret::Secret;
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
    /// The seed's password grant: the app registration for the agent user.
    Password {
        app: Client,
        username: String,
        password: Secret,
    },
    ClientCredentials(Client),
    ManagedIdentity(ManagedIdentity),
    AgentIdentity(Arc<AgentIdentity>),
    AgentUser(Arc<AgentIdentity>),
}

/// Who exchanges and refreshes users' tokens.
enum UserFlow {
    App(Client),
    /// With Agent ID, the agent identity acts for users.
    Agent(Arc<AgentIdentity>),
    /// Neither a secret nor a certificate nor Agent ID: no delegated grant for us.
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
        http: reqwest::Client,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        config.check_agent_credentials()?;
        let identity = &config.identity;
        let url = identity.token_endpoint();
        let endpoint: Arc<dyn Endpoint> =
            Arc::new(TokenEndpoint::new(http.clone(), url.clone(), clock.clone()));
        let credential = credential(identity, &http, &clock)?;
        let app = |credential| {
            Client::new(
                identity.client_id.clone(),
                credential,
                endpoint.clone(),
                url.clone(),
            )
        };
        let agent_identity = |credential| {
            let user = match (&identity.agent_user_id, &identity.agent_user_name) {
                (Some(id), _) => Some(AgentUser::Id(id.clone())),
                (None, Some(name)) => Some(AgentUser::Name(name.clone())),
                (None, None) => None,
            };
            let blueprint = Client::new(
                identity.blueprint_client_id.clone(),
                credential,
                endpoint.clone(),
                url.clone(),
            );
            let id = identity.agent_identity_id.clone().unwrap_or_default();
            Arc::new(AgentIdentity::new(
                blueprint,
                id,
                user,
                endpoint.clone(),
                clock.clone(),
            ))
        };
        let (agent, users) = match (identity.agent_flow, credential) {
            (AgentFlow::AgentIdentity, Some(credential)) => {
                let agent = agent_identity(credential);
                (
                    AgentGrant::AgentIdentity(agent.clone()),
                    UserFlow::Agent(agent),
                )
            }
            (AgentFlow::AgentUser, Some(credential)) => {
                let agent = agent_identity(credential);
                (AgentGrant::AgentUser(agent.clone()), UserFlow::Agent(agent))
            }
            (AgentFlow::ManagedIdentity, credential) => {
                let managed =
                    ManagedIdentity::new(Some(identity.client_id.clone()), http, clock.clone())?;
                (
                    AgentGrant::ManagedIdentity(managed),
                    users(credential.map(app)),
                )
            }
            (AgentFlow::Password, credential) => {
                let credential_for_users = credential.clone();
                tracing::warn!(
                    "AGENT_TOKEN_FLOW=password: the resource-owner password grant fails under MFA and Conditional Access and is being retired; move to AGENT_TOKEN_FLOW=agent_user (Entra Agent ID)"
                );
                let password = AgentGrant::Password {
                    app: app(credential.unwrap_or_else(|| Credential::Secret(Secret::new("")))),
                    username: identity.agent_user_name.clone().unwrap_or_default(),
                    password: identity
                        .agent_password
                        .clone()
                        .unwrap_or_else(|| Secret::new("")),
                };
                (password, users(credential_for_users.map(app)))
            }
            (AgentFlow::ClientCredentials, Some(credential)) => {
                let users = users(Some(app(credential.clone())));
                (AgentGrant::ClientCredentials(app(credential)), users)
            }
            (flow, None) => {
                return Err(ConfigError(format!(
                    "AZURE_CLIENT_SECRET: AGENT_TOKEN_FLOW={flow:?} needs a secret or AZURE_CLIENT_CERTIFICATE_PATH"
                )));
            }
        };
        Ok(Self::new(agent, users, clock, metrics))
    }

    /// `handler dev`: an agent user of a development agent identity, every grant
    /// answered by the in-process issuer (the same requests as Entra's).
    pub fn dev(lifetime_secs: u64, clock: Clock, metrics: Metrics) -> Self {
        let issuer: Arc<dyn Endpoint> = Arc::new(DevIssuer::new(lifetime_secs, clock.clone()));
        let url = "urn:token-broker:dev-issuer".to_owned();
        let blueprint = Client::new(
            "dev-agent-blueprint".to_owned(),
            Credential::Secret(Secret::new("dev")),
            issuer.clone(),
            url,
        );
        let agent = Arc::new(AgentIdentity::new(
            blueprint,
            "dev-agent-identity".to_owned(),
            Some(AgentUser::Name("agent-user@dev.invalid".to_owned())),
            issuer,
            clock.clone(),
        ));
        Self::new(
            AgentGrant::AgentUser(agent.clone()),
            UserFlow::Agent(agent),
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
            AgentGrant::Password { .. } => "password",
            AgentGrant::ClientCredentials(_) => "client_credentials",
            AgentGrant::ManagedIdentity(_) => "managed_identity",
            AgentGrant::AgentIdentity(_) => "agent_identity",
            AgentGrant::AgentUser(_) => "agent_user",
        }
    }

    /// Whether agent tokens can each be for one resource only (managed identity):
    /// a multi-scope agent token is then refused at the edge.
    pub fn one_resource_per_token(&self) -> bool {
        matches!(&self.agent, AgentGrant::ManagedIdentity(_))
    }

    /// The client id recorded in a token's metadata: the app registration, the
    /// managed identity, or the agent identity.
    pub fn client_id(&self) -> &str {
        match &self.agent {
            AgentGrant::Password { app, .. } | AgentGrant::ClientCredentials(app) => &app.id,
            AgentGrant::ManagedIdentity(managed) => managed.client_id(),
            AgentGrant::AgentIdentity(agent) | AgentGrant::AgentUser(agent) => &agent.id,
        }
    }

    /// The agent identity that acts, agent tokens and users' alike, with Agent ID.
    pub fn agent_identity(&self) -> Option<&str> {
        match &self.users {
            UserFlow::Agent(agent) => Some(&agent.id),
            _ => None,
        }
    }

    /// Whether agent tokens come with refresh tokens worth keeping.
    pub fn uses_refresh_tokens(&self) -> bool {
        matches!(
            self.agent,
            AgentGrant::Password { .. } | AgentGrant::AgentUser(_)
        )
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
            AgentGrant::Password {
                app,
                username,
                password,
            } => password_grant(app, scope, username, password, refresh_token).await,
            AgentGrant::ClientCredentials(app) => app.client_credentials(scope).await,
            AgentGrant::ManagedIdentity(managed) => managed.acquire_scope(scope).await,
            AgentGrant::AgentIdentity(agent) => agent.app_token(scope).await,
            AgentGrant::AgentUser(agent) => agent.agent_user(scope, refresh_token).await,
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
        let result = match self.actor() {
            Some(actor) => actor.on_behalf_of(scope, assertion).await,
            None => Err(IdpError::NotConfigured),
        };
        self.saw("on_behalf_of", result)
    }

    /// Redeems a user's refresh token.
    pub async fn refresh_user(
        &self,
        scope: &Scope,
        refresh_token: &Secret,
    ) -> Result<Acquired, IdpError> {
        let result = match self.actor() {
            Some(actor) => actor.refresh(scope, refresh_token).await,
            None => Err(IdpError::NotConfigured),
        };
        self.saw("refresh_token", result)
    }

    fn actor(&self) -> Option<Actor<'_>> {
        match &self.users {
            UserFlow::App(app) => Some(Actor::App(app)),
            UserFlow::Agent(agent) => Some(Actor::Agent(agent)),
            UserFlow::Unavailable => None,
        }
    }

    /// Counts an answer for metrics and keeps it for health.
    fn saw(
        &self,
        flow: &'static str,
        result: Result<Acquired, IdpError>,
    ) -> Result<Acquired, IdpError> {
        let outcome = match result.as_ref().map_err(|e| match e {
            IdpError::Credential(inner) => inner.as_ref(),
            other => other,
        }) {
            Ok(_) => "ok",
            Err(IdpError::Rejected { .. } | IdpError::NotConfigured) => "rejected",
            Err(IdpError::Unavailable { .. }) => "unavailable",
            Err(IdpError::Unreachable(_) | IdpError::Protocol(_)) => "unreachable",
            // Never nested: `credential()` wraps once.
            Err(IdpError::Credential(_)) => "rejected",
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

/// The seed's agent user: its refresh token when there is one, the password
/// when there is none or it is rejected.
async fn password_grant(
    app: &Client,
    scope: &Scope,
    username: &str,
    password: &Secret,
    refresh_token: Option<&Secret>,
) -> Result<Acquired, IdpError> {
    if let Some(refresh_token) = refresh_token {
        match Actor::App(app).refresh(scope, refresh_token).await {
            Err(error) if error.is_invalid_grant() => {
                // Expired, revoked, or the password changed: the password still works.
                tracing::info!(%error, scope = %scope, "refresh token rejected; using the password grant");
            }
            other => return other,
        }
    }
    Actor::App(app).password(scope, username, password).await
}

/// Users' grants from the app registration when it has a credential.
fn users(app: Option<Client>) -> UserFlow {
    app.map_or(UserFlow::Unavailable, UserFlow::App)
}

/// How the app registration (or the agent blueprint) proves itself: the
/// certificate first, then a managed identity's token, then the secret.
fn credential(
    identity: &IdentityConfig,
    http: &reqwest::Client,
    clock: &Clock,
) -> Result<Option<Credential>, ConfigError> {
    if let Some(path) = &identity.client_certificate_path {
        return Ok(Some(Credential::Certificate(Arc::new(Certificate::load(
            path,
            clock.clone(),
        )?))));
    }
    if identity.agent_flow.is_agent_id()
        && identity.blueprint_credential == Some(BlueprintCredential::ManagedIdentity)
    {
        let managed = Arc::new(ManagedIdentity::new(
            identity.managed_identity_client_id.clone(),
            http.clone(),
            clock.clone(),
        )?);
        let source: client::AssertionSource = Arc::new(move || {
            let managed = managed.clone();
            Box::pin(async move { managed.acquire(TOKEN_EXCHANGE).await })
        });
        return Ok(Some(Credential::ManagedIdentity {
            source,
            held: Arc::new(Exchange::new(clock.clone())),
        }));
    }
    Ok(identity.client_secret.clone().map(|secret| {
        if identity.agent_flow.is_agent_id() {
            tracing::warn!("the agent blueprint proves itself with AZURE_CLIENT_SECRET: a development credential; use AZURE_CLIENT_CERTIFICATE_PATH or AGENT_BLUEPRINT_CREDENTIAL=managed_identity");
        }
        Credential::Secret(secret)
    }))
}
