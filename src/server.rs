//! The HTTP server: hyper serving the API router, behind a small front that checks
//! every request head before hyper reads it.
//!
//! Why the front: hyper answers requests it cannot parse (an over-long URI, bytes
//! that are not HTTP, too many or too large headers) by itself, with an empty body.
//! Every answer of this service is JSON, so the front checks each head with the
//! same parser hyper uses and hands hyper only heads that pass, and the bodies they
//! announce. A head that fails ends the connection for hyper; once hyper has
//! answered the requests before it, the front writes the JSON error and closes.
//! (After a chunked body the front cannot tell where the next head starts without
//! decoding the chunks, so it leaves that connection's later heads to hyper.)

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
/// The most headers accepted: hyper's own default limit, which it parses on the
/// stack (setting any limit moves that parse to the heap: about 5 % per request).
/// The front refuses more, with JSON, before hyper sees them.
const MAX_HEADERS: usize = 100;
/// How much is read from a socket at a time.
const READ_SIZE: usize = 8 * 1024;
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
    // Counts the live connections: shutdown waits for them.
    let graceful = GracefulShutdown::new();
    // Tells every connection that shutdown began. One still waiting for its first
    // request head closes at once: clients open connections ahead of need (hyper's
    // pool races a new connect against a returning one), and those would otherwise
    // hold shutdown for the whole grace period. One that hyper serves finishes its
    // request in flight, then ends.
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
    // Held while the connection lives: the server's shutdown waits for it.
    _watcher: hyper_util::server::graceful::Watcher,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut front = Front::new();
    let first = tokio::select! {
        first = tokio::time::timeout(HEAD_TIMEOUT, front.first_head(&mut stream)) => first,
        _ = closing.wait_for(|closing| *closing) => return,
    };
    match first {
        Ok(Ok(true)) => {}
        // Closed, timed out, or refused: never reached hyper.
        Ok(Ok(false)) | Err(_) | Ok(Err(_)) => {
            if let Some(error) = front.refused.take() {
                let _ = write_refusal(&mut stream, error).await;
            }
            return;
        }
    }
    let mut conn = hyper::server::conn::http1::Builder::new()
        // hyper then reads only when it wants the next head or body bytes, never to
        // probe for the end of the stream while it answers a request: the end the
        // front shows after a refused head must not abort the requests before it
        // (nor does a client that half-closes after sending its request lose it).
        .half_close(true)
        .serve_connection(TokioIo::new(Checked { front, stream }), service);
    // Run without hyper's shutdown of the socket at the end: a refused request
    // head ends the connection for hyper, and its JSON answer is written after
    // the answers to the requests before it.
    let mut shutdown_sent = false;
    let ended = loop {
        let step = {
            let serving = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
            tokio::select! {
                ended = serving => Some(ended),
                _ = closing.wait_for(|closing| *closing), if !shutdown_sent => None,
            }
        };
        match step {
            Some(ended) => break ended,
            // Finishes the request in flight, if any, then ends the connection.
            None => {
                Pin::new(&mut conn).graceful_shutdown();
                shutdown_sent = true;
            }
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "connection ended with an error");
    }
    let Checked { front, mut stream } = conn.into_parts().io.into_inner();
    match front.refused {
        Some(error) => {
            let _ = write_refusal(&mut stream, error).await;
        }
        None => {
            let _ = stream.shutdown().await;
        }
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

/// Checks every request head of a connection before hyper sees it; see the module
/// comment. Bytes go to hyper only once they are known to be a request head that
/// passed the checks, or the body that such a head announced.
struct Front {
    /// `buffer[start..end]` was read from the socket and not yet handed to hyper;
    /// the socket is read into `buffer[end..]`. Allocated and zeroed once per
    /// connection, not per read.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// How many bytes at the start of the pending ones may go to hyper.
    checked: usize,
    /// What the bytes after `checked` are.
    next: Next,
    /// How far the pending bytes were searched for the end of a head (a head that arrives a
    /// byte at a time is scanned once, not once per byte).
    scanned: usize,
    /// The answer to a head that failed the checks; hyper then sees the end of the
    /// stream, so it finishes the requests before it and nothing after.
    refused: Option<ApiError>,
    eof: bool,
}

enum Next {
    Head,
    /// This many bytes of body are still to come.
    Body(u64),
    /// A chunked body: its end is hyper's to find, so the heads after it on this
    /// connection are left to hyper's own checks.
    Unchecked,
}

impl Front {
    fn new() -> Self {
        Self {
            buffer: vec![0; READ_SIZE],
            start: 0,
            end: 0,
            checked: 0,
            next: Next::Head,
            scanned: 0,
            refused: None,
            eof: false,
        }
    }

    /// Reads until the first request head is complete and checked: `false` when
    /// the client left first or the head was refused.
    async fn first_head(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_checked(stream, cx)).await?;
        Ok(self.checked > 0)
    }

    /// Reads from `stream` until some bytes may go to hyper, a head was refused,
    /// or the client closed.
    fn poll_checked(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            self.classify();
            if self.checked > 0 || self.refused.is_some() || self.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(self.space());
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            match read.filled().len() {
                0 => self.eof = true,
                n => self.end += n,
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    /// Hands the first `n` pending bytes on.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Room to read into: at least [`READ_SIZE`] bytes after the pending ones.
    fn space(&mut self) -> &mut [u8] {
        if self.buffer.len() - self.end < READ_SIZE {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            // Only a head can stay pending, and heads are bounded (MAX_HEAD).
            if self.buffer.len() - self.end < READ_SIZE {
                self.buffer.resize(self.end + READ_SIZE, 0);
            }
        }
        &mut self.buffer[self.end..]
    }

    /// Decides what the unchecked bytes at the start of `buffer` are, as far as
    /// they go.
    fn classify(&mut self) {
        if self.checked > 0 || self.refused.is_some() || self.start == self.end {
            return;
        }
        match self.next {
            Next::Body(left) => {
                let n = left.min((self.end - self.start) as u64);
                self.checked = n as usize;
                self.next = if n == left {
                    Next::Head
                } else {
                    Next::Body(left - n)
                };
            }
            Next::Unchecked => self.checked = self.end - self.start,
            Next::Head => match check_head(&self.buffer[self.start..self.end], &mut self.scanned) {
                HeadCheck::Partial => {}
                HeadCheck::Complete { len, body } => {
                    self.checked = len;
                    self.next = body;
                    self.scanned = 0;
                }
                HeadCheck::Refused(error) => self.refused = Some(error),
            },
        }
    }
}

/// The socket as hyper sees it: only checked bytes are read through it.
struct Checked {
    front: Front,
    stream: TcpStream,
}

impl AsyncRead for Checked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Self { front, stream } = self.get_mut();
        std::task::ready!(front.poll_checked(stream, cx))?;
        // Nothing checked means a refused head or the client gone: the end of the
        // stream for hyper.
        if front.checked > 0 {
            let n = front.checked.min(out.remaining());
            out.put_slice(&front.pending()[..n]);
            front.consume(n);
            front.checked -= n;
        }
        Poll::Ready(Ok(()))
    }
}

enum HeadCheck {
    /// Not all of the head has arrived yet.
    Partial,
    /// A head of `len` bytes that passed, and what follows it.
    Complete { len: usize, body: Next },
    /// What to answer instead of serving the request.
    Refused(ApiError),
}

/// Checks the request head at the start of `buffer` with the parser hyper uses,
/// against this service's limits. `scanned` remembers how far the search for the
/// head's end got in earlier calls for the same head.
fn check_head(buffer: &[u8], scanned: &mut usize) -> HeadCheck {
    let line_end = buffer.iter().position(|&b| b == b'\n');
    if line_end.unwrap_or(buffer.len()) > MAX_REQUEST_LINE {
        return HeadCheck::Refused(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "URI too long",
            format!("The request line must be under {MAX_REQUEST_LINE} bytes"),
        ));
    }
    // A head ends with an empty line ("\r\n\r\n", or "\n\n" which httparse
    // also takes). Until one has arrived there is nothing to parse.
    let from = scanned.saturating_sub(3);
    let ends = buffer[from..]
        .windows(2)
        .any(|w| w == b"\n\n" || w == b"\n\r");
    *scanned = buffer.len();
    let too_large = || {
        HeadCheck::Refused(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Headers too large",
            format!("At most {MAX_HEADERS} headers and {MAX_HEAD} bytes of request head"),
        ))
    };
    if !ends {
        return if buffer.len() > MAX_HEAD {
            too_large()
        } else {
            HeadCheck::Partial
        };
    }
    // Uninitialised: filling a hundred empty headers would cost more than parsing.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(buffer, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => match body_of(request.headers) {
            Some(body) => HeadCheck::Complete { len, body },
            None => HeadCheck::Refused(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Malformed request",
                "Content-Length must be one whole number of bytes",
            )),
        },
        // "\n\r" inside the head but not its end yet.
        Ok(httparse::Status::Partial) if buffer.len() <= MAX_HEAD => HeadCheck::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => too_large(),
        Err(error) => HeadCheck::Refused(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Malformed request",
            format!(
                "Not a valid HTTP/1.1 request ({error}); a path must be ASCII, with anything else percent-encoded"
            ),
        )),
    }
}

/// How the body after a head is framed; `None` for a Content-Length that is not
/// one number (hyper would refuse it too, without a JSON body).
fn body_of(headers: &[httparse::Header<'_>]) -> Option<Next> {
    let mut length: Option<u64> = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Some(Next::Unchecked);
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok()?.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let value: u64 = value.parse().ok()?;
            if length.is_some_and(|seen| seen != value) {
                return None;
            }
            length = Some(value);
        }
    }
    Some(match length {
        Some(n) if n > 0 => Next::Body(n),
        _ => Next::Head,
    })
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

impl AsyncWrite for Checked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(front: &mut Front, bytes: &[u8]) {
        front.space()[..bytes.len()].copy_from_slice(bytes);
        front.end += bytes.len();
        front.classify();
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_passes_when_it_is_whole() {
        let head = b"PUT /api/tokens/x?user_id=u HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n";
        let mut front = Front::new();
        for (i, byte) in head.iter().enumerate() {
            assert_eq!(front.checked, 0, "checked before byte {i} arrived");
            feed(&mut front, &[*byte]);
        }
        assert_eq!(front.checked, head.len());
        assert!(matches!(front.next, Next::Body(4)));
        assert!(front.refused.is_none());
    }

    #[test]
    fn content_length_decides_where_the_next_head_starts() {
        let head = |extra: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let next = |extra: &str| {
            let mut scanned = 0;
            match check_head(head(extra).as_bytes(), &mut scanned) {
                HeadCheck::Complete { body, .. } => Some(body),
                HeadCheck::Refused(_) => None,
                HeadCheck::Partial => panic!("partial: {extra}"),
            }
        };
        assert!(matches!(next(""), Some(Next::Head)));
        assert!(matches!(next("Content-Length: 0\r\n"), Some(Next::Head)));
        assert!(matches!(
            next("content-length: 12\r\n"),
            Some(Next::Body(12))
        ));
        assert!(matches!(
            next("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Some(Next::Body(5))
        ));
        assert!(matches!(
            next("Transfer-Encoding: chunked\r\n"),
            Some(Next::Unchecked)
        ));
        for bad in [
            "Content-Length: -1\r\n",
            "Content-Length: 1e3\r\n",
            "Content-Length: \r\n",
        ] {
            assert!(next(bad).is_none(), "{bad}");
        }
        assert!(next("Content-Length: 5\r\nContent-Length: 6\r\n").is_none());
    }

    #[test]
    fn a_refused_head_ends_what_hyper_reads_after_the_heads_before_it() {
        let mut front = Front::new();
        feed(
            &mut front,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let first = front.checked;
        assert_eq!(
            &front.pending()[..first],
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        front.consume(first);
        front.checked = 0;
        front.classify();
        assert_eq!(front.checked, 0);
        let refusal = front.refused.expect("the second head is refused");
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
    }
}
