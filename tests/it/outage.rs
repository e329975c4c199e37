//! A Redis outage costs callers nothing: cached tokens are served at cache speed
//! while Redis (or one master of three) is away, misses get a `503` at once, and
//! everything recovers by itself within a second of Redis answering again.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};
use token_broker::domain::{Scope, TokenKey};

/// How Redis goes away and comes back.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// The server stops and starts again empty.
    Restart,
    /// The server freezes (nothing answers, connections stay open) and thaws
    /// with its data.
    Freeze,
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

async fn health(app: &TestApp) -> Value {
    app.send(Method::GET, "/api/tokens/health", None).await.1
}

async fn ride_out(outage: Outage) {
    let mut app = TestApp::spawn_with(&[("TOKEN_REFRESH_RATE_PER_MIN", "0")]).await;
    app.wait_cache_live().await;
    let cached = format!("/api/tokens/{GRAPH_ENCODED}");
    let key = TokenKey::Agent(Scope::parse(GRAPH).unwrap());
    // Read until the token sits in the cache (this instance's own write comes
    // back as a change and drops it once).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.cache.as_ref().unwrap().peek(&key, 300).is_none() {
        assert!(Instant::now() < deadline, "the token was never cached");
        let (status, _) = app.get(&cached, Some(&app.keys.reader)).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, first) = app.get(&cached, Some(&app.keys.reader)).await;

    // One master of three on the cluster pass: by default a cluster with a slot
    // uncovered refuses every key, so the whole store is down.
    match outage {
        Outage::Restart => app.redis.stop_node(0),
        Outage::Freeze => app.redis.pause_node(0),
    }
    // Until some request finds Redis gone (a frozen one: after the command
    // timeout), then every request fails at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&app).await["redis_circuit"] != "open" {
        assert!(
            Instant::now() < deadline,
            "the circuit never opened: {}",
            health(&app).await
        );
        app.get("/api/tokens/Uncached.Scope", Some(&app.keys.admin))
            .await;
    }

    // Readers of the cached token, and of one that is not, while Redis is away.
    let mut cached_times = Vec::new();
    let mut miss_times = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let (status, body) = app.get(&cached, Some(&app.keys.reader)).await;
        cached_times.push(started.elapsed());
        assert_eq!(
            (status, &body["token"]),
            (StatusCode::OK, &first["token"]),
            "{body}"
        );
        let started = Instant::now();
        let (status, body, headers) = app
            .send(Method::GET, "/api/tokens/Not.Cached", Some(&app.keys.admin))
            .await;
        miss_times.push(started.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    let (cached_median, miss_median) = (median(cached_times), median(miss_times));
    assert!(
        cached_median < Duration::from_millis(50),
        "cached reads took {cached_median:?}"
    );
    assert!(
        miss_median < Duration::from_millis(50),
        "misses took {miss_median:?}"
    );
    let during = health(&app).await;
    assert_eq!(during["status"], "degraded", "{during}");
    // Writes fail as fast, with their documented answer.
    let started = Instant::now();
    let (status, body) = app
        .post(
            &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    match outage {
        Outage::Restart => app.redis.restart_node(0),
        Outage::Freeze => app.redis.resume_node(0),
    }
    // The first successful probe closes the circuit; within a second of it reads
    // and writes work again, without restarting the service.
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&app).await["redis_circuit"] != "closed" {
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = Instant::now();
    loop {
        let (read, _) = app
            .get("/api/tokens/After.Outage", Some(&app.keys.admin))
            .await;
        let (write, _) = app
            .post(
                &format!("/api/tokens/refresh/{GRAPH_ENCODED}"),
                Some(&app.keys.reader),
            )
            .await;
        if read == StatusCode::OK && write == StatusCode::OK {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "{outage:?}: read {read}, write {write} a second after the probe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&app).await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_tokens_are_served_at_cache_speed_while_redis_is_down_and_restarts_empty() {
    ride_out(Outage::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_while_redis_is_frozen_and_comes_back_with_its_data() {
    ride_out(Outage::Freeze).await;
}
