//! The HTTP API of SPEC §5 under `/api/tokens`, the host's probe at `/` and the
//! timer trigger at `/timer-refresh`. Every answer is JSON, errors included.

mod error;
mod input;
mod tokens;

pub use self::error::ApiError;
pub use self::input::{TokenQuery, parse_grant, parse_query, scope_from_path};

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
        .with_state(state)
}

/// The Functions host polls `GET /` every 25 ms until it answers; answer at once
/// and touch nothing (Redis and the identity provider may still be far away).
async fn probe() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// The authenticated caller of a token route. Rejects with `401` before any input
/// is looked at, so an unauthenticated caller learns nothing about scopes.
pub struct Authed(pub Caller);

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
