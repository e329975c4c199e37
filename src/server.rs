//! The HTTP server: hyper serving the API router, behind a small front that reads
//! each connection's first request head itself.
//!
//! Why the front: hyper answers requests it cannot parse (an over-long URI, bytes
//! that are not HTTP, too many or too large headers) by itself, with an empty body.
//! Every answer of this service is JSON, so the front checks the head with the same
//! parser hyper uses, answers those requests with a JSON error, and hands everything
//! else to hyper unchanged.

use crate::AppState;
use crate::api::{self, ApiError};
use axum::Router;
use axum::http::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The longest request line accepted (method, target, version).
const MAX_REQUEST_LINE: usize = 16 * 1024;
/// The longest request head accepted (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers accepted (hyper's own limit is 100).
const MAX_HEADERS: usize = 100;
/// A client gets this long to send its first request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// In-flight requests get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let service = Service {
        router: TowerToHyperService::new(api::router(state.clone())),
        state,
    };
    let graceful = GracefulShutdown::new();
    // Tells connections still waiting for their first request head to close:
    // hyper's graceful shutdown only reaches connections it already serves, and
    // clients open connections ahead of need (hyper's pool races a new connect
    // against a returning one), which would otherwise hold shutdown for the grace.
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    let watcher = graceful.watcher();
                    let closing = closing_rx.clone();
                    tokio::spawn(async move { connection(stream, service, watcher, closing).await });
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
    mut stream: TcpStream,
    service: Service,
    watcher: hyper_util::server::graceful::Watcher,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let head = tokio::select! {
        head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)) => head,
        _ = closing.wait_for(|closing| *closing) => return,
    };
    let head = match head {
        Ok(Ok(Head::Complete(bytes))) => bytes,
        Ok(Ok(Head::Closed)) | Err(_) | Ok(Err(_)) => return,
        Ok(Ok(Head::Refused(error))) => {
            let _ = write_refusal(&mut stream, error).await;
            return;
        }
    };
    let io = TokioIo::new(Prefixed {
        prefix: head,
        read: 0,
        inner: stream,
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Token reads straight to their handler (see [`api::is_token_read`]),
/// everything else through the router.
#[derive(Clone)]
struct Service {
    router: TowerToHyperService<Router>,
    state: AppState,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if api::is_token_read(&request) {
            Box::pin(api::token_read(self.state.clone(), request).map(Ok))
        } else {
            Box::pin(self.router.call(request))
        }
    }
}

enum Head {
    /// The bytes read so far: at least one whole, parsable request head.
    Complete(Vec<u8>),
    /// The client went away before sending a request.
    Closed,
    /// What to answer instead of serving the request.
    Refused(ApiError),
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buffer.extend_from_slice(&chunk[..n]);
        let line_end = buffer.windows(2).position(|w| w == b"\r\n");
        if line_end.map_or(buffer.len(), |end| end) > MAX_REQUEST_LINE {
            return Ok(Head::Refused(ApiError::new(
                StatusCode::URI_TOO_LONG,
                "URI too long",
                format!("The request line must be under {MAX_REQUEST_LINE} bytes"),
            )));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => return Ok(Head::Complete(buffer)),
            Ok(httparse::Status::Partial) if buffer.len() <= MAX_HEAD => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Ok(Head::Refused(ApiError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "Headers too large",
                    format!("At most {MAX_HEADERS} headers and {MAX_HEAD} bytes of request head"),
                )));
            }
            Err(error) => {
                return Ok(Head::Refused(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Malformed request",
                    format!(
                        "Not a valid HTTP/1.1 request ({error}); a path must be ASCII, with anything else percent-encoded"
                    ),
                )));
            }
        }
    }
}

async fn write_refusal(stream: &mut TcpStream, error: ApiError) -> io::Result<()> {
    let response = error.into_response();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await?;
    // Lingering close: read what the client is still sending (bounded), so closing
    // with unread data does not reset the connection before it reads the answer.
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while drained < 1024 * 1024 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}

/// A stream that first yields the bytes the front already read.
struct Prefixed {
    prefix: Vec<u8>,
    read: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read < self.prefix.len() {
            let rest = &self.prefix[self.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.read += n;
            if self.read == self.prefix.len() {
                self.prefix = Vec::new();
                self.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
