//! `handler check`: tries a configuration before it is deployed. One line per
//! check on stdout (configuration, Redis, identity provider), nothing stored,
//! no secret printed; the exit status says whether every check passed.

use crate::clock::Clock;
use crate::config::{Config, StoreKind};
use crate::identity::{Identity, http_client};
use crate::metrics::Metrics;

/// Runs the checks, printing one line each; `Err` when any failed.
pub async fn run() -> Result<(), String> {
    let config = match Config::from_env().and_then(|c| c.check_agent_credentials().map(|_| c)) {
        Ok(config) => config,
        Err(error) => {
            println!("config: FAILED: {error}");
            return Err("the configuration is not valid".to_owned());
        }
    };
    let auth = match (config.api.auth.keys, config.api.auth.entra) {
        (false, false) => "none",
        (true, false) => "keys",
        (false, true) => "entra",
        (true, true) => "keys,entra",
    };
    println!(
        "config: ok (AGENT_TOKEN_FLOW={:?}, TOKEN_STORE={}, TOKEN_API_AUTH={auth})",
        config.identity.agent_flow,
        config.store.kind.as_str()
    );
    let mut failed = Vec::new();
    if !store(&config).await {
        failed.push("redis");
    }
    if !identity(&config).await {
        failed.push("identity");
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("failed: {}", failed.join(", "))),
    }
}

/// Reaches the store and says what it is.
async fn store(config: &Config) -> bool {
    if config.store.kind == StoreKind::Memory {
        println!("redis: skipped (TOKEN_STORE=memory)");
        return true;
    }
    let redis = &config.redis;
    let kind = format!(
        "{}{}",
        if redis.cluster {
            "cluster"
        } else {
            "single server"
        },
        if redis.tls { ", TLS" } else { ", no TLS" }
    );
    // The store alone: the whole app would build the identity a second time
    // (and warn twice about a retiring flow).
    let store = match crate::store::open(&config.store, redis, Clock::System) {
        Ok(store) => store,
        Err(error) => {
            println!("redis: FAILED: {error}");
            return false;
        }
    };
    // A wrong password, a TLS mismatch or an unknown CA are named; anything
    // else is the error as Redis gave it.
    let answer = match store.check_at_start().await {
        Ok(()) => store.ping().await.map_err(|e| e.to_string()),
        Err(why) => Err(why),
    };
    match answer {
        Ok(()) => {
            println!("redis: ok ({kind})");
            true
        }
        Err(why) => {
            println!("redis: FAILED ({kind}): {why}");
            false
        }
    }
}

/// Asks the identity provider for one token of the first warm scope, and
/// keeps nothing.
async fn identity(config: &Config) -> bool {
    let Some(scope) = config.refresh.warm_scopes.first() else {
        println!("identity: skipped (TOKEN_SCOPES names no scope to ask for)");
        return true;
    };
    let identity = http_client()
        .and_then(|http| Identity::from_config(config, http, Clock::System, Metrics::default()));
    let identity = match identity {
        Ok(identity) => identity,
        Err(error) => {
            println!("identity: FAILED: {error}");
            return false;
        }
    };
    match identity.acquire(scope, None).await {
        Ok(token) => {
            let left = token.expires_on - Clock::System.now();
            println!(
                "identity: ok ({} got a token for {scope}, valid {left} s)",
                identity.flow_name()
            );
            true
        }
        Err(error) => {
            println!(
                "identity: FAILED ({}, {scope}): {error}",
                identity.flow_name()
            );
            false
        }
    }
}
