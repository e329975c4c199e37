//! The service's state: one cheap-to-clone handle on its peers, each owning one
//! concern, built once from the configuration. `startup` runs the tasks on it.

use crate::audit::Audit;
use crate::cache::TokenCache;
use crate::callers::Callers;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::refresh::{Peers, TokenService};
use crate::store::{self, SharedStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Entries and bytes of served bodies the cache holds at most: a few thousand
/// scopes and users fit; every entry is one serialized token (a few KB).
const CACHE_ENTRIES: usize = 10_000;
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    /// Every way a token changes: reads that need one, forced refreshes, deletes,
    /// users' grants, the sweep.
    pub tokens: TokenService,
    /// Where tokens live: Redis in the shared layout, or in process.
    pub store: SharedStore,
    /// Served tokens in front of a shared store; `None` for the in-process one.
    pub cache: Option<Arc<TokenCache>>,
    /// Who may call, and what each caller may read.
    pub callers: Callers,
    pub audit: Audit,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Forced refreshes allowed per API key and token per minute (0: unlimited).
    pub refresh_rate_per_min: u32,
    /// The internal timer's period; `None` when the host's timer trigger sweeps.
    pub timer: Option<Duration>,
    /// When the last sweep the timer task finished had started (clock ms; the
    /// one at start included): tests on a manual clock wait for the sweep that
    /// starts at the time they moved it to, not for one that was already running.
    pub sweeps: watch::Sender<Option<i64>>,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// Where tokens come from.
pub enum Issuer {
    /// The configured Entra flow.
    Entra,
    /// `handler dev`: the in-process development issuer, tokens valid this long.
    Dev { lifetime_secs: u64 },
}

/// How the service is put together beyond its configuration.
pub struct Setup {
    pub issuer: Issuer,
    /// Sweep every `TOKEN_REFRESH_INTERVAL_SECS` (standalone); without it only
    /// at start and when the host's timer trigger calls.
    pub internal_timer: bool,
    pub clock: Clock,
}

impl Setup {
    /// Standalone against Entra, on the system clock.
    pub fn standalone() -> Self {
        Self {
            issuer: Issuer::Entra,
            internal_timer: true,
            clock: Clock::System,
        }
    }
}

/// Makes aws-lc-rs the process's rustls crypto provider. Both reqwest and the
/// Redis TLS connector use rustls; when more than one provider is compiled in and
/// none is installed, the first TLS handshake panics. Idempotent.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all this needs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl AppState {
    /// Does no I/O: Redis and the identity provider are reached when first needed.
    pub fn build(config: &Config, setup: Setup) -> Result<Self, ConfigError> {
        install_crypto_provider();
        let clock = setup.clock;
        let metrics = Metrics::default();
        let store = store::open(&config.store, &config.redis, clock.clone())?;
        // The one HTTP client: token endpoint, managed identity, signing keys.
        let http = crate::identity::http_client()?;
        let identity = Arc::new(match setup.issuer {
            Issuer::Entra => {
                Identity::from_config(config, http.clone(), clock.clone(), metrics.clone())?
            }
            Issuer::Dev { lifetime_secs } => {
                Identity::dev(lifetime_secs, clock.clone(), metrics.clone())
            }
        });
        let cache = store
            .is_shared()
            .then(|| Arc::new(TokenCache::new(CACHE_ENTRIES, CACHE_BYTES, clock.clone())));
        let audit = Audit::new(
            config.api.audit_stream.then(|| store.clone()),
            clock.clone(),
        );
        let tokens = TokenService::new(
            Peers {
                store: store.clone(),
                identity,
                cache: cache.clone(),
                audit: audit.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
            },
            config.refresh.clone(),
        );
        Ok(Self(Arc::new(App {
            tokens,
            store,
            cache,
            callers: Callers::new(
                config.api.auth,
                &config.api.api_keys,
                config.api.entra.clone(),
                http,
                clock.clone(),
            ),
            audit,
            metrics,
            clock,
            refresh_rate_per_min: config.api.refresh_rate_per_min,
            timer: setup.internal_timer.then_some(config.refresh.interval),
            sweeps: watch::Sender::new(None),
        })))
    }
}
