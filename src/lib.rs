//! A token broker for Microsoft Entra ID that runs as an Azure Functions custom
//! handler. See `SPEC.md` in the team's shared folder for the contract; each
//! module below is named after one of its sections.

pub mod api;
pub mod cache;
pub mod callers;
pub mod clock;
pub mod config;
pub mod domain;
pub mod functions;
pub mod identity;
pub mod metrics;
pub mod refresh;
pub mod secret;
pub mod server;
pub mod store;

use crate::callers::Callers;
use crate::config::{Config, ConfigError, StoreKind};
use crate::identity::Identity;
use crate::refresh::{RefreshSettings, Refresher};
use crate::store::{MemoryStore, RedisStore, Sealer, Store};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything a request handler needs: one cheap-to-clone handle.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    /// The store, the identity flow and the per-key flights.
    pub refresher: Arc<Refresher>,
    /// Who may call, and what each caller may read.
    pub callers: Callers,
    /// Forced refreshes allowed per API key and token per minute (0: unlimited).
    pub refresh_rate_per_min: u32,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
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

/// Makes aws-lc-rs the process's rustls crypto provider. Both reqwest and the
/// Redis TLS connector use rustls; when more than one provider is compiled in and
/// none is installed, the first TLS handshake panics. Idempotent.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all this needs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl AppState {
    pub fn build(config: &Config, issuer: Issuer) -> Result<Self, ConfigError> {
        install_crypto_provider();
        let store = match config.store {
            StoreKind::Redis => Store::Redis(RedisStore::new(config)?),
            StoreKind::Memory => Store::Memory(MemoryStore::new(&config.namespace)),
        };
        let identity = match issuer {
            Issuer::Entra => Identity::from_config(config)?,
            Issuer::Dev { lifetime_secs } => Identity::dev(lifetime_secs),
        };
        let settings = RefreshSettings {
            refresh_before_secs: config.refresh_before_secs,
            min_validity_secs: config.min_validity_secs,
            concurrency: config.refresh_concurrency,
            warm_scopes: config.scopes.clone(),
            on_demand: config.on_demand,
            idle_secs: config.idle_secs,
            backoff_base: Duration::from_secs(config.backoff_base_secs),
            audit_stream: config.audit_stream,
        };
        Ok(Self(Arc::new(Inner {
            refresher: Arc::new(Refresher::new(
                store,
                identity,
                settings,
                Sealer::new(config.encryption_key.as_ref().map(|k| &k.0)),
            )),
            callers: Callers::new(config.auth, &config.api_keys),
            refresh_rate_per_min: config.refresh_rate_per_min,
        })))
    }
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, state, shutdown).await
}

/// Runs a sweep at once (acquiring the warm scopes), then every `interval` when
/// one is given, until `stop` turns true. The first sweep runs in the background so
/// the host's probe is answered before Redis or the identity provider are reached.
pub fn spawn_sweeper(
    state: AppState,
    interval: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = interval.map(tokio::time::interval);
        loop {
            if let Some(ticker) = ticker.as_mut() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => return,
                }
            }
            tokio::select! {
                result = state.refresher.sweep() => match result {
                    Ok(summary) => tracing::info!("{}", summary.line()),
                    Err(error) => tracing::warn!(%error, "sweep could not run"),
                },
                _ = stop.changed() => return,
            }
            if ticker.is_none() || *stop.borrow() {
                return;
            }
        }
    })
}

/// Completes on SIGINT or SIGTERM (the host and the platform stop us with SIGTERM).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
