//! Running the service: the HTTP server, the refresh timer and the cache's
//! change listener, started together and stopped together.

use crate::app::AppState;
use crate::{cache, server};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `state` on `listener` with every background task, until `shutdown`
/// completes; then lets requests in flight finish and stops the tasks.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let sweeper = spawn_sweeper(state.clone(), stopped.clone());
    let listener_task = state
        .cache
        .clone()
        .map(|c| cache::listen(c, state.store.clone(), stopped));
    let result = server::serve(listener, state, async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    let _ = sweeper.await;
    if let Some(task) = listener_task {
        let _ = task.await;
    }
    result
}

/// Runs a sweep at once (acquiring the warm scopes), then every period of the
/// internal timer when there is one, until `stop`. The first sweep runs in the
/// background so the host's probe is answered before Redis or the identity
/// provider are reached.
fn spawn_sweeper(state: AppState, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = state.clock.now_ms();
            tokio::select! {
                result = state.tokens.sweep() => match result {
                    Ok(summary) => tracing::info!("{}", summary.line()),
                    Err(error) => tracing::warn!(%error, "sweep could not run"),
                },
                _ = stop.changed() => return,
            }
            // One period from the start of the last sweep, not from its end. Fixed
            // before the sweep is reported done: whoever waits for that and then
            // moves the clock on by a period wakes the next one.
            let next = state
                .timer
                .map(|period| started + period.as_millis() as i64);
            state.sweeps.send_replace(Some(started));
            let Some(next) = next else {
                return;
            };
            tokio::select! {
                _ = state.clock.sleep_until(next) => {}
                _ = stop.changed() => return,
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
