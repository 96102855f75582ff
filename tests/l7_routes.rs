//! HTTP routes and pools against real HTTP backends on loopback: which pool a request reaches by
//! host, path and method, the rewrites as the backends see them, the 404 for no route, retries
//! across pools (never one backend twice), error- and latency-based failover and its return, and
//! the access log of a retried request. The proxy is built from a real config and served on a
//! real socket; the pools' health view is set by hand (the writer publishes it in the daemon).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Bytes, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;
use understudy::{
    config::Config,
    l7::{
        self, ServiceProxy,
        availability::{MemberView, PoolView, new_availability},
        metrics::L7Metrics,
    },
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Ok,
    /// 503 for this share of requests (every n-th of ten), 200 for the rest.
    FailTenths(u32),
    Slow(Duration),
}

/// What a backend saw of the last request.
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    host: String,
    fallback: Option<String>,
}

struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Seen>>,
}

impl Backend {
    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
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
                        let n = hits.fetch_add(1, Ordering::SeqCst);
                        *seen.lock().unwrap() = Seen {
                            path: req.uri().path_and_query().unwrap().to_string(),
                            host: req.headers()["host"].to_str().unwrap().to_string(),
                            fallback: req
                                .headers()
                                .get("x-fallback")
                                .map(|v| v.to_str().unwrap().to_string()),
                        };
                        let b = *behaviour.lock().unwrap();
                        let status = match b {
                            Behaviour::FailTenths(t) if n % 10 < t => 503,
                            Behaviour::Slow(d) => {
                                tokio::time::sleep(d).await;
                                200
                            }
                            _ => 200,
                        };
                        let mut r = Response::new(Full::new(Bytes::from(name)));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
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

struct Proxy {
    addr: SocketAddr,
    current: l7::Current,
    metrics: L7Metrics,
}

impl Proxy {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The route's pool now, as `/status` shows it.
    fn serving(&self, route: usize) -> String {
        self.current.load().routes.list[route].status().serving
    }

    fn metrics_text(&self) -> String {
        let mut r = prometheus_client::registry::Registry::with_prefix("understudy");
        self.metrics.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }
}

/// `pools`: name and backends of each `[[pool]]`; `service`: the service's sections and routes.
async fn proxy(pools: &[(&str, &[SocketAddr])], service: &str) -> Proxy {
    let mut text = "[dataplane]\ninterfaces = [\"lo\"]\n\n[[service]]\nname = \"web\"\n\
                    vip = \"127.0.0.1:1\"\nmode = \"http\"\n[service.http]\n\
                    attempt_header = \"x-understudy-attempts\"\n"
        .to_string();
    text.push_str(service);
    for (name, backends) in pools {
        text.push_str(&format!("\n[[pool]]\nname = \"{name}\"\n"));
        for b in *backends {
            text.push_str(&format!("[[pool.backend]]\naddress = \"{b}\"\n"));
        }
    }
    let config = Config::parse(std::path::Path::new("routes-test.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let availability = new_availability();
    for svc in &config.services[1..] {
        let members = svc
            .backends
            .iter()
            .map(|b| MemberView::new(b.address, b.tier, b.weight, true, true))
            .collect();
        availability
            .write()
            .unwrap()
            .insert(svc.name.clone(), Arc::new(PoolView::new(members)));
    }
    let metrics = L7Metrics::default();
    let service = ServiceProxy::new(
        &config.services[0],
        availability,
        None,
        None,
        metrics.clone(),
        &Arc::new(understudy::l7::auth::Credentials::new(&config.gateway)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let current: l7::Current = Arc::new(ArcSwap::from_pointee(service));
    tokio::spawn(l7::serve(listener, current.clone()));
    Proxy {
        addr,
        current,
        metrics,
    }
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Status, body and attempts of one request.
async fn send(c: &TestClient, method: &str, url: &str, host: &str) -> (u16, String, u32) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.expect("the proxy answers");
    let status = resp.status().as_u16();
    let attempts = resp
        .headers()
        .get("x-understudy-attempts")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        attempts,
    )
}

#[tokio::test]
async fn requests_reach_the_pool_their_host_path_and_method_route_to() {
    let api = backend("api", Behaviour::Ok).await;
    let images = backend("images", Behaviour::Ok).await;
    let writes = backend("writes", Behaviour::Ok).await;
    let legacy = backend("legacy", Behaviour::Ok).await;
    let p = proxy(
        &[
            ("api", &[api.addr]),
            ("images", &[images.addr]),
            ("writes", &[writes.addr]),
            ("legacy", &[legacy.addr]),
        ],
        r#"
[[service.route]]
name = "writes"
host = "api.example.com"
methods = ["POST", "PUT"]
pools = ["writes"]
[[service.route]]
name = "api-v1"
host = "api.example.com"
path_prefix = "/v1/"
pools = ["api"]
[[service.route]]
name = "images"
host = "*.cdn.example.com"
path_regex = "/img/[0-9]+\\.png"
pools = ["images"]
[[service.route]]
name = "legacy"
path = "/old"
headers = { "x-tenant" = "blue" }
pools = ["legacy"]
"#,
    )
    .await;
    let c = client();
    let table: &[(&str, &str, &str, Option<&str>)] = &[
        ("GET", "api.example.com", "/v1/users", Some("api")),
        ("GET", "API.example.com:80", "/v1/", Some("api")),
        ("POST", "api.example.com", "/v1/users", Some("writes")),
        ("PUT", "api.example.com", "/anything", Some("writes")),
        ("GET", "api.example.com", "/v2/users", None),
        ("GET", "other.example.com", "/v1/users", None),
        ("GET", "eu.cdn.example.com", "/img/42.png", Some("images")),
        ("GET", "a.b.cdn.example.com", "/img/7.png", Some("images")),
        ("GET", "cdn.example.com", "/img/42.png", None),
        ("GET", "eu.cdn.example.com", "/img/42.png.bak", None),
        ("GET", "eu.cdn.example.com", "/img/x.png", None),
    ];
    for &(method, host, path, want) in table {
        let (status, body, _) = send(&c, method, &p.url(path), host).await;
        match want {
            Some(pool) => assert_eq!(
                (status, body.as_str()),
                (200, pool),
                "{method} {host}{path}"
            ),
            None => {
                assert_eq!(status, 404, "{method} {host}{path}: {body}");
                assert_eq!(body, "404 no route matches this request\n");
            }
        }
    }
    // Header conditions: the value exactly.
    let header = |v: Option<&'static str>| {
        let mut r = Request::get(p.url("/old")).header("host", "x");
        if let Some(v) = v {
            r = r.header("x-tenant", v);
        }
        r.body(Full::new(Bytes::new())).unwrap()
    };
    assert_eq!(c.request(header(Some("blue"))).await.unwrap().status(), 200);
    assert_eq!(c.request(header(Some("red"))).await.unwrap().status(), 404);
    assert_eq!(c.request(header(None)).await.unwrap().status(), 404);
    assert_eq!(legacy.hits(), 1);
    // Counted per route and pool.
    let m = p.metrics_text();
    assert!(
        m.contains(
            "understudy_http_route_requests_total{service=\"web\",route=\"images\",pool=\"images\",code=\"200\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("understudy_http_route_request_duration_seconds_count{service=\"web\",route=\"api-v1\",pool=\"api\"} 2"), "{m}");
}

#[tokio::test]
async fn a_fallback_pool_gets_its_own_host_path_and_headers() {
    let primary = backend("primary", Behaviour::FailTenths(10)).await;
    let backup = backend("backup", Behaviour::Ok).await;
    let p = proxy(
        &[("primary", &[primary.addr]), ("backup", &[backup.addr])],
        r#"
[service.circuit]
consecutive_failures = 1000
[[service.route]]
path_prefix = "/api/"
pools = ["primary", "backup"]
[service.route.rewrite.backup]
host = "backup.example.net"
prefix = "/v2/"
headers = { "x-fallback" = "1" }
"#,
    )
    .await;
    let c = client();
    let (status, body, attempts) =
        send(&c, "GET", &p.url("/api/users?id=7"), "api.example.com").await;
    assert_eq!((status, body.as_str(), attempts), (200, "backup", 2));
    let seen = primary.seen();
    assert_eq!(
        (seen.path.as_str(), seen.host.as_str(), seen.fallback),
        ("/api/users?id=7", "api.example.com", None),
        "the primary gets the request as sent"
    );
    let seen = backup.seen();
    assert_eq!(
        (
            seen.path.as_str(),
            seen.host.as_str(),
            seen.fallback.as_deref()
        ),
        ("/v2/users?id=7", "backup.example.net", Some("1")),
        "the backup gets its rewrite"
    );
}

#[tokio::test]
async fn a_retry_walks_the_chain_and_never_tries_a_backend_twice() {
    let shared = backend("shared", Behaviour::FailTenths(10)).await;
    let other = backend("other", Behaviour::FailTenths(10)).await;
    let last = backend("last", Behaviour::Ok).await;
    let p = proxy(
        &[
            ("first", &[shared.addr]),
            ("second", &[shared.addr, other.addr]),
            ("third", &[last.addr]),
        ],
        "[service.retry]\nattempts = 5\n[service.circuit]\nconsecutive_failures = 1000\n\
         [[service.route]]\npools = [\"first\", \"second\", \"third\"]\n",
    )
    .await;
    let c = client();
    for _ in 0..5 {
        let (status, body, attempts) = send(&c, "GET", &p.url("/"), "x").await;
        assert_eq!((status, body.as_str(), attempts), (200, "last", 3));
    }
    assert_eq!(
        shared.hits(),
        5,
        "shared, in two pools, is tried once per request"
    );
    assert_eq!(other.hits(), 5);
}

/// Sends requests for `d`, at most `rate` per second; returns how many went out.
async fn traffic(p: &Proxy, c: &TestClient, d: Duration) -> u32 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        let (status, _, _) = send(c, "GET", &p.url("/"), "x").await;
        assert_eq!(
            status, 200,
            "retries hide the primary's errors from clients"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    n
}

#[tokio::test]
async fn thirty_percent_503s_move_the_route_to_its_backup_and_recovery_brings_it_back() {
    let primary = backend("primary", Behaviour::FailTenths(3)).await;
    let backup = backend("backup", Behaviour::Ok).await;
    let p = proxy(
        &[("primary", &[primary.addr]), ("backup", &[backup.addr])],
        r#"
[service.retry]
budget_ratio = 1.0
[service.circuit]
consecutive_failures = 1000
[[service.route]]
name = "main"
pools = ["primary", "backup"]
[service.route.failover]
error_threshold = 0.2
min_requests = 20
window = "1s"
probe_ratio = 0.1
hold = "1s"
"#,
    )
    .await;
    let c = client();
    // Within the window (1 s) of traffic the route moves.
    let start = Instant::now();
    while p.serving(0) != "backup" {
        assert!(start.elapsed() < Duration::from_secs(3), "never moved");
        traffic(&p, &c, Duration::from_millis(50)).await;
    }
    let moved_after = start.elapsed();
    eprintln!("moved to the backup after {moved_after:?}");
    assert!(
        moved_after < Duration::from_millis(1500),
        "moved after {moved_after:?}"
    );
    let status = p.current.load().routes.list[0].status();
    let reason = status.reason.unwrap();
    assert!(
        reason.starts_with("primary tripped: gateway errors"),
        "{reason}"
    );
    // On the backup, the primary gets only the probes while it still fails.
    let before = (primary.hits(), backup.hits());
    let n = traffic(&p, &c, Duration::from_millis(1500)).await;
    let probes = primary.hits() - before.0;
    assert_eq!(p.serving(0), "backup", "still failing: stays on the backup");
    assert!(
        probes >= 1 && probes <= n / 4,
        "{probes} of {n} requests probed the primary"
    );

    // Recovered: back after the hold, once the failures have left the window.
    primary.set(Behaviour::Ok);
    let healed = Instant::now();
    while p.serving(0) != "primary" {
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "never moved back"
        );
        traffic(&p, &c, Duration::from_millis(50)).await;
    }
    eprintln!(
        "moved back {:?} after the primary recovered",
        healed.elapsed()
    );
    assert!(
        healed.elapsed() >= Duration::from_secs(1),
        "the hold is 1 s, moved back after {:?}",
        healed.elapsed()
    );
    let m = p.metrics_text();
    for kind in ["errors", "recovered"] {
        assert!(m.contains(&format!("kind=\"{kind}\"")), "{m}");
    }
    assert!(
        m.contains("understudy_http_route_serving_pool{service=\"web\",route=\"main\"} 0"),
        "{m}"
    );
    // And new requests go to the primary again.
    let before = primary.hits();
    let n = traffic(&p, &c, Duration::from_millis(300)).await;
    assert_eq!(primary.hits() - before, n);
}

#[tokio::test]
async fn a_slow_primary_moves_the_route_on_latency() {
    let primary = backend("primary", Behaviour::Slow(Duration::from_millis(150))).await;
    let backup = backend("backup", Behaviour::Ok).await;
    let p = proxy(
        &[("primary", &[primary.addr]), ("backup", &[backup.addr])],
        r#"
[[service.route]]
pools = ["primary", "backup"]
[service.route.failover]
latency_threshold = "50ms"
latency_quantile = 0.9
min_requests = 5
window = "2s"
probe_ratio = 0.05
hold = "1s"
"#,
    )
    .await;
    let c = client();
    let start = Instant::now();
    while p.serving(0) != "backup" {
        assert!(start.elapsed() < Duration::from_secs(5), "never moved");
        traffic(&p, &c, Duration::from_millis(50)).await;
    }
    assert_eq!(primary.hits(), 5, "moved on the fifth slow answer");
    let reason = p.current.load().routes.list[0].status().reason.unwrap();
    assert!(reason.contains("p90 latency"), "{reason}");
    let m = p.metrics_text();
    assert!(m.contains("kind=\"latency\""), "{m}");
    // Fast again: back after the hold.
    primary.set(Behaviour::Ok);
    let healed = Instant::now();
    while p.serving(0) != "primary" {
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "never moved back"
        );
        traffic(&p, &c, Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_access_log_records_a_retried_request() {
    let failing = backend("failing", Behaviour::FailTenths(10)).await;
    let good = backend("good", Behaviour::Ok).await;
    let dir = std::env::temp_dir().join(format!("understudy-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let _ = std::fs::remove_file(&file);
    let p = proxy(
        &[("primary", &[failing.addr]), ("backup", &[good.addr])],
        &format!(
            "[service.circuit]\nconsecutive_failures = 1000\n[service.access_log]\nenabled = true\n\
             file = \"{}\"\n[[service.route]]\nname = \"all\"\npools = [\"primary\", \"backup\"]\n",
            file.display()
        ),
    )
    .await;
    let c = client();
    let (status, body, attempts) = send(&c, "GET", &p.url("/report?x=1"), "x").await;
    assert_eq!((status, body.as_str(), attempts), (200, "good", 2));
    // The record is written once the body has gone out.
    let deadline = Instant::now() + Duration::from_secs(2);
    let line = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["service"], "web");
    assert_eq!(r["route"], "all");
    assert_eq!(r["pool"], "backup");
    assert_eq!(r["backend"], good.addr.to_string());
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/report?x=1");
    assert_eq!(r["status"], 200);
    assert_eq!(r["attempts"], 2);
    assert_eq!(
        r["tried"],
        serde_json::json!([failing.addr.to_string(), good.addr.to_string()])
    );
    assert_eq!(r["bytes_out"], 4);
    assert_eq!(r["complete"], true);
    assert!(r["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let (tq, tr, ta) = (
        r["tq_us"].as_u64().unwrap(),
        r["tr_us"].as_u64().unwrap(),
        r["ta_us"].as_u64().unwrap(),
    );
    assert!(tr > 0 && ta >= tq + tr, "tq {tq} tr {tr} ta {ta}");
    std::fs::remove_dir_all(&dir).unwrap();
}
