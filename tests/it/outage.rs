//! A Redis outage costs callers nothing: cached tokens are served at cache speed
//! while Redis (or one master of three) is away, misses get a `503` at once, and
//! everything recovers by itself within a second of Redis answering again.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    // Read until the token sits in the cache. This instance's own write comes
    // back as a change and drops it once: wait for that first, or the entry the
    // write put in could be the one cached, and vanish once the readers start.
    let (status, _) = app.get(&cached, Some(&app.keys.reader)).await;
    assert_eq!(status, StatusCode::OK);
    let cache = app.state.cache.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.peek(&key, 300).is_some() {
        assert!(
            Instant::now() < deadline,
            "the write never came back as a change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while cache.peek(&key, 300).is_none() {
        assert!(Instant::now() < deadline, "the token was never cached");
        let (status, _) = app.get(&cached, Some(&app.keys.reader)).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, first) = app.get(&cached, Some(&app.keys.reader)).await;

    // Concurrent readers of the cached token, from before Redis goes away until
    // it is back: every answer is the token, and when each was asked.
    let stop = Arc::new(AtomicBool::new(false));
    // Set while the circuit is open; the readers count the reads they start then.
    let open = Arc::new(AtomicBool::new(false));
    let read_while_open = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, key, stop, open, read_while_open) = (
                app.http.clone(),
                app.url(&cached),
                app.keys.reader.clone(),
                stop.clone(),
                open.clone(),
                read_while_open.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let asked = Instant::now();
                    if open.load(Ordering::Relaxed) {
                        read_while_open.fetch_add(1, Ordering::Relaxed);
                    }
                    let (status, body, _) = send(&http, Method::GET, &url, Some(&key)).await;
                    let token = match status {
                        StatusCode::OK => body["token"].clone(),
                        _ => body,
                    };
                    answers.push((asked, asked.elapsed(), status, token));
                }
                answers
            })
        })
        .collect();

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

    // A scope that is not cached, while Redis is away (the readers go on).
    let opened = Instant::now();
    open.store(true, Ordering::Relaxed);
    let mut miss_times = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let (status, body, headers) = app
            .send(Method::GET, "/api/tokens/Not.Cached", Some(&app.keys.admin))
            .await;
        miss_times.push(started.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    let miss_median = median(miss_times);
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

    // Redis stays away until the readers have been answered often enough
    // while the circuit is open to measure them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_while_open.load(Ordering::Relaxed) < 40 {
        assert!(
            Instant::now() < deadline,
            "{outage:?}: only {} reads started while the circuit was open",
            read_while_open.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    open.store(false, Ordering::Relaxed);
    let reopened = Instant::now();
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
        // Timed from the send: a slow answer on a loaded machine is not a failed one.
        let asked = Instant::now();
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
            asked - closed < Duration::from_secs(1),
            "{outage:?}: read {read}, write {write} a second after the probe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&app).await["status"], "healthy");

    stop.store(true, Ordering::Relaxed);
    let mut while_open = Vec::new();
    for reader in readers {
        let answers = reader.await.unwrap();
        for (asked, took, status, token) in answers {
            // Always served; the token it had, for every read answered before
            // Redis came back.
            assert_eq!(status, StatusCode::OK, "{outage:?}: {token}");
            if asked + took < reopened {
                assert_eq!(token, first["token"], "{outage:?}");
            }
            if asked >= opened && asked < reopened {
                while_open.push(took);
            }
        }
    }
    assert!(
        while_open.len() >= 40,
        "{} reads while open",
        while_open.len()
    );
    let cached_median = median(while_open);
    assert!(
        cached_median < Duration::from_millis(50),
        "cached reads took {cached_median:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_tokens_are_served_at_cache_speed_while_redis_is_down_and_restarts_empty() {
    ride_out(Outage::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_while_redis_is_frozen_and_comes_back_with_its_data() {
    ride_out(Outage::Freeze).await;
}
