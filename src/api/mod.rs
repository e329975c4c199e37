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
use axum::http::{HeaderMap, header};
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
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tracing::Instrument;
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Headers too large",
            format!("Request headers must be under {MAX_HEADER_BYTES} bytes in all"),
        )
        .into_response();
    }
    let id = request_id(request.headers());
    // The route template, never the path: scopes and users stay out of labels.
    // Braces are dropped (`/api/tokens/*scope`): some text-format parsers stop a
    // label value at the first `}`.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_owned(), |m| {
            m.as_str().replace(['{', '}'], "")
        });
    let path = request.uri().path();
    // Debug level: audit events carry the request id themselves, and an info span
    // would be formatted for every request.
    let span = tracing::debug_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        // Bounded: a hostile path can be 100 KB.
        path = %&path[..path.floor_char_boundary(200)],
    );
    let mut response = crate::callers::REQUEST_ID
        .scope(id.clone(), next.run(request).instrument(span))
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
        let presented = presented_key(&parts.headers);
        state
            .callers
            .authenticate(presented)
            .map(|caller| Self(caller.clone()))
            .map_err(ApiError::unauthorized)
    }
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
