//! The Redis layout of SPEC §4, read directly the way other applications read it.

use crate::support::*;
use redis::Commands;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashSet;
use token_broker::domain::{Scope, TokenKey};
use token_broker::secret::Secret;
use token_broker::store::{PutOutcome, TokenMetadata, TokenRecord, Write};

#[tokio::test(flavor = "multi_thread")]
async fn token_json_ttl_and_active_set_follow_the_spec() {
    let app = TestApp::spawn_with(&[("REDIS_NAMESPACE", "myapp:")]).await;
    app.idp.set_expires_in(3000);
    // As long as a real Graph token.
    app.idp.set_token_padding(1500);
    let (status, served) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = unix_now();

    let mut conn = app.redis.conn();
    let key = format!("myapp:tokens:agent:{GRAPH}");
    let json: String = conn.get(&key).unwrap();
    let stored: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stored["token"], served["token"]);
    assert!(
        stored["token"].as_str().unwrap().len() > 1500,
        "a real-size token round-trips"
    );
    assert_eq!(stored["scope"], GRAPH);
    assert_eq!(stored["expires_on"], served["expires_on"]);
    assert_eq!(stored["refresh_count"], 0);
    assert_eq!(stored["metadata"]["acquired_by"], "agent_auth_manager");
    assert_eq!(stored["metadata"]["client_id"], idp::CLIENT_ID);
    let expires_on = stored["expires_on"].as_i64().unwrap();
    let stored_at = stored["stored_at"].as_i64().unwrap();
    assert!(
        (expires_on - stored_at - 3000).abs() <= 2,
        "expires_on = stored_at + expires_in"
    );
    // Looked for by value: "rt-" alone turns up in a random signature now and then.
    let refresh_tokens: Vec<String> = app
        .idp
        .issued()
        .into_iter()
        .filter(|t| t.starts_with("rt-"))
        .collect();
    assert!(!refresh_tokens.is_empty(), "the flow got a refresh token");
    assert!(stored.get("refresh_token").is_none());
    assert!(refresh_tokens.iter().all(|rt| !json.contains(rt.as_str())));
    assert!(
        !json.contains("\\/"),
        "slashes are not escaped: other apps read this"
    );

    let ttl: i64 = conn.ttl(&key).unwrap();
    assert!(
        (ttl - (expires_on - before)).abs() <= 2,
        "TTL {ttl} = seconds until expires_on"
    );
    let active: HashSet<String> = conn.smembers("myapp:tokens:active").unwrap();
    assert_eq!(active, HashSet::from([key.clone()]));
    let secret_ttl: i64 = conn
        .ttl(format!("myapp:tokens:secret:agent:{GRAPH}"))
        .unwrap();
    assert!(secret_ttl > 80 * 24 * 3600, "refresh tokens expire too");

    // A refresh replaces the token, bumps the count and moves the TTL.
    app.idp.set_expires_in(3500);
    app.post(
        &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
        Some(&app.keys.reader),
    )
    .await;
    let json: String = conn.get(&key).unwrap();
    let refreshed: Value = serde_json::from_str(&json).unwrap();
    assert_ne!(refreshed["token"], stored["token"]);
    assert_eq!(refreshed["refresh_count"], 1);
    let ttl: i64 = conn.ttl(&key).unwrap();
    assert!(ttl > 3400, "TTL follows the new expiry: {ttl}");
    let active: HashSet<String> = conn.smembers("myapp:tokens:active").unwrap();
    assert_eq!(active.len(), 1);
}

fn record(token: &str, expires_on: i64, requested_at_ms: i64) -> TokenRecord {
    TokenRecord {
        token: Secret::new(token),
        expires_on,
        requested_at_ms,
        scope: "User.Read".into(),
        stored_at: unix_now(),
        user_id: None,
        metadata: TokenMetadata::default(),
        refresh_count: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_never_lose_an_increment_or_put_back_an_older_token() {
    let app = TestApp::spawn().await;
    let key = TokenKey::Agent(Scope::parse("User.Read").unwrap());
    let store = &app.state.store;
    let base = unix_now() + 3600;
    let writes = (0..40).map(|i| {
        let key = key.clone();
        let state = app.state.clone();
        tokio::spawn(async move {
            state
                .store
                .put(
                    &key,
                    &Write::token(&record(&format!("tok-{i}"), base - i, i), base),
                )
                .await
                .unwrap()
        })
    });
    let mut written = 0;
    for write in writes.collect::<Vec<_>>() {
        if let PutOutcome::Written { .. } = write.await.unwrap() {
            written += 1;
        }
    }
    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.token.expose(),
        "tok-39",
        "the newest token wins whatever the order"
    );
    assert_eq!(
        stored.refresh_count,
        written - 1,
        "one increment per replacing write"
    );

    // A stale writer (its request began earlier) is refused even though its token
    // would live longer, and the count is untouched.
    let outcome = store
        .put(&key, &Write::token(&record("old", base + 100, 5), base))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Superseded);
    let again = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (again.token.expose(), again.refresh_count),
        ("tok-39", stored.refresh_count)
    );
    // Writing the same token twice (a retried write) is not a refresh.
    let outcome = store
        .put(&key, &Write::token(&record("tok-39", base - 39, 39), base))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        PutOutcome::Written {
            refresh_count: stored.refresh_count
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_refreshes_due_tokens_acquires_warm_scopes_and_prunes_the_index() {
    let app =
        TestApp::spawn_with(&[("TOKEN_SCOPES", &format!("{GRAPH};api://warm-app/.default"))]).await;
    // Lives 600 s, inside the 900 s refresh window: due at once.
    app.idp.set_expires_in(600);
    app.get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    let mut conn = app.redis.conn();
    let _: () = conn
        .sadd("annika:tokens:active", "annika:tokens:agent:Gone.Scope")
        .unwrap();
    app.idp.set_expires_in(3599);
    // The warm scopes were acquired at start: gone again, the sweep must acquire them.
    for scope in [GRAPH_ENCODED, "api:%2F%2Fwarm-app%2F.default"] {
        let (status, _) = app
            .delete(&format!("/api/tokens/{scope}"), Some(&app.keys.admin))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{scope}");
    }
    let requests_before = app.idp.requests();

    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!(
        summary.due, 3,
        "User.Read is due, two warm scopes are missing: {summary:?}"
    );
    assert_eq!(
        (summary.refreshed, summary.failed, summary.pruned),
        (3, 0, 1)
    );
    assert_eq!(app.idp.requests() - requests_before, 3);
    let active: HashSet<String> = conn.smembers("annika:tokens:active").unwrap();
    assert_eq!(
        active,
        HashSet::from([
            "annika:tokens:agent:User.Read".to_owned(),
            format!("annika:tokens:agent:{GRAPH}"),
            "annika:tokens:agent:api://warm-app/.default".to_owned(),
        ])
    );
    let json: String = conn.get("annika:tokens:agent:User.Read").unwrap();
    let stored: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stored["refresh_count"], 1);

    // Nothing is due now: the next sweep asks for nothing.
    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!((summary.due, summary.refreshed, summary.pruned), (0, 0, 0));
    assert_eq!(app.idp.requests() - requests_before, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_costs_at_most_four_redis_round_trips_per_refreshed_token() {
    let app = TestApp::spawn().await;
    // 600 s tokens are due at once (900 s window).
    app.idp.set_expires_in(600);
    let scopes: Vec<String> = (0..50).map(|i| format!("Sweep.Scope{i}")).collect();
    for scope in &scopes {
        let (status, _) = app
            .get(&format!("/api/tokens/{scope}"), Some(&app.keys.admin))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let summary = app.state.tokens.sweep().await.unwrap();
    assert_eq!(summary.refreshed, 50, "{summary:?}");
    // A handful per sweep (schedule, records, read clocks, the active-set scan),
    // then four per token: its state, the lease with what is under it, the write
    // with its refresh token, the indexes with the release.
    assert!(
        summary.round_trips <= 12 + 4 * 50,
        "{} round trips for 50 refreshes",
        summary.round_trips
    );
}
