//! The token routes. Each works out what happened, then audits it once.

use super::input::{TokenQuery, parse_query, path_request};
use super::limits::MAX_BODY;
use super::{ApiError, Route, parse_grant};
use crate::app::AppState;
use crate::audit::{Action, Outcome};
use crate::callers::Caller;
use crate::domain::{Scope, TokenKey, UserId};
use crate::refresh::Stored;
use crate::store::{RefreshStatus, StoredToken, TokenRecord};
use axum::Json;
use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Why a token operation did not happen: its audit outcome and its answer.
type Refused = (Outcome, ApiError);

/// Audits `result` once, then turns it into the route's answer.
async fn audited<T>(
    app: &AppState,
    caller: &Caller,
    action: Action,
    key: &TokenKey,
    result: Result<T, Refused>,
    token_fp: impl Fn(&T) -> Option<&str>,
) -> Result<T, ApiError> {
    let (outcome, handed_out) = match &result {
        Ok(done) => (Outcome::Ok, token_fp(done)),
        Err((outcome, _)) => (*outcome, None),
    };
    app.audit
        .record(
            &caller.name,
            caller.oid.as_deref(),
            action,
            key,
            outcome,
            handed_out,
        )
        .await;
    result.map_err(|(_, error)| error)
}

/// `GET /api/tokens/{scope}` (the hot path), and `GET /api/tokens?scope=X`.
pub(super) async fn read(
    app: &AppState,
    caller: &Caller,
    scope: Scope,
    query: TokenQuery,
) -> Result<Response, ApiError> {
    let key = TokenKey::new(scope, query.user);
    serve(app, caller, key, query.min_validity).await
}

/// `GET /api/tokens?scope=X` reads a token; `GET /api/tokens` lists them.
pub(super) async fn list_or_get(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let mut query = parse_query(uri.query())?;
    match query.scope.take() {
        Some(scope) => read(app, caller, scope, query).await,
        None => list(app, caller, query.user.as_ref()).await,
    }
}

async fn serve(
    app: &AppState,
    caller: &Caller,
    key: TokenKey,
    min_validity: Option<u64>,
) -> Result<Response, ApiError> {
    if caller.may_read(&key) && !app.tokens.is_obtainable(&key) {
        return Err(ApiError::one_resource_only(&key));
    }
    // A caller may ask for more validity than the service minimum, never for less.
    let floor = app.tokens.settings().min_validity_secs;
    let min_validity = min_validity.unwrap_or(floor).max(floor);
    let result = match caller.may_read(&key) {
        false => Err((Outcome::Denied, ApiError::forbidden(&key))),
        true => match app.tokens.ensure(&key, min_validity).await {
            Ok(Some(served)) if served.seconds_left(app.clock.now()) >= min_validity as i64 => {
                Ok(served)
            }
            Ok(_) => Err((
                Outcome::NotFound,
                ApiError::token_not_found(&key).with("min_validity", min_validity),
            )),
            Err(error) => Err((Outcome::Failed, ApiError::refresh(&error, &key))),
        },
    };
    let served = audited(app, caller, Action::Read, &key, result, |s| {
        Some(&s.fingerprint)
    })
    .await?;
    app.tokens.note_read(&key, &served);
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
    let listing = app.store.list().await.map_err(|e| {
        tracing::error!(error = %e, "token store failed");
        ApiError::store_unavailable()
    })?;
    let now = app.clock.now();
    let visible: Vec<&StoredToken> = listing
        .iter()
        .filter(|t| t.record.expires_on > now && caller.may_read(&t.key))
        .filter(|t| user.is_none() || t.key.user() == user)
        .collect();
    let visible_keys: Vec<TokenKey> = visible.iter().map(|t| t.key.clone()).collect();
    // Refresh failures are shown with the token; a listing without them is still useful.
    let statuses = app.store.statuses(&visible_keys).await.unwrap_or_default();
    let tokens: Vec<Value> = visible
        .iter()
        .enumerate()
        .map(|(i, t)| list_entry(&t.name, &t.record, statuses.get(i).cloned().flatten()))
        .collect();
    Ok(Json(json!({"count": tokens.len(), "tokens": tokens})).into_response())
}

/// Metadata only: a listing never carries a token value.
fn list_entry(name: &str, record: &TokenRecord, status: Option<RefreshStatus>) -> Value {
    let mut entry = json!({
        "scope": record.scope,
        "expires_on": record.expires_on,
        "stored_at": record.stored_at,
        "refresh_count": record.refresh_count,
        "key": name,
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
            "message": status.message,
            "last_attempt": status.last_attempt,
            "next_attempt": status.next_attempt,
        });
    }
    entry
}

/// `POST /api/tokens/refresh/{scope}`: a new token from the identity provider.
pub(super) async fn refresh(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let answer = async {
        let (scope, query) = path_request(Route::Refresh.scope_part(uri.path()), uri.query())?;
        let key = TokenKey::new(scope, query.user);
        if caller.may_read(&key) && !app.tokens.is_obtainable(&key) {
            return Err(ApiError::one_resource_only(&key));
        }
        let result = force(app, caller, &key).await;
        let record = audited(app, caller, Action::Refresh, &key, result, |r| {
            Some(r.token.fingerprint())
        })
        .await?;
        Ok(Json(json!({
            "status": "success",
            "message": format!("Token refreshed for scope: {}", key.scope()),
            "scope": key.scope().as_str(),
            "expires_on": record.expires_on,
            "refresh_count": record.refresh_count,
        }))
        .into_response())
    };
    answer.await.map_err(ApiError::refresh_failed)
}

async fn force(app: &AppState, caller: &Caller, key: &TokenKey) -> Result<TokenRecord, Refused> {
    if !caller.may_read(key) {
        return Err((Outcome::Denied, ApiError::forbidden(key)));
    }
    let limit = app.refresh_rate_per_min;
    if limit > 0 {
        match app.store.count_refresh(&caller.name, key, 60).await {
            Ok((count, retry_after)) if count > u64::from(limit) => {
                return Err((
                    Outcome::Denied,
                    ApiError::too_many_refreshes(key, limit, retry_after),
                ));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "token store failed");
                return Err((Outcome::Failed, ApiError::store_unavailable()));
            }
        }
    }
    match app.tokens.force(key).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => {
            let message = match key.user() {
                Some(_) => "No refresh grant is stored for this user and scope",
                None => {
                    "This scope is not stored and on-demand acquisition is off (TOKEN_ON_DEMAND=false); add it to TOKEN_SCOPES"
                }
            };
            Err((
                Outcome::NotFound,
                ApiError::token_not_found(key).with("message", message),
            ))
        }
        Err(error) => Err((Outcome::Failed, ApiError::refresh(&error, key))),
    }
}

/// `DELETE /api/tokens/{scope}`: admin only.
pub(super) async fn delete(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let (scope, query) = path_request(Route::Delete.scope_part(uri.path()), uri.query())?;
    let key = TokenKey::new(scope, query.user);
    let result = match caller.admin {
        false => Err((Outcome::Denied, ApiError::admin_only())),
        true => match app.tokens.delete(&key).await {
            Ok(true) => Ok(()),
            Ok(false) => Err((Outcome::NotFound, ApiError::token_not_found(&key))),
            Err(error) => {
                tracing::error!(%error, "token store failed");
                Err((Outcome::Failed, ApiError::store_unavailable()))
            }
        },
    };
    audited(app, caller, Action::Delete, &key, result, |_| None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/tokens/{scope}?user_id=U`: admin only; stores a user's grant.
pub(super) async fn store(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let (scope, query) = path_request(Route::Store.scope_part(uri.path()), uri.query())?;
    let Some(user) = query.user else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Invalid user_id",
            "PUT stores a user's grant: give the user as ?user_id=",
        ));
    };
    let key = TokenKey::User(user, scope);
    let result = match caller.admin {
        false => Err((Outcome::Denied, ApiError::admin_only())),
        true => {
            let grant = read_grant(app, body).await?;
            app.tokens
                .store_user_grant(&key, grant)
                .await
                .map_err(|error| (Outcome::Failed, ApiError::refresh(&error, &key)))
        }
    };
    let Stored {
        record,
        has_refresh_token,
    } = audited(app, caller, Action::Store, &key, result, |s| {
        Some(s.record.token.fingerprint())
    })
    .await?;
    let mut body = list_entry(&app.store.token_name(&key), &record, None);
    body["status"] = Value::from("stored");
    body["has_refresh_token"] = Value::from(has_refresh_token);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The body of a `PUT`: bad input is refused before anything is audited, asked
/// or written.
async fn read_grant(app: &AppState, body: Body) -> Result<crate::refresh::UserGrant, ApiError> {
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("The body must be under {MAX_BODY} bytes"),
        )
    })?;
    Ok(parse_grant(&body, app.clock.now())?)
}
