//! Health, metrics and the OpenAPI document: what operators and tools read.

use crate::app::AppState;
use crate::identity::IdpSeen;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /api/tokens/health`: open to anyone, no token data. See [`status`].
pub(super) async fn health(app: &AppState) -> Response {
    let store = &app.store;
    let reachable = store.ping().await.is_ok();
    let count = match reachable {
        true => store.active_count().await.ok(),
        false => None,
    };
    let healthy = reachable && count.is_some();
    let cached = app.cache.as_ref().map_or(0, |c| c.len());
    let seen = app.tokens.identity().seen();
    let status = status(healthy, cached, &seen);
    let kind = store.kind();
    let mut body = json!({
        "status": status,
        "redis_connected": healthy && kind == crate::config::StoreKind::Redis,
        "active_token_count": count.unwrap_or(0),
        "timestamp": app.clock.now(),
        "store": kind.as_str(),
        "refresh_waiters": app.tokens.all_flight_waiters(),
    });
    if kind == crate::config::StoreKind::Redis {
        // "open": Redis could not be reached; requests fail at once (cached tokens
        // are still served) until a background probe reaches it again.
        body["redis_circuit"] = json!(if store.reachable() { "closed" } else { "open" });
    }
    if let Some(cache) = &app.cache {
        body["cache"] = json!({
            "entries": cached,
            "live": cache.is_live(),
            "coherence": cache.coherence(),
        });
    }
    // Readiness detail beyond the seed's four fields.
    body["identity_provider"] = json!({
        "last_success": seen.last_success,
        "last_error": seen.last_error.map(|(at, error)| json!({"at": at, "error": error})),
    });
    let soonest = match reachable {
        true => store.soonest_expiry().await.ok().flatten(),
        false => None,
    };
    body["soonest_expiry_in"] = json!(soonest.map(|at| at - app.clock.now()));
    let code = match status {
        "healthy" => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(body)).into_response()
}

/// `healthy` (`200`), else `degraded` or `unhealthy` (both `503`). `degraded`:
/// the store is unreachable but cached tokens are still served, or the store
/// answers but the identity provider never has (only errors since start: new
/// tokens cannot be had, stored ones are served). `unhealthy`: the store is
/// unreachable and nothing is cached.
fn status(store_ok: bool, cached: usize, idp: &IdpSeen) -> &'static str {
    let idp_failing = idp.last_success.is_none() && idp.last_error.is_some();
    match (store_ok, cached) {
        (false, 0) => "unhealthy",
        (false, _) => "degraded",
        (true, _) if idp_failing => "degraded",
        (true, _) => "healthy",
    }
}

/// `GET /api/tokens/metrics`: Prometheus (OpenMetrics) text, for any valid key.
pub(super) async fn metrics(app: &AppState) -> Response {
    let metrics = &app.metrics;
    metrics
        .redis_circuit_open
        .set(i64::from(!app.store.reachable()));
    metrics
        .cache_live
        .set(app.cache.as_ref().map(|c| i64::from(c.is_live())));
    // Not stale figures when the store cannot be asked: no sample at all.
    let count = app.store.active_count().await.ok();
    metrics
        .tokens_stored
        .set(count.map(|n| i64::try_from(n).unwrap_or(i64::MAX)));
    let soonest = app.store.soonest_expiry().await.ok().flatten();
    metrics
        .soonest_expiry_seconds
        .set(soonest.map(|at| at - app.clock.now()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

/// The OpenAPI 3 description of this API (a test keeps it in sync with the routes).
pub const OPENAPI: &str = include_str!("openapi.json");

pub(super) fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(last_success: Option<i64>, last_error: Option<i64>) -> IdpSeen {
        IdpSeen {
            last_success,
            last_error: last_error.map(|at| (at, "503 AADSTS90006".to_owned())),
        }
    }

    #[test]
    fn status_follows_the_store_then_the_identity_provider() {
        let quiet = seen(None, None);
        assert_eq!(status(true, 0, &quiet), "healthy", "nothing asked yet");
        assert_eq!(status(true, 0, &seen(Some(1), None)), "healthy");
        assert_eq!(status(false, 0, &quiet), "unhealthy");
        assert_eq!(status(false, 3, &quiet), "degraded");
        // Never answered, only failed: degraded even with the store up.
        assert_eq!(status(true, 0, &seen(None, Some(1))), "degraded");
        assert_eq!(status(false, 0, &seen(None, Some(1))), "unhealthy");
        // Once it has answered, later errors leave the status as it was.
        assert_eq!(status(true, 0, &seen(Some(1), Some(2))), "healthy");
    }
}
