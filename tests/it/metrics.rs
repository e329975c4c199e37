//! `GET /api/tokens/metrics`, read with a Prometheus text-format parser.

use crate::support::*;
use prometheus_parse::{Scrape, Value};
use reqwest::StatusCode;

async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .http
        .get(app.url("/api/tokens/metrics"))
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of the sample `name` whose labels include all of `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_as_requests_are_made() {
    let app = TestApp::spawn().await;
    app.wait_cache_live().await;
    let (status, body) = app.get("/api/tokens/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let route = [("route", "/api/tokens/*scope"), ("status", "200")];
    let before = scrape(&app).await;
    let path = format!("/api/tokens/{GRAPH_ENCODED}");
    // The first read acquires the token; the change event of that write drops this
    // instance's copy when it arrives, so reads go on until one is a cache hit.
    let mut reads = 0.0;
    let hits = || async {
        let now = scrape(&app).await;
        value(
            &now,
            "token_broker_cache_lookups_total",
            &[("result", "hit")],
        ) - value(
            &before,
            "token_broker_cache_lookups_total",
            &[("result", "hit")],
        )
    };
    while reads < 3.0 || hits().await < 1.0 {
        assert!(reads < 50.0, "no cache hit in 50 reads");
        let (status, _) = app.get(&path, Some(&app.keys.reader)).await;
        assert_eq!(status, StatusCode::OK);
        reads += 1.0;
    }
    app.get("/api/tokens/Mail.Send", Some(&app.keys.reader))
        .await;
    app.state.tokens.sweep().await.unwrap();
    let after = scrape(&app).await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta("token_broker_http_requests_total", &route), reads);
    assert_eq!(
        delta("token_broker_http_requests_total", &[("status", "403")]),
        1.0
    );
    assert!(delta("token_broker_cache_lookups_total", &[("result", "hit")]) >= 1.0);
    assert!(delta("token_broker_cache_lookups_total", &[("result", "miss")]) >= 1.0);
    assert_eq!(
        delta(
            "token_broker_idp_requests_total",
            &[("flow", "password"), ("outcome", "ok")]
        ),
        1.0
    );
    assert!(
        delta("token_broker_refresh_seconds_count", &[])
            + delta("token_broker_refresh_seconds", &[])
            >= 1.0
    );
    assert!(
        delta("token_broker_sweep_seconds_count", &[]) + delta("token_broker_sweep_seconds", &[])
            >= 1.0
    );
    assert_eq!(value(&after, "token_broker_tokens_stored", &[]), 1.0);
    let soonest = value(&after, "token_broker_soonest_expiry_seconds", &[]);
    assert!((3000.0..=3600.0).contains(&soonest), "{soonest}");
    // Low cardinality: no label anywhere carries a scope or a user.
    for sample in &after.samples {
        for (_, label) in sample.labels.iter() {
            assert!(
                !label.contains("graph.microsoft.com") && !label.contains("Mail.Send"),
                "{label}"
            );
        }
    }
}
