//! Configuration from the environment (SPEC §3), read once at start.
//!
//! A bad value stops the program with one line naming the variable; secrets are
//! [`Secret`]s from the moment they are read, so `Debug` of the config is safe to log.

use crate::callers::ApiKeyEntry;
use crate::domain::Scope;
use crate::secret::Secret;
use serde::Deserialize;
use std::net::IpAddr;

/// One line naming the variable and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn bad(var: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{var}: {why}"))
}

/// How agent tokens are acquired (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentFlow {
    Password,
    ClientCredentials,
    ManagedIdentity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Redis,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Keys,
    None,
}

/// Where Redis is and how to log in.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `REDIS_SSL`, or a `rediss://` URL.
    pub tls: bool,
    /// PEM certificates of the CA that signed the server's certificate
    /// (`REDIS_CA_CERT`, a file), trusted instead of the system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// `REDIS_CLUSTER`: the nodes given are seeds of a Redis Cluster.
    pub cluster: bool,
}

/// The variables exactly as envy reads them; [`Config::from_vars`] turns them into
/// domain values.
#[derive(Deserialize)]
struct RawVars {
    azure_tenant_id: Option<String>,
    azure_client_id: Option<String>,
    azure_client_secret: Option<Secret>,
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
    token_encryption_key: Option<Secret>,
    bind: Option<IpAddr>,
    port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub agent_user_name: Option<String>,
    pub agent_password: Option<Secret>,
    pub agent_flow: AgentFlow,
    /// `{authority}/{tenant}/oauth2/v2.0/token` is the token endpoint.
    pub authority_host: reqwest::Url,
    /// Warm scopes: acquired at start and always kept fresh.
    pub scopes: Vec<Scope>,
    pub on_demand: bool,
    pub refresh_before_secs: u64,
    pub min_validity_secs: u64,
    pub refresh_interval_secs: u64,
    pub refresh_concurrency: usize,
    /// An on-demand token nobody read for this long stops being refreshed.
    pub idle_secs: u64,
    /// First retry delay after a failed token request; doubles per failure.
    pub backoff_base_secs: u64,
    /// Forced refreshes allowed per API key and token per minute.
    pub refresh_rate_per_min: u32,
    /// Also append audit events to the capped stream `{ns}tokens:audit`.
    pub audit_stream: bool,
    pub redis: RedisSettings,
    /// `REDIS_URL` when given; it overrides host, port, database and login of
    /// [`Config::redis`]. With `REDIS_CLUSTER`, a comma-separated list of seed nodes.
    pub redis_url: Option<Secret>,
    pub namespace: String,
    pub store: StoreKind,
    pub auth: AuthMode,
    pub api_keys: Vec<ApiKeyEntry>,
    /// AES-256 key for refresh tokens at rest.
    pub encryption_key: Option<EncryptionKey>,
    pub bind: IpAddr,
    pub port: u16,
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
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawVars) -> Result<Self, ConfigError> {
        let agent_flow = match choice("AGENT_TOKEN_FLOW", raw.agent_token_flow)? {
            Some(flow) => flow,
            None if raw.agent_user_name.is_some() => AgentFlow::Password,
            None if raw.azure_client_secret.is_some() => AgentFlow::ClientCredentials,
            None => AgentFlow::ManagedIdentity,
        };
        let authority_host = parse_authority(raw.azure_authority_host.as_deref())?;
        let scopes = match raw.token_scopes.as_deref() {
            Some(list) => parse_scopes(list)?,
            None => vec![Scope::parse(DEFAULT_SCOPE).map_err(|e| bad("TOKEN_SCOPES", e))?],
        };
        let refresh_concurrency = raw.token_refresh_concurrency.unwrap_or(16);
        if refresh_concurrency == 0 {
            return Err(bad("TOKEN_REFRESH_CONCURRENCY", "must be at least 1"));
        }
        let refresh_interval_secs = raw.token_refresh_interval_secs.unwrap_or(300);
        if refresh_interval_secs == 0 {
            return Err(bad("TOKEN_REFRESH_INTERVAL_SECS", "must be at least 1"));
        }
        let cluster = raw.redis_cluster.unwrap_or(false);
        let mut tls = raw.redis_ssl.unwrap_or(false);
        if let Some(urls) = &raw.redis_url {
            let urls = split_urls(urls.expose());
            if urls.len() > 1 && !cluster {
                return Err(bad(
                    "REDIS_URL",
                    "holds several URLs; that is for REDIS_CLUSTER=true only",
                ));
            }
            let secure = urls.iter().filter(|u| u.starts_with("rediss://")).count();
            if secure != 0 && secure != urls.len() {
                return Err(bad("REDIS_URL", "mixes redis:// and rediss:// URLs"));
            }
            tls |= secure != 0;
            for url in urls {
                // The URL may carry a password: name the variable, never echo the value.
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(bad("REDIS_URL", "must start with redis:// or rediss://"));
                }
                redis::IntoConnectionInfo::into_connection_info(url)
                    .map_err(|_| bad("REDIS_URL", "is not a valid Redis URL"))?;
            }
        }
        let ca_cert = raw.redis_ca_cert.as_deref().map(read_ca_cert).transpose()?;
        if ca_cert.is_some() && !tls {
            return Err(bad(
                "REDIS_CA_CERT",
                "is set but TLS is off: set REDIS_SSL=true or use a rediss:// URL",
            ));
        }
        let encryption_key = raw
            .token_encryption_key
            .as_ref()
            .map(|key| parse_encryption_key(key.expose()))
            .transpose()?;
        let api_keys = load_api_keys(raw.token_api_keys, raw.token_api_keys_file)?;
        let namespace = raw.redis_namespace.unwrap_or_else(|| "annika:".to_owned());
        if namespace
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad(
                "REDIS_NAMESPACE",
                "must not contain whitespace or control characters",
            ));
        }
        Ok(Self {
            tenant_id: raw.azure_tenant_id.unwrap_or_default(),
            client_id: raw.azure_client_id.unwrap_or_default(),
            client_secret: raw.azure_client_secret,
            agent_user_name: raw.agent_user_name,
            agent_password: raw.agent_password,
            agent_flow,
            authority_host,
            scopes,
            on_demand: raw.token_on_demand.unwrap_or(true),
            refresh_before_secs: raw.token_refresh_before_secs.unwrap_or(900),
            min_validity_secs: raw.token_min_validity_secs.unwrap_or(300),
            refresh_interval_secs,
            refresh_concurrency,
            idle_secs: raw.token_idle_secs.unwrap_or(86_400),
            backoff_base_secs: raw.token_refresh_backoff_secs.unwrap_or(5).max(1),
            refresh_rate_per_min: raw.token_refresh_rate_per_min.unwrap_or(10),
            audit_stream: raw.token_audit_stream.unwrap_or(false),
            redis: RedisSettings {
                host: raw.redis_host.unwrap_or_else(|| "localhost".to_owned()),
                port: raw.redis_port.unwrap_or(6379),
                db: raw.redis_db.unwrap_or(0),
                username: raw.redis_username,
                password: raw.redis_password,
                tls,
                ca_cert,
                cluster,
            },
            redis_url: raw.redis_url,
            namespace,
            store: choice("TOKEN_STORE", raw.token_store)?.unwrap_or(StoreKind::Redis),
            auth: choice("TOKEN_API_AUTH", raw.token_api_auth)?.unwrap_or(AuthMode::Keys),
            api_keys,
            encryption_key,
            bind: raw.bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: raw.port.unwrap_or(7071),
        })
    }

    /// The v2.0 token endpoint of the configured tenant.
    pub fn token_endpoint(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host.as_str().trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// The Redis host when it is not on this machine and TLS is off, for the
    /// start-up warning.
    pub fn redis_host_without_tls(&self) -> Option<String> {
        if self.redis.tls {
            return None;
        }
        let host = match self
            .redis_url
            .as_ref()
            .and_then(|u| split_urls(u.expose()).first().copied())
        {
            Some(url) => reqwest::Url::parse(url).ok()?.host_str()?.to_owned(),
            None => self.redis.host.clone(),
        };
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then_some(host)
    }

    /// Whether the identity credentials the chosen flow needs are all present.
    pub fn check_agent_credentials(&self) -> Result<(), ConfigError> {
        let need = |present: bool, var: &str| {
            if present {
                Ok(())
            } else {
                Err(bad(
                    var,
                    format!("is required by AGENT_TOKEN_FLOW={:?}", self.agent_flow),
                ))
            }
        };
        match self.agent_flow {
            AgentFlow::Password => {
                need(!self.tenant_id.is_empty(), "AZURE_TENANT_ID")?;
                need(!self.client_id.is_empty(), "AZURE_CLIENT_ID")?;
                need(self.agent_user_name.is_some(), "AGENT_USER_NAME")?;
                need(self.agent_password.is_some(), "AGENT_PASSWORD")
            }
            AgentFlow::ClientCredentials => {
                need(!self.tenant_id.is_empty(), "AZURE_TENANT_ID")?;
                need(!self.client_id.is_empty(), "AZURE_CLIENT_ID")?;
                need(self.client_secret.is_some(), "AZURE_CLIENT_SECRET")
            }
            AgentFlow::ManagedIdentity => match self.scopes.iter().find(|s| s.is_several()) {
                Some(scope) => Err(bad(
                    "TOKEN_SCOPES",
                    format!(
                        "{scope:?} has several scopes in one token, which a managed identity cannot get (one resource per token)"
                    ),
                )),
                None => Ok(()),
            },
        }
    }
}

/// The 32 bytes of `TOKEN_ENCRYPTION_KEY`; `Debug` redacts them.
#[derive(Clone)]
pub struct EncryptionKey(pub [u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

fn parse_encryption_key(value: &str) -> Result<EncryptionKey, ConfigError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| {
            bad(
                "TOKEN_ENCRYPTION_KEY",
                "is not base64 (make one with: openssl rand -base64 32)",
            )
        })?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| {
        bad(
            "TOKEN_ENCRYPTION_KEY",
            "must be base64 of exactly 32 bytes (openssl rand -base64 32)",
        )
    })?;
    Ok(EncryptionKey(key))
}

/// One of an enum's snake_case names; envy's own message would not name the variable.
fn choice<T: serde::de::DeserializeOwned>(
    var: &str,
    value: Option<String>,
) -> Result<Option<T>, ConfigError> {
    value
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.trim().to_ascii_lowercase()))
                .map_err(|e| bad(var, e))
        })
        .transpose()
}

/// `http://` is allowed only for loopback issuers (tests, local development):
/// anything else would send client secrets and passwords in the clear.
fn parse_authority(raw: Option<&str>) -> Result<reqwest::Url, ConfigError> {
    const VAR: &str = "AZURE_AUTHORITY_HOST";
    let url = reqwest::Url::parse(raw.unwrap_or(DEFAULT_AUTHORITY).trim())
        .map_err(|e| bad(VAR, format!("is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(bad(
                VAR,
                "http:// is accepted only for loopback hosts; use https://",
            ));
        }
        other => return Err(bad(VAR, format!("unsupported scheme {other}://"))),
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            VAR,
            "must be a scheme and host, like https://login.microsoftonline.com",
        ));
    }
    Ok(url)
}

pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn parse_scopes(list: &str) -> Result<Vec<Scope>, ConfigError> {
    let mut scopes = Vec::new();
    for item in list.split(';').filter(|s| !s.trim().is_empty()) {
        let scope = Scope::parse(item).map_err(|e| bad("TOKEN_SCOPES", e))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

fn load_api_keys(
    inline: Option<String>,
    file: Option<String>,
) -> Result<Vec<ApiKeyEntry>, ConfigError> {
    let (var, json) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "TOKEN_API_KEYS_FILE",
                "set either TOKEN_API_KEYS or TOKEN_API_KEYS_FILE, not both",
            ));
        }
        (Some(json), None) => ("TOKEN_API_KEYS", json),
        (None, Some(path)) => (
            "TOKEN_API_KEYS_FILE",
            std::fs::read_to_string(&path)
                .map_err(|e| bad("TOKEN_API_KEYS_FILE", format!("cannot read {path}: {e}")))?,
        ),
        (None, None) => return Ok(Vec::new()),
    };
    ApiKeyEntry::parse_list(&json).map_err(|why| bad(var, why))
}

/// The URLs of `REDIS_URL`: one, or a comma-separated list of cluster seeds.
pub fn split_urls(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Reads `REDIS_CA_CERT` at start so that a wrong path is one line, not a TLS
/// failure on first use.
fn read_ca_cert(path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| bad("REDIS_CA_CERT", format!("cannot read {path}: {e}")))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "REDIS_CA_CERT",
            format!("{path} holds no PEM certificate"),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        Config::from_vars(vars(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn a_managed_identity_cannot_keep_a_multi_scope_token_warm() {
        let config = |scopes: &str| Config::from_vars(vars(&[("TOKEN_SCOPES", scopes)])).unwrap();
        let error = config("User.Read Mail.Read;https://graph.microsoft.com/.default")
            .check_agent_credentials()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("TOKEN_SCOPES: ") && error.contains("one resource per token"),
            "{error}"
        );
        config("https://graph.microsoft.com/.default;https://vault.azure.net/.default")
            .check_agent_credentials()
            .unwrap();
    }

    #[test]
    fn defaults_follow_the_spec() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.agent_flow, AgentFlow::ManagedIdentity);
        assert_eq!(
            config.authority_host.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert_eq!(config.scopes, vec![Scope::parse(DEFAULT_SCOPE).unwrap()]);
        assert!(config.on_demand);
        assert_eq!(
            (
                config.refresh_before_secs,
                config.min_validity_secs,
                config.refresh_interval_secs
            ),
            (900, 300, 300)
        );
        assert_eq!(config.refresh_concurrency, 16);
        assert_eq!(
            (
                config.redis.host.as_str(),
                config.redis.port,
                config.redis.db
            ),
            ("localhost", 6379, 0)
        );
        assert_eq!(config.namespace, "annika:");
        assert_eq!(config.store, StoreKind::Redis);
        assert_eq!(config.auth, AuthMode::Keys);
        assert_eq!(config.port, 7071);
    }

    #[test]
    fn flow_is_inferred_from_the_credentials_present() {
        let c = Config::from_vars(vars(&[
            ("AGENT_USER_NAME", "a@b"),
            ("AZURE_CLIENT_SECRET", "s"),
        ]))
        .unwrap();
        assert_eq!(c.agent_flow, AgentFlow::Password);
        let c = Config::from_vars(vars(&[("AZURE_CLIENT_SECRET", "s")])).unwrap();
        assert_eq!(c.agent_flow, AgentFlow::ClientCredentials);
    }

    #[test]
    fn bad_values_name_their_variable_on_one_line() {
        for (pairs, var) in [
            (
                vec![("TOKEN_REFRESH_BEFORE_SECS", "soon")],
                "TOKEN_REFRESH_BEFORE_SECS",
            ),
            (vec![("AGENT_TOKEN_FLOW", "magic")], "AGENT_TOKEN_FLOW"),
            (
                vec![("AZURE_AUTHORITY_HOST", "http://login.example.com")],
                "AZURE_AUTHORITY_HOST",
            ),
            (vec![("TOKEN_API_AUTH", "maybe")], "TOKEN_API_AUTH"),
            (
                vec![("TOKEN_REFRESH_CONCURRENCY", "0")],
                "TOKEN_REFRESH_CONCURRENCY",
            ),
            (vec![("TOKEN_API_KEYS", "[{]")], "TOKEN_API_KEYS"),
            (vec![("REDIS_URL", "http://x")], "REDIS_URL"),
            (vec![("TOKEN_SCOPES", "ok;bad\u{1}scope")], "TOKEN_SCOPES"),
            (
                vec![("TOKEN_ENCRYPTION_KEY", "c2hvcnQ=")],
                "TOKEN_ENCRYPTION_KEY",
            ),
            (
                vec![("TOKEN_ENCRYPTION_KEY", "not base64!")],
                "TOKEN_ENCRYPTION_KEY",
            ),
        ] {
            let message = error_of(&pairs);
            assert!(message.contains(var), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn loopback_issuers_may_use_http() {
        for host in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            let c = Config::from_vars(vars(&[
                ("AZURE_AUTHORITY_HOST", host),
                ("AZURE_TENANT_ID", "t"),
            ]))
            .unwrap();
            assert!(
                c.token_endpoint().ends_with("/t/oauth2/v2.0/token"),
                "{}",
                c.token_endpoint()
            );
        }
    }

    #[test]
    fn redis_url_errors_never_echo_the_password() {
        let message = error_of(&[("REDIS_URL", "http://:hunter2@host")]);
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn redis_tls_and_cluster_settings_are_checked_at_start() {
        let message = error_of(&[("REDIS_SSL", "true"), ("REDIS_CA_CERT", "/no/such/ca.pem")]);
        assert!(
            message.contains("REDIS_CA_CERT: cannot read /no/such/ca.pem"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        let message = error_of(&[("REDIS_SSL", "true"), ("REDIS_CA_CERT", "/etc/hostname")]);
        assert!(message.contains("holds no PEM certificate"), "{message}");
        let pem = std::env::temp_dir().join(format!("tb-ca-{}.pem", std::process::id()));
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let message = error_of(&[("REDIS_CA_CERT", pem.to_str().unwrap())]);
        let _ = std::fs::remove_file(&pem);
        assert!(message.contains("TLS is off"), "{message}");
        let message = error_of(&[("REDIS_URL", "redis://a:6379,redis://b:6379")]);
        assert!(message.contains("REDIS_CLUSTER=true only"), "{message}");
        let message = error_of(&[
            ("REDIS_CLUSTER", "true"),
            ("REDIS_URL", "rediss://a:6380,redis://b:6379"),
        ]);
        assert!(message.contains("mixes"), "{message}");
        let c = Config::from_vars(vars(&[
            ("REDIS_CLUSTER", "true"),
            ("REDIS_URL", "rediss://:pw@a:6380, rediss://:pw@b:6380"),
        ]))
        .unwrap();
        assert!(c.redis.tls && c.redis.cluster);
        assert_eq!(c.redis_host_without_tls(), None);
    }

    #[test]
    fn debug_of_config_redacts_secrets() {
        let c = Config::from_vars(vars(&[
            ("AZURE_CLIENT_SECRET", "client-secret-value"),
            ("AGENT_PASSWORD", "agent-password-value"),
            ("REDIS_PASSWORD", "redis-password-value"),
            (
                "TOKEN_ENCRYPTION_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ]))
        .unwrap();
        assert_eq!(c.encryption_key.as_ref().unwrap().0[31], 31);
        let debug = format!("{c:?}");
        for secret in [
            "client-secret-value",
            "agent-password-value",
            "redis-password-value",
            "AAECAwQF",
            "29, 30",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn empty_values_mean_unset() {
        let c = Config::from_vars(vars(&[
            ("TOKEN_REFRESH_BEFORE_SECS", ""),
            ("REDIS_PORT", " "),
        ]))
        .unwrap();
        assert_eq!((c.refresh_before_secs, c.redis.port), (900, 6379));
    }
}
