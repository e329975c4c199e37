//! Prometheus metrics, served at `GET /api/tokens/metrics` to any valid key.
//! Labels are low-cardinality on purpose: routes are templates, methods a fixed
//! list, never scopes or users.
//!
//! Summing over instances: counters and histograms count this instance's own
//! events, and the per-instance gauges (`redis_circuit_open`, `cache_live`,
//! `build_info`) are 0/1 states, so their sums mean something (instances with the
//! circuit open, instances of a build). `tokens_stored` and
//! `soonest_expiry_seconds` are read from the shared store: every instance
//! reports the same figure, so aggregate them with `max`/`min`, never `sum`.

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template without braces (`/api/tokens/*scope`), or `unmatched`.
    pub route: &'static str,
    /// From [`method_label`].
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdpLabels {
    pub flow: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The method as a label: any other method a client invents is `other`, so a
/// caller cannot grow the label set.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Request latency buckets, seconds: a cache hit takes tens of microseconds, an
/// identity-provider round trip up to seconds.
const REQUEST_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The commit the binary was built from (build.rs: `GIT_COMMIT`, else git,
/// else "unknown"), as `handler --version` prints it.
const COMMIT: &str = env!("HANDLER_COMMIT");

type NoLabels = [(&'static str, &'static str); 0];

/// A gauge with no sample at all while it has no value, rather than a sentinel
/// such as -1 that a `min` or an alert threshold would take for a real value.
#[derive(Clone, Debug, Default)]
pub struct OptionalGauge(Family<NoLabels, Gauge>);

impl OptionalGauge {
    pub fn set(&self, value: Option<i64>) {
        match value {
            Some(value) => {
                self.0.get_or_create(&[]).set(value);
            }
            None => self.0.clear(),
        }
    }
}

/// Cheap to clone: every metric is a handle onto shared counters.
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub cache: Family<ResultLabels, Counter>,
    pub idp_requests: Family<IdpLabels, Counter>,
    pub refresh_seconds: Histogram,
    pub sweep_seconds: Histogram,
    /// Callers that waited for another instance's refresh lease.
    pub lease_waits: Counter,
    /// The shared store's figure, set when metrics are read; absent when the
    /// store could not be asked.
    pub tokens_stored: OptionalGauge,
    /// Absent while no token is stored (or the store could not be asked).
    pub soonest_expiry_seconds: OptionalGauge,
    /// 1 while requests to Redis fail at once (it could not be reached).
    pub redis_circuit_open: Gauge,
    /// 1 while this instance's cache follows the change feed; absent without a
    /// cache (the in-process store).
    pub cache_live: OptionalGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("token_broker");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by this instance, by route, method and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                request_histogram,
            );
        registry.register_with_unit(
            "http_request_duration",
            "Seconds this instance took to answer a request (until its response was ready), by route, method and status",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Lookups in this instance's token cache by result (hit, miss)",
            cache.clone(),
        );
        let idp_requests = Family::<IdpLabels, Counter>::default();
        registry.register(
            "idp_requests",
            "Token requests this instance made to the identity provider, by flow and outcome",
            idp_requests.clone(),
        );
        let refresh_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "refresh",
            "Seconds to get a token from the identity provider and store it",
            Unit::Seconds,
            refresh_seconds.clone(),
        );
        let sweep_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "sweep",
            "Seconds this instance's refresh sweeps took",
            Unit::Seconds,
            sweep_seconds.clone(),
        );
        let lease_waits = Counter::default();
        registry.register(
            "lease_waits",
            "Times a caller on this instance waited for another's refresh lease",
            lease_waits.clone(),
        );
        let tokens_stored = OptionalGauge::default();
        registry.register(
            "tokens_stored",
            "Tokens in the shared store's active set (the same on every instance: aggregate with max, not sum)",
            tokens_stored.0.clone(),
        );
        let soonest_expiry_seconds = OptionalGauge::default();
        registry.register_with_unit(
            "soonest_expiry",
            "Seconds until the soonest token in the shared store expires; absent when none is stored (the same on every instance: aggregate with min, not sum)",
            Unit::Seconds,
            soonest_expiry_seconds.0.clone(),
        );
        let redis_circuit_open = Gauge::default();
        registry.register(
            "redis_circuit_open",
            "1 while this instance could not reach Redis and its requests to it fail at once (per instance)",
            redis_circuit_open.clone(),
        );
        let cache_live = OptionalGauge::default();
        registry.register(
            "cache_live",
            "1 while this instance's cache receives the store's change feed, 0 while it does not; absent with the in-process store (per instance)",
            cache_live.0.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels name the version and commit this instance runs (per instance)",
            build_info,
        );
        Self {
            registry: std::sync::Arc::new(registry),
            requests,
            request_seconds,
            cache,
            idp_requests,
            refresh_seconds,
            sweep_seconds,
            lease_waits,
            tokens_stored,
            soonest_expiry_seconds,
            redis_circuit_open,
            cache_live,
        }
    }
}

impl Metrics {
    /// Counts one answered request and how long it took.
    pub fn request(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.request_seconds.get_or_create(labels).observe(seconds);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_optional_gauge_has_no_sample() {
        let metrics = Metrics::default();
        let samples = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("token_broker_soonest_expiry_seconds"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert!(samples(&metrics.encode()).is_empty());
        metrics.soonest_expiry_seconds.set(Some(42));
        assert_eq!(
            samples(&metrics.encode()),
            ["token_broker_soonest_expiry_seconds 42"]
        );
        metrics.soonest_expiry_seconds.set(None);
        assert!(samples(&metrics.encode()).is_empty());
    }

    #[test]
    fn invented_methods_share_one_label() {
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "other");
        assert_eq!(method_label(&Method::HEAD), "HEAD");
    }
}
