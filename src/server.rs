//! The HTTP server: hyper's HTTP/1 connections, each request handed to
//! [`api::handle`]. hyper is the one HTTP parser (SPEC §8): a request it cannot
//! parse, or a head it cannot buffer ([`limits::MAX_HEAD`]), gets its own
//! bodiless refusal.

use crate::api::{self, limits};
use crate::app::AppState;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// In-flight requests get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Counts the live connections: shutdown waits for them. At shutdown hyper
    // closes a connection once its request in flight is answered, and at once one
    // that has sent nothing yet: clients open connections ahead of need (hyper's
    // pool and the host both do), and those must not hold shutdown for the grace
    // period.
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, state.clone(), graceful.watcher()));
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
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the shutdown grace period were dropped");
    }
    Ok(())
}

async fn connection(stream: TcpStream, state: AppState, watcher: Watcher) {
    let _ = stream.set_nodelay(true);
    // One per connection: its last Entra caller.
    let remembered = std::sync::Arc::new(crate::callers::Remembered::default());
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let (state, remembered) = (state.clone(), remembered.clone());
        async move { Ok::<_, Infallible>(api::handle(state, request, &remembered).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits::MAX_HEAD)
        // Every request head, the first or the next on a kept-alive connection,
        // must arrive whole within HEAD_TIMEOUT.
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEAD_TIMEOUT)
        // A client that shuts down its sending side after its request still
        // gets the answer.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
