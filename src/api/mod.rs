//! The HTTP API of SPEC §5 under `/api/tokens`, the host's probe at `/` and the
//! timer trigger at `/timer-refresh`. Every answer is JSON, errors included.

mod error;
mod input;
mod tokens;

pub use self::error::ApiError;
pub use self::input::{TokenQuery, parse_grant, parse_query, path_request, scope_from_path};

use crate::AppState;
use crate::callers::Caller;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// The largest body any route reads (the host's timer payload is well under 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(probe))
        .route("/api/tokens", get(tokens::list_or_get))
        .route("/api/tokens/", get(tokens::list_or_get))
        .route("/api/tokens/health", get(tokens::health))
        .route("/api/tokens/openapi.json", get(openapi))
        .route("/api/tokens/metrics", get(tokens::metrics))
        .route("/api/tokens/refresh/{*scope}", post(tokens::refresh))
        .route(
            "/api/tokens/{*scope}",
            get(tokens::get_token)
                .delete(tokens::delete_token)
                .put(tokens::put_token),
        )
        .route("/timer-refresh", post(crate::functions::timer_refresh))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// The most header bytes a request may carry; hyper refuses far larger ones itself
/// (without a JSON body), this answers the rest with one.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Every request: header size limit, a request id (the host's invocation id, the
/// caller's `x-request-id`, or a new one) in a span, in audit events and in the
/// answer's `x-request-id`.
async fn edge(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = route_label(request.extensions().get::<axum::extract::MatchedPath>());
    let (id, span) = match enter(request.headers(), request.method(), request.uri().path()) {
        Ok(entered) => entered,
        Err(refused) => return refused.into_response(),
    };
    leave(&state, route, id, span, next.run(request)).await
}

/// The edge's checks before a request is served: the header limit, then its id
/// and its span. Shared by the router's middleware and [`token_read`].
fn enter(
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<(String, tracing::Span), ApiError> {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Headers too large",
            format!("Request headers must be under {MAX_HEADER_BYTES} bytes in all"),
        ));
    }
    let id = request_id(headers);
    // Debug level: audit events carry the request id themselves, and an info span
    // would be formatted for every request.
    let span = tracing::debug_span!(
        "request",
        request_id = %id,
        %method,
        // Bounded: a hostile path can be 100 KB.
        path = %&path[..path.floor_char_boundary(200)],
    );
    Ok((id, span))
}

/// Serves the request (`serving`) under its id and span, then stamps the answer
/// with the id and counts it.
async fn leave(
    state: &AppState,
    route: &'static str,
    id: String,
    span: tracing::Span,
    serving: impl Future<Output = Response>,
) -> Response {
    use tracing::Instrument;
    let mut response = crate::callers::REQUEST_ID
        .scope(id.clone(), serving.instrument(span))
        .await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    state
        .refresher
        .metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels { route, status })
        .inc();
    response
}

/// Whether `request` is a token read, `GET /api/tokens/{scope}`: the hot path
/// (BENCHMARKS.md), which [`token_read`] serves without the router's matching,
/// parameter extraction and middleware boxing. Mirrors the router: the fixed names
/// under `/api/tokens/`, and `refresh/...`, belong to other routes.
pub fn is_token_read<B>(request: &axum::http::Request<B>) -> bool {
    request.method() == Method::GET
        && request
            .uri()
            .path()
            .strip_prefix("/api/tokens/")
            .is_some_and(|rest| {
                !(rest.is_empty()
                    || matches!(rest, "health" | "metrics" | "openapi.json")
                    || rest.starts_with("refresh/"))
            })
}

/// A request for which [`is_token_read`] holds, served exactly as the router
/// would: the edge, the caller's key, then [`tokens::read`].
pub async fn token_read<B>(state: AppState, request: axum::http::Request<B>) -> Response {
    let (parts, _) = request.into_parts();
    let (id, span) = match enter(&parts.headers, &parts.method, parts.uri.path()) {
        Ok(entered) => entered,
        Err(refused) => return refused.into_response(),
    };
    let serving = async {
        let caller = authenticate(&state, &parts.headers)?;
        tokens::read(&state, &caller, &parts.uri).await
    };
    let serving = async { serving.await.unwrap_or_else(IntoResponse::into_response) };
    leave(&state, "/api/tokens/*scope", id, span, serving).await
}

/// The route template as a metrics label, never the path: scopes and users stay
/// out of labels. Braces are dropped (`/api/tokens/*scope`): some text-format
/// parsers stop a label value at the first `}`. Static strings, so counting a
/// request allocates nothing.
fn route_label(matched: Option<&axum::extract::MatchedPath>) -> &'static str {
    match matched.map(|m| m.as_str()) {
        None => "unmatched",
        Some("/api/tokens/{*scope}") => "/api/tokens/*scope",
        Some("/api/tokens/refresh/{*scope}") => "/api/tokens/refresh/*scope",
        Some("/api/tokens") => "/api/tokens",
        Some("/api/tokens/") => "/api/tokens/",
        Some("/api/tokens/health") => "/api/tokens/health",
        Some("/api/tokens/metrics") => "/api/tokens/metrics",
        Some("/api/tokens/openapi.json") => "/api/tokens/openapi.json",
        Some("/timer-refresh") => "/timer-refresh",
        Some("/") => "/",
        Some(_) => "other",
    }
}

fn request_id(headers: &HeaderMap) -> String {
    let usable = |v: &&str| {
        (1..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    ["x-azure-functions-invocationid", "x-request-id"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .filter(usable)
                .map(str::to_owned)
        })
        .unwrap_or_else(new_request_id)
}

/// This process's prefix and a counter: unique, and cheaper than randomness per
/// request.
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(rand::random);
    format!("{prefix:08x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The Functions host polls `GET /` every 25 ms until it answers; answer at once
/// and touch nothing (Redis and the identity provider may still be far away).
async fn probe() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// The OpenAPI 3 description of this API (a test keeps it in sync with the routes).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The authenticated caller of a token route. Rejects with `401` before any input
/// is looked at, so an unauthenticated caller learns nothing about scopes.
pub struct Authed(pub std::sync::Arc<Caller>);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, &parts.headers).map(Self)
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<Caller>, ApiError> {
    state
        .callers
        .authenticate(presented_key(headers))
        .cloned()
        .map_err(ApiError::unauthorized)
}

/// `Authorization: Bearer <key>` or `x-functions-key: <key>`. Never logged.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, key) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers
        .get("x-functions-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(method: Method, path: &str) -> bool {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        is_token_read(&request)
    }

    #[test]
    fn the_bypass_takes_token_reads_only() {
        for path in [
            "/api/tokens/User.Read",
            "/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2F.default",
            "/api/tokens/https://graph.microsoft.com/.default?user_id=alice",
            // A scope named like a route is a scope: the router's `{*scope}` takes it too.
            "/api/tokens/refresh",
            "/api/tokens/health/x",
        ] {
            assert!(read(Method::GET, path), "{path}");
        }
        for (method, path) in [
            (Method::PUT, "/api/tokens/User.Read"),
            (Method::DELETE, "/api/tokens/User.Read"),
            (Method::HEAD, "/api/tokens/User.Read"),
            (Method::GET, "/api/tokens/"),
            (Method::GET, "/api/tokens"),
            (Method::GET, "/api/tokens/health"),
            (Method::GET, "/api/tokens/metrics"),
            (Method::GET, "/api/tokens/openapi.json"),
            (Method::GET, "/api/tokens/refresh/User.Read"),
            (Method::GET, "/api/tokensX/User.Read"),
        ] {
            assert!(!read(method.clone(), path), "{method} {path}");
        }
    }
}
