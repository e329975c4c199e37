//! Per-user delegated tokens: on-behalf-of exchange, grants from elsewhere,
//! refresh with the user's refresh token (sealed at rest), revocation.

use crate::support::*;
use redis::Commands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// base64 of 32 bytes 0..31.
const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// base64 of 32 bytes of 0x2a.
const KEY_B: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
const ASSERTION: &str = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

fn stored(app: &TestApp, key: &str) -> Option<Value> {
    let json: Option<String> = app.redis.conn().get(key).unwrap();
    json.map(|j| serde_json::from_str(&j).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_behalf_of_round_trip_keeps_the_refresh_token_sealed() {
    let app = TestApp::spawn_with(&[("TOKEN_ENCRYPTION_KEY", KEY_A)]).await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    let (status, body) = app
        .put(&path, &app.keys.admin, &json!({"assertion": ASSERTION}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["scope"], GRAPH);
    assert_eq!(body["key"], format!("annika:tokens:user:alice:{GRAPH}"));
    assert_eq!(body["has_refresh_token"], true);
    assert!(
        body.get("token").is_none() && body.get("refresh_token").is_none(),
        "{body}"
    );

    let form = &app.idp.forms()[0];
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(form["requested_token_use"], "on_behalf_of");
    assert_eq!(form["assertion"], ASSERTION);
    assert_eq!(form["scope"], format!("{GRAPH} offline_access"));

    let (status, served) = app.get(&path, Some(&app.keys.alice)).await;
    assert_eq!(status, StatusCode::OK, "{served}");
    let issued = app.idp.issued();
    assert_eq!(served["token"], issued[0], "the exchanged token");
    assert_eq!(served["user_id"], "alice");

    let json = stored(&app, &format!("annika:tokens:user:alice:{GRAPH}")).unwrap();
    assert_eq!(json["user_id"], "alice");
    let refresh_token = &issued[1];
    let raw: String = app
        .redis
        .conn()
        .get(format!("annika:tokens:secret:user:alice:{GRAPH}"))
        .unwrap();
    assert!(!json.to_string().contains(refresh_token.as_str()));
    assert!(
        raw.starts_with("enc:v1:") && !raw.contains(refresh_token.as_str()),
        "sealed at rest"
    );
    let ttl: i64 = app
        .redis
        .conn()
        .ttl(format!("annika:tokens:secret:user:alice:{GRAPH}"))
        .unwrap();
    assert!(ttl > 0, "the refresh token expires too");

    // Deleting the user token removes its refresh token as well.
    let (status, _) = app.delete(&path, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let keys = app.redis_keys();
    assert!(!keys.iter().any(|k| k.contains(":alice:")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_obtained_elsewhere_are_stored_as_given() {
    let app = TestApp::spawn().await;
    let path = "/api/tokens/User.Read?user_id=bob@contoso.com";
    let (status, body) = app.put( path, &app.keys.admin, &json!({"access_token": "eyJ.bob.1", "expires_in": 3600, "refresh_token": "0.bob-rt", "token_type": "Bearer"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!((body["expires_on"].as_i64().unwrap() - unix_now() - 3600).abs() <= 2);
    let (status, served) = app.get(path, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served["token"], "eyJ.bob.1");
    let raw: String = app
        .redis
        .conn()
        .get("annika:tokens:secret:user:bob@contoso.com:User.Read")
        .unwrap();
    assert_eq!(raw, "0.bob-rt", "stored as is without TOKEN_ENCRYPTION_KEY");

    // Replaced by a grant without a refresh token: the old refresh token goes too,
    // so a forced refresh has nothing to use (and never the agent's credentials).
    let expires_on = unix_now() + 1800;
    let (status, body) = app
        .put(
            path,
            &app.keys.admin,
            &json!({"access_token": "eyJ.bob.2", "expires_on": expires_on}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["has_refresh_token"], false);
    assert_eq!(body["refresh_count"], 1);
    let (status, body) = app
        .post(
            "/api/tokens/refresh/User.Read?user_id=bob@contoso.com",
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(
        app.idp.requests(),
        0,
        "nothing was asked of the identity provider"
    );
    let (_, list) = app
        .get("/api/tokens?user_id=bob@contoso.com", Some(&app.keys.admin))
        .await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["tokens"][0]["user_id"], "bob@contoso.com");
    assert_eq!(list["tokens"][0]["flow"], "external");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_refreshes_user_tokens_with_their_own_refresh_token() {
    let app = TestApp::spawn_with(&[("TOKEN_ENCRYPTION_KEY", KEY_A)]).await;
    let (_, agent_before) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.admin),
        )
        .await;
    // A user token with 600 s left is inside the 900 s window: due.
    app.idp.set_expires_in(600);
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    app.put(&path, &app.keys.admin, &json!({"assertion": ASSERTION}))
        .await;
    let first_rt = app.idp.issued().last().unwrap().clone();
    app.idp.set_expires_in(3599);
    let (_, user_before) = app.get(&path, Some(&app.keys.alice)).await;

    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!((summary.due, summary.refreshed), (1, 1), "{summary:?}");
    let form = app.idp.forms().last().unwrap().clone();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(
        form["refresh_token"], first_rt,
        "the user's own refresh token"
    );
    let (_, user_after) = app.get(&path, Some(&app.keys.alice)).await;
    assert_ne!(user_after["token"], user_before["token"]);
    assert_eq!(user_after["refresh_count"], 1);
    // Rotated: the next refresh uses the refresh token that came back.
    let rotated = app.idp.issued().last().unwrap().clone();
    assert_ne!(rotated, first_rt);
    let (status, _) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}?user_id=alice"),
            Some(&app.keys.alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.idp.forms().last().unwrap()["refresh_token"], rotated);

    let (_, agent_after) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(
        agent_after["token"], agent_before["token"],
        "the agent token is untouched"
    );
    assert_eq!(agent_after["refresh_count"], agent_before["refresh_count"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_refresh_token_removes_the_user_token_only() {
    let app = TestApp::spawn().await;
    let (_, agent_before) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.admin),
        )
        .await;
    app.idp.set_expires_in(600);
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    app.put(&path, &app.keys.admin, &json!({"assertion": ASSERTION}))
        .await;
    app.idp.fail_next(Failure::invalid_grant(700082));

    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!((summary.revoked, summary.refreshed), (1, 0), "{summary:?}");
    let keys = app.redis_keys();
    assert!(
        !keys.iter().any(|k| k.contains(":alice:")),
        "token and refresh token removed: {keys:?}"
    );
    let (status, body) = app.get(&path, Some(&app.keys.alice)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, agent_after) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(
        agent_after["token"], agent_before["token"],
        "the agent token is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn user_allowlists_and_user_ids_are_enforced_before_anything_is_written() {
    let app = TestApp::spawn().await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=carol");
    app.put(
        &path,
        &app.keys.admin,
        &json!({"access_token": "eyJ.carol", "expires_in": 3600}),
    )
    .await;
    let (status, body) = app.get(&path, Some(&app.keys.alice)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "alice's key may not read carol's token: {body}"
    );
    let before = app.redis_keys();
    let requests = app.idp.requests();
    for user in ["a:b", "a%3Ab", "a/b", "", "a%00"] {
        let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id={user}");
        let (status, body) = app
            .put(&path, &app.keys.admin, &json!({"assertion": ASSERTION}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{user}: {body}");
        assert_eq!(body["error"], "Invalid user_id");
        let (status, _) = app.get(&path, Some(&app.keys.admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    for body in [
        json!({}),
        json!({"assertion": ASSERTION, "access_token": "x", "expires_in": 5}),
        json!({"access_token": "x"}),
        json!("text"),
        json!({"access_token": "x", "expires_in": -1}),
    ] {
        let (status, answer) = app
            .put("/api/tokens/User.Read?user_id=dave", &app.keys.admin, &body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"], "Invalid body");
    }
    let (status, _) = app
        .put(
            "/api/tokens/User.Read",
            &app.keys.admin,
            &json!({"assertion": ASSERTION}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "PUT needs a user");
    let (status, _) = app
        .put(
            "/api/tokens/User.Read?user_id=dave",
            &app.keys.reader,
            &json!({"assertion": ASSERTION}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins store grants");
    let response = app
        .http
        .put(app.url("/api/tokens/User.Read?user_id=dave"))
        .bearer_auth(&app.keys.admin)
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.redis_keys(), before, "nothing written");
    assert_eq!(app.idp.requests(), requests, "nothing asked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_encryption_key_makes_grants_missing_not_a_crash() {
    let app = TestApp::spawn_with(&[("TOKEN_ENCRYPTION_KEY", KEY_A)]).await;
    app.idp.set_expires_in(600);
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    app.put(&path, &app.keys.admin, &json!({"assertion": ASSERTION}))
        .await;

    // The same Redis, read by an instance configured with another key.
    let mut vars = app.redis.env();
    vars.extend(app.idp.env());
    vars.push(("TOKEN_API_KEYS".into(), app.keys.json.clone()));
    vars.push(("TOKEN_ENCRYPTION_KEY".into(), KEY_B.into()));
    vars.push(("TOKEN_SCOPES".into(), "User.Read".into()));
    let config = token_broker::config::Config::from_vars(vars).unwrap();
    let other = token_broker::AppState::build(&config, token_broker::Setup::standalone()).unwrap();
    let requests = app.idp.requests();
    let summary = other.tokens.sweep().await.unwrap();
    assert_eq!(
        (summary.no_grant, summary.undecryptable, summary.failed),
        (1, 1, 0),
        "{summary:?}"
    );
    assert_eq!(other.tokens.undecryptable_grants(), 1);
    // The access token itself is still served while valid.
    let key = token_broker::domain::TokenKey::User(
        token_broker::domain::UserId::parse("alice").unwrap(),
        token_broker::domain::Scope::parse(GRAPH).unwrap(),
    );
    assert!(other.tokens.ensure(&key, 300).await.unwrap().is_some());
    assert_eq!(
        app.idp.requests(),
        requests + 1,
        "only the warm scope was acquired, no refresh-token request"
    );
    let forms = app.idp.forms();
    assert!(
        forms[requests..]
            .iter()
            .all(|f| f["grant_type"] != "refresh_token")
    );
    let (status, _, _) = app.send(Method::GET, "/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::OK);
}
