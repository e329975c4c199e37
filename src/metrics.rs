//! Prometheus metrics, served at `GET /api/tokens/metrics` to any valid key.
//! Labels are low-cardinality on purpose: routes are templates, never scopes or
//! users.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template without braces (`/api/tokens/*scope`), or `unmatched`.
    pub route: &'static str,
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

/// Cheap to clone: every metric is a handle onto shared counters.
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub cache: Family<ResultLabels, Counter>,
    pub idp_requests: Family<IdpLabels, Counter>,
    pub refresh_seconds: Histogram,
    pub sweep_seconds: Histogram,
    /// Callers that waited for another instance's refresh lease.
    pub lease_waits: Counter,
    pub tokens_stored: Gauge,
    pub soonest_expiry_seconds: Gauge,
    /// 1 while requests to Redis fail at once (it could not be reached).
    pub redis_circuit_open: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("token_broker");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Token cache lookups by result (hit, miss)",
            cache.clone(),
        );
        let idp_requests = Family::<IdpLabels, Counter>::default();
        registry.register(
            "idp_requests",
            "Token requests to the identity provider by flow and outcome",
            idp_requests.clone(),
        );
        let refresh_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "refresh_seconds",
            "Time to get and store a token from the identity provider",
            refresh_seconds.clone(),
        );
        let sweep_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "sweep_seconds",
            "Duration of refresh sweeps",
            sweep_seconds.clone(),
        );
        let lease_waits = Counter::default();
        registry.register(
            "lease_waits",
            "Times a caller waited for another instance's refresh lease",
            lease_waits.clone(),
        );
        let tokens_stored = Gauge::default();
        registry.register(
            "tokens_stored",
            "Tokens in the active set",
            tokens_stored.clone(),
        );
        let soonest_expiry_seconds = Gauge::default();
        registry.register(
            "soonest_expiry_seconds",
            "Seconds until the soonest stored token expires (-1: none)",
            soonest_expiry_seconds.clone(),
        );
        let redis_circuit_open = Gauge::default();
        registry.register(
            "redis_circuit_open",
            "1 while Redis could not be reached and requests to it fail at once",
            redis_circuit_open.clone(),
        );
        Self {
            registry: std::sync::Arc::new(registry),
            requests,
            cache,
            idp_requests,
            refresh_seconds,
            sweep_seconds,
            lease_waits,
            tokens_stored,
            soonest_expiry_seconds,
            redis_circuit_open,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
