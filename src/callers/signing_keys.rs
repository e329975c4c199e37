//! The tenant's token-signing keys (`{authority}/{tenant}/discovery/v2.0/keys`),
//! held by `kid`. Fetched when a token names a key not held, at most once a
//! minute (Entra publishes a new key well before signing with it), one fetch at
//! a time; when the endpoint fails the keys held keep working.

use crate::clock::Clock;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Seconds between fetches for unknown key ids.
const REFETCH_SECS: i64 = 60;
/// Seconds between attempts while no key was ever fetched (the endpoint was
/// down at start): callers need not wait a minute for the first keys.
const FIRST_FETCH_RETRY_SECS: i64 = 5;

pub(super) struct SigningKeys {
    url: String,
    http: reqwest::Client,
    clock: Clock,
    held: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// When the last fetch started; the lock makes fetches one at a time.
    last_fetch: tokio::sync::Mutex<Option<i64>>,
}

impl SigningKeys {
    pub(super) fn new(url: String, http: reqwest::Client, clock: Clock) -> Self {
        Self {
            url,
            http,
            clock,
            held: RwLock::default(),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    fn held(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    /// The key `kid`, fetching the keys again when it is not held and the last
    /// fetch is old enough.
    pub(super) async fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.held(kid) {
            return Some(key);
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Fetched by another request while this one waited.
        if let Some(key) = self.held(kid) {
            return Some(key);
        }
        let now = self.clock.now();
        let interval = match self
            .held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            true => FIRST_FETCH_RETRY_SECS,
            false => REFETCH_SECS,
        };
        if last_fetch.is_some_and(|last| now - last < interval) {
            return None;
        }
        *last_fetch = Some(now);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the tenant's token-signing keys");
                *self.held.write().unwrap_or_else(|p| p.into_inner()) = keys;
            }
            Err(error) => {
                tracing::warn!(%error, "could not fetch the tenant's token-signing keys; keeping the ones held");
            }
        }
        self.held(kid)
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set ({e})"))?;
        let keys: HashMap<_, _> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set holds no usable key".to_owned());
        }
        Ok(keys)
    }
}
