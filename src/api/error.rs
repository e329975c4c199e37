//! The one error type at the HTTP edge: a status, a JSON body with a stable
//! `error` title and a `message` saying what to do, and `Retry-After` when known.

use crate::callers::{AuthError, Callers};
use crate::domain::{InputError, TokenKey};
use crate::identity::IdpError;
use crate::refresh::RefreshError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
    retry_after: Option<u64>,
    /// The `Allow` header of a `405`.
    allow: Option<&'static str>,
    /// The `WWW-Authenticate` header of a `401`.
    www_authenticate: Option<String>,
}

/// When the identity provider gave no hint, callers retry after this long.
const DEFAULT_RETRY_AFTER: u64 = 10;

impl ApiError {
    pub fn new(status: StatusCode, title: &str, message: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), title.into());
        body.insert("message".into(), message.into().into());
        Self {
            status,
            body,
            retry_after: None,
            allow: None,
            www_authenticate: None,
        }
    }

    pub fn with(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.body.insert(field.into(), value.into());
        self
    }

    /// Adds `scope` and, for user tokens, `user_id` to the body.
    fn about(self, key: &TokenKey) -> Self {
        let this = self.with("scope", key.scope().as_str());
        match key.user() {
            Some(user) => this.with("user_id", user.as_str()),
            None => this,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The refresh route's failures also carry `"status": "failed"` (SPEC §5).
    pub fn refresh_failed(self) -> Self {
        self.with("status", "failed")
    }

    pub fn bad_input(error: InputError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error.title(), error.to_string())
    }

    /// `401` with `WWW-Authenticate`, or `403` for a valid Entra token that no
    /// caller entry names.
    pub fn unauthorized(error: AuthError, callers: &Callers) -> Self {
        let entra = callers.methods().entra;
        let message = match error {
            AuthError::Unlisted => {
                return Self::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "The token is valid, but no TOKEN_API_CALLERS entry names its application, object id or role",
                );
            }
            AuthError::Missing | AuthError::Unknown if entra => {
                "Send an Entra ID access token for this service, or a valid API key, as 'Authorization: Bearer <token>'".to_owned()
            }
            AuthError::Missing | AuthError::Unknown => {
                "Send a valid API key as 'Authorization: Bearer <key>' or 'x-functions-key: <key>'".to_owned()
            }
            AuthError::InvalidToken(why) => {
                format!("The Entra ID access token is not valid for this service: {why}")
            }
            AuthError::NoneConfigured => {
                "No API keys are configured: create one with 'handler keys new --name <app> --scope <scope>' and put its entry in TOKEN_API_KEYS (or TOKEN_API_KEYS_FILE); TOKEN_API_AUTH=none turns authentication off".to_owned()
            }
        };
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message);
        e.www_authenticate = Some(callers.challenge(error));
        e
    }

    pub fn one_resource_only(key: &TokenKey) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Invalid scope",
            "Agent tokens come from a managed identity, which gets a token for one resource at a time; ask for each scope separately",
        )
        .about(key)
    }

    pub fn forbidden(key: &TokenKey) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "This caller may not use this token; extend the scopes/users of its entry",
        )
        .about(key)
    }

    pub fn admin_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Only an admin API key may do this",
        )
    }

    pub fn token_not_found(key: &TokenKey) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Token not found",
            "No valid token found for the specified scope",
        )
        .about(key)
    }

    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such route; the API is under /api/tokens",
        )
    }

    /// `allow`: the methods the route does take.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut error = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "This route does not accept this method",
        );
        error.allow = Some(allow);
        error
    }

    pub fn too_many_refreshes(key: &TokenKey, per_minute: u32, retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many refreshes",
            format!("This API key may force at most {per_minute} refreshes of this token per minute (TOKEN_REFRESH_RATE_PER_MIN); reads are never limited"),
        )
        .about(key);
        error.retry_after = Some(retry_after);
        error
    }

    pub fn store_unavailable() -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Token store unavailable",
            "The token store (Redis) cannot be reached; retry shortly",
        );
        error.retry_after = Some(DEFAULT_RETRY_AFTER);
        error
    }

    pub fn refresh(error: &RefreshError, key: &TokenKey) -> Self {
        match error {
            RefreshError::Store(e) => {
                tracing::error!(error = %e, "token store failed");
                Self::store_unavailable().about(key)
            }
            RefreshError::Idp(e) => Self::idp(e).about(key),
            RefreshError::BackingOff {
                retry_after,
                status,
            } => {
                // Answer as the failure being waited out was answered, so a caller
                // sees the same error whether it asked first or later.
                let mut e = if status.last_error == "invalid_scope" {
                    Self::new(
                        StatusCode::BAD_REQUEST,
                        "Invalid scope",
                        "The identity provider does not know this scope",
                    )
                } else if status.transient {
                    Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Identity provider unavailable",
                        "The last token request for this key failed and no valid token is stored; retry after the given delay",
                    )
                } else {
                    Self::new(
                        StatusCode::BAD_GATEWAY,
                        "Token acquisition failed",
                        "The identity provider refused the last token request for this key; check the service's credentials and consent",
                    )
                };
                e = e
                    .with("last_error", status.last_error.as_str())
                    .with("aadsts", aadsts_code(status.aadsts))
                    .with(
                        "reason",
                        status
                            .aadsts
                            .map_or(Value::Null, |c| crate::identity::describe_aadsts(c).into()),
                    );
                e.retry_after = Some((*retry_after).max(1));
                e.about(key)
            }
            RefreshError::NoGrant { undecryptable } => {
                let message = if *undecryptable {
                    "The stored refresh token cannot be decrypted with the current TOKEN_ENCRYPTION_KEY; store a new grant with PUT"
                } else {
                    "No refresh token is stored for this user and scope; store a grant with PUT"
                };
                Self::token_not_found(key).with("message", message)
            }
            RefreshError::GrantRevoked => Self::token_not_found(key).with(
                "message",
                "The identity provider rejected the user's refresh token (revoked or expired); the token was removed; store a new grant with PUT",
            ),
            RefreshError::Expired => Self::new(
                StatusCode::BAD_REQUEST,
                "Invalid grant",
                "The token has already expired",
            ),
            RefreshError::Busy => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Refresh in progress",
                    "Another instance is still refreshing this token; retry shortly",
                );
                e.retry_after = Some(DEFAULT_RETRY_AFTER);
                e.about(key)
            }
            RefreshError::Aborted => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Refresh interrupted",
                    "The token request stopped before finishing (the service may be shutting down); retry shortly",
                );
                e.retry_after = Some(DEFAULT_RETRY_AFTER);
                e.about(key)
            }
        }
    }

    fn idp(error: &IdpError) -> Self {
        let code = |aadsts: &Option<u32>| {
            aadsts
                .map(|c| json!(format!("AADSTS{c}")))
                .unwrap_or(Value::Null)
        };
        match error {
            IdpError::Rejected { error: title, aadsts, .. } if title == "invalid_scope" => Self::new(
                StatusCode::BAD_REQUEST,
                "Invalid scope",
                "The identity provider does not know this scope",
            )
            .with("aadsts", code(aadsts)),
            IdpError::Rejected { error: title, aadsts, .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "Token acquisition failed",
                "The identity provider refused to issue a token; check the service's credentials and consent",
            )
            .with("idp_error", title.as_str())
            .with("aadsts", code(aadsts))
            .with("reason", error.reason().map_or(Value::Null, Value::from)),
            IdpError::Unavailable { retry_after, aadsts, .. } => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Identity provider unavailable",
                    "The identity provider is throttling or unavailable and no valid token is stored; retry after the given delay",
                )
                .with("aadsts", code(aadsts));
                e.retry_after = Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER));
                e
            }
            // The agent's own credential: answered as its cause, and said so.
            IdpError::Credential(inner) => Self::idp(inner).with("credential", true),
            IdpError::NotConfigured => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Per-user tokens not configured",
                "Per-user tokens need the app registration's AZURE_TENANT_ID, AZURE_CLIENT_ID and a secret or certificate, or Entra Agent ID",
            ),
            IdpError::Unreachable(_) | IdpError::Protocol(_) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Identity provider unavailable",
                    "The identity provider could not be reached and no valid token is stored; retry shortly",
                );
                e.retry_after = Some(DEFAULT_RETRY_AFTER);
                e
            }
        }
    }
}

fn aadsts_code(code: Option<u32>) -> Value {
    code.map(|c| json!(format!("AADSTS{c}")))
        .unwrap_or(Value::Null)
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        Self::bad_input(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(Value::Object(self.body))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(challenge) = self
            .www_authenticate
            .and_then(|c| HeaderValue::try_from(c).ok())
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}
