//! A service's routes at run time: the first route whose conditions a request meets, the pools of
//! its chain in the order this request walks them, and the rewrite each pool applies.
//!
//! A service without `[[service.route]]` has one implicit route, "default", that takes every
//! request to the service's own backends, so the request path is the same for both.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use hyper::{
    HeaderMap,
    header::HOST,
    http::{request::Parts, uri::PathAndQuery},
};
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use serde::{Deserialize, Serialize};

use super::{metrics::L7Metrics, shift::RouteState};
use crate::config::{HttpService, PathMatch, PoolRef, Route, RouteMatch, RouteRequest};

/// Failover states of one service's routes, by route name; kept across reloads while a route's
/// chain and thresholds stay the same.
pub type RouteStates = Arc<Mutex<HashMap<String, Arc<RouteState>>>>;

/// One route, ready to serve.
pub struct Compiled {
    pub route: Route,
    /// Error- and latency-based failover; `None` without `[service.route.failover]`.
    pub state: Option<Arc<RouteState>>,
    /// The route's own request filters: authentication and rate limits.
    pub policy: super::filter::Chain,
    /// Per chain pool: the latency histogram and the response counters by status.
    per_pool: Vec<PoolCounters>,
    shifts: Family<Vec<(String, String)>, Counter>,
    requests: Family<Vec<(String, String)>, Counter>,
    serving_gauge: prometheus_client::metrics::gauge::Gauge,
    service: String,
    /// Responses, and those with a 5xx status, since the route was loaded.
    answered: std::sync::atomic::AtomicU64,
    server_errors: std::sync::atomic::AtomicU64,
    /// Requests the route's or the service's filters answered.
    pub refused: std::sync::atomic::AtomicU64,
}

struct PoolCounters {
    labels: Vec<(String, String)>,
    latency: Histogram,
    codes: Mutex<Vec<(u16, Counter)>>,
}

/// A service's routes.
pub struct Routes {
    pub list: Vec<Compiled>,
    /// Whether the routes were written (`false`: the implicit route alone).
    pub explicit: bool,
    /// Whether some route matches on the host (else it is not computed per request).
    needs_host: bool,
}

impl Routes {
    pub fn new(
        service: &str,
        http: &HttpService,
        carried: &RouteStates,
        metrics: &L7Metrics,
        credentials: &Arc<super::auth::Credentials>,
    ) -> Routes {
        let explicit = !http.routes.is_empty();
        let routes = if explicit {
            http.routes.clone()
        } else {
            vec![Route {
                name: "default".into(),
                matcher: RouteMatch::default(),
                chain: vec![PoolRef::plain(service, http.protocol)],
                failover: None,
                policy: Default::default(),
            }]
        };
        let now = Instant::now();
        let mut states = carried.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = HashMap::new();
        let list: Vec<Compiled> = routes
            .into_iter()
            .map(|route| {
                let names: Vec<String> = route.chain.iter().map(|p| p.pool.clone()).collect();
                let state = route.failover.as_ref().map(|cfg| {
                    let state = match states.get(&route.name) {
                        Some(s) if s.config() == cfg && s.chain() == names.as_slice() => s.clone(),
                        _ => Arc::new(RouteState::new(cfg.clone(), names.clone(), now)),
                    };
                    kept.insert(route.name.clone(), state.clone());
                    state
                });
                let per_pool = names
                    .iter()
                    .map(|pool| {
                        let labels = vec![
                            ("service".to_string(), service.to_string()),
                            ("route".to_string(), route.name.clone()),
                            ("pool".to_string(), pool.clone()),
                        ];
                        PoolCounters {
                            latency: metrics.route_latency.get_or_create(&labels).clone(),
                            labels,
                            codes: Mutex::default(),
                        }
                    })
                    .collect();
                let serving_gauge = metrics
                    .route_serving
                    .get_or_create(&vec![
                        ("service".to_string(), service.to_string()),
                        ("route".to_string(), route.name.clone()),
                    ])
                    .clone();
                serving_gauge.set(state.as_ref().map_or(0, |s| s.serving().pool as i64));
                Compiled {
                    policy: super::filter::Chain::for_route(service, &route, credentials),
                    route,
                    state,
                    per_pool,
                    shifts: metrics.route_shifts.clone(),
                    requests: metrics.route_requests.clone(),
                    serving_gauge,
                    service: service.to_string(),
                    answered: Default::default(),
                    server_errors: Default::default(),
                    refused: Default::default(),
                }
            })
            .collect();
        *states = kept;
        let needs_host = list
            .iter()
            .any(|c: &Compiled| c.route.matcher.host.is_some());
        Routes {
            list,
            explicit,
            needs_host,
        }
    }

    /// The index of the first route the request matches.
    pub fn pick(&self, head: &Parts) -> Option<usize> {
        if !self.explicit {
            return Some(0);
        }
        let host = if self.needs_host {
            request_host(head)
        } else {
            String::new()
        };
        let r = RouteRequest {
            host: &host,
            path: head.uri.path(),
            method: &head.method,
            headers: &head.headers,
        };
        self.list.iter().position(|c| c.route.matcher.matches(&r))
    }
}

/// The request's host, lower case and without port: `Host`, or the URI's authority (HTTP/2).
pub fn request_host(head: &Parts) -> String {
    let raw = head
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    super::headers::host_name(raw)
}

impl Compiled {
    /// The chain pools in the order this request walks them: the pool it starts at (the
    /// serving one, or a tripped one it probes), then the rest of the chain after it, then the
    /// pools before it.
    pub fn walk(&self) -> impl Iterator<Item = usize> + use<> {
        let n = self.route.chain.len();
        let start = self
            .state
            .as_ref()
            .map_or(0, |s| s.start(fastrand::f64()))
            .min(n - 1);
        (start..n).chain(0..start)
    }

    /// One attempt on chain pool `pool` ended.
    pub fn attempt(&self, pool: usize, error: bool, latency: Option<std::time::Duration>) {
        let Some(state) = &self.state else { return };
        let now = Instant::now();
        if let Some(shift) =
            state.record((&self.service, &self.route.name), pool, now, error, latency)
        {
            self.shifts
                .get_or_create(&vec![
                    ("service".into(), self.service.clone()),
                    ("route".into(), self.route.name.clone()),
                    ("from".into(), self.route.chain[shift.from].pool.clone()),
                    ("to".into(), self.route.chain[shift.to].pool.clone()),
                    ("kind".into(), shift.kind.into()),
                ])
                .inc();
            self.serving_gauge.set(shift.to as i64);
        }
    }

    /// A response went to the client from chain pool `pool` (`None`: no pool answered).
    pub fn responded(&self, pool: Option<usize>, status: u16, elapsed: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.answered.fetch_add(1, Relaxed);
        if status >= 500 {
            self.server_errors.fetch_add(1, Relaxed);
        }
        let Some(p) = pool.and_then(|i| self.per_pool.get(i)) else {
            return;
        };
        p.latency.observe(elapsed.as_secs_f64());
        super::metrics::cached(&p.codes, status, || {
            let mut labels = p.labels.clone();
            labels.push(("code".into(), status.to_string()));
            self.requests.get_or_create(&labels).clone()
        });
    }

    /// The path the backends of chain pool `pool` are sent, and the head's rewrite.
    pub fn rewrite(
        &self,
        pool: usize,
        path: &PathAndQuery,
        headers: &mut HeaderMap,
    ) -> Option<PathAndQuery> {
        let r = &self.route.chain[pool];
        if let Some(h) = &r.host {
            headers.insert(HOST, h.clone());
        }
        for (name, value) in &r.headers {
            headers.insert(name.clone(), value.clone());
        }
        let (Some(to), Some(PathMatch::Prefix(from))) = (&r.prefix, &self.route.matcher.path)
        else {
            return None;
        };
        let rest = path.path().strip_prefix(from.as_str())?;
        let q = path.query().map(|q| format!("?{q}")).unwrap_or_default();
        format!("{to}{rest}{q}").parse().ok()
    }

    /// What `/status` shows of the route.
    pub fn status(&self) -> RouteStatus {
        let (serving, reason, since) = match &self.state {
            None => (0, None, None),
            Some(s) => {
                let v = s.serving();
                (v.pool, v.reason, Some(v.since.elapsed().as_secs()))
            }
        };
        RouteStatus {
            name: self.route.name.clone(),
            matches: self.route.matcher.to_string(),
            pools: self.route.chain.iter().map(|p| p.pool.clone()).collect(),
            serving: self.route.chain[serving].pool.clone(),
            reason,
            serving_for_secs: since,
            failover: self.route.failover.is_some(),
            requests: self.answered.load(std::sync::atomic::Ordering::Relaxed),
            server_errors: self
                .server_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            auth: self.route.policy.auth_text(),
            rate_limit: self.route.policy.limit_text(),
            refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A route as `/status`, the page and `understudy status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub name: String,
    /// Its conditions, such as "host api.example.com, path /v1/*".
    pub matches: String,
    /// The chain, primary first.
    pub pools: Vec<String>,
    /// The pool new requests start at now.
    pub serving: String,
    /// Why not the primary (a tripped pool and its figures); absent when the primary serves.
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds since the route last moved (routes with failover).
    #[serde(default)]
    pub serving_for_secs: Option<u64>,
    /// Whether errors and latency move it (`[service.route.failover]`).
    #[serde(default)]
    pub failover: bool,
    /// Responses to clients since the route was loaded, and how many were 5xx.
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub server_errors: u64,
    /// Who may take the route: "none", or its `auth` methods and `allow` list.
    #[serde(default)]
    pub auth: String,
    /// Its `rate_limit`, such as "10/s burst 20 per consumer"; absent without one.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Requests its filters answered (401, 403, 429, ...) since the route was loaded.
    #[serde(default)]
    pub refused: u64,
}

/// Every HTTP service's proxy, for `/status` to read the routes from: the listeners publish them
/// on each commit.
pub type RouteBoard = Arc<RwLock<HashMap<String, super::Current>>>;

/// The routes of `service` as `/status` shows them (none for an unknown service).
pub fn statuses(board: &RouteBoard, service: &str) -> Vec<RouteStatus> {
    let Ok(b) = board.read() else {
        return Vec::new();
    };
    b.get(service).map_or_else(Vec::new, |current| {
        current
            .load()
            .routes
            .list
            .iter()
            .map(Compiled::status)
            .collect()
    })
}
