//! `GET /api/tokens/metrics`, read with a Prometheus text-format parser, and the
//! health status operators alert on beside it.

use crate::support::*;
use prometheus_parse::{Scrape, Value};
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Every metric the service exports, as Prometheus names it (counters with
/// `_total`), its type and its labels. README.md's metrics table lists the same
/// names and types.
const METRICS: [(&str, &str, &[&str]); 12] = [
    (
        "token_broker_http_requests_total",
        "counter",
        &["route", "method", "status"],
    ),
    (
        "token_broker_http_request_duration_seconds",
        "histogram",
        &["route", "method", "status"],
    ),
    ("token_broker_cache_lookups_total", "counter", &["result"]),
    (
        "token_broker_idp_requests_total",
        "counter",
        &["flow", "outcome"],
    ),
    ("token_broker_refresh_seconds", "histogram", &[]),
    ("token_broker_sweep_seconds", "histogram", &[]),
    ("token_broker_lease_waits_total", "counter", &[]),
    ("token_broker_tokens_stored", "gauge", &[]),
    ("token_broker_soonest_expiry_seconds", "gauge", &[]),
    ("token_broker_redis_circuit_open", "gauge", &[]),
    ("token_broker_cache_live", "gauge", &[]),
    ("token_broker_build_info", "gauge", &["version", "commit"]),
];

/// Sample suffixes that belong to a listed metric.
const SUFFIXES: [&str; 4] = ["_bucket", "_sum", "_count", "_created"];

async fn exposition(app: &TestApp) -> String {
    let response = app
        .http
        .get(app.url("/api/tokens/metrics"))
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

async fn scrape(app: &TestApp) -> Scrape {
    parse(&exposition(app).await)
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

fn has_sample(scrape: &Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}

/// The listed metric a sample belongs to.
fn listed_of(
    sample: &str,
) -> Option<&'static (&'static str, &'static str, &'static [&'static str])> {
    let exact = METRICS.iter().find(|(name, ..)| *name == sample);
    exact.or_else(|| {
        let base = SUFFIXES.iter().find_map(|s| sample.strip_suffix(s))?;
        // A counter's `_created` drops its `_total`.
        METRICS
            .iter()
            .find(|(name, ..)| *name == base || name.strip_suffix("_total") == Some(base))
    })
}

/// The exposition holds exactly [`METRICS`]: each declared with its type and
/// sampled with its labels, nothing else declared or sampled.
fn assert_exactly_the_listed_metrics(text: &str) {
    // prometheus-parse keeps no type of a family it has no sample name for (an
    // OpenMetrics counter is declared without `_total`): the TYPE lines are read
    // here.
    let declared: BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let (family, kind) = (words.next()?, words.next()?);
            let name = match kind {
                "counter" => format!("{family}_total"),
                _ => family.to_owned(),
            };
            Some((name, kind.to_owned()))
        })
        .collect();
    let listed: BTreeSet<(String, String)> = METRICS
        .iter()
        .map(|(name, kind, _)| (name.to_string(), kind.to_string()))
        .collect();
    assert_eq!(declared, listed, "declared metrics differ from METRICS");

    let scrape = parse(text);
    let mut sampled = BTreeSet::new();
    for sample in &scrape.samples {
        let Some((name, kind, labels)) = listed_of(&sample.metric) else {
            panic!("unlisted sample {}", sample.metric);
        };
        sampled.insert(*name);
        let keys: BTreeSet<&str> = sample
            .labels
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "le")
            .collect();
        assert_eq!(
            keys,
            labels.iter().copied().collect(),
            "labels of {}",
            sample.metric
        );
        match (*kind, &sample.value) {
            ("gauge", Value::Gauge(_)) | ("histogram", Value::Histogram(_)) => {}
            // Counters (`_total`), histograms' `_sum` and `_count`: the parser
            // finds no TYPE line under those names; checked above.
            ("counter" | "histogram", Value::Untyped(_)) => {}
            (kind, value) => panic!("{} is a {kind}, sampled as {value:?}", sample.metric),
        }
    }
    let missing: Vec<_> = METRICS
        .iter()
        .map(|(name, ..)| *name)
        .filter(|name| !sampled.contains(name))
        .collect();
    assert!(missing.is_empty(), "no sample of {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_as_requests_are_made() {
    let app = TestApp::spawn().await;
    app.wait_cache_live().await;
    let (status, body) = app.get("/api/tokens/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let route = [
        ("route", "/api/tokens/*scope"),
        ("method", "GET"),
        ("status", "200"),
    ];
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
    let text = exposition(&app).await;
    assert_exactly_the_listed_metrics(&text);
    let after = parse(&text);

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta("token_broker_http_requests_total", &route), reads);
    assert_eq!(
        delta("token_broker_http_request_duration_seconds", &route),
        reads,
        "one latency observation per request"
    );
    assert!(
        delta("token_broker_http_request_duration_seconds_sum", &route) > 0.0,
        "latency is measured"
    );
    assert_eq!(
        delta(
            "token_broker_http_requests_total",
            &[("method", "GET"), ("status", "403")]
        ),
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
    assert!(delta("token_broker_refresh_seconds", &[]) >= 1.0);
    assert!(delta("token_broker_sweep_seconds", &[]) >= 1.0);
    assert_eq!(value(&after, "token_broker_tokens_stored", &[]), 1.0);
    let soonest = value(&after, "token_broker_soonest_expiry_seconds", &[]);
    assert!((3000.0..=3600.0).contains(&soonest), "{soonest}");
    assert_eq!(value(&after, "token_broker_redis_circuit_open", &[]), 0.0);
    assert_eq!(value(&after, "token_broker_cache_live", &[]), 1.0);
    assert_eq!(
        value(
            &after,
            "token_broker_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn invented_methods_share_one_label() {
    let app = TestApp::spawn().await;
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    let (status, _, _) = app.send(brew, "/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let after = scrape(&app).await;
    let labels = [("method", "other"), ("status", "405")];
    assert_eq!(
        value(&after, "token_broker_http_requests_total", &labels),
        1.0
    );
    assert!(
        after
            .samples
            .iter()
            .all(|s| s.labels.get("method") != Some("BREW")),
        "the method a client invents is not a label"
    );
}

/// No sentinel values: a figure nobody has is absent, liveness is 0 or 1.
#[tokio::test(flavor = "multi_thread")]
async fn what_is_unknown_is_absent_and_liveness_follows_redis() {
    let mut app = TestApp::spawn().await;
    app.wait_cache_live().await;
    let empty = scrape(&app).await;
    assert_eq!(value(&empty, "token_broker_tokens_stored", &[]), 0.0);
    assert!(
        !has_sample(&empty, "token_broker_soonest_expiry_seconds"),
        "no token stored: no soonest expiry, not -1"
    );
    assert_eq!(value(&empty, "token_broker_redis_circuit_open", &[]), 0.0);
    assert_eq!(value(&empty, "token_broker_cache_live", &[]), 1.0);
    for sample in &empty.samples {
        if let Value::Gauge(v) = sample.value {
            assert!(v >= 0.0, "{} = {v}", sample.metric);
        }
    }

    app.redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        let now = scrape(&app).await;
        if value(&now, "token_broker_redis_circuit_open", &[]) == 1.0
            && value(&now, "token_broker_cache_live", &[]) == 0.0
        {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "Redis stopped, yet circuit {} and cache live {}",
            value(&now, "token_broker_redis_circuit_open", &[]),
            value(&now, "token_broker_cache_live", &[]),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !has_sample(&down, "token_broker_tokens_stored"),
        "the store cannot be asked: no stale count"
    );
    assert!(!has_sample(&down, "token_broker_soonest_expiry_seconds"));
}

/// Health says `degraded` while the identity provider has only ever failed: no new
/// token can be had, though the store answers.
#[tokio::test(flavor = "multi_thread")]
async fn health_is_degraded_until_the_identity_provider_first_answers() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::OK, "nothing asked yet: {body}");
    assert_eq!(body["status"], "healthy");

    app.idp.set_outage(Some(Failure::unavailable(30)));
    let (status, _) = app
        .get(
            &format!("/api/tokens/{GRAPH_ENCODED}"),
            Some(&app.keys.reader),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = app.get("/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["redis_connected"], true, "{body}");
    assert!(
        body["identity_provider"]["last_success"].is_null(),
        "{body}"
    );
    assert!(
        body["identity_provider"]["last_error"].is_object(),
        "{body}"
    );

    app.idp.set_outage(None);
    let (status, body) = app
        .get("/api/tokens/User.Read", Some(&app.keys.reader))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.get("/api/tokens/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["status"], "healthy",
        "one answer since start is enough, as before: {body}"
    );
}

/// The README's metrics table lists exactly [`METRICS`]: names, types and
/// labels, so the list the exposition is checked against is the documented one.
#[test]
fn the_readme_lists_the_same_metrics() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section in the README");
    let documented: Vec<(String, String, Vec<String>)> = section
        .lines()
        .filter(|l| l.starts_with("| `token_broker_"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // Label names, without the values some rows give in parentheses.
            let mut names = String::new();
            let mut depth = 0;
            for c in cells[3].chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ if depth == 0 => names.push(c),
                    _ => {}
                }
            }
            let labels = names
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_owned())
                .filter(|l| !l.is_empty() && l != "—")
                .collect();
            (
                cells[1].trim_matches('`').to_owned(),
                cells[2].to_owned(),
                labels,
            )
        })
        .collect();
    let listed: Vec<(String, String, Vec<String>)> = METRICS
        .iter()
        .map(|(name, kind, labels)| {
            (
                name.to_string(),
                kind.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(documented, listed);
}
