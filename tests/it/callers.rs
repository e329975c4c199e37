//! Callers with Entra ID tokens (SPEC §7): tokens the double mints for caller
//! apps are accepted (v2 and v1, by app id or app role) next to API keys;
//! forged, foreign, expired and garbled ones get `401` with `WWW-Authenticate`
//! and unlisted ones `403`, with nothing written and nothing asked of the token
//! endpoint; key rotation and a keys endpoint outage are ridden out.

use crate::support::idp::*;
use crate::support::*;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn callers_json() -> String {
    json!([
        {"name": "reporting-app", "app_id": CALLER_APP_ID, "scopes": [GRAPH], "users": []},
        {"name": "role-readers", "role": ROLE, "scopes": ["User.*"]},
    ])
    .to_string()
}

async fn spawn() -> TestApp {
    let callers = callers_json();
    TestApp::spawn_as(
        Idp::env,
        &[
            ("TOKEN_API_AUTH", "keys,entra"),
            ("TOKEN_API_CALLERS", &callers),
            ("TOKEN_AUDIT_STREAM", "true"),
        ],
        true,
    )
    .await
}

/// Claims of a valid v2.0 token of the listed caller app, issued by the double.
fn claims(app: &TestApp) -> Value {
    let now = unix_now();
    json!({
        "aud": audience(), "iss": format!("{}/{TENANT}/v2.0", app.idp.authority()),
        "iat": now, "nbf": now, "exp": now + 3600, "azp": CALLER_APP_ID,
        "oid": CALLER_OID, "tid": TENANT, "ver": "2.0", "roles": [],
        "jti": format!("{:x}", rand::random::<u64>()),
    })
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

/// `claims` signed RS256 by a key the tenant never published, naming `kid`.
fn own_key(claims: &Value, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&crate::support::certs::unknown().key_pem).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// `claims` signed by the tenant's key, with no `kid` in the header.
fn no_kid(claims: &Value) -> String {
    let header = jsonwebtoken::Header::new(Algorithm::RS256);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&crate::support::certs::signing(1).key_pem)
        .unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn without(claims: &Value, name: &str) -> Value {
    let mut claims = claims.clone();
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

const GRAPH_PATH: &str = "/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2F.default";

async fn read(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    app.send(Method::GET, path, Some(token)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_callers_are_allowed_by_app_id_and_role_next_to_api_keys() {
    let app = spawn().await;
    // v2.0, from the token endpoint like any client's.
    let token = app.idp.caller_token(CALLER_APP_ID).await;
    let (status, body, _) = read(&app, GRAPH_PATH, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same token again (its verdict is remembered), and a scope its entry
    // does not list.
    let (status, _, _) = read(&app, GRAPH_PATH, &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = read(&app, "/api/tokens/User.Read", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // v1.0: the old issuer and `appid`.
    let v1 = with(
        claims(&app),
        json!({"iss": format!("https://sts.windows.net/{TENANT}/"), "ver": "1.0", "appid": CALLER_APP_ID, "azp": null}),
    );
    let (status, body, _) = read(&app, GRAPH_PATH, &sign(&v1, 1, Algorithm::RS256)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // `aud` = the bare client id, as v1 tokens may carry it.
    let bare = with(claims(&app), json!({"aud": CLIENT_ID}));
    let (status, body, _) = read(&app, GRAPH_PATH, &sign(&bare, 1, Algorithm::RS256)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // By app role.
    let token = app.idp.caller_token(ROLE_APP_ID).await;
    let (status, body, _) = read(&app, "/api/tokens/User.Read", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = read(&app, GRAPH_PATH, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Valid, but no entry names it.
    let token = app.idp.caller_token(UNLISTED_APP_ID).await;
    let (status, body, headers) = read(&app, GRAPH_PATH, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("TOKEN_API_CALLERS")
    );
    assert!(!headers.contains_key("www-authenticate"));
    // API keys still work.
    let (status, _, _) = read(&app, GRAPH_PATH, &app.keys.reader).await;
    assert_eq!(status, StatusCode::OK);

    // Audit events name the entry and the caller's oid.
    let events: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("annika:tokens:audit")
        .arg("-")
        .arg("+")
        .query(&mut app.redis.conn())
        .unwrap();
    let first = &events[0].1;
    let field = |name: &str| {
        first
            .chunks(2)
            .find(|kv| kv[0] == name)
            .map(|kv| kv[1].clone())
    };
    assert_eq!(field("caller").as_deref(), Some("reporting-app"));
    assert_eq!(field("caller_oid").as_deref(), Some(CALLER_OID));
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_foreign_expired_and_garbled_tokens_get_401_and_change_nothing() {
    let app = spawn().await;
    // The service holds the tenant's keys (a first valid call), and a minute has
    // passed since it fetched them.
    let valid = app.idp.caller_token(CALLER_APP_ID).await;
    assert_eq!(read(&app, GRAPH_PATH, &valid).await.0, StatusCode::OK);
    app.advance(Duration::from_secs(61));
    let now = unix_now();
    let good = claims(&app);
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
        b64(&good)
    );
    // Cut inside the signature to a length base64 never has (4n + 1), so it cannot
    // decode. A cut that leaves decodable base64 (1 in 16 of the cuts 12 characters
    // from the end) is a bad signature instead, which the garbled case covers.
    let signature_at = valid.rfind('.').unwrap() + 1;
    let kept = (valid.len() - signature_at - 12) / 4 * 4 + 1;
    let truncated = valid[..signature_at + kept].to_owned();
    let mut garbled = valid.clone().into_bytes();
    let middle = garbled.len() / 2;
    garbled[middle] = if garbled[middle] == b'A' { b'B' } else { b'A' };
    let garbled = String::from_utf8(garbled).unwrap();
    let signed = |changes: Value| sign(&with(good.clone(), changes), 1, Algorithm::RS256);
    let other_issuer = format!("{}/{OTHER_TENANT}/v2.0", app.idp.authority());
    let cases = [
        ("alg none", none, "malformed"),
        (
            "HS256 with the public key",
            sign(&good, 1, Algorithm::HS256),
            "not signed with RS256",
        ),
        (
            "wrong aud",
            signed(json!({"aud": "api://someone-else"})),
            "wrong audience",
        ),
        (
            "wrong iss",
            signed(json!({"iss": format!("https://evil.example/{TENANT}/v2.0")})),
            "wrong issuer",
        ),
        (
            "another tenant",
            signed(json!({"tid": OTHER_TENANT, "iss": other_issuer})),
            "wrong issuer",
        ),
        (
            "another tenant's tid",
            signed(json!({"tid": OTHER_TENANT})),
            "another tenant",
        ),
        (
            "expired",
            signed(json!({"exp": now - 3600, "nbf": now - 7200})),
            "expired",
        ),
        (
            "nbf ahead",
            signed(json!({"nbf": now + 3600})),
            "not valid yet (nbf)",
        ),
        (
            "unknown kid",
            sign(&good, 2, Algorithm::RS256),
            "a key the tenant does not publish",
        ),
        ("truncated", truncated, "malformed"),
        (
            "an attacker's key claiming kid k1",
            own_key(&good, "k1"),
            "bad signature",
        ),
        ("no kid", no_kid(&good), "no key id (kid)"),
        ("no tid", signed(json!({"tid": null})), "another tenant"),
        (
            "no exp",
            sign(&without(&good, "exp"), 1, Algorithm::RS256),
            "missing claim",
        ),
        ("garbled", garbled, "bad signature"),
    ];
    // The valid read records itself for the idle rule in a task of its own: wait
    // for that record, so that the snapshot holds all the service wrote.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !app
        .redis
        .snapshot()
        .iter()
        .any(|(key, value)| key.ends_with("tokens:reads") && value.contains(GRAPH))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the read was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = app.redis.snapshot();
    let asked = app.idp.requests();
    let fetches = app.idp.keys_fetches();
    for (case, token, reason) in &cases {
        let (status, body, headers) = read(&app, GRAPH_PATH, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        assert!(
            body["message"].as_str().unwrap().ends_with(reason),
            "{case}: {body}"
        );
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer ")
                && challenge.contains(&format!("resource_id=\"{}\"", audience()))
                && challenge.contains("error=\"invalid_token\""),
            "{case}: {challenge}"
        );
    }
    // The unknown kid made one fetch of the keys; asking again makes none.
    assert_eq!(app.idp.keys_fetches(), fetches + 1);
    assert_eq!(
        read(&app, GRAPH_PATH, &cases[8].1).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.idp.keys_fetches(), fetches + 1);
    // No token at all: a challenge without an error.
    let (status, _, headers) = app.send(Method::GET, GRAPH_PATH, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=")
    );
    assert_eq!(app.redis.snapshot(), before, "nothing written");
    assert_eq!(
        app.idp.requests(),
        asked,
        "nothing asked of the token endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_is_picked_up_and_a_keys_outage_is_ridden_out() {
    let app = spawn().await;
    let first = app.idp.caller_token(CALLER_APP_ID).await;
    assert_eq!(read(&app, GRAPH_PATH, &first).await.0, StatusCode::OK);
    assert_eq!(app.idp.keys_fetches(), 1);

    // The keys endpoint goes down: a token with a key id not held makes one
    // failed fetch, and the keys held keep working for new tokens.
    app.idp.set_keys_down(true);
    app.advance(Duration::from_secs(61));
    let unknown = sign(&claims(&app), 2, Algorithm::RS256);
    assert_eq!(
        read(&app, GRAPH_PATH, &unknown).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.idp.keys_fetches(), 2);
    let fresh = sign(&claims(&app), 1, Algorithm::RS256);
    assert_eq!(read(&app, GRAPH_PATH, &fresh).await.0, StatusCode::OK);

    // Back up, and the tenant rotates to a new key: picked up without a restart.
    app.idp.set_keys_down(false);
    app.idp.rotate_signing_key();
    app.advance(Duration::from_secs(61));
    let rotated = app.idp.caller_token(CALLER_APP_ID).await;
    let (status, body, _) = read(&app, GRAPH_PATH, &rotated).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.idp.keys_fetches(), 3);
    assert_eq!(read(&app, GRAPH_PATH, &first).await.0, StatusCode::OK);

    // A remembered verdict ends with its token.
    app.advance(Duration::from_secs(3600 + 61));
    let (status, body, _) = read(&app, GRAPH_PATH, &first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// A key the tenant withdraws stops counting within a day: the daily fetch
/// drops it, and verdicts reached with it are made again (and refused).
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_key_stops_counting_after_the_daily_fetch() {
    let app = spawn().await;
    let long = |n: usize| {
        let claims = with(claims(&app), json!({"exp": unix_now() + 3 * 86_400}));
        sign(&claims, n, Algorithm::RS256)
    };
    let old = long(1);
    assert_eq!(read(&app, GRAPH_PATH, &old).await.0, StatusCode::OK);
    app.idp.rotate_signing_key();
    app.idp.withdraw_old_key();
    // A day later a new token (new key) is checked: the daily fetch runs.
    app.advance(Duration::from_secs(86_400 + 61));
    let fetches = app.idp.keys_fetches();
    assert_eq!(read(&app, GRAPH_PATH, &long(2)).await.0, StatusCode::OK);
    assert_eq!(app.idp.keys_fetches(), fetches + 1);
    // The old key's token, remembered on this connection and in the verdicts,
    // is checked again and refused.
    let (status, body, _) = read(&app, GRAPH_PATH, &old).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with("a key the tenant does not publish"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_answers_carry_a_bearer_challenge_too() {
    let app = TestApp::spawn().await;
    let (status, _, headers) = app.send(Method::GET, GRAPH_PATH, Some("tbk_wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"token-broker\", error=\"invalid_token\""
    );
    let (_, _, headers) = app.send(Method::GET, GRAPH_PATH, None).await;
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"token-broker\"");
}
