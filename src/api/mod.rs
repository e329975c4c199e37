//! The HTTP API of SPEC §5 under `/api/tokens`, the host's probe at `/` and the
//! timer trigger at `/timer-refresh`. Every request goes through [`handle`]: its
//! [`Route`] is parsed once, the edge gives it an id and a span, the caller is
//! authenticated where the route needs one, and the answer (JSON, errors
//! included) is counted by route and status.

mod error;
mod grant;
mod health;
mod host;
mod input;
pub mod limits;
mod routes;
mod tokens;

pub use self::error::ApiError;
pub use self::grant::parse_grant;
pub use self::input::{TokenQuery, parse_query, path_request, scope_from_path};
pub use self::routes::Route;

use crate::app::AppState;
use crate::audit::REQUEST_ID;
use crate::callers::{Caller, Remembered};
use crate::metrics::{RequestLabels, method_label};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Serves one request.
pub async fn handle<B>(state: AppState, request: Request<B>, remembered: &Remembered) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let started = Instant::now();
    let route = Route::parse(request.method(), request.uri().path());
    let method = method_label(request.method());
    let id = request_id(request.headers());
    let mut response = match header_bytes(request.headers()) {
        n if n > limits::MAX_HEADER_BYTES => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Headers too large",
            format!(
                "Request headers must be under {} bytes in all",
                limits::MAX_HEADER_BYTES
            ),
        )
        .into_response(),
        _ => {
            let path = request.uri().path();
            // Debug level: audit events carry the request id themselves, and an
            // info span would be formatted for every request.
            let span = tracing::debug_span!(
                "request",
                request_id = %id,
                method = %request.method(),
                // Bounded: a hostile path can be 64 KB.
                path = %&path[..path.floor_char_boundary(200)],
            );
            let serving = dispatch(&state, route, request, remembered);
            let answer = REQUEST_ID.scope(id.clone(), serving.instrument(span)).await;
            answer.unwrap_or_else(IntoResponse::into_response)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let labels = RequestLabels {
        route: route.label(),
        method,
        status: response.status().as_u16(),
    };
    state
        .metrics
        .request(&labels, started.elapsed().as_secs_f64());
    response
}

async fn dispatch<B>(
    state: &AppState,
    route: Route,
    request: Request<B>,
    remembered: &Remembered,
) -> Result<Response, ApiError>
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    // Only the routes that read a body box it.
    let (parts, body) = request.into_parts();
    // Before any input is looked at: an unauthenticated caller learns nothing
    // about scopes.
    let caller = match route.needs_caller() {
        true => Some(authenticate(state, &parts.headers, remembered).await?),
        false => None,
    };
    let uri = &parts.uri;
    match (route, caller) {
        (Route::Read, Some(caller)) => {
            let (scope, query) = path_request(route.scope_part(uri.path()), uri.query())?;
            tokens::read(state, &caller, scope, query).await
        }
        (Route::List { .. }, Some(caller)) => tokens::list_or_get(state, &caller, uri).await,
        (Route::Refresh, Some(caller)) => tokens::refresh(state, &caller, uri).await,
        (Route::Delete, Some(caller)) => tokens::delete(state, &caller, uri).await,
        (Route::Store, Some(caller)) => tokens::store(state, &caller, uri, Body::new(body)).await,
        (Route::Metrics, Some(_)) => Ok(health::metrics(state).await),
        (Route::Health, _) => Ok(health::health(state).await),
        (Route::OpenApi, _) => Ok(health::openapi()),
        (Route::Probe, _) => Ok(host::probe()),
        (Route::Timer, _) => host::timer(state, Body::new(body)).await,
        (Route::MethodNotAllowed(known), _) => {
            Err(ApiError::method_not_allowed(Route::allowed(known)))
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Header bytes as HTTP/1 would carry them.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The host's invocation id, else the caller's `x-request-id`, else a new one.
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

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    remembered: &Remembered,
) -> Result<Arc<Caller>, ApiError> {
    state
        .callers
        .authenticate(presented_key(headers), remembered)
        .await
        .map_err(|error| ApiError::unauthorized(error, &state.callers))
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
