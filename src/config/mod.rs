//! Configuration from the environment (SPEC §3), read once at start into typed
//! sections: who the service is to the identity provider, where Redis is, how
//! tokens are refreshed, and how the API is served.
//!
//! A bad value stops the program with one line naming the variable; secrets are
//! [`Secret`]s from the moment they are read, so `Debug` of the config is safe to log.

mod checks;
mod parse;
#[cfg(test)]
mod tests;

use self::checks::entra_callers;
use self::parse::{
    bad, choice, load_api_keys, parse_authority, parse_encryption_key, parse_scopes, read_ca_cert,
    redis_nodes,
};
pub use crate::callers::AuthMethods;
use crate::callers::{ApiKeyEntry, EntraSettings};
use crate::domain::Scope;
use crate::secret::Secret;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

pub use self::parse::is_loopback;

/// One line naming the variable and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// How agent tokens are acquired (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentFlow {
    /// The seed's resource-owner password grant (retiring).
    Password,
    ClientCredentials,
    ManagedIdentity,
    /// Entra Agent ID: app-only tokens of the agent identity.
    AgentIdentity,
    /// Entra Agent ID: delegated tokens of the agent user.
    AgentUser,
}

impl AgentFlow {
    pub fn is_agent_id(self) -> bool {
        matches!(self, Self::AgentIdentity | Self::AgentUser)
    }
}

/// `AGENT_BLUEPRINT_CREDENTIAL`: proofs of a blueprint other than a certificate
/// or a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlueprintCredential {
    /// A managed identity's token for `api://AzureADTokenExchange`, as a
    /// federated identity credential of the blueprint.
    ManagedIdentity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Redis,
    Memory,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub identity: IdentityConfig,
    pub refresh: RefreshConfig,
    pub store: StoreConfig,
    pub redis: RedisConfig,
    pub api: ApiConfig,
}

/// The app registration and the agent's credentials.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub agent_user_name: Option<String>,
    pub agent_password: Option<Secret>,
    pub agent_flow: AgentFlow,
    /// `{authority}/{tenant}/oauth2/v2.0/token` is the token endpoint.
    pub authority_host: reqwest::Url,
    /// `AZURE_CLIENT_CERTIFICATE_PATH`: a PEM with the private key and the
    /// certificate, for the app registration or the agent blueprint.
    pub client_certificate_path: Option<String>,
    /// `AGENT_BLUEPRINT_CLIENT_ID` (default `AZURE_CLIENT_ID`).
    pub blueprint_client_id: String,
    pub blueprint_credential: Option<BlueprintCredential>,
    /// `AZURE_MANAGED_IDENTITY_CLIENT_ID`: the user-assigned identity whose token
    /// is the blueprint's federated credential.
    pub managed_identity_client_id: Option<String>,
    /// `AGENT_IDENTITY_ID`: the agent identity's client id.
    pub agent_identity_id: Option<String>,
    /// `AGENT_USER_ID`: the agent user's object id.
    pub agent_user_id: Option<String>,
}

/// Which tokens are kept fresh, and when.
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// `TOKEN_SCOPES`: acquired at start and by every sweep when missing, never idle.
    pub warm_scopes: Vec<Scope>,
    pub on_demand: bool,
    pub refresh_before_secs: u64,
    pub min_validity_secs: u64,
    /// The internal timer's period (standalone and dev).
    pub interval: Duration,
    /// Refreshes in flight at once in one sweep.
    pub concurrency: usize,
    /// An on-demand token nobody read for this long stops being refreshed.
    pub idle_secs: u64,
    /// First retry delay after a failed token request; doubles per failure.
    pub backoff_base: Duration,
}

/// Where tokens are kept.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// `REDIS_NAMESPACE`: the prefix of every key.
    pub namespace: String,
    /// AES-256 key for refresh tokens at rest.
    pub encryption_key: Option<EncryptionKey>,
}

/// Where Redis is and how to reach it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server, or the cluster's seed nodes: from `REDIS_URL` when given, else
    /// from `REDIS_HOST`/`PORT`/`DB`/`USERNAME`/`PASSWORD`; TLS applied. The
    /// crate's `Debug` redacts the password.
    pub nodes: Vec<redis::ConnectionInfo>,
    /// `REDIS_SSL`, or `rediss://` URLs.
    pub tls: bool,
    /// PEM certificates of the CA that signed the server's certificate
    /// (`REDIS_CA_CERT`, a file), trusted instead of the system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// `REDIS_CLUSTER`: the nodes are seeds of a Redis Cluster.
    pub cluster: bool,
}

/// Who may call, and where the API listens.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub auth: AuthMethods,
    pub api_keys: Vec<ApiKeyEntry>,
    /// Set when `TOKEN_API_AUTH` names `entra`.
    pub entra: Option<EntraSettings>,
    /// Forced refreshes allowed per API key and token per minute (0: unlimited).
    pub refresh_rate_per_min: u32,
    /// Also append audit events to the capped stream `{ns}tokens:audit`.
    pub audit_stream: bool,
    pub bind: IpAddr,
    pub port: u16,
}

/// The variables exactly as envy reads them; [`Config::from_vars`] turns them into
/// domain values.
#[derive(Deserialize)]
struct RawVars {
    azure_tenant_id: Option<String>,
    azure_client_id: Option<String>,
    azure_client_secret: Option<Secret>,
    azure_client_certificate_path: Option<String>,
    agent_blueprint_client_id: Option<String>,
    agent_blueprint_credential: Option<String>,
    azure_managed_identity_client_id: Option<String>,
    agent_identity_id: Option<String>,
    agent_user_id: Option<String>,
    agent_user_name: Option<String>,
    agent_password: Option<Secret>,
    agent_token_flow: Option<String>,
    azure_authority_host: Option<String>,
    token_scopes: Option<String>,
    token_on_demand: Option<bool>,
    token_refresh_before_secs: Option<u64>,
    token_min_validity_secs: Option<u64>,
    token_refresh_interval_secs: Option<u64>,
    token_refresh_concurrency: Option<usize>,
    token_idle_secs: Option<u64>,
    token_refresh_backoff_secs: Option<u64>,
    token_refresh_rate_per_min: Option<u32>,
    token_audit_stream: Option<bool>,
    redis_host: Option<String>,
    redis_port: Option<u16>,
    redis_db: Option<i64>,
    redis_password: Option<Secret>,
    redis_username: Option<String>,
    redis_ssl: Option<bool>,
    redis_ca_cert: Option<String>,
    redis_cluster: Option<bool>,
    redis_url: Option<Secret>,
    redis_namespace: Option<String>,
    token_store: Option<String>,
    token_api_auth: Option<String>,
    token_api_keys: Option<String>,
    token_api_keys_file: Option<String>,
    token_api_audience: Option<String>,
    token_api_callers: Option<String>,
    token_api_callers_file: Option<String>,
    token_encryption_key: Option<Secret>,
    bind: Option<IpAddr>,
    port: Option<u16>,
}

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Tests build configs from a list of pairs instead of the process environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // App settings are often present but empty; envy would refuse "" for a number,
        // so an empty value means "not set", as it does in the portal.
        let vars = vars.into_iter().filter(|(_, v)| !v.trim().is_empty());
        let raw: RawVars = envy::from_iter(vars).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Self {
            identity: identity(&raw)?,
            refresh: refresh(&raw)?,
            store: store(&raw)?,
            redis: redis(&raw)?,
            api: api(&raw)?,
        })
    }
}

impl IdentityConfig {
    /// The v2.0 token endpoint of the configured tenant.
    pub fn token_endpoint(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host.as_str().trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// Whether the app registration can act as a confidential client (per-user
    /// grants need its secret or certificate).
    pub fn is_confidential(&self) -> bool {
        !self.tenant_id.is_empty()
            && !self.client_id.is_empty()
            && (self.client_secret.is_some() || self.client_certificate_path.is_some())
    }
}

impl RedisConfig {
    /// The Redis host when it is not on this machine and TLS is off, for the
    /// start-up warning.
    pub fn remote_host_without_tls(&self) -> Option<String> {
        if self.tls {
            return None;
        }
        let host = match self.nodes.first()?.addr() {
            redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
                host.clone()
            }
            _ => return None,
        };
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then_some(host)
    }
}

fn identity(raw: &RawVars) -> Result<IdentityConfig, ConfigError> {
    let agent_user = raw.agent_user_id.is_some() || raw.agent_user_name.is_some();
    let agent_flow = match choice("AGENT_TOKEN_FLOW", raw.agent_token_flow.as_deref())? {
        Some(flow) => flow,
        None if raw.agent_identity_id.is_some() && agent_user => AgentFlow::AgentUser,
        None if raw.agent_identity_id.is_some() => AgentFlow::AgentIdentity,
        None if raw.agent_user_name.is_some() && raw.agent_password.is_some() => {
            AgentFlow::Password
        }
        None if raw.azure_client_secret.is_some()
            || raw.azure_client_certificate_path.is_some() =>
        {
            AgentFlow::ClientCredentials
        }
        None => AgentFlow::ManagedIdentity,
    };
    let client_id = raw.azure_client_id.clone().unwrap_or_default();
    Ok(IdentityConfig {
        tenant_id: raw.azure_tenant_id.clone().unwrap_or_default(),
        blueprint_client_id: raw
            .agent_blueprint_client_id
            .clone()
            .unwrap_or_else(|| client_id.clone()),
        client_id,
        client_secret: raw.azure_client_secret.clone(),
        agent_user_name: raw.agent_user_name.clone(),
        agent_password: raw.agent_password.clone(),
        agent_flow,
        authority_host: parse_authority(raw.azure_authority_host.as_deref())?,
        client_certificate_path: raw.azure_client_certificate_path.clone(),
        blueprint_credential: choice(
            "AGENT_BLUEPRINT_CREDENTIAL",
            raw.agent_blueprint_credential.as_deref(),
        )?,
        managed_identity_client_id: raw.azure_managed_identity_client_id.clone(),
        agent_identity_id: raw.agent_identity_id.clone(),
        agent_user_id: raw.agent_user_id.clone(),
    })
}

fn refresh(raw: &RawVars) -> Result<RefreshConfig, ConfigError> {
    let warm_scopes = match raw.token_scopes.as_deref() {
        Some(list) => parse_scopes(list)?,
        None => vec![Scope::parse(DEFAULT_SCOPE).map_err(|e| bad("TOKEN_SCOPES", e))?],
    };
    let concurrency = raw.token_refresh_concurrency.unwrap_or(16);
    if concurrency == 0 {
        return Err(bad("TOKEN_REFRESH_CONCURRENCY", "must be at least 1"));
    }
    let interval_secs = raw.token_refresh_interval_secs.unwrap_or(300);
    if interval_secs == 0 {
        return Err(bad("TOKEN_REFRESH_INTERVAL_SECS", "must be at least 1"));
    }
    Ok(RefreshConfig {
        warm_scopes,
        on_demand: raw.token_on_demand.unwrap_or(true),
        refresh_before_secs: raw.token_refresh_before_secs.unwrap_or(900),
        min_validity_secs: raw.token_min_validity_secs.unwrap_or(300),
        interval: Duration::from_secs(interval_secs),
        concurrency,
        idle_secs: raw.token_idle_secs.unwrap_or(86_400),
        backoff_base: Duration::from_secs(raw.token_refresh_backoff_secs.unwrap_or(5).max(1)),
    })
}

fn store(raw: &RawVars) -> Result<StoreConfig, ConfigError> {
    let namespace = raw
        .redis_namespace
        .clone()
        .unwrap_or_else(|| "annika:".to_owned());
    if namespace
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad(
            "REDIS_NAMESPACE",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(StoreConfig {
        kind: choice("TOKEN_STORE", raw.token_store.as_deref())?.unwrap_or(StoreKind::Redis),
        namespace,
        encryption_key: raw
            .token_encryption_key
            .as_ref()
            .map(|key| parse_encryption_key(key.expose()))
            .transpose()?,
    })
}

fn redis(raw: &RawVars) -> Result<RedisConfig, ConfigError> {
    let cluster = raw.redis_cluster.unwrap_or(false);
    let (nodes, tls) = redis_nodes(raw, cluster)?;
    let ca_cert = raw.redis_ca_cert.as_deref().map(read_ca_cert).transpose()?;
    if ca_cert.is_some() && !tls {
        return Err(bad(
            "REDIS_CA_CERT",
            "is set but TLS is off: set REDIS_SSL=true or use a rediss:// URL",
        ));
    }
    Ok(RedisConfig {
        nodes,
        tls,
        ca_cert,
        cluster,
    })
}

fn api(raw: &RawVars) -> Result<ApiConfig, ConfigError> {
    let auth = match raw.token_api_auth.as_deref() {
        Some(value) => AuthMethods::parse(value).map_err(|why| bad("TOKEN_API_AUTH", why))?,
        None => AuthMethods::KEYS,
    };
    Ok(ApiConfig {
        auth,
        api_keys: load_api_keys(
            raw.token_api_keys.as_deref(),
            raw.token_api_keys_file.as_deref(),
        )?,
        entra: if auth.entra {
            Some(entra_callers(raw)?)
        } else {
            None
        },
        refresh_rate_per_min: raw.token_refresh_rate_per_min.unwrap_or(10),
        audit_stream: raw.token_audit_stream.unwrap_or(false),
        bind: raw.bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        port: raw.port.unwrap_or(7071),
    })
}

/// The 32 bytes of `TOKEN_ENCRYPTION_KEY`; `Debug` redacts them.
#[derive(Clone)]
pub struct EncryptionKey(pub [u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}
