//! The HTTP proxy against real HTTP backends on loopback that can be told to misbehave, one test
//! per row of the behaviour table, plus the retry budget, the circuit, forwarding headers and
//! TLS with SNI and HTTP/2. The proxy is built from a real config and served on a real socket;
//! its health view is set by hand (the daemon's writer publishes it; see e2e_http for that).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpListener, sync::mpsc};
use understudy::{
    config::Config,
    l7::{
        self, Ejection, ServiceProxy,
        availability::{Availability, MemberView, PoolView, new_availability},
        metrics::L7Metrics,
    },
};

/// What a test backend does with each request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Ok,
    Status(u16),
    /// 429 with `Retry-After: N`.
    TooMany(u64),
    /// Answers after this long.
    Slow(Duration),
    /// Sends the headers and part of the body, then fails the connection.
    ResetMidResponse,
    /// 503 to POST, 200 to the rest.
    FailPost,
}

struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// The last request's forwarding headers.
    seen: Arc<Mutex<HashMap<String, String>>>,
}

impl Backend {
    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn backend(name: &'static str, behaviour: Behaviour) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = Backend {
        addr: listener.local_addr().unwrap(),
        hits: Arc::default(),
        behaviour: Arc::new(Mutex::new(behaviour)),
        seen: Arc::default(),
    };
    let (hits, behaviour, seen) = (b.hits.clone(), b.behaviour.clone(), b.seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (hits, behaviour, seen) = (hits.clone(), behaviour.clone(), seen.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (hits, behaviour, seen) = (hits.clone(), behaviour.clone(), seen.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        {
                            let mut s = seen.lock().unwrap();
                            s.clear();
                            for h in [
                                "x-forwarded-for",
                                "x-forwarded-proto",
                                "forwarded",
                                "via",
                                "host",
                                "connection",
                                "x-private",
                                "x-real-ip",
                            ] {
                                if let Some(v) = req.headers().get(h) {
                                    s.insert(h.to_string(), v.to_str().unwrap().to_string());
                                }
                            }
                        }
                        let post = req.method() == hyper::Method::POST;
                        // Read the whole body: its length is the answer to uploads.
                        let len = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let b = *behaviour.lock().unwrap();
                        type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
                        let ok = |status: u16, text: String| -> Response<Body> {
                            let mut r = Response::new(
                                Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed(),
                            );
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            r
                        };
                        let r = match b {
                            Behaviour::Ok => ok(200, format!("{name} {len}")),
                            Behaviour::Status(s) => ok(s, format!("{name} says {s}")),
                            Behaviour::FailPost if post => ok(503, format!("{name} says 503")),
                            Behaviour::FailPost => ok(200, format!("{name} {len}")),
                            Behaviour::TooMany(after) => {
                                let mut r = ok(429, "slow down".into());
                                r.headers_mut().insert("retry-after", after.into());
                                r
                            }
                            Behaviour::Slow(d) => {
                                tokio::time::sleep(d).await;
                                ok(200, format!("{name} slow"))
                            }
                            Behaviour::ResetMidResponse => {
                                let body = PartialThenError {
                                    name,
                                    sent: false,
                                    pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
                                };
                                let mut r = Response::new(body.boxed());
                                r.headers_mut().insert("content-length", 1000.into());
                                r
                            }
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    b
}

/// Part of a body, then (once that has gone out) an error: hyper aborts the connection
/// mid-response.
struct PartialThenError {
    name: &'static str,
    sent: bool,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for PartialThenError {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        if !self.sent {
            self.sent = true;
            let data = Bytes::from(format!("{} partial", self.name));
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other("backend died")))),
        }
    }
}

/// A proxy in front of `backends` (in config order), served on a loopback port.
struct Proxy {
    addr: SocketAddr,
    availability: Availability,
    members: Vec<MemberView>,
    metrics: L7Metrics,
    ejections: mpsc::UnboundedReceiver<Ejection>,
}

impl Proxy {
    /// Sets which members are up (active and eligible).
    fn set_up(&mut self, up: &[bool]) {
        for (m, &u) in self.members.iter_mut().zip(up) {
            m.active = u;
            m.eligible = u;
        }
        self.availability
            .write()
            .unwrap()
            .insert("web".into(), Arc::new(PoolView::new(self.members.clone())));
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn metrics_text(&self) -> String {
        let mut r = prometheus_client::registry::Registry::with_prefix("understudy");
        self.metrics.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }
}

fn config_text(addresses: &[SocketAddr], sections: &str, tiers: &[u32]) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\n\n[[service]]\nname = \"web\"\nvip = \"127.0.0.1:1\"\n\
         mode = \"http\"\n\n[service.http]\nattempt_header = \"x-understudy-attempts\"\n\
         via = \"understudy\"\n\n{sections}\n"
    );
    for (i, a) in addresses.iter().enumerate() {
        let tier = tiers.get(i).copied().unwrap_or(0);
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"{a}\"\ntier = {tier}\n"
        ));
    }
    text
}

async fn proxy(addresses: &[SocketAddr], sections: &str) -> Proxy {
    proxy_with_tiers(addresses, sections, &[]).await
}

async fn proxy_with_tiers(addresses: &[SocketAddr], sections: &str, tiers: &[u32]) -> Proxy {
    let text = config_text(addresses, sections, tiers);
    let config = Config::parse(std::path::Path::new("l7-test.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let svc = &config.services[0];
    let availability = new_availability();
    let metrics = L7Metrics::default();
    let (tx, ejections) = mpsc::unbounded_channel();
    let service = ServiceProxy::new(
        svc,
        availability.clone(),
        None,
        Some(tx),
        metrics.clone(),
        &Arc::new(understudy::l7::auth::Credentials::new(&config.gateway)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(l7::serve(
        listener,
        Arc::new(ArcSwap::from_pointee(service)),
    ));
    let members = svc
        .backends
        .iter()
        .map(|b| MemberView::new(b.address, b.tier, b.weight, b.tier == 0, true))
        .collect();
    let mut p = Proxy {
        addr,
        availability,
        members,
        metrics,
        ejections,
    };
    let up = vec![true; addresses.len()];
    p.set_up(&up);
    // Tiers above 0 start eligible but not active.
    for m in p.members.iter_mut() {
        m.active = m.tier == 0;
    }
    p.availability
        .write()
        .unwrap()
        .insert("web".into(), Arc::new(PoolView::new(p.members.clone())));
    p
}

/// A port nothing listens on: connections are refused.
async fn refusing_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Answer {
    status: u16,
    attempts: u32,
    /// The body, or the error that broke it.
    body: Result<String, String>,
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(c: &TestClient, method: &str, url: &str, body: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = c.request(req).await.expect("the proxy answers");
    let status = resp.status().as_u16();
    let attempts = resp
        .headers()
        .get("x-understudy-attempts")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .map_err(|e| e.to_string());
    Answer {
        status,
        attempts,
        body,
    }
}

async fn get(c: &TestClient, url: &str) -> Answer {
    send(c, "GET", url, "").await
}

#[tokio::test]
async fn a_refusing_backend_gives_the_next_backends_answer() {
    let dead = refusing_address().await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(&[dead, b.addr], "").await;
    let c = client();
    let mut retried = 0;
    for _ in 0..20 {
        let a = get(&c, &p.url("/")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.unwrap(), "b 0");
        if a.attempts == 2 {
            retried += 1;
        }
    }
    assert!(
        retried >= 1,
        "some requests tried the refusing backend first"
    );
    assert_eq!(b.hits(), 20);
    assert!(p.metrics_text().contains("outcome=\"connect_failed\""));
}

#[tokio::test]
async fn a_reset_mid_response_is_not_retried_and_the_client_sees_it() {
    let a = backend("a", Behaviour::ResetMidResponse).await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(&[a.addr, b.addr], "").await;
    let c = client();
    let mut broken = 0;
    for _ in 0..10 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.attempts, 1, "never retried");
        match r.body {
            Ok(body) => assert_eq!(body, "b 0"),
            Err(_) => broken += 1,
        }
    }
    assert!(broken >= 1, "some requests landed on the resetting backend");
    assert_eq!(
        broken,
        a.hits(),
        "every request to a broke, none was retried"
    );
    assert_eq!(a.hits() + b.hits(), 10, "one backend per request");
}

#[tokio::test]
async fn a_503_is_retried_elsewhere() {
    let a = backend("a", Behaviour::Status(503)).await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(
        &[a.addr, b.addr],
        "[service.circuit]\nconsecutive_failures = 100\n",
    )
    .await;
    let c = client();
    for _ in 0..10 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!((r.status, r.body.unwrap().as_str()), (200, "b 0"));
    }
    assert!(a.hits() >= 1);
    assert_eq!(b.hits(), 10, "every request ends on b");
    // Responses record their attempts in the metrics too.
    let m = p.metrics_text();
    assert!(m.contains("attempts=\"2\""), "{m}");
}

#[tokio::test]
async fn a_429_is_retried_and_its_retry_after_honoured() {
    let a = backend("a", Behaviour::TooMany(2)).await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(&[a.addr, b.addr], "").await;
    let c = client();
    let started = Instant::now();
    // Until the 429: then a cools down for 2 s and takes nothing.
    while a.hits() == 0 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!((r.status, r.body.unwrap().as_str()), (200, "b 0"));
    }
    let throttled_at = Instant::now();
    a.set(Behaviour::Ok);
    while throttled_at.elapsed() < Duration::from_millis(1700) {
        let r = get(&c, &p.url("/")).await;
        assert_eq!(r.body.unwrap(), "b 0", "a is cooling down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.hits(), 1);
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(throttled_at.elapsed())).await;
    for _ in 0..6 {
        get(&c, &p.url("/")).await;
    }
    assert!(a.hits() > 1, "a takes requests again after Retry-After");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn retry_after_is_capped() {
    let a = backend("a", Behaviour::TooMany(3600)).await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(
        &[a.addr, b.addr],
        "[service.retry]\nretry_after_cap = \"300ms\"\n",
    )
    .await;
    let c = client();
    while a.hits() == 0 {
        get(&c, &p.url("/")).await;
    }
    a.set(Behaviour::Ok);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..6 {
        get(&c, &p.url("/")).await;
    }
    assert!(
        a.hits() > 1,
        "the hour-long Retry-After was capped at 300 ms"
    );
}

#[tokio::test]
async fn a_slow_backend_is_left_at_the_per_try_timeout() {
    let a = backend("a", Behaviour::Slow(Duration::from_secs(3))).await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(
        &[a.addr, b.addr],
        "[service.retry]\nper_try_timeout = \"300ms\"\n[service.circuit]\nconsecutive_failures = 100\n",
    )
    .await;
    let c = client();
    for _ in 0..6 {
        let t = Instant::now();
        let r = get(&c, &p.url("/")).await;
        assert_eq!((r.status, r.body.unwrap().as_str()), (200, "b 0"));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "moved on after 300 ms"
        );
    }
    assert!(a.hits() >= 1);
}

#[tokio::test]
async fn a_post_is_not_retried_once_sent() {
    let a = backend("a", Behaviour::FailPost).await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(
        &[a.addr, b.addr],
        "[service.circuit]\nconsecutive_failures = 100\n",
    )
    .await;
    let c = client();
    let mut failed = 0;
    for _ in 0..10 {
        let r = send(&c, "POST", &p.url("/orders"), "one order").await;
        assert_eq!(r.attempts, 1);
        match r.status {
            503 => failed += 1,
            200 => assert_eq!(r.body.unwrap(), "b 9"),
            s => panic!("unexpected {s}"),
        }
    }
    assert!(failed >= 1);
    assert_eq!(failed, a.hits(), "each POST to a failed and stayed failed");
    assert_eq!(a.hits() + b.hits(), 10, "no POST reached two backends");
}

#[tokio::test]
async fn a_post_is_retried_when_nothing_was_sent() {
    let dead = refusing_address().await;
    let b = backend("b", Behaviour::Ok).await;
    let p = proxy(&[dead, b.addr], "").await;
    let c = client();
    for _ in 0..10 {
        let r = send(&c, "POST", &p.url("/orders"), "one order").await;
        assert_eq!((r.status, r.body.unwrap().as_str()), (200, "b 9"));
    }
    assert_eq!(b.hits(), 10);
}

#[tokio::test]
async fn every_backend_down_is_a_503_and_nothing_answering_a_502_or_504() {
    let a = backend("a", Behaviour::Ok).await;
    let b = backend("b", Behaviour::Ok).await;
    let mut p = proxy(&[a.addr, b.addr], "").await;
    let c = client();
    p.set_up(&[false, false]);
    let r = get(&c, &p.url("/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body.unwrap(), "503 no backend is available\n");
    assert_eq!(a.hits() + b.hits(), 0);

    let p = proxy(&[refusing_address().await, refusing_address().await], "").await;
    let r = get(&c, &p.url("/")).await;
    assert_eq!((r.status, r.attempts), (502, 2));
    assert_eq!(r.body.unwrap(), "502 no backend answered\n");

    let slow = backend("slow", Behaviour::Slow(Duration::from_secs(5))).await;
    let p = proxy(
        &[slow.addr],
        "[service.retry]\nper_try_timeout = \"2s\"\ndeadline = \"300ms\"\n",
    )
    .await;
    let t = Instant::now();
    let r = get(&c, &p.url("/")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body.unwrap(), "504 the backend did not answer in time\n");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the deadline, not the per-try timeout"
    );
}

#[tokio::test]
async fn retries_fall_back_to_the_next_tier() {
    let a = backend("a", Behaviour::Status(503)).await;
    let backup = backend("backup", Behaviour::Ok).await;
    let p = proxy_with_tiers(
        &[a.addr, backup.addr],
        "[service.circuit]\nconsecutive_failures = 100\n",
        &[0, 1],
    )
    .await;
    let c = client();
    for _ in 0..5 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!((r.status, r.attempts), (200, 2));
        assert_eq!(r.body.unwrap(), "backup 0");
    }
    assert_eq!(a.hits(), 5, "first tries stay on the primary tier");
}

#[tokio::test]
async fn the_retry_budget_caps_retries_under_a_storm() {
    let bs = [
        backend("a", Behaviour::Status(503)).await,
        backend("b", Behaviour::Status(503)).await,
        backend("c", Behaviour::Status(503)).await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let p = proxy(&addrs, "[service.circuit]\nconsecutive_failures = 1000\n").await;
    let c = client();
    let n = 300;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, url) = (c.clone(), p.url("/"));
        tasks.push(tokio::spawn(async move { get(&c, &url).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    let hits: u32 = bs.iter().map(Backend::hits).sum();
    // Without a budget: 3 tries each, 900. With it: n + 30 (3/s over 10 s) + 20% of n.
    let cap = n + 30 + n / 5;
    assert!(hits >= n, "every request tried once: {hits}");
    assert!(hits <= cap, "{hits} attempts, more than the budget's {cap}");
    assert!(
        p.metrics_text()
            .contains("understudy_http_retry_budget_exhausted_total{service=\"web\"}")
    );
}

#[tokio::test]
async fn the_circuit_opens_then_closes_after_a_probation_request() {
    let a = backend("a", Behaviour::Status(503)).await;
    let b = backend("b", Behaviour::Ok).await;
    let mut p = proxy(
        &[a.addr, b.addr],
        "[service.circuit]\nconsecutive_failures = 3\nbase_ejection = \"500ms\"\n",
    )
    .await;
    let c = client();
    while a.hits() < 3 {
        get(&c, &p.url("/")).await;
    }
    let ejection = p
        .ejections
        .try_recv()
        .expect("the health engine hears of it");
    assert_eq!(ejection.address, a.addr);
    assert!(
        ejection.reason.contains("3 consecutive failures"),
        "{}",
        ejection.reason
    );
    // Open: a takes nothing.
    for _ in 0..10 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!(r.body.unwrap(), "b 0");
    }
    assert_eq!(a.hits(), 3);
    a.set(Behaviour::Ok);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Half open: one request passes; it succeeds, so the circuit closes.
    for _ in 0..10 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!(r.status, 200);
    }
    assert!(a.hits() >= 5, "a is back in rotation: {} hits", a.hits());
    assert!(p.metrics_text().contains("understudy_http_ejections_total"));
}

#[tokio::test]
async fn forwarding_headers_reach_the_backend() {
    let a = backend("a", Behaviour::Ok).await;
    let p = proxy(&[a.addr], "").await;
    let c = client();
    let req = Request::builder()
        .uri(p.url("/x"))
        .header("connection", "x-private")
        .header("x-private", "hop")
        .header("x-forwarded-for", "192.0.2.9")
        .header("x-real-ip", "192.0.2.9")
        .header("forwarded", "for=192.0.2.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["via"], "1.1 understudy");
    assert_eq!(resp.headers()["x-understudy-attempts"], "1");
    let seen = a.seen.lock().unwrap().clone();
    assert_eq!(
        seen["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is replaced, not appended to"
    );
    assert!(
        !seen.contains_key("x-real-ip"),
        "X-Real-IP from an untrusted client"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{}\"", p.addr)
    );
    assert_eq!(seen["via"], "1.1 understudy");
    assert!(
        !seen.contains_key("x-private"),
        "hop-by-hop header forwarded"
    );
}

#[tokio::test]
async fn a_trusted_proxy_s_forwarding_headers_are_appended_to() {
    let a = backend("a", Behaviour::Ok).await;
    let p = proxy(&[a.addr], "trusted_proxies = [\"127.0.0.0/8\"]\n").await;
    let req = Request::builder()
        .uri(p.url("/x"))
        .header("x-forwarded-for", "192.0.2.9")
        .header("x-real-ip", "192.0.2.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
    let seen = a.seen.lock().unwrap().clone();
    assert_eq!(seen["x-forwarded-for"], "192.0.2.9, 127.0.0.1");
    assert_eq!(seen["x-real-ip"], "192.0.2.9");
}

/// A TLS client to the proxy with `sni` (no SNI for an IP), trusting `roots`, offering `alpn`.
async fn tls_connect(
    proxy: SocketAddr,
    roots: &rustls::RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {sni}: {e}"))
}

/// One HTTP/2 GET over an established connection.
async fn h2_get<T>(io: T, authority: &str) -> (u16, String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://{authority}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.expect("h2 response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls_termination_chooses_the_certificate_by_sni_and_negotiates_h2() {
    let dir = std::env::temp_dir().join(format!("understudy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a =
        rcgen::generate_simple_self_signed(vec!["a.example".into(), "127.0.0.1".into()]).unwrap();
    let b =
        rcgen::generate_simple_self_signed(vec!["b.example".into(), "*.b.example".into()]).unwrap();
    let mut certs = Vec::new();
    for (name, k) in [("a", &a), ("b", &b)] {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, k.cert.pem()).unwrap();
        std::fs::write(&key, k.signing_key.serialize_pem()).unwrap();
        certs.push(format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ));
    }
    let be = backend("x", Behaviour::Ok).await;
    let p = proxy(
        &[be.addr],
        &format!("[service.tls]\ncertificates = [{}]\n", certs.join(", ")),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.cert.der().clone()).unwrap();
    roots.add(b.cert.der().clone()).unwrap();

    // By SNI, wildcards included; no SNI (an IP) gets the first certificate.
    for (sni, expected) in [
        ("a.example", &a),
        ("b.example", &b),
        ("api.b.example", &b),
        ("127.0.0.1", &a),
    ] {
        let tls = tls_connect(p.addr, &roots, sni, &[b"h2", b"http/1.1"]).await;
        let (_, session) = tls.get_ref();
        assert_eq!(
            session.peer_certificates().unwrap()[0].as_ref(),
            expected.cert.der().as_ref(),
            "certificate for {sni}"
        );
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN picks h2");
        let (status, body) = h2_get(tls, sni).await;
        assert_eq!((status, body.as_str()), (200, "x 0"));
        let seen = be.seen.lock().unwrap().clone();
        assert_eq!(seen["x-forwarded-proto"], "https");
        assert_eq!(
            seen["host"], sni,
            "h2's :authority becomes the upstream Host"
        );
    }

    // An HTTP/1.1-only client gets HTTP/1.1.
    let tls = tls_connect(p.addr, &roots, "a.example", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "a.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["via"], "1.1 understudy");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge() {
    let be = backend("x", Behaviour::Ok).await;
    let p = proxy(&[be.addr], "").await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(h2_get(tcp, "api.example").await, (200, "x 0".to_string()));
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let dir = std::env::temp_dir().join(format!("understudy-upstream-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["backend.internal".into()]).unwrap();
    let ca = dir.join("backend.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    // A TLS backend (HTTP/1.1 inside) that names itself.
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![key.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("tls backend"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let c = client();
    let trusted = proxy(
        &[backend],
        &format!(
            "[service.upstream_tls]\nca_file = \"{}\"\nsni = \"backend.internal\"\n",
            ca.display()
        ),
    )
    .await;
    let r = get(&c, &trusted.url("/")).await;
    assert_eq!((r.status, r.body.unwrap().as_str()), (200, "tls backend"));
    // Without the CA the backend's certificate is not trusted: nothing is sent to it.
    let untrusted = proxy(
        &[backend],
        "[service.upstream_tls]\nsni = \"backend.internal\"\n",
    )
    .await;
    let r = get(&c, &untrusted.url("/")).await;
    assert_eq!(r.status, 502);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let a = backend("a", Behaviour::Ok).await;
    // Bare keys right after [service.http] belong to it.
    let p = proxy(&[a.addr], "header_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the proxy closes the connection");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(a.hits(), 0, "nothing reached the backend");
    // A client that sends its head in time is served.
    assert_eq!(get(&client(), &p.url("/")).await.status, 200);
}

/// Answers of the application to one request are not evidence against the backend: a client
/// asking for a failing URL, or with an unknown method, must not eject anything.
#[tokio::test]
async fn a_500_or_a_501_ejects_nothing() {
    let a = backend("a", Behaviour::Status(500)).await;
    let b = backend("b", Behaviour::Status(501)).await;
    let mut p = proxy(
        &[a.addr, b.addr],
        "[service.circuit]\nconsecutive_failures = 2\n",
    )
    .await;
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &p.url("/broken")).await;
        assert!(
            matches!(r.status, 500 | 501),
            "passed through: {}",
            r.status
        );
        assert_eq!(r.attempts, 1, "500 and 501 are not retried");
    }
    assert!(p.ejections.try_recv().is_err(), "nothing ejected");
    assert_eq!((a.hits(), b.hits()), (10, 10), "both stay in rotation");
    a.set(Behaviour::Ok);
    b.set(Behaviour::Ok);
    for _ in 0..4 {
        assert_eq!(get(&c, &p.url("/")).await.status, 200);
    }
}

#[tokio::test]
async fn failure_statuses_make_a_500_count() {
    let a = backend("a", Behaviour::Status(500)).await;
    let b = backend("b", Behaviour::Ok).await;
    let mut p = proxy(
        &[a.addr, b.addr],
        "[service.circuit]\nconsecutive_failures = 2\nfailure_statuses = [500]\n",
    )
    .await;
    let c = client();
    while a.hits() < 2 {
        get(&c, &p.url("/")).await;
    }
    let e = p.ejections.try_recv().expect("a 500 is a failure now");
    assert_eq!(e.address, a.addr);
    assert!(e.reason.contains("status 500"), "{}", e.reason);
}

/// A request body that arrives in `chunks` pieces, `pause` apart, with no declared length.
struct SlowBody {
    chunks: u32,
    pause: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        if self.chunks == 0 {
            return Poll::Ready(None);
        }
        let pause = self.pause;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.timer = None;
                self.chunks -= 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
            }
        }
    }
}

/// The backend's time to answer starts when the client's body has arrived: an upload slower
/// than `per_try_timeout` is answered, and counts against nothing.
#[tokio::test]
async fn a_slow_upload_is_answered_and_ejects_nothing() {
    let a = backend("a", Behaviour::Ok).await;
    let b = backend("b", Behaviour::Ok).await;
    let mut p = proxy(
        &[a.addr, b.addr],
        "[service.retry]\nper_try_timeout = \"200ms\"\n\n\
         [service.circuit]\nconsecutive_failures = 1\n",
    )
    .await;
    let c: Client<_, SlowBody> = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..2 {
        let req = Request::builder()
            .method("PUT")
            .uri(p.url("/upload"))
            .body(SlowBody {
                chunks: 8,
                pause: Duration::from_millis(100),
                timer: None,
            })
            .unwrap();
        let started = Instant::now();
        let resp = c.request(req).await.expect("the proxy answers");
        assert_eq!(resp.status(), 200, "after {:?}", started.elapsed());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b" 80"), "the whole body arrived: {body:?}");
    }
    assert!(p.ejections.try_recv().is_err(), "nothing ejected");
}

/// The client's body not arriving before the deadline is the client's fault: 408, and no
/// evidence against the backend.
#[tokio::test]
async fn an_upload_past_the_deadline_is_a_408_and_ejects_nothing() {
    let a = backend("a", Behaviour::Ok).await;
    let b = backend("b", Behaviour::Ok).await;
    let mut p = proxy(
        &[a.addr, b.addr],
        "[service.retry]\nper_try_timeout = \"100ms\"\ndeadline = \"300ms\"\n\n\
         [service.circuit]\nconsecutive_failures = 1\n",
    )
    .await;
    let c: Client<_, SlowBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method("PUT")
        .uri(p.url("/upload"))
        .body(SlowBody {
            chunks: 10,
            pause: Duration::from_millis(100),
            timer: None,
        })
        .unwrap();
    let resp = c.request(req).await.expect("the proxy answers");
    assert_eq!(resp.status(), 408);
    assert!(p.ejections.try_recv().is_err(), "nothing ejected");
}

/// Passive evidence may hold out at most `max_ejection_percent` of the pool (at least one
/// backend), and never the last one in service, even when every backend fails.
#[tokio::test]
async fn the_ejection_cap_keeps_the_last_backends_in_service() {
    let bs = [
        backend("a", Behaviour::Status(503)).await,
        backend("b", Behaviour::Status(503)).await,
        backend("c", Behaviour::Status(503)).await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let mut p = proxy(
        &addrs,
        "[service.retry]\nattempts = 1\n\n[service.circuit]\nconsecutive_failures = 1\n\
         base_ejection = \"30s\"\n",
    )
    .await;
    let c = client();
    for _ in 0..30 {
        assert_eq!(get(&c, &p.url("/")).await.status, 503);
    }
    let first = p.ejections.try_recv().expect("one backend is ejected");
    assert!(
        p.ejections.try_recv().is_err(),
        "10% of three is one ejection at a time"
    );
    let before: Vec<u32> = bs.iter().map(Backend::hits).collect();
    for _ in 0..10 {
        get(&c, &p.url("/")).await;
    }
    for (b, n) in bs.iter().zip(before) {
        if b.addr == first.address {
            assert_eq!(b.hits(), n, "the ejected backend takes nothing");
        } else {
            assert!(b.hits() > n, "{} stays in service", b.addr);
        }
    }
    assert!(
        p.metrics_text()
            .contains("understudy_http_ejections_capped_total{service=\"web\""),
        "refusals are counted"
    );
}

/// A keep-alive connection that moves no byte for `client_idle_timeout` is closed (after its
/// request was answered), and the close is counted.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let a = backend("a", Behaviour::Ok).await;
    let p = proxy(&[a.addr], "client_idle_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "answered first");
    let t = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the idle connection")
        .unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert!(
        p.metrics_text()
            .contains("understudy_http_client_timeouts_total{service=\"web\",kind=\"idle\"} 1")
    );
}

/// A client that opens a TLS connection and never finishes the handshake is disconnected after
/// `handshake_timeout`.
#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off() {
    use tokio::io::AsyncReadExt as _;
    let a = backend("a", Behaviour::Ok).await;
    let dir = std::env::temp_dir().join(format!("l7-handshake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["api.example".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let p = proxy(
        &[a.addr],
        &format!(
            "handshake_timeout = \"300ms\"\n\n[service.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert_path.display(),
            key_path.display()
        ),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the proxy closes the stalled handshake")
        .ok();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        t.elapsed()
    );
    assert!(
        p.metrics_text().contains(
            "understudy_http_client_timeouts_total{service=\"web\",kind=\"handshake\"} 1"
        )
    );
    std::fs::remove_dir_all(dir).ok();
}
