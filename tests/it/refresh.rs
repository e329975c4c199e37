//! The refresh engine (SPEC §6): tokens replaced before they expire, one
//! identity-provider request per refresh round across instances, outages
//! survived, Redis restarts survived.

use crate::support::*;
use redis::Commands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_tokens_are_replaced_before_they_expire() {
    let app = TestApp::spawn_manual(&[
        ("TOKEN_REFRESH_BEFORE_SECS", "5"),
        ("TOKEN_MIN_VALIDITY_SECS", "2"),
        ("TOKEN_SCOPES", "User.Read"),
        ("TOKEN_REFRESH_INTERVAL_SECS", "1"),
    ])
    .await;
    // Tokens that live 8 s are due 3 s after they are stored, with 5 s left.
    app.idp.set_expires_in(8);
    let (status, body) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = "annika:tokens:agent:User.Read";
    let mut conn = app.redis.conn();
    let mut tokens = std::collections::HashSet::new();
    let mut last_count = 0;
    // Twelve seconds of the service's time, a timer sweep every second.
    for _ in 0..12 {
        let (status, body) = app
            .get("/api/tokens/User.Read", Some(&app.keys.reader))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let left = body["expires_on"].as_i64().unwrap() - app.now();
        assert!(left >= 2, "served a token with {left} s left");
        tokens.insert(body["token"].as_str().unwrap().to_owned());
        let count = body["refresh_count"].as_u64().unwrap();
        assert!(count >= last_count, "refresh_count never goes back");
        last_count = count;
        let json: Option<String> = conn.get(key).unwrap();
        let stored: Value = serde_json::from_str(&json.expect("the key never expires")).unwrap();
        let left = stored["expires_on"].as_i64().unwrap() - app.now();
        assert!(
            left >= 2,
            "the stored token was left to run down to {left} s"
        );
        // Redis counts the TTL down in real time, set from the service's clock
        // when the token was written. Slack for a loaded machine, less than the
        // 5 s a TTL set to the due time (not expires_on) would be short.
        let lifetime =
            stored["expires_on"].as_i64().unwrap() - stored["stored_at"].as_i64().unwrap();
        let ttl: i64 = conn.ttl(key).unwrap();
        assert!(
            (lifetime - 3..=lifetime).contains(&ttl),
            "TTL {ttl} follows expires_on ({lifetime} s at writing)"
        );
        app.tick().await;
    }
    assert!(
        last_count >= 3,
        "refreshed at least three times in 12 s: {last_count}"
    );
    assert!(
        tokens.len() >= 3,
        "each refresh is a new token: {}",
        tokens.len()
    );
}

/// Total callers waiting on or running refresh flights across `handlers`.
async fn waiters(http: &reqwest::Client, handlers: &[Handler]) -> u64 {
    let mut total = 0;
    for handler in handlers {
        let (_, body, _) = send(http, Method::GET, &handler.url("/api/tokens/health"), None).await;
        total += body["refresh_waiters"].as_u64().unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_make_one_identity_provider_request_per_refresh_round() {
    let redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let mut handlers = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut env = handler_env(&redis, idp.env(), &keys);
        env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
        // 60 forced refreshes a round from one key: not what the rate limit is for.
        env.push(("TOKEN_REFRESH_RATE_PER_MIN".into(), "0".into()));
        let mut handler = Handler::start(&[], &env, port);
        handler.wait_for_probe().await;
        // Its start-up sweep is over before the token exists: a late one would
        // find the 600 s token due and join round 0 uninvited.
        handler.wait_for_log("sweep: due=").await;
        handlers.push(handler);
    }
    let http = reqwest::Client::new();
    let refresh_path = format!("/api/tokens/refresh/{GRAPH_ENCODED}");
    // Tokens that live 600 s are inside the 900 s window at once: every timer
    // invocation finds the key due and joins the round.
    idp.set_expires_in(600);
    let (status, _, _) = send(
        &http,
        Method::POST,
        &handlers[0].url(&refresh_path),
        Some(&keys.reader),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let timer =
        json!({"Data": {"timer": {"ScheduleStatus": null, "IsPastDue": false}}, "Metadata": {}});

    for round in 0..3 {
        let before: Value = serde_json::from_str(
            &redis
                .conn()
                .get::<_, String>(format!("annika:tokens:agent:{GRAPH}"))
                .unwrap(),
        )
        .unwrap();
        let requests_before = idp.requests();
        idp.hold();
        let mut calls = Vec::new();
        for handler in &handlers {
            for _ in 0..20 {
                let (http, url, key) = (
                    http.clone(),
                    handler.url(&refresh_path),
                    keys.reader.clone(),
                );
                calls.push(tokio::spawn(async move {
                    send(&http, Method::POST, &url, Some(&key)).await
                }));
            }
            let (http, url, body) = (http.clone(), handler.url("/timer-refresh"), timer.clone());
            calls.push(tokio::spawn(async move {
                let response = http.post(url).json(&body).send().await.unwrap();
                (
                    response.status(),
                    response.json::<Value>().await.unwrap(),
                    reqwest::header::HeaderMap::new(),
                )
            }));
        }
        // Hold the identity provider until all 63 callers wait on the key.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let waiting = waiters(&http, &handlers).await;
            if waiting >= 63 {
                break;
            }
            if Instant::now() >= deadline {
                for handler in &handlers {
                    let (_, body, _) =
                        send(&http, Method::GET, &handler.url("/api/tokens/health"), None).await;
                    eprintln!("health: {body}");
                }
                idp.release();
                for call in calls {
                    let (status, body, _) = call.await.unwrap();
                    eprintln!("{status} {body}");
                }
                panic!("round {round}: only {waiting} of 63 callers arrived");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        idp.release();
        let mut counts = std::collections::HashSet::new();
        for call in calls {
            let (status, body, _) = call.await.unwrap();
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
            if let Some(count) = body["refresh_count"].as_u64() {
                counts.insert(count);
            }
        }
        assert_eq!(
            idp.requests() - requests_before,
            1,
            "round {round}: exactly one token request"
        );
        let expected = before["refresh_count"].as_u64().unwrap() + 1;
        assert_eq!(
            counts,
            std::collections::HashSet::from([expected]),
            "round {round}: every refresh got the new token"
        );
        let after: Value = serde_json::from_str(
            &redis
                .conn()
                .get::<_, String>(format!("annika:tokens:agent:{GRAPH}"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(after["refresh_count"].as_u64().unwrap(), expected);
        assert_ne!(after["token"], before["token"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_a_sweep_is_ridden_out_and_recovered_from() {
    let app = TestApp::spawn_manual(&[
        ("TOKEN_REFRESH_BEFORE_SECS", "9"),
        ("TOKEN_MIN_VALIDITY_SECS", "3"),
        ("TOKEN_SCOPES", "User.Read"),
        ("TOKEN_REFRESH_BACKOFF_SECS", "1"),
        ("TOKEN_REFRESH_INTERVAL_SECS", "1"),
    ])
    .await;
    app.idp.set_expires_in(12);
    let (status, _) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, first) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
    let expires_on = first["expires_on"].as_i64().unwrap();
    app.idp.set_outage(Some(Failure::unavailable(2)));
    let outage_from = app.idp.requests();
    // The service's time of every request made during the outage.
    let mut asked_at = Vec::new();
    let mut note_requests = |app: &TestApp, seen: &mut usize| {
        let now = app.idp.requests();
        asked_at.extend(std::iter::repeat_n(app.now(), now - *seen));
        *seen = now;
    };
    let mut seen = outage_from;

    // Served from the store while it has its minimum validity; then a 503 with
    // Retry-After, never an expired token. A timer sweep every second meanwhile.
    let mut saw_503 = false;
    while app.now() < expires_on - 1 {
        let (status, body, headers) = app
            .send(Method::GET, "/api/tokens/User.Read", Some(&app.keys.reader))
            .await;
        let left = expires_on - app.now();
        match status {
            StatusCode::OK => {
                assert_eq!(body["token"], first["token"]);
                assert!(left >= 3, "served with {left} s left");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(left <= 4, "503 while the stored token still had {left} s");
                assert!(headers.contains_key("retry-after"));
                saw_503 = true;
            }
            other => panic!("{other}: {body}"),
        }
        note_requests(&app, &mut seen);
        app.tick().await;
        note_requests(&app, &mut seen);
    }
    assert!(
        saw_503,
        "below its minimum validity the old token is not served"
    );

    // Retries were spaced by at least Retry-After (2 s), not once per 1 s sweep.
    assert!(asked_at.len() >= 2, "the sweep kept trying: {asked_at:?}");
    for pair in asked_at.windows(2) {
        assert!(
            pair[1] - pair[0] >= 2,
            "retried after {} s: {asked_at:?}",
            pair[1] - pair[0]
        );
    }
    // The failure is on the key's status, visible in the listing. (The token itself
    // may have expired by now; it is listed while it lives.)
    let mut conn = app.redis.conn();
    let status: String = conn.get("annika:tokens:status:agent:User.Read").unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_error"], "http_503");
    assert_eq!(status["aadsts"], 90006);
    assert!(status["failures"].as_u64().unwrap() >= 2);

    // The identity provider comes back: the timer's sweeps recover without help.
    app.idp.set_outage(None);
    for _ in 0..10 {
        app.tick().await;
        let (status, body) = app
            .get("/api/tokens/User.Read", Some(&app.keys.reader))
            .await;
        if status == StatusCode::OK {
            assert_ne!(body["token"], first["token"]);
            return;
        }
    }
    panic!("did not recover within 10 s of the service's time");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_under_load_is_survived() {
    let mut redis = RedisServer::start();
    let idp = Idp::start().await;
    let keys = Keys::new();
    let port = free_port();
    let mut env = handler_env(&redis, idp.env(), &keys);
    env.push(("TOKEN_REFRESH_INTERVAL_SECS".into(), "1".into()));
    let mut handler = Handler::start(&["serve", "--port", &port.to_string()], &env, port);
    handler.wait_for_probe().await;

    // Bounded load: 8 workers, until told to stop or 20 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, url, key) = (
            stop.clone(),
            handler.url(&format!("/api/tokens/{GRAPH_ENCODED}")),
            keys.reader.clone(),
        );
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let end = Instant::now() + Duration::from_secs(20);
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                let (status, _, _) = send(&http, Method::GET, &url, Some(&key)).await;
                statuses.push(status);
            }
            statuses
        }));
    }
    let http = reqwest::Client::new();
    let health = |http: reqwest::Client, url: String| async move {
        send(&http, Method::GET, &url, None).await.0
    };
    let health_url = handler.url("/api/tokens/health");
    assert_eq!(
        health(http.clone(), health_url.clone()).await,
        StatusCode::OK
    );

    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(http.clone(), health_url.clone()).await != StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            Instant::now() < deadline,
            "health never noticed Redis was gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while health(http.clone(), health_url.clone()).await != StatusCode::OK {
        assert!(Instant::now() < deadline, "did not reconnect to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        for status in worker.await.unwrap() {
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "{status}"
            );
        }
    }
    // The restarted Redis is empty: the token is acquired again and served.
    let (status, body, _) = send(
        &http,
        Method::GET,
        &handler.url(&format!("/api/tokens/{GRAPH_ENCODED}")),
        Some(&keys.reader),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(handler.child.try_wait().unwrap().is_none(), "still running");
    assert!(handler.terminate().success());
    let logs = handler.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_show_in_the_listing() {
    let app = TestApp::spawn_with(&[("TOKEN_SCOPES", "User.Read")]).await;
    app.get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    app.idp.fail_next(Failure::throttled(30));
    let asked = unix_now();
    let (status, _) = app
        .post("/api/tokens/refresh/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (_, list) = app.get("/api/tokens", Some(&app.keys.admin)).await;
    let entry = &list["tokens"][0];
    assert_eq!(entry["scope"], "User.Read");
    let status = &entry["refresh_status"];
    assert_eq!(status["last_error"], "http_429");
    assert_eq!(status["aadsts"], "AADSTS50196");
    assert_eq!(status["failures"], 1);
    assert!(
        status["next_attempt"].as_i64().unwrap() >= asked + 30,
        "Retry-After honoured: {status}"
    );
    // The old token is still served meanwhile.
    let (status, _) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_tokens_nobody_reads_stop_being_refreshed() {
    let app =
        TestApp::spawn_manual(&[("TOKEN_IDLE_SECS", "1"), ("TOKEN_SCOPES", "Warm.Scope")]).await;
    // 600 s tokens are due at once (900 s window): the warm scope's, and User.Read's.
    app.idp.set_expires_in(600);
    app.post("/api/tokens/refresh/Warm.Scope", Some(&app.keys.admin))
        .await;
    app.get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!(
        (summary.refreshed, summary.idle),
        (2, 0),
        "read just now: refreshed (and the warm scope too)"
    );
    // More than TOKEN_IDLE_SECS pass unread.
    app.advance(Duration::from_secs(2));
    let requests = app.idp.requests();
    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!(summary.idle, 1, "{summary:?}");
    assert_eq!(
        summary.refreshed, 1,
        "the warm scope is refreshed however idle: {summary:?}"
    );
    assert_eq!(app.idp.requests(), requests + 1);
    let mut conn = app.redis.conn();
    let scheduled: Option<f64> = conn
        .zscore("annika:tokens:schedule", "annika:tokens:agent:User.Read")
        .unwrap();
    assert_eq!(scheduled, None, "no longer scheduled");
    assert!(
        conn.exists::<_, bool>("annika:tokens:agent:User.Read")
            .unwrap(),
        "still served until it expires"
    );
    // Reading it again brings it back into the schedule on its next refresh.
    let (status, _) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK);
}
