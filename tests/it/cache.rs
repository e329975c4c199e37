//! The in-process cache in front of Redis: invalidated across instances through
//! the change-event channel, never serving below the minimum validity.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn wait_until_live(http: &reqwest::Client, handler: &Handler) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body, _) = send(http, Method::GET, &handler.url("/api/tokens/health"), None).await;
        if body["cache"]["live"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never went live: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_through_one_instance_is_served_by_the_other_within_a_second() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let http = reqwest::Client::new();
    let mut handlers = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let mut env = handler_env(&redis, idp.env(), &keys);
        env.push(("TOKEN_SCOPES".into(), ";".into()));
        let mut handler = Handler::start(&["serve", "--port", &port.to_string()], &env, port);
        handler.wait_for_probe().await;
        wait_until_live(&http, &handler).await;
        handlers.push(handler);
    }
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    let (a, b) = (&handlers[0], &handlers[1]);
    let (_, first, _) = send(&http, Method::GET, &a.url(&path), Some(&keys.admin)).await;
    let (_, cached, _) = send(&http, Method::GET, &b.url(&path), Some(&keys.admin)).await;
    assert_eq!(
        first["token"], cached["token"],
        "B now holds the token in its cache"
    );

    // A refresh through A: B serves the new token within a second.
    let (status, _, _) = send(
        &http,
        Method::POST,
        &a.url(&format!("/api/tokens/refresh/{GRAPH_ENCODED}")),
        Some(&keys.admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, refreshed, _) = send(&http, Method::GET, &a.url(&path), Some(&keys.admin)).await;
    assert_ne!(refreshed["token"], first["token"]);
    all_serve_within_a_second(
        &http,
        &[b.addr()],
        &path,
        &keys.admin,
        Instant::now(),
        |_, token| *token == refreshed["token"],
        "a refresh through A",
    )
    .await;

    // A delete through A: a 404 on B within a second (no on-demand for user tokens).
    let user_path = format!("/api/tokens/{GRAPH_ENCODED}?user_id=alice");
    let response = http
        .put(a.url(&user_path))
        .bearer_auth(&keys.admin)
        .json(&serde_json::json!({"access_token": "eyJ.alice", "expires_in": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (status, body, _) = send(&http, Method::GET, &b.url(&user_path), Some(&keys.admin)).await;
    assert_eq!(
        (status, body["token"].clone()),
        (StatusCode::OK, Value::from("eyJ.alice"))
    );
    let (status, _, _) = send(&http, Method::DELETE, &a.url(&user_path), Some(&keys.admin)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    all_serve_within_a_second(
        &http,
        &[b.addr()],
        &user_path,
        &keys.admin,
        Instant::now(),
        |status, _| status == StatusCode::NOT_FOUND,
        "a delete through A",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_never_serves_below_the_minimum_validity() {
    let app = TestApp::spawn_manual(&[
        ("TOKEN_MIN_VALIDITY_SECS", "5"),
        ("TOKEN_REFRESH_BEFORE_SECS", "1"),
    ])
    .await;
    app.wait_cache_live().await;
    app.idp.set_expires_in(8);
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    let (_, short) = app.get(&path, Some(&app.keys.reader)).await;
    let (_, again) = app.get(&path, Some(&app.keys.reader)).await;
    assert_eq!(
        again["token"], short["token"],
        "served from the cache while valid enough"
    );
    let requests = app.idp.requests();
    app.idp.set_expires_in(3600);
    // Asking for more than the cached token has left is never answered from the cache.
    let (status, fresh) = app
        .get(&format!("{path}?min_validity=60"), Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(fresh["token"], short["token"]);
    assert_eq!(app.idp.requests(), requests + 1);

    // And as time passes: a token cached with 8 s left is not served once below 5 s.
    app.idp.set_expires_in(8);
    app.state.cache.as_deref().unwrap().clear(); // start from an empty cache
    app.post(
        &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
        Some(&app.keys.reader),
    )
    .await;
    let (_, cached) = app.get(&path, Some(&app.keys.reader)).await;
    app.idp.set_expires_in(3600);
    for _ in 0..8 {
        let (status, body) = app.get(&path, Some(&app.keys.reader)).await;
        assert_eq!(status, StatusCode::OK);
        let left = body["expires_on"].as_i64().unwrap() - app.now();
        assert!(left >= 5, "served with {left} s left");
        if body["token"] != cached["token"] {
            return;
        }
        app.advance(Duration::from_secs(1));
    }
    panic!("the short-lived cached token was never replaced");
}
