//! The broker's own callers at the double: apps that ask for a token for the
//! broker (`client_credentials`, `scope={audience}/.default`) get an RS256
//! token signed by the tenant's current key, and the tenant's keys are
//! published at `/{tenant}/discovery/v2.0/keys` (with a rotation, and an outage
//! switch, and a count of fetches).

use super::{IdpState, TENANT, certs};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A caller app that `TOKEN_API_CALLERS` lists in the tests, and its secret.
pub const CALLER_APP_ID: &str = "ca11e400-0000-4000-8000-000000000001";
pub const CALLER_SECRET: &str = "caller-secret-value-for-tests";
/// The caller app's service principal (its `oid`).
pub const CALLER_OID: &str = "ca11e400-0000-4000-8000-0000000000aa";
/// A caller app that no entry lists, and its secret.
pub const UNLISTED_APP_ID: &str = "ca11e400-0000-4000-8000-000000000002";
pub const UNLISTED_SECRET: &str = "unlisted-secret-value-for-tests";
/// A caller app assigned the broker's app role `Tokens.Read`.
pub const ROLE_APP_ID: &str = "ca11e400-0000-4000-8000-000000000003";
pub const ROLE_SECRET: &str = "role-secret-value-for-tests";
pub const ROLE: &str = "Tokens.Read";
/// Another tenant, whose tokens the double can also sign.
pub const OTHER_TENANT: &str = "other-tenant";

/// The broker's audience at the double: `api://{CLIENT_ID}`.
pub fn audience() -> String {
    format!("api://{}", super::CLIENT_ID)
}

/// The secret of a caller app, if `id` is one.
pub fn caller_secret(id: &str) -> Option<&'static str> {
    match id {
        CALLER_APP_ID => Some(CALLER_SECRET),
        UNLISTED_APP_ID => Some(UNLISTED_SECRET),
        ROLE_APP_ID => Some(ROLE_SECRET),
        _ => None,
    }
}

pub fn caller_app(id: &str) -> Option<&'static str> {
    [CALLER_APP_ID, UNLISTED_APP_ID, ROLE_APP_ID]
        .into_iter()
        .find(|known| *known == id)
}

impl IdpState {
    /// The key tokens are signed with now: `k1`, or `k2` after a rotation.
    fn signing_kid(&self) -> usize {
        if self.rotated.load(Ordering::SeqCst) {
            2
        } else {
            1
        }
    }

    /// The v2.0 access token the caller app `app` gets for the broker.
    pub(super) fn caller_token(&self, app: &str, expires_in: u64) -> String {
        let now = super::unix_now();
        let roles: Vec<&str> = if app == ROLE_APP_ID {
            vec![ROLE]
        } else {
            vec![]
        };
        let claims = json!({
            "aud": audience(),
            "iss": format!("{}/{TENANT}/v2.0", self.authority),
            "iat": now, "nbf": now, "exp": now + expires_in as i64,
            "azp": app, "azpacr": "1", "idtyp": "app",
            "oid": if app == CALLER_APP_ID { CALLER_OID.to_owned() } else { format!("{app}-sp") },
            "sub": format!("{app}-sp"),
            "tid": TENANT, "ver": "2.0", "roles": roles,
        });
        sign(&claims, self.signing_kid(), Algorithm::RS256)
    }
}

/// `claims` signed with signing key `n` (`kid` = `k{n}`) by `alg` (RS256, or
/// HS256 with the public key's PEM as the secret, the classic confusion).
pub fn sign(claims: &Value, n: usize, alg: Algorithm) -> String {
    let key = certs::signing(n);
    let mut header = Header::new(alg);
    header.kid = Some(format!("k{n}"));
    let encoding = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(&key.public_pem),
        _ => EncodingKey::from_rsa_pem(&key.key_pem).expect("an RSA key"),
    };
    jsonwebtoken::encode(&header, claims, &encoding).expect("signed")
}

/// `GET /{tenant}/discovery/v2.0/keys`: the keys published (both after a
/// rotation), or `503` while the endpoint is down.
pub(super) async fn keys(
    State(state): State<Arc<IdpState>>,
    Path(tenant): Path<String>,
) -> Response {
    state.keys_fetches.fetch_add(1, Ordering::SeqCst);
    if state.keys_down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "keys endpoint down").into_response();
    }
    if tenant != TENANT && tenant != OTHER_TENANT {
        return (StatusCode::BAD_REQUEST, "unknown tenant").into_response();
    }
    let first = if state.withdrawn.load(Ordering::SeqCst) {
        state.signing_kid()
    } else {
        1
    };
    let published = first..=state.signing_kid();
    let keys: Vec<Value> = published
        .map(|n| {
            json!({"kty": "RSA", "use": "sig", "kid": format!("k{n}"), "n": certs::signing(n).modulus, "e": "AQAB"})
        })
        .collect();
    Json(json!({ "keys": keys })).into_response()
}
