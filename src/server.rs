//! The HTTP server: hyper's HTTP/1 connections, each request handed to
//! [`api::handle`]. hyper is the one HTTP parser (SPEC §8): a request it cannot
//! parse, or a head past [`limits::MAX_HEAD`], gets its own bodiless refusal.

use crate::api::{self, limits};
use crate::app::AppState;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// In-flight requests get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Counts the live connections: shutdown waits for them.
    let graceful = GracefulShutdown::new();
    // Tells connections still waiting for their first request that shutdown
    // began: clients open connections ahead of need (hyper's pool and the host
    // both do), and those must not hold shutdown for the grace period. hyper
    // closes the connections it serves once their request in flight is answered.
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let connection = connection(stream, state.clone(), graceful.watcher(), closing_rx.clone());
                    tokio::spawn(connection);
                }
                // Out of file descriptors and the like: pause rather than spin.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    closing.send_replace(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the shutdown grace period were dropped");
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    state: AppState,
    watcher: Watcher,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // A client that connects and sends nothing is let go after a while, and at
    // once when shutdown begins.
    let first = tokio::select! {
        first = tokio::time::timeout(limits::FIRST_REQUEST_TIMEOUT, stream.readable()) => first,
        _ = closing.wait_for(|closing| *closing) => return,
    };
    if !matches!(first, Ok(Ok(()))) {
        return;
    }
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(api::handle(state, request).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits::MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
