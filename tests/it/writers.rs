//! The shared layout (SPEC §4 "Other writers"): changes made directly in Redis
//! are served by every instance within a second, tokens the service did not
//! write are adopted, and a user's grant survives concurrent refreshes.

use crate::support::*;
use redis::Commands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Waits (at most 10 s) until the instance at `addr` listens to changes as
/// `coherence` says (`tracking` or `revalidate`).
async fn wait_coherent(http: &reqwest::Client, addr: std::net::SocketAddr, coherence: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!("http://{addr}/api/tokens/health");
        let (_, body, _) = send(http, Method::GET, &url, None).await;
        if body["cache"]["live"] == true && body["cache"]["coherence"] == coherence {
            return;
        }
        assert!(Instant::now() < deadline, "never {coherence}: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stores `token` for `user` through the API and reads it through every
/// instance, so each has it cached.
async fn cached_everywhere(
    app: &TestApp,
    addrs: &[std::net::SocketAddr],
    user: &str,
    token: &str,
) -> String {
    let path = format!("/api/tokens/User.Read?user_id={user}");
    let response = app
        .http
        .put(app.url(&path))
        .bearer_auth(&app.keys.admin)
        .json(&json!({"access_token": token, "expires_in": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    for addr in addrs {
        for _ in 0..2 {
            let (status, served) = read_token(&app.http, *addr, &path, &app.keys.admin).await;
            assert_eq!((status, served), (StatusCode::OK, Value::from(token)));
        }
    }
    path
}

/// CRC16/XMODEM, Redis Cluster's key hash: to pick a name in the same slot.
fn slot(key: &str) -> u16 {
    let key = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for byte in key.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn gone(status: StatusCode, _: &Value) -> bool {
    status == StatusCode::NOT_FOUND
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_changes_in_redis_are_served_by_every_instance_within_a_second() {
    let app = TestApp::spawn().await;
    let twin = app.twin().await;
    let addrs = [app.addr, twin.addr];
    for addr in addrs {
        wait_coherent(&app.http, addr, "tracking").await;
    }
    let admin = app.keys.admin.clone();
    let mut conn = app.redis.conn();
    let name = |user: &str| format!("annika:tokens:user:{user}:User.Read");

    // DEL and UNLINK: the token is gone (a user token is never acquired anew).
    for (user, command) in [("del", "DEL"), ("unlink", "UNLINK")] {
        let path = cached_everywhere(&app, &addrs, user, "eyJ.first").await;
        let _: () = redis::cmd(command)
            .arg(name(user))
            .query(&mut conn)
            .unwrap();
        let since = Instant::now();
        all_serve_within_a_second(&app.http, &addrs, &path, &admin, since, gone, command).await;
    }

    // SET: another writer's token is served instead.
    let path = cached_everywhere(&app, &addrs, "set", "eyJ.first").await;
    let expires_on = unix_now() + 3600;
    let theirs = json!({"token": "eyJ.theirs", "expires_on": expires_on, "scope": "User.Read", "stored_at": unix_now(), "user_id": "set", "refresh_count": 0});
    let _: () = conn.set_ex(name("set"), theirs.to_string(), 3600).unwrap();
    let since = Instant::now();
    let theirs =
        |status: StatusCode, token: &Value| status == StatusCode::OK && token == "eyJ.theirs";
    all_serve_within_a_second(&app.http, &addrs, &path, &admin, since, theirs, "SET").await;

    // PEXPIRE: gone once it expires, within the second.
    let path = cached_everywhere(&app, &addrs, "expire", "eyJ.first").await;
    let _: () = redis::cmd("PEXPIRE")
        .arg(name("expire"))
        .arg(200)
        .query(&mut conn)
        .unwrap();
    let since = Instant::now();
    all_serve_within_a_second(&app.http, &addrs, &path, &admin, since, gone, "PEXPIRE").await;

    // RENAME: the old name is gone (the new one in the same slot, for a cluster).
    let path = cached_everywhere(&app, &addrs, "rename", "eyJ.first").await;
    let target = (0..)
        .map(|i| format!("annika:renamed:{i}"))
        .find(|n| slot(n) == slot(&name("rename")))
        .unwrap();
    let _: () = redis::cmd("RENAME")
        .arg(name("rename"))
        .arg(&target)
        .query(&mut conn)
        .unwrap();
    let since = Instant::now();
    all_serve_within_a_second(&app.http, &addrs, &path, &admin, since, gone, "RENAME").await;

    // FLUSHDB, on every master: everything cached is dropped.
    let path = cached_everywhere(&app, &addrs, "flush", "eyJ.first").await;
    for mut node in app.redis.node_conns() {
        let _: () = redis::cmd("FLUSHDB").query(&mut node).unwrap();
    }
    let since = Instant::now();
    all_serve_within_a_second(&app.http, &addrs, &path, &admin, since, gone, "FLUSHDB").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_redis_restart_direct_changes_are_still_seen() {
    let mut app = TestApp::spawn().await;
    let twin = app.twin().await;
    let addrs = [app.addr, twin.addr];
    for addr in addrs {
        wait_coherent(&app.http, addr, "tracking").await;
    }
    app.redis.restart();
    // The instances notice, and listen again to the new server.
    for addr in addrs {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = format!("http://{addr}/api/tokens/health");
            let (status, body, _) = send(&app.http, Method::GET, &url, None).await;
            if status == StatusCode::OK && body["cache"]["live"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} never came back: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let path = cached_everywhere(&app, &addrs, "alice", "eyJ.first").await;
    let _: () = app
        .redis
        .conn()
        .del("annika:tokens:user:alice:User.Read")
        .unwrap();
    let since = Instant::now();
    all_serve_within_a_second(
        &app.http,
        &addrs,
        &path,
        &app.keys.admin,
        since,
        gone,
        "DEL after a restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn where_redis_refuses_tracking_cached_tokens_are_revalidated_every_second() {
    let redis = RedisServer::start();
    // A user that may do everything but turn tracking on, as some proxies and
    // managed services allow (set on every node of a cluster).
    let password = "no-tracking-password";
    for mut node in redis.node_conns() {
        let setuser = [
            "SETUSER",
            "notrack",
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
            "-client|tracking",
        ];
        let _: () = redis::cmd("ACL")
            .arg(&setuser[..])
            .query(&mut node)
            .unwrap();
    }
    let app = TestApp::spawn_on(
        redis,
        &[("REDIS_USERNAME", "notrack"), ("REDIS_PASSWORD", password)],
    )
    .await;
    let twin = app.twin().await;
    let addrs = [app.addr, twin.addr];
    for addr in addrs {
        wait_coherent(&app.http, addr, "revalidate").await;
    }
    let path = cached_everywhere(&app, &addrs, "alice", "eyJ.first").await;
    let expires_on = unix_now() + 3600;
    let theirs = json!({"token": "eyJ.theirs", "expires_on": expires_on, "scope": "User.Read", "stored_at": unix_now(), "user_id": "alice", "refresh_count": 0});
    let _: () = app
        .redis
        .conn()
        .set_ex(
            "annika:tokens:user:alice:User.Read",
            theirs.to_string(),
            3600,
        )
        .unwrap();
    let since = Instant::now();
    let theirs =
        |status: StatusCode, token: &Value| status == StatusCode::OK && token == "eyJ.theirs";
    all_serve_within_a_second(
        &app.http,
        &addrs,
        &path,
        &app.keys.admin,
        since,
        theirs,
        "SET without tracking",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replaced_services_tokens_are_adopted_refreshed_in_time_and_pruned() {
    // Redis as the Python service leaves it: its JSON, keys that expire 300 s
    // before the token does, its active set, no other index, and members whose
    // key is long gone.
    let redis = RedisServer::start();
    let now = unix_now();
    let legacy = |scope: &str, user: Option<&str>, expires_in: i64, count: u64| {
        let mut token = json!({
            "token": format!("eyJ.legacy.{scope}"),
            "expires_on": now + expires_in,
            "scope": scope,
            "stored_at": now + expires_in - 3600,
            "metadata": {"acquired_by": "agent_auth_manager", "client_id": "python"},
            "refresh_count": count,
        });
        if let Some(user) = user {
            token["user_id"] = Value::from(user);
        }
        token
    };
    let mut conn = redis.conn();
    let mut put = |name: &str, token: Value, expires_in: i64| {
        let _: () = conn
            .set_ex(name, token.to_string(), (expires_in - 300) as u64)
            .unwrap();
        let _: () = conn.sadd("annika:tokens:active", name).unwrap();
    };
    // Far from expiry: served as it is.
    put(
        "annika:tokens:agent:Far.Scope",
        legacy("Far.Scope", None, 3000, 4),
        3000,
    );
    put(
        "annika:tokens:user:bob:Mail.Read",
        legacy("Mail.Read", Some("bob"), 3000, 2),
        3000,
    );
    // Inside the 900 s refresh window: refreshed by the first sweep.
    put(
        "annika:tokens:agent:Near.Scope",
        legacy("Near.Scope", None, 700, 7),
        700,
    );
    for gone in [
        "annika:tokens:agent:Gone.One",
        "annika:tokens:user:x:Gone.Two",
    ] {
        let _: () = conn.sadd("annika:tokens:active", gone).unwrap();
    }
    drop(conn);

    // The sweep at start adopts, refreshes and prunes before the app is returned.
    let app = TestApp::spawn_on(redis, &[]).await;
    let mut conn = app.redis.conn();
    let near: Value = serde_json::from_str(
        &conn
            .get::<_, String>("annika:tokens:agent:Near.Scope")
            .unwrap(),
    )
    .unwrap();
    assert_ne!(near["token"], "eyJ.legacy.Near.Scope", "refreshed");
    assert_eq!(near["refresh_count"], 8, "refresh_count continued");
    let ttl: i64 = conn.ttl("annika:tokens:agent:Near.Scope").unwrap();
    let left = near["expires_on"].as_i64().unwrap() - unix_now();
    assert!(
        (left - ttl).abs() <= 2,
        "TTL {ttl} follows the real expiry ({left} s)"
    );
    let far: Value = serde_json::from_str(
        &conn
            .get::<_, String>("annika:tokens:agent:Far.Scope")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(far["token"], "eyJ.legacy.Far.Scope", "left as it is");
    for name in [
        "annika:tokens:agent:Far.Scope",
        "annika:tokens:user:bob:Mail.Read",
    ] {
        let due: Option<f64> = conn.zscore("annika:tokens:schedule", name).unwrap();
        let due = due.unwrap_or_else(|| panic!("{name} scheduled")) as i64;
        assert!(
            due > unix_now() && due <= now + 3000 - 900,
            "{name} due at {due}"
        );
    }
    let active: std::collections::HashSet<String> = conn.smembers("annika:tokens:active").unwrap();
    assert!(
        !active.iter().any(|m| m.contains("Gone")),
        "dangling members pruned: {active:?}"
    );
    assert_eq!(active.len(), 3, "{active:?}");
    assert_eq!(
        app.idp.requests(),
        0,
        "nothing more asked after the first sweep"
    );

    // The adopted tokens are served as they are.
    let (status, body) = app
        .get("/api/tokens/Far.Scope", Some(&app.keys.admin))
        .await;
    assert_eq!(
        (status, body["token"].clone()),
        (StatusCode::OK, Value::from("eyJ.legacy.Far.Scope"))
    );
    assert_eq!(body["refresh_count"], 4);
    let (status, body) = app
        .get("/api/tokens/Mail.Read?user_id=bob", Some(&app.keys.admin))
        .await;
    assert_eq!(
        (status, body["token"].clone()),
        (StatusCode::OK, Value::from("eyJ.legacy.Mail.Read"))
    );
}

/// A user's grant stored through `PUT` (on-behalf-of), on a double that rotates
/// refresh tokens.
async fn rotating_grant(app: &TestApp, user: &str) -> String {
    app.idp.set_rotating(true);
    let path = format!("/api/tokens/{GRAPH_ENCODED}?user_id={user}");
    let response = app
        .http
        .put(app.url(&path))
        .bearer_auth(&app.keys.admin)
        .json(&json!({"assertion": "eyJ0eXAi.user-assertion.sig"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    format!("/api/tokens/refresh/{GRAPH_ENCODED}?user_id={user}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotating_grant_survives_concurrent_refreshes_from_two_instances() {
    let app = TestApp::spawn_with(&[("TOKEN_REFRESH_RATE_PER_MIN", "0")]).await;
    let twin = app.twin().await;
    let refresh = rotating_grant(&app, "alice").await;
    let http = reqwest::Client::new();
    for round in 0..15 {
        let before = app.idp.count("refresh_token");
        let calls: Vec<_> = [app.addr, twin.addr]
            .into_iter()
            .flat_map(|addr| std::iter::repeat_n(addr, 4))
            .map(|addr| {
                let (http, url, key) = (
                    http.clone(),
                    format!("http://{addr}{refresh}"),
                    app.keys.admin.clone(),
                );
                tokio::spawn(async move { send(&http, Method::POST, &url, Some(&key)).await })
            })
            .collect();
        for call in calls {
            let (status, body, _) = call.await.unwrap();
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        }
        let redeemed = app.idp.count("refresh_token") - before;
        assert!(redeemed >= 1, "round {round}: refreshed");
    }
    // A rotating refresh token works once: no redeem ever reused one.
    let forms = app.idp.forms();
    let redeemed: Vec<&str> = forms
        .iter()
        .filter(|f| f["grant_type"] == "refresh_token")
        .map(|f| f["refresh_token"].as_str())
        .collect();
    let distinct: std::collections::HashSet<&&str> = redeemed.iter().collect();
    assert_eq!(
        distinct.len(),
        redeemed.len(),
        "a used refresh token was redeemed again"
    );
    let secret: Option<String> = app
        .redis
        .conn()
        .get(format!("annika:tokens:secret:user:alice:{GRAPH}"))
        .unwrap();
    assert!(secret.is_some(), "the grant is still there");

    // A real revocation still removes the token and its grant.
    app.idp.revoke_refresh_tokens();
    let (status, body) = app.post(&refresh, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let keys = app.redis_keys();
    assert!(!keys.iter().any(|k| k.contains(":alice:")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_rotated_by_another_writer_meanwhile_is_redeemed_not_revoked() {
    let app = TestApp::spawn_with(&[("TOKEN_REFRESH_RATE_PER_MIN", "0")]).await;
    let refresh = rotating_grant(&app, "alice").await;
    // The redeem is held at the identity provider; meanwhile another writer
    // redeems the same refresh token and stores the one it got.
    app.idp.hold();
    let call = {
        let (http, url, key) = (app.http.clone(), app.url(&refresh), app.keys.admin.clone());
        tokio::spawn(async move { send(&http, Method::POST, &url, Some(&key)).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.idp.count("refresh_token") == 0 {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the identity provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.idp.revoke_refresh_tokens();
    let theirs = app.idp.issue_refresh_token();
    let _: () = app
        .redis
        .conn()
        .set(format!("annika:tokens:secret:user:alice:{GRAPH}"), &theirs)
        .unwrap();
    app.idp.release();
    let (status, body, _) = call.await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the current grant was redeemed: {body}"
    );
    let forms = app.idp.forms();
    let redeemed: Vec<&str> = forms
        .iter()
        .filter(|f| f["grant_type"] == "refresh_token")
        .map(|f| f["refresh_token"].as_str())
        .collect();
    assert_eq!(redeemed.len(), 2, "the used one, then the current one");
    assert_eq!(redeemed[1], theirs);

    // A transient failure never deletes a grant.
    app.idp.fail_next(Failure::unavailable(1));
    let (status, _) = app.post(&refresh, Some(&app.keys.admin)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let secret: Option<String> = app
        .redis
        .conn()
        .get(format!("annika:tokens:secret:user:alice:{GRAPH}"))
        .unwrap();
    assert!(secret.is_some(), "kept through the outage");
}
