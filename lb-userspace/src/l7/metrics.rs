//! The proxy's Prometheus metrics. They live for the daemon's lifetime and are added to each
//! scrape's registry next to the data plane's.

use std::{net::SocketAddr, sync::Mutex};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type Labels = Vec<(String, String)>;

#[derive(Default, Clone)]
pub struct L7Metrics {
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

fn cached<K: PartialEq + Copy>(
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
