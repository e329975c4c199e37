//! The tenant's token-signing keys (`{authority}/{tenant}/discovery/v2.0/keys`),
//! held by `kid`. Fetched when a token names a key not held, at most once a
//! minute (Entra publishes a new key well before signing with it), one fetch at
//! a time, and again once a day so a key the tenant withdrew stops counting;
//! when the endpoint fails the keys held keep working. A fetch that withdraws a
//! key moves the [`SigningKeys::generation`], and verdicts reached under an
//! older generation are made again.

use crate::clock::Clock;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Seconds between fetches for unknown key ids.
const REFETCH_SECS: i64 = 60;
/// Seconds between attempts while no key was ever fetched (the endpoint was
/// down at start): callers need not wait a minute for the first keys.
const FIRST_FETCH_RETRY_SECS: i64 = 5;
/// Seconds after which the keys held are fetched again even if every token
/// names a known key.
const DAILY_SECS: i64 = 86_400;

pub(super) struct SigningKeys {
    url: String,
    http: reqwest::Client,
    clock: Clock,
    held: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// When the last fetch started; the lock makes fetches one at a time.
    last_fetch: tokio::sync::Mutex<Option<i64>>,
    /// When the keys held were fetched (0: never).
    fetched_at: AtomicI64,
    generation: AtomicU64,
}

impl SigningKeys {
    pub(super) fn new(url: String, http: reqwest::Client, clock: Clock) -> Self {
        Self {
            url,
            http,
            clock,
            held: RwLock::default(),
            last_fetch: tokio::sync::Mutex::new(None),
            fetched_at: AtomicI64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    fn held(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    /// Moves whenever a fetch withdraws a key held before.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key `kid`, fetching the keys again when it is not held and the last
    /// fetch is old enough, or when the keys held are a day old.
    pub(super) async fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.held(kid) {
            let stale = self.clock.now() - self.fetched_at.load(Ordering::Acquire) > DAILY_SECS;
            // One request does the daily fetch; the others go on with the key held.
            if stale && let Ok(mut last_fetch) = self.last_fetch.try_lock() {
                *last_fetch = Some(self.clock.now());
                self.fetch_and_hold().await;
                return self.held(kid);
            }
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
        self.fetch_and_hold().await;
        self.held(kid)
    }

    /// Fetches the keys and holds them in place of the ones held; on failure
    /// keeps those.
    async fn fetch_and_hold(&self) {
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the tenant's token-signing keys");
                let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
                if held.keys().any(|kid| !keys.contains_key(kid)) {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                *held = keys;
                self.fetched_at.store(self.clock.now(), Ordering::Release);
            }
            Err(error) => {
                tracing::warn!(%error, "could not fetch the tenant's token-signing keys; keeping the ones held");
            }
        }
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
