//! The proxy's Prometheus metrics. They live for the daemon's lifetime and are added to each
//! scrape's registry next to the data plane's.

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
            "Circuits opened by consecutive failures",
            self.ejections.clone(),
        );
    }

    pub fn request(&self, service: &str, status: u16, attempts: u32) {
        self.requests
            .get_or_create(&vec![
                ("service".into(), service.into()),
                ("code".into(), status.to_string()),
                ("attempts".into(), attempts.to_string()),
            ])
            .inc();
    }

    pub fn attempt(&self, service: &str, backend: &str, outcome: &str) {
        self.attempts
            .get_or_create(&vec![
                ("service".into(), service.into()),
                ("backend".into(), backend.into()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }
}
