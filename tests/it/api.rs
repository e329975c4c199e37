//! The HTTP API of SPEC §5 against a real Redis and the identity-provider double.

use crate::support::*;
use redis::Commands;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};
use token_broker::domain::{Scope, TokenKey};

fn dbsize(app: &TestApp) -> u64 {
    redis::cmd("DBSIZE").query(&mut app.redis.conn()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scope_form_serves_the_same_token_with_one_idp_request() {
    let app = TestApp::spawn().await;
    let key = Some(app.keys.reader.as_str());
    let (status, first) = app.get(&format!("/api/tokens/{GRAPH_ENCODED}"), key).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["scope"], GRAPH);
    assert_eq!(first["refresh_count"], 0);
    assert!(first["token"].as_str().unwrap().starts_with("eyJ"));
    for path in [
        "/api/tokens/https%3a%2f%2fgraph.microsoft.com%2f.default".to_owned(),
        format!("/api/tokens/{GRAPH}"),
        "/api/tokens/https:/graph.microsoft.com/.default".to_owned(),
        format!("/api/tokens?scope={GRAPH_ENCODED}"),
        format!("/api/tokens?scope={GRAPH}"),
        format!("/api/tokens/{GRAPH_ENCODED}?min_validity=60"),
    ] {
        let (status, body) = app.get(&path, key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["token"], first["token"], "{path}");
    }
    assert_eq!(app.idp.requests(), 1);

    // Multi-scope forms: '+', '%20' and a literal space in the query.
    for path in [
        "/api/tokens/User.Read+Mail.Send",
        "/api/tokens/User.Read%20Mail.Send",
        "/api/tokens?scope=User.Read+Mail.Send",
    ] {
        let (status, body) = app.get(path, Some(&app.keys.admin)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["scope"], "User.Read Mail.Send", "{path}");
    }
    assert_eq!(app.idp.requests(), 2);
    let keys = app.redis_keys();
    assert!(
        keys.contains(&"annika:tokens:agent:User.Read Mail.Send".to_owned()),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_first_requests_cause_one_token_request() {
    let app = TestApp::spawn().await;
    let scope_key = TokenKey::Agent(Scope::parse(GRAPH).unwrap());
    app.idp.hold();
    let mut requests = Vec::new();
    for _ in 0..50 {
        let (http, url, key) = (
            app.http.clone(),
            app.url(&format!("/api/tokens/{GRAPH_ENCODED}")),
            app.keys.reader.clone(),
        );
        requests.push(tokio::spawn(async move {
            send(&http, Method::GET, &url, Some(&key)).await
        }));
    }
    // Release the identity provider only once all 50 callers wait on the one flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.tokens.flight_waiters(&scope_key) < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} callers arrived",
            app.state.tokens.flight_waiters(&scope_key)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.idp.release();
    let mut tokens = std::collections::HashSet::new();
    for request in requests {
        let (status, body, _) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.insert(body["token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(app.idp.requests(), 1, "exactly one token request");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_wrong_key_is_401_and_either_header_works() {
    let app = TestApp::spawn().await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    for key in [None, Some("tbk_not-a-key")] {
        let (status, body) = app.get(&path, key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "Unauthorized");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer")
        );
    }
    let (status, _) = app.get("/api/tokens", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post(&format!("/api/tokens/refresh/{GRAPH_ENCODED}"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.idp.requests(),
        0,
        "no token request for unauthenticated callers"
    );

    let response = app
        .http
        .get(app.url(&path))
        .header("x-functions-key", &app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_keys_configured_is_401_saying_how_to_configure_them() {
    let app = TestApp::spawn_with(&[("TOKEN_API_KEYS", "[]")]).await;
    let (status, body) = app
        .get(&format!("/api/tokens/{GRAPH_ENCODED}"), Some("anything"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("handler keys new") && message.contains("TOKEN_API_KEYS"),
        "{message}"
    );
    let (status, body) = app.get("/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_none_is_an_explicit_opt_out() {
    let app = TestApp::spawn_with(&[("TOKEN_API_AUTH", "none")]).await;
    let (status, body) = app.get(&format!("/api/tokens/{GRAPH_ENCODED}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_scope_user_or_delete_is_403() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .get("/api/tokens/Mail.Send", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "Forbidden");
    assert_eq!(body["scope"], "Mail.Send");
    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}?user_id=bob"),
            Some(&app.keys.alice),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["user_id"], "bob");
    let (status, _) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "users: [] means agent tokens only"
    );
    let (status, _) = app
        .post("/api/tokens/refresh/Mail.Send", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .delete(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "Forbidden");
    assert_eq!(app.idp.requests(), 0);
    assert_eq!(dbsize(&app), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_tokens_are_served_only_to_their_user() {
    let app = TestApp::spawn().await;
    // Another application stored alice's token directly, in the seed's layout.
    let expires_on = unix_now() + 3600;
    let json = serde_json::json!({"token": "eyJ.alice.token", "expires_on": expires_on, "scope": GRAPH,
        "stored_at": expires_on - 3600, "refresh_count": 4, "user_id": "alice", "metadata": {}});
    let key = format!("annika:tokens:user:alice:{GRAPH}");
    let _: () = app
        .redis
        .conn()
        .set_ex(&key, json.to_string(), 3600)
        .unwrap();

    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice"),
            Some(&app.keys.alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token"], "eyJ.alice.token");
    assert_eq!(body["refresh_count"], 4);
    assert_eq!(body["user_id"], "alice");

    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}?user_id=carol"),
            Some(&app.keys.admin),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "never the agent token for a user"
    );
    assert_eq!(body["error"], "Token not found");
    assert_eq!(
        body["message"],
        "No valid token found for the specified scope"
    );
    assert_eq!(body["scope"], GRAPH);

    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(
        body["token"], "eyJ.alice.token",
        "nor the user's token for the agent"
    );
    assert_eq!(app.idp.requests(), 1, "only the agent token was acquired");
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_outside_on_demand_are_404() {
    let app = TestApp::spawn_with(&[("TOKEN_ON_DEMAND", "false"), ("TOKEN_SCOPES", GRAPH)]).await;
    let (status, body) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Token not found");
    assert_eq!(body["scope"], "User.Read");
    let (status, body) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], "failed");
    assert_eq!(app.idp.requests(), 0);
    // A warm scope is still acquired on first use (after the one acquired at
    // start is deleted).
    let graph = format!("/api/tokens/{GRAPH_ENCODED}");
    let (status, _) = app.delete(&graph, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get(&graph, Some(&app.keys.reader)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.idp.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_provider_outage_without_a_stored_token_is_503_with_retry_after() {
    let app = TestApp::spawn_manual(&[("TOKEN_REFRESH_BACKOFF_SECS", "1")]).await;
    app.idp.set_outage(Some(Failure::unavailable(42)));
    let (status, body, headers) = app
        .send(
            Method::GET,
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "Identity provider unavailable");
    assert_eq!(body["aadsts"], "AADSTS90006");
    assert_eq!(headers["retry-after"], "42");
    let (status, body, headers) = app
        .send(
            Method::POST,
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "failed");
    assert_eq!(headers["retry-after"], "42");
    assert!(
        !body.to_string().contains("injected"),
        "Entra's description is not echoed"
    );
    let (_, health) = app.get("/api/tokens/health", None).await;
    let last_error = health["identity_provider"]["last_error"]["error"]
        .as_str()
        .unwrap();
    assert!(
        last_error.contains("503") && last_error.contains("AADSTS90006"),
        "{health}"
    );

    app.idp.set_outage(None);
    app.idp.fail_next(Failure::throttled(2));
    let (status, _, headers) = app
        .send(Method::GET, "/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "2");
    let requests = app.idp.requests();
    // Retry-After is honoured for every caller: no request before it has passed.
    let (status, body, headers) = app
        .send(Method::GET, "/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["last_error"], "http_429");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(app.idp.requests(), requests);
    // Then it recovers by itself.
    app.advance(Duration::from_secs(wait));
    let (status, body) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "recovers once the identity provider does: {body}"
    );
    assert_eq!(app.idp.requests(), requests + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_token_is_served_through_an_outage() {
    let app = TestApp::spawn().await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    let (_, before) = app.get(&path, Some(&app.keys.reader)).await;
    app.idp.set_outage(Some(Failure::unavailable(30)));
    let (status, during) = app.get(&path, Some(&app.keys.reader)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(during["token"], before["token"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_scopes_and_bad_credentials_are_told_apart() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .get("/api/tokens/bad.scope", Some(&app.keys.admin))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Invalid scope");
    assert_eq!(body["aadsts"], "AADSTS70011");

    let app = TestApp::spawn_with(&[("AGENT_PASSWORD", "wrong-password")]).await;
    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"], "Token acquisition failed");
    assert_eq!(body["aadsts"], "AADSTS50126");
    assert!(!body.to_string().contains("wrong-password"));
    let keys = app.redis_keys();
    assert!(
        !keys.iter().any(|k| k.contains("tokens:agent:")),
        "no token stored: {keys:?}"
    );
    // The failure is recorded for every instance to back off, and answered alike.
    let (status, body) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["aadsts"], "AADSTS50126");
    assert_eq!(app.idp.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_400_with_json_and_touches_nothing() {
    let app = TestApp::spawn().await;
    let admin = Some(app.keys.admin.as_str());
    let long = "a".repeat(2000);
    let cases: Vec<(Method, String, &str)> = vec![
        (
            Method::GET,
            format!("/api/tokens/{GRAPH_ENCODED}?user_id=a:b"),
            "Invalid user_id",
        ),
        (
            Method::GET,
            format!("/api/tokens/{GRAPH_ENCODED}?user_id=a%3Ab"),
            "Invalid user_id",
        ),
        (
            Method::GET,
            format!("/api/tokens/{GRAPH_ENCODED}?user_id="),
            "Invalid user_id",
        ),
        (
            Method::GET,
            format!("/api/tokens/{GRAPH_ENCODED}?user_id=a&user_id=b"),
            "Invalid request",
        ),
        (
            Method::GET,
            format!("/api/tokens/{GRAPH_ENCODED}?min_validity=soon"),
            "Invalid min_validity",
        ),
        (Method::GET, "/api/tokens/%zz".into(), "Invalid request"),
        (Method::GET, "/api/tokens/%C3%28".into(), "Invalid request"),
        (Method::GET, "/api/tokens/a%00b".into(), "Invalid scope"),
        (Method::GET, "/api/tokens/a%0Ab".into(), "Invalid scope"),
        (Method::GET, format!("/api/tokens/{long}"), "Invalid scope"),
        (Method::GET, "/api/tokens/%20".into(), "Invalid scope"),
        (
            Method::GET,
            format!("/api/tokens/{GRAPH_ENCODED}?scope=x"),
            "Invalid scope",
        ),
        (Method::GET, "/api/tokens?scope=".into(), "Invalid scope"),
        (
            Method::POST,
            "/api/tokens/refresh/%zz".into(),
            "Invalid request",
        ),
        (
            Method::POST,
            format!("/api/tokens/refresh/{GRAPH_ENCODED}?user_id=x/y"),
            "Invalid user_id",
        ),
        (
            Method::DELETE,
            format!("/api/tokens/{GRAPH_ENCODED}?user_id=a:b"),
            "Invalid user_id",
        ),
    ];
    for (method, path, title) in cases {
        let (status, body, _) = app.send(method.clone(), &path, admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert_eq!(body["error"], title, "{method} {path}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body, headers) = app
        .send(
            Method::PATCH,
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "Method not allowed");
    assert_eq!(headers["allow"], "GET,HEAD,DELETE,PUT");
    let (status, body) = app.get("/api/nothing-here", admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Not found");
    assert_eq!(app.idp.requests(), 0, "no request to the identity provider");
    assert_eq!(dbsize(&app), 0, "nothing written to Redis");
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_refresh_really_gets_a_new_token() {
    let app = TestApp::spawn().await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    let (_, before) = app.get(&path, Some(&app.keys.reader)).await;
    let (status, body) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(
        body["message"],
        format!("Token refreshed for scope: {GRAPH}")
    );
    assert_eq!(body["scope"], GRAPH);
    assert!(body.get("token").is_none());
    let (_, after) = app.get(&path, Some(&app.keys.reader)).await;
    assert_ne!(after["token"], before["token"]);
    assert_eq!(after["refresh_count"], 1);
    assert_eq!(app.idp.requests(), 2);
    // The raw-slash form reaches the same key.
    let (status, _) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = app.get(&path, Some(&app.keys.reader)).await;
    assert_eq!(again["refresh_count"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_flow_keeps_its_refresh_token_secret_and_uses_it() {
    let app = TestApp::spawn().await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    app.get(&path, Some(&app.keys.reader)).await;
    let forms = app.idp.forms();
    assert_eq!(forms[0]["grant_type"], "password");
    assert_eq!(forms[0]["scope"], format!("{GRAPH} offline_access"));

    let mut conn = app.redis.conn();
    let json: String = conn.get(format!("annika:tokens:agent:{GRAPH}")).unwrap();
    let secret: String = conn
        .get(format!("annika:tokens:secret:agent:{GRAPH}"))
        .unwrap();
    assert!(secret.starts_with("rt-"));
    assert!(
        !json.contains(&secret),
        "the refresh token never goes into the token JSON"
    );

    app.post(
        &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
        Some(&app.keys.reader),
    )
    .await;
    assert_eq!(app.idp.count("refresh_token"), 1);
    assert_eq!(app.idp.forms()[1]["refresh_token"], secret);
    assert_eq!(
        app.idp.count("password"),
        1,
        "the password is not sent again"
    );

    // A revoked refresh token falls back to the password grant.
    app.idp.revoke_refresh_tokens();
    let (status, _) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (app.idp.count("refresh_token"), app.idp.count("password")),
        (2, 2)
    );
    let (_, body) = app.get(&path, Some(&app.keys.reader)).await;
    assert_eq!(body["refresh_count"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_go_through_azure_identity() {
    let app = TestApp::spawn_with(&[("AGENT_TOKEN_FLOW", "client_credentials")]).await;
    let (status, first) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(app.idp.count("client_credentials"), 1);
    assert!(!app.idp.forms()[0].contains_key("username"));
    // A forced refresh is not answered from azure_identity's own cache.
    let (status, _) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.idp.count("client_credentials"), 2);
    let (_, second) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_ne!(first["token"], second["token"]);
    let json: String = app
        .redis
        .conn()
        .get(format!("annika:tokens:agent:{GRAPH}"))
        .unwrap();
    let stored: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stored["metadata"]["flow"], "client_credentials");

    app.idp.fail_next(Failure::throttled(60));
    let (status, _, headers) = app
        .send(
            Method::POST,
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers["retry-after"], "60",
        "Retry-After survives azure_identity's error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_identity_goes_through_azure_identity_to_the_app_service_endpoint() {
    // The binary, not the in-process app: azure_identity reads IDENTITY_ENDPOINT
    // and IDENTITY_HEADER from the process environment.
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    let mut env = handler_env(&redis, idp.managed_identity_env(), &keys);
    env.push(("TOKEN_SCOPES".into(), ";".into()));
    let mut handler = Handler::start(&["serve", "--port", &port.to_string()], &env, port);
    handler.wait_for_probe().await;
    let http = reqwest::Client::new();
    let path = format!("/api/tokens/{GRAPH_ENCODED}");

    let (status, first, _) =
        send(&http, Method::GET, &handler.url(&path), Some(&keys.reader)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(idp.count("managed_identity"), 1);
    let asked = idp.forms()[0].clone();
    assert_eq!(asked["resource"], "https://graph.microsoft.com");
    assert_eq!(
        asked["client_id"],
        idp::CLIENT_ID,
        "the user-assigned identity"
    );
    assert!(first["expires_on"].as_i64().unwrap() > unix_now() + 3000);

    // A forced refresh reaches the endpoint again (not azure_identity's cache).
    let refresh = handler.url(&format!("/api/tokens/refresh/{GRAPH_ENCODED}"));
    let (status, _, _) = send(&http, Method::POST, &refresh, Some(&keys.reader)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(idp.count("managed_identity"), 2);
    let (_, second, _) = send(&http, Method::GET, &handler.url(&path), Some(&keys.reader)).await;
    assert_ne!(first["token"], second["token"]);
    assert_eq!(second["refresh_count"], 1);
    let json: String = redis
        .conn()
        .get(format!("annika:tokens:agent:{GRAPH}"))
        .unwrap();
    let stored: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stored["metadata"]["flow"], "managed_identity");
    assert_eq!(stored["token"], second["token"]);

    // The endpoint failing: the old token stays, the caller gets a JSON 503.
    idp.fail_next(Failure::unavailable(30));
    let (status, body, _) = send(&http, Method::POST, &refresh, Some(&keys.reader)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, third, _) =
        send(&http, Method::GET, &handler.url(&path), Some(&keys.reader)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(third["token"], second["token"]);

    // Two scopes in one token: a managed identity cannot; a 400 that says so,
    // nothing asked of the endpoint, nothing written.
    let requests = idp.requests();
    let keys_before = redis.keys();
    for method in [Method::GET, Method::POST] {
        let path = match method {
            Method::GET => "/api/tokens/User.Read+Mail.Read",
            _ => "/api/tokens/refresh/User.Read+Mail.Read",
        };
        let (status, body, _) = send(&http, method, &handler.url(path), Some(&keys.admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("one resource"),
            "{body}"
        );
    }
    assert_eq!(idp.requests(), requests);
    assert_eq!(redis.keys(), keys_before);

    assert!(handler.terminate().success());
    let logs = handler.logs();
    assert!(
        !logs.contains(idp::IDENTITY_HEADER),
        "the identity header secret is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn min_validity_above_what_is_stored_gets_a_fresh_token() {
    let app = TestApp::spawn().await;
    app.idp.set_expires_in(1200);
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    let (_, first) = app.get(&path, Some(&app.keys.reader)).await;
    app.idp.set_expires_in(3600);
    let (status, second) = app
        .get(&format!("{path}?min_validity=1800"), Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(second["token"], first["token"]);
    assert_eq!(second["refresh_count"], 1);
    // More than any token lives: a clear 404, not an expiring token.
    let (status, body) = app
        .get(&format!("{path}?min_validity=7200"), Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["min_validity"], 7200);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_the_token_its_secret_and_its_index_entry() {
    // Unlimited forced refreshes: no quota counter among the keys.
    let app = TestApp::spawn_with(&[("TOKEN_REFRESH_RATE_PER_MIN", "0")]).await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    app.post(
        &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
        Some(&app.keys.reader),
    )
    .await;
    assert_eq!(
        app.redis_keys(),
        vec![
            "annika:tokens:active".to_owned(),
            format!("annika:tokens:agent:{GRAPH}"),
            "annika:tokens:expiry".to_owned(),
            "annika:tokens:schedule".to_owned(),
            format!("annika:tokens:secret:agent:{GRAPH}"),
        ]
    );
    let (status, body) = app.delete(&path, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    assert!(app.redis_keys().is_empty(), "{:?}", app.redis_keys());
    let (status, body) = app.delete(&path, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Token not found");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_shows_metadata_a_caller_may_see_and_never_a_token() {
    let app = TestApp::spawn().await;
    app.get(
        &format!("/api/tokens/{GRAPH_ENCODED}"),
        Some(&app.keys.admin),
    )
    .await;
    app.get("/api/tokens/Mail.Send", Some(&app.keys.admin))
        .await;
    let expires_on = unix_now() + 3600;
    let json = serde_json::json!({"token": "eyJ.alice", "expires_on": expires_on, "scope": "User.Read", "stored_at": expires_on - 10, "refresh_count": 0, "user_id": "alice"});
    let mut conn = app.redis.conn();
    let _: () = conn
        .set_ex("annika:tokens:user:alice:User.Read", json.to_string(), 3600)
        .unwrap();
    let _: () = conn
        .sadd("annika:tokens:active", "annika:tokens:user:alice:User.Read")
        .unwrap();

    let (status, body) = app.get("/api/tokens", Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 3);
    let text = body.to_string();
    assert!(
        !text.contains("eyJ"),
        "no token values in a listing: {text}"
    );
    let entry = body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == GRAPH)
        .unwrap();
    assert_eq!(entry["key"], format!("annika:tokens:agent:{GRAPH}"));
    for field in ["expires_on", "stored_at", "refresh_count"] {
        assert!(entry[field].is_i64(), "{field}");
    }
    let (_, body) = app
        .get("/api/tokens?user_id=alice", Some(&app.keys.admin))
        .await;
    assert_eq!(body["count"], 1);
    assert_eq!(body["tokens"][0]["user_id"], "alice");
    assert_eq!(
        body["tokens"][0]["key"],
        "annika:tokens:user:alice:User.Read"
    );
    // The reader sees Graph only (Mail.Send is not in its scopes, alice is not its user).
    let (_, body) = app.get("/api/tokens", Some(&app.keys.reader)).await;
    assert_eq!(body["count"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_redis() {
    let mut app = TestApp::spawn().await;
    app.wait_cache_live().await;
    app.get(
        &format!("/api/tokens/{GRAPH_ENCODED}"),
        Some(&app.keys.reader),
    )
    .await;
    let (status, body) = app.get("/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["redis_connected"], true);
    assert_eq!(body["active_token_count"], 1);
    assert!(body["timestamp"].as_i64().unwrap() > 1_700_000_000);
    // Readiness detail: the soonest expiry and the identity provider's last answer.
    let soonest = body["soonest_expiry_in"].as_i64().unwrap();
    assert!((3500..=3600).contains(&soonest), "{body}");
    assert!(
        body["identity_provider"]["last_success"].as_i64().is_some(),
        "{body}"
    );
    assert!(body["identity_provider"]["last_error"].is_null(), "{body}");

    // A second instance that only reads: its cache holds Graph and no change event
    // is on its way to drop it (the first instance's own write may still be).
    let twin = app.twin().await;
    let twin_cache = || twin.state.cache.as_deref().expect("cache on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !twin_cache().is_live() {
        assert!(
            Instant::now() < deadline,
            "the twin's cache never went live"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let twin_url = |path: &str| format!("http://{}{path}", twin.addr);
    let graph = twin_url(&format!("/api/tokens/{GRAPH_ENCODED}"));
    let (status, _, _) = send(&app.http, Method::GET, &graph, Some(&app.keys.reader)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(twin_cache().len(), 1);

    app.redis.stop();
    let health = twin_url("/api/tokens/health");
    let (status, body, _) = send(&app.http, Method::GET, &health, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["status"], "degraded",
        "cached tokens are still served: {body}"
    );
    assert_eq!(body["redis_connected"], false);
    let (status, _, _) = send(&app.http, Method::GET, &graph, Some(&app.keys.reader)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a still-valid cached token is served without Redis"
    );
    let user_read = twin_url("/api/tokens/User.Read");
    let (status, body, headers) =
        send(&app.http, Method::GET, &user_read, Some(&app.keys.reader)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "Token store unavailable");
    assert!(headers.contains_key("retry-after"));

    app.redis.restart();
    // Reconnects by itself once the circuit's probe reaches Redis again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = app.get("/api/tokens/health", None).await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(Instant::now() < deadline, "never reconnected: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        body["active_token_count"], 0,
        "the restarted server is empty"
    );
}
