//! Health, metrics and the OpenAPI document: what operators and tools read.

use crate::app::AppState;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /api/tokens/health`: open to anyone, no token data. `degraded` (still a
/// `503`) when Redis is unreachable but cached tokens are still being served.
pub(super) async fn health(app: &AppState) -> Response {
    let store = &app.store;
    let reachable = store.ping().await.is_ok();
    let count = match reachable {
        true => store.active_count().await.ok(),
        false => None,
    };
    let healthy = reachable && count.is_some();
    let cached = app.cache.as_ref().map_or(0, |c| c.len());
    let status = match (healthy, cached) {
        (true, _) => "healthy",
        (false, 0) => "unhealthy",
        (false, _) => "degraded",
    };
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
    let seen = app.tokens.identity().seen();
    body["identity_provider"] = json!({
        "last_success": seen.last_success,
        "last_error": seen.last_error.map(|(at, error)| json!({"at": at, "error": error})),
    });
    let soonest = match reachable {
        true => store.soonest_expiry().await.ok().flatten(),
        false => None,
    };
    body["soonest_expiry_in"] = json!(soonest.map(|at| at - app.clock.now()));
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /api/tokens/metrics`: Prometheus (OpenMetrics) text, for any valid key.
pub(super) async fn metrics(app: &AppState) -> Response {
    let metrics = &app.metrics;
    metrics
        .redis_circuit_open
        .set(i64::from(!app.store.reachable()));
    if let Ok(count) = app.store.active_count().await {
        metrics.tokens_stored.set(count as i64);
    }
    let soonest = app.store.soonest_expiry().await.ok().flatten();
    metrics
        .soonest_expiry_seconds
        .set(soonest.map_or(-1, |at| at - app.clock.now()));
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
