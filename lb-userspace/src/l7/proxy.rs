//! One HTTP service's request path: choose the backends in fallback order, try them under the
//! retry policy, the budget and the circuits, and answer the client.
//!
//! What is retried (on the next backend, never the one that just failed):
//! - a connect failure (nothing was sent, so any method, body intact);
//! - a reset or close before the response headers, and a per-try timeout: only when the request
//!   may be repeated (idempotent, or `non_idempotent = true`) and its body was kept;
//! - a status in `on_status`, and 429 with `on_429`: under the same condition.
//!
//! What each outcome means (retry, evidence against the backend) is decided in
//! [`super::decide`]; this loop carries it out.
//!
//! A response whose headers arrived is never retried once its body streams: a backend that resets
//! mid-response gives the client a broken response, as it would without a proxy.
//! When nothing answers: 503 if no backend could be tried (all down, circuits open), 504 if the
//! deadline or the last try's timeout ran out, 502 if the last try failed to connect or was
//! reset. When retries run out on a retryable status, the client gets that last response.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use http_body_util::{BodyExt as _, Limited as LimitedBody};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::{Body as _, Bytes, Incoming},
    header,
};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{
    access::{self, AccessLogger, Logged, Record},
    availability::{Availability, PoolView},
    body::{Guarded, ProxyBody, RequestBody, full},
    budget::Budget,
    circuit::{Breaker, Failed, Refusal},
    connector::{Limited, is_pending_full},
    decide::{Outcome, decide, repeatable},
    filter::Chain,
    headers::{self, ClientInfo},
    metrics::{L7Metrics, ServiceCounters},
    route::{Compiled, Routes},
    select::{Candidates, Key},
};
use crate::config::{HashMode, HttpService, Service, UpstreamProtocol};

/// A backend the proxy ejected: the health engine hears of it, so L4 services on the same
/// backend react too.
#[derive(Debug, Clone)]
pub struct Ejection {
    pub address: SocketAddr,
    pub reason: String,
}

/// Per-backend circuits of one service, kept across reloads.
pub type Breakers = Arc<Mutex<HashMap<SocketAddr, Arc<Breaker>>>>;

/// The upstream clients, one per protocol a pool may speak; each pools its own connections.
struct Clients {
    http1: Client<Limited, ProxyBody>,
    /// HTTP/2 only: prior knowledge in clear (h2c), ALPN `h2` over TLS.
    h2: Client<Limited, ProxyBody>,
    /// Over TLS, ALPN `h2` or `http/1.1`, whichever the backend picks; in clear, HTTP/1.1.
    auto: Client<Limited, ProxyBody>,
}

impl Clients {
    fn get(&self, p: UpstreamProtocol) -> (&Client<Limited, ProxyBody>, Version) {
        match p {
            UpstreamProtocol::Http1 => (&self.http1, Version::HTTP_11),
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => (&self.h2, Version::HTTP_2),
            UpstreamProtocol::Auto => (&self.auto, Version::HTTP_11),
        }
    }
}

/// What a service keeps across reloads: its circuits, its retry budget and its count of open
/// client connections.
#[derive(Clone)]
pub struct Carried {
    pub breakers: Breakers,
    /// The routes' failover states.
    pub routes: super::route::RouteStates,
    pub budget: Arc<Budget>,
    pub connections: Arc<super::limits::ConnectionCount>,
}

/// One HTTP service, ready to serve requests.
pub struct ServiceProxy {
    pub name: String,
    pub vip: SocketAddr,
    pub settings: HttpService,
    hash: HashMode,
    pub tls: Option<TlsAcceptor>,
    availability: Availability,
    pub carried: Carried,
    clients: Clients,
    counter: AtomicU64,
    ejections: Option<mpsc::UnboundedSender<Ejection>>,
    counters: ServiceCounters,
    /// `[service.passive] max_ejection_percent`: the circuits obey the same cap.
    max_ejection_percent: u32,
    /// What every request passes through before a backend is chosen.
    filters: Chain,
    pub routes: Routes,
    access: Option<Arc<AccessLogger>>,
    /// `[gateway] api_key_query`, whose value the access log redacts.
    key_query: Option<String>,
    /// Set once a gRPC request was sent to an HTTP/1.1 pool (said once per config).
    grpc_to_http1: std::sync::atomic::AtomicBool,
}

/// What one request went through, for the route's counters and the access log.
#[derive(Default)]
struct Trace {
    route: Option<usize>,
    /// The chain pool and backend whose response went to the client.
    pool: Option<usize>,
    backend: Option<SocketAddr>,
    tried: Vec<SocketAddr>,
    /// When the first attempt started.
    first_attempt: Option<Instant>,
    /// The last attempt's time to its response headers.
    last_attempt: Duration,
    bytes_in: u64,
    /// The authenticated consumer, if the route has `auth`.
    consumer: Option<Arc<str>>,
    /// What the filters keep until the response ends (concurrency slots).
    held: super::filter::Held,
}

/// How one attempt ended.
enum Tried {
    /// Headers arrived: the response goes to the client (or is retried, by status).
    Answered(Response<Incoming>),
    /// No response, and why.
    Failed(Outcome, String),
    /// The backend's pending-connect limit was reached: not an attempt.
    PendingFull,
}

/// The outcome that decides the error status when no response is returned.
enum Last {
    Nothing,
    Unreachable(String),
    TimedOut,
    Response(Response<Incoming>, u32),
}

impl Last {
    /// Moves on to `next`; a response left behind is drained so its connection is reused.
    fn set(&mut self, next: Last) {
        if let Last::Response(old, _) = std::mem::replace(self, next) {
            drain(old);
        }
    }
}

/// Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date.
fn retry_after(resp: &Response<Incoming>) -> Option<Duration> {
    let v = resp
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Reads a small retried response's body in the background, so its upstream connection goes back
/// to the pool instead of being closed (a pool that loses a connection per retry pays a connect
/// for each).
fn drain(resp: Response<Incoming>) {
    if resp
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= 64 * 1024)
    {
        tokio::spawn(async move {
            let _ = resp.into_body().collect().await;
        });
    }
}

/// A short plain-text error that says which.
pub fn error(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("{} {why}\n", status.as_u16())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl ServiceProxy {
    /// The proxy for an HTTP service: its certificates loaded, its upstream client built.
    pub fn new(
        service: &Service,
        availability: Availability,
        carried: Option<Carried>,
        ejections: Option<mpsc::UnboundedSender<Ejection>>,
        metrics: L7Metrics,
        credentials: &Arc<super::auth::Credentials>,
    ) -> Result<ServiceProxy, String> {
        let settings = service
            .mode
            .http()
            .cloned()
            .ok_or_else(|| format!("service {} is not an HTTP service", service.name))?;
        let tls = match &settings.tls {
            None => None,
            Some(certs) => {
                Some(super::tls::acceptor(certs).map_err(|e| format!("TLS certificate: {e}"))?)
            }
        };
        let connector = |alpn: &[&[u8]]| {
            Limited::new(
                settings.connect_timeout,
                settings.circuit.max_pending,
                settings.upstream_tls.as_ref(),
                alpn,
            )
            .map_err(|e| format!("upstream TLS: {e}"))
        };
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(settings.idle_timeout)
                .pool_max_idle_per_host(settings.max_idle_per_backend)
                .http1_max_buf_size(super::BUFFER);
            b
        };
        let clients = Clients {
            http1: builder().build(connector(&[b"http/1.1"])?),
            h2: builder().http2_only(true).build(connector(&[b"h2"])?),
            auto: builder().build(connector(&[b"h2", b"http/1.1"])?),
        };
        let carried = carried.unwrap_or_else(|| Carried {
            breakers: Arc::default(),
            routes: Arc::default(),
            budget: Arc::new(Budget::new(
                settings.retry.budget_ratio,
                settings.retry.budget_min_per_second,
            )),
            connections: Arc::default(),
        });
        let tls_on = tls.is_some();
        // At zero from the start, so an alert's increase() sees the first exhaustion.
        drop(
            metrics
                .budget_exhausted
                .get_or_create(&vec![("service".into(), service.name.clone())]),
        );
        let routes = Routes::new(
            &service.name,
            &settings,
            &carried.routes,
            &metrics,
            credentials,
        );
        let access = match &settings.access_log {
            None => None,
            Some(cfg) => Some(Arc::new(AccessLogger::open(cfg)?)),
        };
        Ok(ServiceProxy {
            routes,
            access,
            grpc_to_http1: Default::default(),
            key_query: credentials.key_query().map(str::to_string),
            name: service.name.clone(),
            vip: service.vip,
            hash: service.hash,
            tls,
            availability,
            carried,
            clients,
            counter: AtomicU64::new(fastrand::u64(..)),
            ejections,
            counters: ServiceCounters::new(&service.name, metrics),
            max_ejection_percent: service.passive.max_ejection_percent,
            filters: Chain::for_service(&settings, tls_on),
            settings,
        })
    }

    /// The health views of a route's chain, in chain order.
    fn views(&self, route: &Compiled) -> Vec<Option<Arc<PoolView>>> {
        let Ok(a) = self.availability.read() else {
            return vec![None; route.route.chain.len()];
        };
        route
            .route
            .chain
            .iter()
            .map(|p| a.get(&p.pool).cloned())
            .collect()
    }

    fn breaker(&self, address: SocketAddr) -> Arc<Breaker> {
        let mut b = self
            .carried
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        b.entry(address).or_default().clone()
    }

    /// Serves one request.
    pub async fn handle(&self, req: Request<Incoming>, client: &ClientInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let logged = self.access.as_ref().filter(|l| l.sampled()).map(|l| {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            (
                l.clone(),
                req.method().to_string(),
                access::redact(&path, self.key_query.as_deref()),
            )
        });
        let mut trace = Trace::default();
        let (status, attempts, mut response) = self.proxy(req, client, started, &mut trace).await;
        if !trace.held.is_empty() {
            let held = std::mem::take(&mut trace.held);
            let (parts, body) = response.into_parts();
            let body = super::body::Holding {
                inner: body,
                held: Some(held),
            };
            response = Response::from_parts(parts, body.boxed());
        }
        self.counters.request(status, attempts);
        let route = trace.route.map(|i| &self.routes.list[i]);
        if let Some(r) = route {
            r.responded(trace.pool, status, started.elapsed());
        }
        debug!(service = %self.name, client = %client.addr, status, attempts, elapsed_us = started.elapsed().as_micros() as u64, "request");
        let Some((logger, method, path)) = logged else {
            return response;
        };
        let name = |i: Option<usize>| route.zip(i).map(|(r, i)| r.route.chain[i].pool.clone());
        let record = Record {
            client: client.addr,
            service: self.name.clone(),
            route: route.map_or_else(|| "-".to_string(), |r| r.route.name.clone()),
            consumer: trace.consumer.as_deref().map(str::to_string),
            pool: name(trace.pool),
            backend: trace.backend.map(|b| b.to_string()),
            method,
            path,
            status,
            attempts,
            tried: trace.tried.iter().map(|a| a.to_string()).collect(),
            bytes_in: trace.bytes_in,
            bytes_out: 0,
            tq_us: trace
                .first_attempt
                .map_or(0, |t| access::micros(t.duration_since(started))),
            tr_us: access::micros(trace.last_attempt),
            ta_us: 0,
            complete: false,
        };
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, Logged::new(body, record, started, logger).boxed())
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        client: &ClientInfo,
        started: Instant,
        trace: &mut Trace,
    ) -> (u16, u32, Response<ProxyBody>) {
        let policy = &self.settings.retry;
        let deadline = started + policy.deadline;
        let (mut parts, body) = req.into_parts();
        let version = parts.version;
        // The route is chosen on the request as the client sent it, before any filter
        // rewrites it, so filters can be the route's own.
        let Some(ri) = self.routes.pick(&parts) else {
            debug!(service = %self.name, client = %client.addr, host = %super::route::request_host(&parts), path = %parts.uri.path(), "no route matches");
            return self.reply_error(StatusCode::NOT_FOUND, "no route matches this request", 0);
        };
        trace.route = Some(ri);
        let route = &self.routes.list[ri];
        // Before the filters strip the hop-by-hop headers that ask for it.
        let upgrade = super::upgrade::requested(&parts);
        // gRPC over HTTP/2 needs `te: trailers`, which the hop-by-hop rewrite removes.
        let te_trailers = headers::lists(&parts.headers, header::TE, "trailers");
        let mut client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        // Filters first, the route's policy then the service's rewrite: a request they answer
        // reads no body and touches no backend.
        let ran = route
            .policy
            .run(&mut parts, client, &mut trace.held)
            .and_then(|()| self.filters.run(&mut parts, client, &mut trace.held));
        trace.consumer = parts
            .extensions
            .get::<super::auth::Caller>()
            .map(|c| c.0.clone());
        if let Err(refused) = ran {
            route
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let consumer = trace.consumer.as_deref().unwrap_or("-");
            self.counters
                .metrics()
                .filter_refusals
                .get_or_create(&vec![
                    ("service".into(), self.name.clone()),
                    ("route".into(), route.route.name.clone()),
                    ("consumer".into(), consumer.to_string()),
                    ("filter".into(), refused.filter.into()),
                    ("code".into(), refused.status.as_u16().to_string()),
                ])
                .inc();
            debug!(service = %self.name, route = %route.route.name, client = %client.addr, consumer, filter = refused.filter, status = refused.status.as_u16(), reason = %refused.reason, "request refused by a filter");
            let mut reply = self.reply_error(refused.status, &refused.reason, 0);
            for (name, value) in refused.headers {
                reply.2.headers_mut().append(name, value);
            }
            return reply;
        }
        let repeatable = repeatable(&parts.method, policy);
        let keep = body
            .size_hint()
            .upper()
            .filter(|n| repeatable && !body.is_end_stream() && *n <= policy.buffer);
        let reserved = match keep {
            Some(n) => {
                let r = super::limits::RETRY_BUFFERS.reserve(n);
                if r.is_none() {
                    self.counters
                        .metrics()
                        .buffer_full
                        .get_or_create(&vec![("service".into(), self.name.clone())])
                        .inc();
                    debug!(service = %self.name, bytes = n, "retry buffers full: streaming without retry");
                }
                r
            }
            None => None,
        };
        trace.bytes_in = keep.unwrap_or_else(|| {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0)
        });
        let body = if body.is_end_stream() {
            RequestBody::Kept(Default::default())
        } else if reserved.is_some() {
            let collect = LimitedBody::new(body, policy.buffer as usize).collect();
            match tokio::time::timeout_at(deadline.into(), collect).await {
                Ok(Ok(b)) => RequestBody::Kept(b.to_bytes()),
                Ok(Err(e)) => {
                    return self.reply_error(
                        StatusCode::BAD_REQUEST,
                        &format!("reading the request body: {e}"),
                        0,
                    );
                }
                Err(_) => {
                    return self.reply_error(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                        0,
                    );
                }
            }
        } else if let Some(r) = (repeatable && body.size_hint().upper().is_none())
            .then(|| super::limits::RETRY_BUFFERS.reserve(policy.buffer))
            .flatten()
        {
            // No length (HTTP/2 and gRPC clients): streamed at once, recorded for a retry.
            RequestBody::recorded(body, policy.buffer as usize, r)
        } else {
            RequestBody::stream(body)
        };
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        let views = self.views(route);
        if views.iter().all(Option::is_none) {
            return self.reply_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend is available",
                0,
            );
        }
        let key = match self.hash {
            HashMode::SourceIp => Key::Hash(crate::maglev::identity_hash(client.ip())),
            HashMode::FiveTuple => Key::RoundRobin(self.counter.fetch_add(1, Ordering::Relaxed)),
        };
        self.carried.budget.request(started);

        let mut attempts = 0u32;
        let mut last = Last::Nothing;
        let mut refused = None;
        // Pool by pool in the route's order, each in its own fallback order; a backend in two
        // pools of the chain is tried once.
        'pools: for ci in route.walk() {
            let Some(pool) = views[ci].as_ref() else {
                continue;
            };
            for idx in Candidates::new(pool, key) {
                if attempts >= policy.attempts {
                    break 'pools;
                }
                let address = pool.members[idx].address;
                if trace.tried.contains(&address) {
                    continue;
                }
                let breaker = self.breaker(address);
                let now = Instant::now();
                let permit = match breaker.admit(&self.settings.circuit, now) {
                    Ok(p) => p,
                    Err(r) => {
                        refused.get_or_insert(r);
                        continue;
                    }
                };
                if !body.available() {
                    break 'pools;
                }
                if attempts > 0 && !self.carried.budget.try_retry(now) {
                    self.counters
                        .metrics()
                        .budget_exhausted
                        .get_or_create(&vec![("service".into(), self.name.clone())])
                        .inc();
                    debug!(service = %self.name, attempts, "retry budget spent");
                    break 'pools;
                }
                if now >= deadline {
                    last.set(Last::TimedOut);
                    break 'pools;
                }
                attempts += 1;
                trace.tried.push(address);
                trace.first_attempt.get_or_insert(now);
                let mut up = Request::new(body.for_attempt());
                *up.method_mut() = parts.method.clone();
                let mut headers = parts.headers.clone();
                let rewritten = route.rewrite(ci, &path, &mut headers);
                if let Some(u) = &upgrade {
                    super::upgrade::restore(&mut headers, u);
                }
                *up.headers_mut() = headers;
                let protocol = route.route.chain[ci].protocol;
                if protocol == UpstreamProtocol::Http1 {
                    self.grpc_needs_h2(&parts.headers, &route.route.chain[ci].pool);
                }
                let (client_for_pool, upstream_version) = self.clients.get(protocol);
                // `auto` learns the protocol from ALPN only when it connects: it gets the header
                // too (an HTTP/1.1 backend reads it as "trailers accepted").
                if te_trailers && protocol != UpstreamProtocol::Http1 {
                    up.headers_mut()
                        .insert(header::TE, header::HeaderValue::from_static("trailers"));
                }
                *up.version_mut() = upstream_version;
                let mut uri = hyper::http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(pool.members[idx].authority.clone());
                uri.path_and_query = Some(rewritten.unwrap_or_else(|| path.clone()));
                *up.uri_mut() = match Uri::from_parts(uri) {
                    Ok(u) => u,
                    Err(_) => {
                        return self.reply_error(StatusCode::BAD_REQUEST, "bad request path", 0);
                    }
                };
                let sent_at = Instant::now();
                let tried = self.attempt(client_for_pool, up, &body, deadline).await;
                let now = Instant::now();
                let (outcome, why) = match &tried {
                    Tried::Answered(resp) => (
                        Outcome::Answered(self.effective_status(resp)),
                        String::new(),
                    ),
                    Tried::Failed(outcome, why) => (*outcome, why.clone()),
                    Tried::PendingFull => {
                        drop(permit);
                        refused.get_or_insert(Refusal::Full);
                        attempts -= 1;
                        trace.tried.pop();
                        continue;
                    }
                };
                trace.last_attempt = now.duration_since(sent_at);
                let next = decide(
                    outcome,
                    repeatable,
                    body.replayable(),
                    policy,
                    &self.settings.circuit,
                );
                // The route judges its pools by the same gateway failures as the circuits.
                route.attempt(
                    ci,
                    next.failure,
                    matches!(outcome, Outcome::Answered(_)).then_some(trace.last_attempt),
                );
                if next.failure {
                    self.failure(&breaker, address, pool, &outcome);
                } else {
                    breaker.success(now);
                }
                if next.cool_down
                    && let Tried::Answered(resp) = &tried
                {
                    let wait = retry_after(resp).unwrap_or(Duration::from_secs(1));
                    breaker.cool_down(now + wait.min(policy.retry_after_cap));
                }
                match (tried, outcome) {
                    (Tried::Answered(resp), _) => {
                        // This answer goes to the client, now or (retried away) if it is the last.
                        trace.pool = Some(ci);
                        trace.backend = Some(address);
                        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                            && let Some(from_client) = client_upgrade.take()
                        {
                            self.counters.attempt(address, "upgraded");
                            return self.switched(
                                resp,
                                permit,
                                from_client,
                                address,
                                version,
                                attempts,
                            );
                        }
                        self.counters.attempt(
                            address,
                            if next.retry {
                                "retried_status"
                            } else {
                                "answered"
                            },
                        );
                        if next.retry {
                            debug!(service = %self.name, backend = %address, status = resp.status().as_u16(), attempt = attempts, "retrying on status");
                            last.set(Last::Response(resp, attempts));
                            continue;
                        }
                        last.set(Last::Nothing);
                        return self.answer(resp, Some(permit), version, attempts);
                    }
                    (_, Outcome::UploadTimedOut) => {
                        self.counters.attempt(address, "upload_timeout");
                        debug!(service = %self.name, backend = %address, attempt = attempts, "the client's body did not arrive before the deadline");
                        last.set(Last::Nothing);
                        return self.reply_error(
                            StatusCode::REQUEST_TIMEOUT,
                            "the request body did not arrive in time",
                            attempts,
                        );
                    }
                    (_, Outcome::TimedOut) => {
                        self.counters.attempt(address, "timeout");
                        debug!(service = %self.name, backend = %address, attempt = attempts, "per-try timeout");
                        last.set(Last::TimedOut);
                        if !next.retry || now >= deadline {
                            break 'pools;
                        }
                    }
                    (_, outcome) => {
                        let label = if outcome == Outcome::NotSent {
                            "connect_failed"
                        } else {
                            "reset"
                        };
                        self.counters.attempt(address, label);
                        debug!(service = %self.name, backend = %address, attempt = attempts, error = %why, outcome = label, "no response");
                        last.set(Last::Unreachable(why));
                        if !next.retry {
                            break 'pools;
                        }
                    }
                }
            }
        }
        match last {
            Last::Response(resp, n) => self.answer(resp, None, version, n),
            Last::TimedOut => self.reply_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the backend did not answer in time",
                attempts,
            ),
            Last::Unreachable(why) => {
                warn!(service = %self.name, attempts, error = %why, "no backend answered");
                self.reply_error(StatusCode::BAD_GATEWAY, "no backend answered", attempts)
            }
            Last::Nothing => {
                let why = match refused {
                    Some(Refusal::Open) => "every backend's circuit is open",
                    Some(Refusal::Full) => "every backend is at its request limit",
                    Some(Refusal::Cooling) => "every backend asked to retry later (429)",
                    None => "no backend is available",
                };
                self.reply_error(StatusCode::SERVICE_UNAVAILABLE, why, attempts)
            }
        }
    }

    /// The listener reached `max_connections`: counted, and logged once each time.
    pub fn listener_full(&self) {
        warn!(service = %self.name, max_connections = self.settings.max_connections, open = self.carried.connections.open(), "listener full: not accepting until a client connection closes");
        self.counters
            .metrics()
            .listener_full
            .get_or_create(&vec![("service".into(), self.name.clone())])
            .inc();
    }

    /// A client connection was closed by a timeout of `kind`.
    pub fn client_timeout(&self, kind: &str) {
        self.counters
            .metrics()
            .client_timeouts
            .get_or_create(&vec![
                ("service".into(), self.name.clone()),
                ("kind".into(), kind.into()),
            ])
            .inc();
    }

    /// Sends one attempt. The per-try timer starts once the request body has gone out: until
    /// then the client sets the pace, and only the deadline bounds the upload (running out is
    /// the client's fault, not the backend's). A kept body is out at once.
    async fn attempt(
        &self,
        client: &Client<Limited, ProxyBody>,
        up: Request<ProxyBody>,
        body: &RequestBody,
        deadline: Instant,
    ) -> Tried {
        let per_try = self.settings.retry.per_try_timeout;
        let streamed = !body.replayable();
        let timer = async {
            tokio::select! {
                biased;
                () = body.sent() => {
                    let now = Instant::now();
                    let until = if streamed { now + per_try } else { deadline.min(now + per_try) };
                    tokio::time::sleep_until(until.into()).await;
                    Outcome::TimedOut
                }
                () = tokio::time::sleep_until(deadline.into()) => Outcome::UploadTimedOut,
            }
        };
        tokio::select! {
            r = client.request(up) => match r {
                Ok(resp) => Tried::Answered(resp),
                Err(e) if e.is_connect() && is_pending_full(&e) => Tried::PendingFull,
                Err(e) if e.is_connect() => Tried::Failed(Outcome::NotSent, format!("{e:#}")),
                Err(e) => Tried::Failed(Outcome::Reset, format!("{e:#}")),
            },
            outcome = timer => Tried::Failed(outcome, String::new()),
        }
    }

    /// Whether the service's ejection cap lets one more circuit open: the circuits hold out
    /// fewer than `max_ejection_percent` of the pool, and another backend stays in service.
    fn may_eject(&self, pool: &PoolView) -> bool {
        let breakers = self
            .carried
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let out = |a: &SocketAddr| breakers.get(a).is_some_and(|b| b.ejected());
        let ejected = pool.members.iter().filter(|m| out(&m.address)).count();
        let serving = pool
            .members
            .iter()
            .filter(|m| m.eligible && !out(&m.address))
            .count();
        crate::ejection::may_eject(
            pool.members.len(),
            ejected,
            serving,
            self.max_ejection_percent,
        )
    }

    fn failure(&self, breaker: &Breaker, address: SocketAddr, pool: &PoolView, what: &Outcome) {
        let what = match what {
            Outcome::Answered(s) => format!("status {}", s.as_u16()),
            Outcome::NotSent => "connect failed".into(),
            Outcome::Reset => "reset before the response".into(),
            Outcome::TimedOut => "per-try timeout".into(),
            Outcome::UploadTimedOut => "upload timeout".into(),
        };
        let labels = || {
            vec![
                ("service".into(), self.name.clone()),
                ("backend".into(), address.to_string()),
            ]
        };
        let may_eject = self.may_eject(pool);
        match breaker.failure(&self.settings.circuit, Instant::now(), may_eject) {
            Failed::Counted => {}
            Failed::Capped => {
                warn!(service = %self.name, backend = %address, failures = self.settings.circuit.consecutive_failures, last = %what, max_ejection_percent = self.max_ejection_percent, "circuit not opened: the ejection cap keeps the backend in service");
                self.counters
                    .metrics()
                    .ejections_capped
                    .get_or_create(&labels())
                    .inc();
            }
            Failed::Opened(backoff) => {
                let reason = format!(
                    "http: {} consecutive failures, last {what} (ejected for {backoff:?})",
                    self.settings.circuit.consecutive_failures
                );
                warn!(service = %self.name, backend = %address, %reason, "circuit opened");
                self.counters
                    .metrics()
                    .ejections
                    .get_or_create(&labels())
                    .inc();
                if let Some(tx) = &self.ejections {
                    let _ = tx.send(Ejection { address, reason });
                }
            }
        }
    }

    /// gRPC runs over HTTP/2 only: a gRPC request routed to a pool that speaks HTTP/1.1 will
    /// fail at the backend, so the first one is logged with the fix.
    fn grpc_needs_h2(&self, headers: &hyper::HeaderMap, pool: &str) {
        let grpc = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc && !self.grpc_to_http1.swap(true, Ordering::Relaxed) {
            warn!(service = %self.name, pool, "a gRPC request goes to a pool that speaks HTTP/1.1, which gRPC backends refuse: set protocol = \"h2c\" (or \"h2\" over TLS) on the pool");
        }
    }

    /// The status a response is judged by: its own, or 503 for a gRPC trailers-only answer whose
    /// `grpc-status` is one of `[service.retry] grpc_status` (by default 14, `UNAVAILABLE`).
    fn effective_status(&self, resp: &Response<Incoming>) -> StatusCode {
        let grpc = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        match grpc {
            Some(code)
                if resp.status() == StatusCode::OK
                    && self.settings.retry.grpc_status.contains(&code) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => resp.status(),
        }
    }

    /// A 101 from the backend: the client gets it, and the two connections become a tunnel that
    /// holds `permit` until it closes.
    fn switched(
        &self,
        mut resp: Response<Incoming>,
        permit: super::circuit::Permit,
        from_client: hyper::upgrade::OnUpgrade,
        backend: SocketAddr,
        version: Version,
        attempts: u32,
    ) -> (u16, u32, Response<ProxyBody>) {
        let upstream = hyper::upgrade::on(&mut resp);
        let protocol = resp.headers().get(header::UPGRADE).cloned();
        let (mut p, _) = resp.into_parts();
        headers::forward_response(
            &mut p.headers,
            version,
            self.settings.via.as_deref(),
            self.settings.attempt_header.as_ref(),
            attempts,
        );
        if let Some(v) = &protocol {
            super::upgrade::restore(&mut p.headers, v);
        }
        super::upgrade::tunnel(
            self.name.clone(),
            backend,
            from_client,
            upstream,
            Some(permit),
        );
        (101, attempts, Response::from_parts(p, full(Bytes::new())))
    }

    /// The response for the client; `permit` (the backend's circuit slot) is held until its body
    /// ends.
    fn answer(
        &self,
        resp: Response<Incoming>,
        permit: Option<super::circuit::Permit>,
        version: Version,
        attempts: u32,
    ) -> (u16, u32, Response<ProxyBody>) {
        let (mut p, b) = resp.into_parts();
        headers::forward_response(
            &mut p.headers,
            version,
            self.settings.via.as_deref(),
            self.settings.attempt_header.as_ref(),
            attempts,
        );
        let body = Guarded {
            inner: b,
            held: permit,
        };
        (
            p.status.as_u16(),
            attempts,
            Response::from_parts(p, body.boxed()),
        )
    }

    fn reply_error(
        &self,
        status: StatusCode,
        why: &str,
        attempts: u32,
    ) -> (u16, u32, Response<ProxyBody>) {
        let mut r = error(status, why);
        if let Some(name) = &self.settings.attempt_header {
            r.headers_mut().insert(name.clone(), attempts.into());
        }
        (status.as_u16(), attempts, r)
    }
}
