//! The proxy's Prometheus metrics. They live for the daemon's lifetime and are added to each
//! scrape's registry next to the data plane's.

use std::{net::SocketAddr, sync::Mutex};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

type Labels = Vec<(String, String)>;

/// Request durations by route and pool: 1 ms to about 33 s.
fn route_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone)]
pub struct L7Metrics {
    /// Responses by service, route, the pool that answered, and status.
    pub route_requests: Family<Labels, Counter>,
    /// Time from the request to the response headers, by service, route and pool.
    pub route_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Moves between a route's pools, by service, route, from, to and kind (errors, latency,
    /// recovered).
    pub route_shifts: Family<Labels, Counter>,
    /// The index in its chain of the pool a route serves from (0: the primary).
    pub route_serving: Family<Labels, Gauge>,
    /// Responses to clients by service, status and attempts.
    pub requests: Family<Labels, Counter>,
    /// Attempts by service, backend and outcome.
    pub attempts: Family<Labels, Counter>,
    /// Retries refused by the budget, by service.
    pub budget_exhausted: Family<Labels, Counter>,
    /// Circuits opened (ejections), by service and backend.
    pub ejections: Family<Labels, Counter>,
    /// Circuits that would have opened but the service's ejection cap refused.
    pub ejections_capped: Family<Labels, Counter>,
    /// Times a listener reached `max_connections` and stopped accepting, by service.
    pub listener_full: Family<Labels, Counter>,
    /// Client connections closed by a timeout, by service and kind (handshake, idle).
    pub client_timeouts: Family<Labels, Counter>,
    /// Requests whose body would have been kept for retries but streamed, because the retry
    /// buffers' memory cap was reached.
    pub buffer_full: Family<Labels, Counter>,
    /// Requests a request filter answered itself, by service, filter and status.
    pub filter_refusals: Family<Labels, Counter>,
}

impl Default for L7Metrics {
    fn default() -> Self {
        L7Metrics {
            route_requests: Family::default(),
            route_latency: Family::new_with_constructor(route_histogram),
            route_shifts: Family::default(),
            route_serving: Family::default(),
            requests: Family::default(),
            attempts: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            ejections_capped: Family::default(),
            listener_full: Family::default(),
            client_timeouts: Family::default(),
            buffer_full: Family::default(),
            filter_refusals: Family::default(),
        }
    }
}

impl L7Metrics {
    /// Adds the metrics to a registry (prefixed `understudy_`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "HTTP responses to clients by status and attempts",
            self.requests.clone(),
        );
        r.register(
            "http_attempts",
            "Upstream attempts by backend and outcome",
            self.attempts.clone(),
        );
        r.register(
            "http_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            self.budget_exhausted.clone(),
        );
        r.register(
            "http_ejections",
            "Circuits opened by consecutive gateway failures",
            self.ejections.clone(),
        );
        r.register(
            "http_ejections_capped",
            "Circuit ejections refused by max_ejection_percent or because the backend was the last in service",
            self.ejections_capped.clone(),
        );
        r.register(
            "http_listener_full",
            "Times a listener reached max_connections and stopped accepting until a close",
            self.listener_full.clone(),
        );
        r.register(
            "http_client_timeouts",
            "Client connections closed by the TLS handshake or idle timeout",
            self.client_timeouts.clone(),
        );
        r.register(
            "http_retry_buffer_full",
            "Request bodies streamed without retry because the retry buffers' memory cap was reached",
            self.buffer_full.clone(),
        );
        r.register(
            "http_filter_refusals",
            "Requests a request filter (such as authentication or a rate limit) answered without choosing a backend",
            self.filter_refusals.clone(),
        );
        r.register(
            "http_route_requests",
            "HTTP responses by route, the pool that answered, and status",
            self.route_requests.clone(),
        );
        r.register(
            "http_route_request_duration_seconds",
            "Time from a request to its response headers, by route and pool",
            self.route_latency.clone(),
        );
        r.register(
            "http_route_shifts",
            "Moves of a route between the pools of its chain, by kind (errors, latency, recovered)",
            self.route_shifts.clone(),
        );
        r.register(
            "http_route_serving_pool",
            "The position in its chain of the pool a route serves new requests from (0: primary)",
            self.route_serving.clone(),
        );
    }
}

/// One service's counters, with the handles it has used cached, so the request path neither
/// builds label strings nor hashes them (a service sees few distinct label sets).
pub struct ServiceCounters {
    service: String,
    metrics: L7Metrics,
    requests: Mutex<Vec<((u16, u32), Counter)>>,
    attempts: Mutex<Vec<((SocketAddr, &'static str), Counter)>>,
}

/// Increments the counter cached for `key`, creating (and caching) it with `make` the first time.
pub(super) fn cached<K: PartialEq + Copy>(
    cache: &Mutex<Vec<(K, Counter)>>,
    key: K,
    make: impl FnOnce() -> Counter,
) {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, counter)) = c.iter().find(|(k, _)| *k == key) {
        counter.inc();
        return;
    }
    let counter = make();
    counter.inc();
    c.push((key, counter));
}

impl ServiceCounters {
    pub fn new(service: &str, metrics: L7Metrics) -> ServiceCounters {
        ServiceCounters {
            service: service.to_string(),
            metrics,
            requests: Mutex::default(),
            attempts: Mutex::default(),
        }
    }

    pub fn metrics(&self) -> &L7Metrics {
        &self.metrics
    }

    pub fn request(&self, status: u16, attempts: u32) {
        cached(&self.requests, (status, attempts), || {
            self.metrics
                .requests
                .get_or_create(&vec![
                    ("service".into(), self.service.clone()),
                    ("code".into(), status.to_string()),
                    ("attempts".into(), attempts.to_string()),
                ])
                .clone()
        });
    }

    pub fn attempt(&self, backend: SocketAddr, outcome: &'static str) {
        cached(&self.attempts, (backend, outcome), || {
            self.metrics
                .attempts
                .get_or_create(&vec![
                    ("service".into(), self.service.clone()),
                    ("backend".into(), backend.to_string()),
                    ("outcome".into(), outcome.into()),
                ])
                .clone()
        });
    }
}
