//! Turning one variable's text into a domain value, or one line naming it.

use super::{ConfigError, EncryptionKey, RawVars};
use crate::callers::{ApiKeyEntry, CallerEntry};
use crate::domain::Scope;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

pub(super) fn bad(var: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{var}: {why}"))
}

/// One of an enum's snake_case names; envy's own message would not name the variable.
pub(super) fn choice<T: serde::de::DeserializeOwned>(
    var: &str,
    value: Option<&str>,
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
pub(super) fn parse_authority(raw: Option<&str>) -> Result<reqwest::Url, ConfigError> {
    const VAR: &str = "AZURE_AUTHORITY_HOST";
    let url = reqwest::Url::parse(raw.unwrap_or(super::DEFAULT_AUTHORITY).trim())
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

pub(super) fn parse_scopes(list: &str) -> Result<Vec<Scope>, ConfigError> {
    let mut scopes = Vec::new();
    for item in list.split(';').filter(|s| !s.trim().is_empty()) {
        let scope = Scope::parse(item).map_err(|e| bad("TOKEN_SCOPES", e))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

pub(super) fn load_api_keys(
    inline: Option<&str>,
    file: Option<&str>,
) -> Result<Vec<ApiKeyEntry>, ConfigError> {
    let (var, json) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "TOKEN_API_KEYS_FILE",
                "set either TOKEN_API_KEYS or TOKEN_API_KEYS_FILE, not both",
            ));
        }
        (Some(json), None) => ("TOKEN_API_KEYS", json.to_owned()),
        (None, Some(path)) => (
            "TOKEN_API_KEYS_FILE",
            std::fs::read_to_string(path)
                .map_err(|e| bad("TOKEN_API_KEYS_FILE", format!("cannot read {path}: {e}")))?,
        ),
        (None, None) => return Ok(Vec::new()),
    };
    ApiKeyEntry::parse_list(&json).map_err(|why| bad(var, why))
}

pub(super) fn load_callers(
    inline: Option<&str>,
    file: Option<&str>,
) -> Result<Vec<CallerEntry>, ConfigError> {
    let (var, json) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "TOKEN_API_CALLERS_FILE",
                "set either TOKEN_API_CALLERS or TOKEN_API_CALLERS_FILE, not both",
            ));
        }
        (Some(json), None) => ("TOKEN_API_CALLERS", json.to_owned()),
        (None, Some(path)) => (
            "TOKEN_API_CALLERS_FILE",
            std::fs::read_to_string(path)
                .map_err(|e| bad("TOKEN_API_CALLERS_FILE", format!("cannot read {path}: {e}")))?,
        ),
        (None, None) => return Ok(Vec::new()),
    };
    CallerEntry::parse_list(&json).map_err(|why| bad(var, why))
}

pub(super) fn parse_encryption_key(value: &str) -> Result<EncryptionKey, ConfigError> {
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

/// Reads `REDIS_CA_CERT` at start so that a wrong path is one line, not a TLS
/// failure on first use.
pub(super) fn read_ca_cert(path: &str) -> Result<Vec<u8>, ConfigError> {
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

/// The server (or cluster seeds) from `REDIS_URL`, one URL or a comma-separated
/// list, else from the separate variables; with TLS applied. Also whether TLS is on.
pub(super) fn redis_nodes(
    raw: &RawVars,
    cluster: bool,
) -> Result<(Vec<ConnectionInfo>, bool), ConfigError> {
    let mut tls = raw.redis_ssl.unwrap_or(false);
    let nodes = match &raw.redis_url {
        Some(urls) => {
            let urls: Vec<&str> = urls
                .expose()
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect();
            if urls.is_empty() {
                return Err(bad("REDIS_URL", "names no server"));
            }
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
            urls.into_iter()
                .map(|url| {
                    // The URL may carry a password: name the variable, never echo the value.
                    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                        return Err(bad("REDIS_URL", "must start with redis:// or rediss://"));
                    }
                    url.into_connection_info()
                        .map_err(|_| bad("REDIS_URL", "is not a valid Redis URL"))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            let mut settings =
                redis::RedisConnectionInfo::default().set_db(raw.redis_db.unwrap_or(0));
            if let Some(user) = &raw.redis_username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &raw.redis_password {
                settings = settings.set_password(password.expose());
            }
            let host = raw.redis_host.clone().unwrap_or_else(|| "localhost".into());
            vec![
                ConnectionAddr::Tcp(host, raw.redis_port.unwrap_or(6379))
                    .into_connection_info()
                    .map_err(|e| bad("REDIS_HOST", e))?
                    .set_redis_settings(settings),
            ]
        }
    };
    let nodes = nodes
        .into_iter()
        .map(|info| match info.addr() {
            ConnectionAddr::Tcp(host, port) if tls => {
                let addr = ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                };
                info.set_addr(addr)
            }
            _ => info,
        })
        .collect();
    Ok((nodes, tls))
}
