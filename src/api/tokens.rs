//! The token routes.

use super::input::{parse_grant, parse_query, path_request};
use super::{ApiError, Authed};
use crate::AppState;
use crate::callers::{Caller, Outcome};
use crate::clock::unix_now;
use crate::domain::{TokenKey, UserId};
use crate::store::{RefreshStatus, TokenRecord};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The part of the raw path after `prefix`; routing guarantees the prefix.
fn path_rest<'a>(uri: &'a Uri, prefix: &str) -> &'a str {
    uri.path().strip_prefix(prefix).unwrap_or_default()
}

/// `GET /api/tokens/{scope}`.
pub async fn get_token(
    State(app): State<AppState>,
    Authed(caller): Authed,
    uri: Uri,
) -> Result<Response, ApiError> {
    read(&app, &caller, &uri).await
}

/// The work of [`get_token`], also called by the router's bypass for token reads.
pub(super) async fn read(app: &AppState, caller: &Caller, uri: &Uri) -> Result<Response, ApiError> {
    let (scope, query) = path_request(path_rest(uri, "/api/tokens/"), uri.query())?;
    serve(
        app,
        caller,
        TokenKey::new(scope, query.user),
        query.min_validity,
    )
    .await
}

/// `GET /api/tokens?scope=X` reads a token; `GET /api/tokens` lists them.
pub async fn list_or_get(
    State(app): State<AppState>,
    Authed(caller): Authed,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = parse_query(uri.query())?;
    match query.scope {
        Some(scope) => {
            serve(
                &app,
                &caller,
                TokenKey::new(scope, query.user),
                query.min_validity,
            )
            .await
        }
        None => list(&app, &caller, query.user.as_ref()).await,
    }
}

async fn serve(
    app: &AppState,
    caller: &Caller,
    key: TokenKey,
    min_validity: Option<u64>,
) -> Result<Response, ApiError> {
    if !caller.may_read(&key) {
        app.refresher
            .audit(&caller.name, "read", &key, Outcome::Denied, None)
            .await;
        return Err(ApiError::forbidden(&key));
    }
    if !app.refresher.is_obtainable(&key) {
        return Err(ApiError::one_resource_only(&key));
    }
    // A caller may ask for more validity than the service minimum, never for less.
    let floor = app.refresher.settings().min_validity_secs;
    let min_validity = min_validity.unwrap_or(floor).max(floor);
    let served = match app.refresher.ensure(&key, min_validity).await {
        Ok(Some(served)) if served.seconds_left(unix_now()) >= min_validity as i64 => served,
        Ok(_) => {
            app.refresher
                .audit(&caller.name, "read", &key, Outcome::NotFound, None)
                .await;
            return Err(ApiError::token_not_found(&key).with("min_validity", min_validity));
        }
        Err(error) => {
            app.refresher
                .audit(&caller.name, "read", &key, Outcome::Failed, None)
                .await;
            return Err(ApiError::refresh(&error, &key));
        }
    };
    app.refresher
        .audit(&caller.name, "read", &key, Outcome::Ok, Some(&served.token))
        .await;
    app.refresher.note_read(&key, &served);
    // Serialized once when the token was stored or first served.
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        served.body.clone(),
    )
        .into_response())
}

async fn list(
    app: &AppState,
    caller: &Caller,
    user: Option<&UserId>,
) -> Result<Response, ApiError> {
    let listing = app.refresher.store().list().await.map_err(|e| {
        tracing::error!(error = %e, "token store failed");
        ApiError::store_unavailable()
    })?;
    let store = app.refresher.store();
    let now = unix_now();
    let visible: Vec<&(TokenKey, TokenRecord)> = listing
        .iter()
        .filter(|(key, record)| record.expires_on > now && caller.may_read(key))
        .filter(|(key, _)| user.is_none() || key.user() == user)
        .collect();
    let visible_keys: Vec<TokenKey> = visible.iter().map(|(k, _)| k.clone()).collect();
    // Refresh failures are shown with the token; a listing without them is still useful.
    let statuses = store.statuses(&visible_keys).await.unwrap_or_default();
    let tokens: Vec<Value> = visible
        .iter()
        .enumerate()
        .map(|(i, (key, record))| {
            list_entry(
                &store.keys().token(key),
                record,
                statuses.get(i).cloned().flatten(),
            )
        })
        .collect();
    Ok(Json(json!({"count": tokens.len(), "tokens": tokens})).into_response())
}

/// Metadata only: a listing never carries a token value.
fn list_entry(full_key: &str, record: &TokenRecord, status: Option<RefreshStatus>) -> Value {
    let mut entry = json!({
        "scope": record.scope,
        "expires_on": record.expires_on,
        "stored_at": record.stored_at,
        "refresh_count": record.refresh_count,
        "key": full_key,
        "flow": record.metadata.flow,
    });
    if let Some(user) = &record.user_id {
        entry["user_id"] = Value::from(user.as_str());
    }
    if let Some(status) = status {
        entry["refresh_status"] = json!({
            "failures": status.failures,
            "last_error": status.last_error,
            "aadsts": status.aadsts.map(|c| format!("AADSTS{c}")),
            "last_attempt": status.last_attempt,
            "next_attempt": status.next_attempt,
        });
    }
    entry
}

/// `GET /api/tokens/health`: open to anyone, no token data. `degraded` (still a
/// `503`) when Redis is unreachable but cached tokens are still being served.
pub async fn health(State(app): State<AppState>) -> Response {
    let store = app.refresher.store();
    let reachable = store.ping().await.is_ok();
    let count = match reachable {
        true => store.active_count().await.ok(),
        false => None,
    };
    let healthy = reachable && count.is_some();
    let cache = app.refresher.cache();
    let cached = cache.map_or(0, |c| c.len());
    let status = match (healthy, cached) {
        (true, _) => "healthy",
        (false, 0) => "unhealthy",
        (false, _) => "degraded",
    };
    let mut body = json!({
        "status": status,
        "redis_connected": healthy && store.kind() == "redis",
        "active_token_count": count.unwrap_or(0),
        "timestamp": unix_now(),
        "store": store.kind(),
        "refresh_waiters": app.refresher.all_flight_waiters(),
    });
    if let Some(cache) = cache {
        body["cache"] = json!({"entries": cached, "live": cache.is_live()});
    }
    // Readiness detail beyond the seed's four fields.
    let seen = app.refresher.idp_seen();
    body["identity_provider"] = json!({
        "last_success": seen.last_success,
        "last_error": seen.last_error.map(|(at, error)| json!({"at": at, "error": error})),
    });
    let soonest = match reachable {
        true => store.soonest_expiry().await.ok().flatten(),
        false => None,
    };
    body["soonest_expiry_in"] = json!(soonest.map(|at| at - unix_now()));
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `POST /api/tokens/refresh/{scope}`: a new token from the identity provider.
pub async fn refresh(
    State(app): State<AppState>,
    Authed(caller): Authed,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (scope, query) = path_request(path_rest(&uri, "/api/tokens/refresh/"), uri.query())
        .map_err(|e| ApiError::from(e).refresh_failed())?;
    let key = TokenKey::new(scope, query.user);
    if !caller.may_read(&key) {
        app.refresher
            .audit(&caller.name, "refresh", &key, Outcome::Denied, None)
            .await;
        return Err(ApiError::forbidden(&key).refresh_failed());
    }
    if !app.refresher.is_obtainable(&key) {
        return Err(ApiError::one_resource_only(&key).refresh_failed());
    }
    let limit = app.refresh_rate_per_min;
    if limit > 0 {
        match app
            .refresher
            .store()
            .count_refresh(&caller.name, &key, 60)
            .await
        {
            Ok((count, retry_after)) if count > u64::from(limit) => {
                app.refresher
                    .audit(&caller.name, "refresh", &key, Outcome::Denied, None)
                    .await;
                return Err(ApiError::too_many_refreshes(&key, limit, retry_after).refresh_failed());
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "token store failed");
                return Err(ApiError::store_unavailable().refresh_failed());
            }
        }
    }
    match app.refresher.force(&key).await {
        Ok(Some(record)) => {
            app.refresher
                .audit(
                    &caller.name,
                    "refresh",
                    &key,
                    Outcome::Ok,
                    Some(&record.token),
                )
                .await;
            Ok(Json(json!({
                "status": "success",
                "message": format!("Token refreshed for scope: {}", key.scope()),
                "scope": key.scope().as_str(),
                "expires_on": record.expires_on,
                "refresh_count": record.refresh_count,
            }))
            .into_response())
        }
        Ok(None) => {
            app.refresher
                .audit(&caller.name, "refresh", &key, Outcome::NotFound, None)
                .await;
            let message = match key.user() {
                Some(_) => "No refresh grant is stored for this user and scope",
                None => {
                    "This scope is not stored and on-demand acquisition is off (TOKEN_ON_DEMAND=false); add it to TOKEN_SCOPES"
                }
            };
            Err(ApiError::token_not_found(&key)
                .with("message", message)
                .refresh_failed())
        }
        Err(error) => {
            app.refresher
                .audit(&caller.name, "refresh", &key, Outcome::Failed, None)
                .await;
            Err(ApiError::refresh(&error, &key).refresh_failed())
        }
    }
}

/// `DELETE /api/tokens/{scope}`: admin only.
pub async fn delete_token(
    State(app): State<AppState>,
    Authed(caller): Authed,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (scope, query) = path_request(path_rest(&uri, "/api/tokens/"), uri.query())?;
    let key = TokenKey::new(scope, query.user);
    if !caller.admin {
        app.refresher
            .audit(&caller.name, "delete", &key, Outcome::Denied, None)
            .await;
        return Err(ApiError::admin_only());
    }
    match app.refresher.delete(&key).await {
        Ok(true) => {
            app.refresher
                .audit(&caller.name, "delete", &key, Outcome::Ok, None)
                .await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Ok(false) => {
            app.refresher
                .audit(&caller.name, "delete", &key, Outcome::NotFound, None)
                .await;
            Err(ApiError::token_not_found(&key))
        }
        Err(error) => {
            app.refresher
                .audit(&caller.name, "delete", &key, Outcome::Failed, None)
                .await;
            tracing::error!(%error, "token store failed");
            Err(ApiError::store_unavailable())
        }
    }
}

/// `PUT /api/tokens/{scope}?user_id=U`: admin only; stores a user's grant.
pub async fn put_token(
    State(app): State<AppState>,
    Authed(caller): Authed,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (scope, query) = path_request(path_rest(&uri, "/api/tokens/"), uri.query())?;
    let Some(user) = query.user else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Invalid user_id",
            "PUT stores a user's grant: give the user as ?user_id=",
        ));
    };
    let key = TokenKey::User(user, scope);
    if !caller.admin {
        app.refresher
            .audit(&caller.name, "store", &key, Outcome::Denied, None)
            .await;
        return Err(ApiError::admin_only());
    }
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("The body must be under {} bytes", super::MAX_BODY),
        )
    })?;
    let grant = parse_grant(&body)?;
    match app.refresher.store_user_grant(&key, grant).await {
        Ok(record) => {
            app.refresher
                .audit(
                    &caller.name,
                    "store",
                    &key,
                    Outcome::Ok,
                    Some(&record.token),
                )
                .await;
            let store = app.refresher.store();
            let has_refresh_token = store.get_secret(&key).await.ok().flatten().is_some();
            let mut body = list_entry(&store.keys().token(&key), &record, None);
            body["status"] = Value::from("stored");
            body["has_refresh_token"] = Value::from(has_refresh_token);
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(error) => {
            app.refresher
                .audit(&caller.name, "store", &key, Outcome::Failed, None)
                .await;
            Err(ApiError::refresh(&error, &key))
        }
    }
}

/// `GET /api/tokens/metrics`: Prometheus (OpenMetrics) text, for any valid key.
pub async fn metrics(State(app): State<AppState>, Authed(_caller): Authed) -> Response {
    let store = app.refresher.store();
    let metrics = &app.refresher.metrics;
    if let Ok(count) = store.active_count().await {
        metrics.tokens_stored.set(count as i64);
    }
    let soonest = store.soonest_expiry().await.ok().flatten();
    metrics
        .soonest_expiry_seconds
        .set(soonest.map_or(-1, |at| at - unix_now()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}
