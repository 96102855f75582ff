//! The HTTP proxy against HAProxy (`cargo xtask bench l7`, as root; Debian's haproxy 2.6 and wrk).
//!
//! Everything runs in one fresh network namespace on its loopback: three HTTP backends (hyper, on
//! one thread), Understudy's daemon with one runtime worker, HAProxy with `nbthread 1`, both with
//! round robin over the same three backends and pooled upstream connections, and wrk with one
//! thread and 64 connections. Two scenarios:
//! 1. healthy backends;
//! 2. one of the three backends answers 503 to every tenth request, with retries on in both
//!    (Understudy's defaults; HAProxy `retry-on 503 conn-failure empty-response` with
//!    `option redispatch 1`, so a retry goes to another server, as Understudy's does);
//! 3. routed: ten path-prefix routes (`[[service.route]]` to a `[[pool]]`; HAProxy's `acl
//!    path_beg` with `use_backend`), every request matching the last one;
//! 4. policy: every request carries an HS256 JWT that the proxy verifies (signature and `exp`)
//!    and counts against a per-consumer rate limit that is never hit. Understudy: a route with
//!    `auth = ["jwt"]` and `rate_limit`. HAProxy 2.6: `http_auth_bearer,jwt_verify` and the
//!    `exp` claim against `date`, and a stick table tracking the `sub` claim's request rate.
//!    HAProxy cannot check `nbf`, `iss` or `aud` as one rule, nor take a JWKS; it verifies
//!    with one secret (or one certificate file), so the comparison favours it slightly.
//!    The cost of policy is read against the healthy scenario of the same run;
//! 5. h2 upstream: wrk's HTTP/1.1 requests go to three backends speaking HTTP/2 in clear
//!    (Understudy: a pool with `protocol = "h2c"`; HAProxy: `server ... proto h2`);
//! 6. gRPC unary: a small load generator in this file (ghz is not in Debian) makes unary gRPC
//!    calls over HTTP/2 in clear, 4 connections with 16 calls in flight each (64, as wrk's 64
//!    connections), to the same h2c backends, which answer in gRPC's wire format with
//!    `grpc-status: 0` in trailers (Understudy: an HTTP service taking HTTP/2 prior knowledge;
//!    HAProxy: `bind ... proto h2`). A call counts when its trailers say 0;
//! 7. close: the healthy scenario with `Connection: close` on every request, so each request is
//!    a new client connection (the upstream side stays pooled in both);
//! 8. TLS termination: the healthy scenario over HTTPS, the same test certificate (rcgen, ECDSA
//!    P-256) in both (Understudy: `[service.tls]`; HAProxy: `bind ... ssl crt`), keep-alive.
//!
//! Then the daemon runs again with 2 workers against HAProxy's `nbthread 2`, neither pinned (both
//! CPUs, shared with wrk and the backends), for the healthy and close scenarios.
//!
//! Beside each rate: the proxy's CPU time per 1,000 requests (its process's user and system
//! time from `/proc/PID/stat` over the run, every thread included).
//!
//! CPUs are pinned so that the scheduler's placement does not decide the result: wrk runs alone
//! on CPU 0; the proxy under test and the backends share CPU 1 (on this two-core machine).
//!
//! Each scenario runs ROUNDS rounds; each round measures both proxies back to back, in alternating
//! order, and the figures are medians. Ratios (Understudy / HAProxy) are what to read: the machine
//! is shared and noisy.

use std::{
    convert::Infallible,
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use understudy_testbed::{Daemon, Netns, require_root};

const ROUNDS: usize = 9;
const DURATION: &str = "5s";
/// wrk's CPU, and the CPU the proxies and the backends share.
const LOAD_CPU: &str = "0";
const PROXY_CPU: &str = "1";
const CONNECTIONS: &str = "64";
const BACKEND_PORTS: [u16; 3] = [9001, 9002, 9003];
const UNDERSTUDY_PORT: u16 = 8080;
const HAPROXY_PORT: u16 = 8081;
/// The routed scenario's listeners.
const UNDERSTUDY_ROUTED_PORT: u16 = 8082;
const HAPROXY_ROUTED_PORT: u16 = 8083;
const ROUTES: usize = 10;
/// The policy scenario's listeners, and its token's secret.
const UNDERSTUDY_POLICY_PORT: u16 = 8084;
const HAPROXY_POLICY_PORT: u16 = 8085;
const JWT_SECRET: &str = "a bench secret of thirty-two bytes!";
/// The h2c backends, and the h2-upstream and gRPC scenarios' listeners.
const H2_BACKEND_PORTS: [u16; 3] = [9011, 9012, 9013];
const UNDERSTUDY_H2_PORT: u16 = 8086;
const HAPROXY_H2_PORT: u16 = 8087;
const UNDERSTUDY_GRPC_PORT: u16 = 8088;
const HAPROXY_GRPC_PORT: u16 = 8089;
const GRPC_CONNECTIONS: usize = 4;
const GRPC_STREAMS: usize = 16;
/// The TLS scenario's listeners.
const UNDERSTUDY_TLS_PORT: u16 = 8090;
const HAPROXY_TLS_PORT: u16 = 8091;

/// Starts the three backends on one thread; backend 0 fails every tenth request while `failing`.
fn backends(ns: &Netns, failing: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    ns.thread(move || {
        pin_current_thread(PROXY_CPU.parse().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            for (i, port) in BACKEND_PORTS.into_iter().enumerate() {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                let failing = failing.clone();
                let count = Arc::new(AtomicU64::new(0));
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let (failing, count) = (failing.clone(), count.clone());
                        tokio::spawn(async move {
                            let service =
                                service_fn(move |_req: Request<hyper::body::Incoming>| {
                                    let n = count.fetch_add(1, Ordering::Relaxed);
                                    let fail =
                                        i == 0 && failing.load(Ordering::Relaxed) && n % 10 == 0;
                                    let mut r = Response::new(Full::new(Bytes::from_static(
                                        b"hello from a backend\n",
                                    )));
                                    if fail {
                                        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                    }
                                    async move { Ok::<_, Infallible>(r) }
                                });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
            for port in H2_BACKEND_PORTS {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let service = service_fn(h2_answer);
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
            ready_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    ready_rx.recv().unwrap();
}

/// An h2c backend's answer: gRPC's wire format (one message, then `grpc-status: 0` in
/// trailers) to a gRPC call, plain text to anything else.
async fn h2_answer(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<GrpcOrPlain>, Infallible> {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Read the request body, as a server would.
    let _ = req.into_body().collect().await;
    if !grpc {
        return Ok(Response::new(
            Full::new(Bytes::from_static(b"hello from an h2 backend\n")).boxed(),
        ));
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let body = Full::new(grpc_message(b"a reply"))
        .with_trailers(std::future::ready(Some(Ok(trailers))))
        .boxed();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    Ok(r)
}

type GrpcOrPlain = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A gRPC message: not compressed, its length, the payload.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + payload.len());
    b.push(0);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.into()
}

/// Unary gRPC calls to `port` for DURATION from CPU 0: GRPC_CONNECTIONS HTTP/2 connections,
/// GRPC_STREAMS calls in flight on each. A call counts when its trailers carry `grpc-status: 0`.
fn grpc_load(ns: &Netns, port: u16) -> Figures {
    let seconds: f64 = DURATION.trim_end_matches('s').parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.thread(move || {
        pin_current_thread(LOAD_CPU.parse().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let figures = rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
            let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
            let errors = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..GRPC_CONNECTIONS {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let _ = stream.set_nodelay(true);
                let (send, conn) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                for _ in 0..GRPC_STREAMS {
                    let mut send = send.clone();
                    let (latencies, errors) = (latencies.clone(), errors.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut mine = Vec::new();
                        while tokio::time::Instant::now() < deadline {
                            let started = std::time::Instant::now();
                            let req = Request::post(format!(
                                "http://127.0.0.1:{port}/understudy.test.Echo/Say"
                            ))
                            .header("content-type", "application/grpc")
                            .header("te", "trailers")
                            .body(Full::new(grpc_message(b"a request")))
                            .unwrap();
                            let ok = match send.send_request(req).await {
                                Ok(resp) => match resp.into_body().collect().await {
                                    Ok(c) => c
                                        .trailers()
                                        .and_then(|t| t.get("grpc-status"))
                                        .is_some_and(|v| v == "0"),
                                    Err(_) => false,
                                },
                                Err(_) => false,
                            };
                            if ok {
                                mine.push(started.elapsed().as_secs_f64() * 1000.0);
                            } else {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        latencies.lock().unwrap().extend(mine);
                    }));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
            let mut l = std::mem::take(&mut *latencies.lock().unwrap());
            l.sort_by(f64::total_cmp);
            let at = |q: f64| {
                l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            Figures {
                rps: l.len() as f64 / seconds,
                p50_ms: at(0.5),
                p99_ms: at(0.99),
                errors_per_s: errors.load(Ordering::Relaxed) as f64 / seconds,
                cpu_ms_per_1k: f64::NAN,
            }
        });
        tx.send(figures).unwrap();
    });
    let f = rx.recv().unwrap();
    assert!(f.rps > 0.0, "no gRPC call succeeded on port {port}");
    f
}

fn pin_current_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the set is passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("understudy-bench-l7-{name}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The test certificate and key (for Understudy), and both in one file (for HAProxy).
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    both: PathBuf,
}

fn tls_files() -> TlsFiles {
    let k = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a test certificate");
    let (cert, key) = (k.cert.pem(), k.signing_key.serialize_pem());
    TlsFiles {
        cert: write("cert.pem", &cert),
        key: write("key.pem", &key),
        both: write("haproxy.pem", &format!("{cert}{key}")),
    }
}

fn understudy_config(ns: &Netns, tls: &TlsFiles) -> PathBuf {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\ninstance = \"{}\"\n\n[admin]\nlisten = \"off\"\n\n\
         [[service]]\nname = \"api\"\nvip = \"127.0.0.1:{UNDERSTUDY_PORT}\"\nmode = \"http\"\n\n\
         [service.circuit]\n# Only the retries are compared: the failing backend stays in.\n\
         consecutive_failures = 1000\n",
        ns.name()
    );
    for port in BACKEND_PORTS {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"127.0.0.1:{port}\"\n"
        ));
    }
    text.push_str(&format!(
        "\n[[service]]\nname = \"routed\"\nvip = \"127.0.0.1:{UNDERSTUDY_ROUTED_PORT}\"\nmode = \"http\"\n\
         [service.circuit]\nconsecutive_failures = 1000\n"
    ));
    for r in 0..ROUTES {
        text.push_str(&format!(
            "[[service.route]]\npath_prefix = \"/r{r}/\"\npools = [\"all\"]\n"
        ));
    }
    // The policy service: a JWT on every request, and a per-consumer limit never reached.
    let jwks = write(
        "jwks.json",
        &format!(
            r#"{{"keys": [{{"kty": "oct", "kid": "bench", "alg": "HS256", "k": "{}"}}]}}"#,
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                JWT_SECRET
            )
        ),
    );
    text.push_str(&format!(
        "\n[gateway.jwt]\njwks_file = \"{}\"\n\n[[service]]\nname = \"policy\"\n\
         vip = \"127.0.0.1:{UNDERSTUDY_POLICY_PORT}\"\nmode = \"http\"\n\
         [service.circuit]\nconsecutive_failures = 1000\n\
         [[service.route]]\npath_prefix = \"/\"\npools = [\"all\"]\nauth = [\"jwt\"]\n\
         [service.route.rate_limit]\nrate = 1000000000\nburst = 1000000000\n",
        jwks.display()
    ));
    // HTTP/2 upstreams: the h2-upstream scenario (wrk's HTTP/1.1) and the gRPC one.
    for (name, port) in [("h2up", UNDERSTUDY_H2_PORT), ("grpc", UNDERSTUDY_GRPC_PORT)] {
        text.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
             [service.circuit]\nconsecutive_failures = 1000\n\
             [[service.route]]\npath_prefix = \"/\"\npools = [\"h2c\"]\n"
        ));
    }
    text.push_str(&format!(
        "\n[[service]]\nname = \"tls\"\nvip = \"127.0.0.1:{UNDERSTUDY_TLS_PORT}\"\nmode = \"http\"\n\
         [service.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [service.circuit]\nconsecutive_failures = 1000\n\
         [[service.route]]\npath_prefix = \"/\"\npools = [\"all\"]\n",
        tls.cert.display(),
        tls.key.display()
    ));
    text.push_str("\n[[pool]]\nname = \"h2c\"\nprotocol = \"h2c\"\n");
    for port in H2_BACKEND_PORTS {
        text.push_str(&format!(
            "[[pool.backend]]\naddress = \"127.0.0.1:{port}\"\n"
        ));
    }
    text.push_str("\n[[pool]]\nname = \"all\"\n");
    for port in BACKEND_PORTS {
        text.push_str(&format!(
            "[[pool.backend]]\naddress = \"127.0.0.1:{port}\"\n"
        ));
    }
    write("understudy.toml", &text)
}

/// HAProxy with `threads` threads, pinned to the proxies' CPU when `pinned`.
fn start_haproxy(ns: &Netns, tls: &TlsFiles, threads: u32, pinned: bool) -> Child {
    let mut text = format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\ndefaults\n  mode http\n  timeout connect 1s\n  \
         timeout client 30s\n  timeout server 5s\n  retries 2\n  option redispatch 1\n  \
         retry-on conn-failure empty-response response-timeout 503\n\n\
         frontend api\n  bind 127.0.0.1:{HAPROXY_PORT}\n  option forwardfor\n  default_backend pool\n\n\
         backend pool\n  balance roundrobin\n"
    );
    for (i, port) in BACKEND_PORTS.iter().enumerate() {
        text.push_str(&format!("  server b{i} 127.0.0.1:{port}\n"));
    }
    // The routed frontend: one ACL and use_backend per route, as a gateway config has them.
    text.push_str(&format!(
        "\nfrontend routed\n  bind 127.0.0.1:{HAPROXY_ROUTED_PORT}\n  option forwardfor\n"
    ));
    for r in 0..ROUTES {
        text.push_str(&format!(
            "  acl r{r} path_beg /r{r}/\n  use_backend pool if r{r}\n"
        ));
    }
    // The policy frontend: the bearer token verified, its exp compared with now, and its sub's
    // request rate tracked in a stick table with a limit never reached.
    text.push_str(&format!(
        "\nfrontend policy\n  bind 127.0.0.1:{HAPROXY_POLICY_PORT}\n  option forwardfor\n  \
         stick-table type string len 64 size 100k expire 10s store http_req_rate(1s)\n  \
         http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_verify(\"HS256\",\"{JWT_SECRET}\") -m int 1 }}\n  \
         http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('$.exp','int')\n  \
         http-request set-var(txn.now) date\n  \
         http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}\n  \
         http-request track-sc0 http_auth_bearer,jwt_payload_query('$.sub')\n  \
         http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 1000000000 }}\n  \
         default_backend pool\n"
    ));
    // HTTP/2 to the backends, for HTTP/1.1 clients and for gRPC clients (HTTP/2 in clear).
    text.push_str(&format!(
        "\nfrontend h2up\n  bind 127.0.0.1:{HAPROXY_H2_PORT}\n  option forwardfor\n  default_backend h2pool\n\
         \nfrontend grpc\n  bind 127.0.0.1:{HAPROXY_GRPC_PORT} proto h2\n  default_backend h2pool\n\
         \nbackend h2pool\n  balance roundrobin\n"
    ));
    for (i, port) in H2_BACKEND_PORTS.iter().enumerate() {
        text.push_str(&format!("  server h{i} 127.0.0.1:{port} proto h2\n"));
    }
    text.push_str(&format!(
        "\nfrontend tls\n  bind 127.0.0.1:{HAPROXY_TLS_PORT} ssl crt {}\n  option forwardfor\n  \
         default_backend pool\n",
        tls.both.display()
    ));
    let cfg = write("haproxy.cfg", &text);
    let cpus = if pinned { PROXY_CPU } else { "0,1" };
    let mut child = ns
        .command("taskset")
        .args(["-c", cpus, "haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start haproxy (cargo xtask bench l7 installs it)");
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("haproxy exited: {status}");
    }
    child
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Responses that were not 2xx or 3xx, per second.
    errors_per_s: f64,
    /// The proxy's CPU time (user and system, all threads) per 1,000 requests, in ms.
    cpu_ms_per_1k: f64,
}

/// A process's CPU time so far (user and system, all its threads), in ms.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

fn wrk(ns: &Netns, url: &str, path: &str, headers: &[String]) -> Figures {
    let mut extra = Vec::new();
    for h in headers {
        extra.push("-H".to_string());
        extra.push(h.clone());
    }
    let out = ns
        .command("taskset")
        .args([
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            "-c",
            CONNECTIONS,
            "-d",
            DURATION,
            "--latency",
        ])
        .args(&extra)
        .arg(format!("{url}{path}"))
        .output()
        .expect("run wrk (cargo xtask bench l7 installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let seconds: f64 = DURATION.trim_end_matches('s').parse().unwrap();
    let w = understudy_testbed::wrk::parse(&text);
    let f = Figures {
        rps: w.per_second,
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        errors_per_s: w.non_2xx as f64 / seconds,
        cpu_ms_per_1k: f64::NAN,
    };
    assert!(f.rps > 0.0, "wrk printed no rate:\n{text}");
    f
}

/// An HS256 token for consumer "bench", valid for a day.
fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("bench".into());
    let claims = serde_json::json!({"sub": "bench", "exp": now + 86_400, "nbf": now - 60});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One proxy's listener in a scenario.
#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    scheme: &'static str,
    port: u16,
}

impl Target {
    fn url(self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }
}

/// Understudy's listener on `understudy` and HAProxy's on `haproxy`.
fn pair(scheme: &'static str, understudy: u16, haproxy: u16) -> [Target; 2] {
    [
        Target {
            name: "understudy",
            scheme,
            port: understudy,
        },
        Target {
            name: "haproxy",
            scheme,
            port: haproxy,
        },
    ]
}

/// One scenario's load (wrk, or this file's gRPC generator) against each proxy in turn,
/// alternating which goes first, ROUNDS times; prints each run and the medians, and returns the
/// medians' requests per second (Understudy, HAProxy).
#[allow(clippy::too_many_arguments)]
fn scenario(
    ns: &Netns,
    name: &str,
    targets: [Target; 2],
    pids: [u32; 2],
    path: &str,
    headers: &[String],
    grpc: bool,
) -> [f64; 2] {
    let seconds: f64 = DURATION.trim_end_matches('s').parse().unwrap();
    let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for t in order {
            let cpu = cpu_ms(pids[t]);
            let mut f = if grpc {
                grpc_load(ns, targets[t].port)
            } else {
                wrk(ns, &targets[t].url(), path, headers)
            };
            f.cpu_ms_per_1k = (cpu_ms(pids[t]) - cpu) / (f.rps * seconds / 1000.0);
            println!(
                "  {name:<26} round {round} {:<10} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {:>6.1}/s  cpu {:>6.1} ms/1k",
                targets[t].name, f.rps, f.p50_ms, f.p99_ms, f.errors_per_s, f.cpu_ms_per_1k
            );
            runs[t].push(f);
        }
    }
    let m = |t: usize, pick: fn(&Figures) -> f64| median(runs[t].iter().map(pick).collect());
    let (u_rps, h_rps) = (m(0, |f| f.rps), m(1, |f| f.rps));
    let (u_p50, h_p50) = (m(0, |f| f.p50_ms), m(1, |f| f.p50_ms));
    let (u_p99, h_p99) = (m(0, |f| f.p99_ms), m(1, |f| f.p99_ms));
    let (u_err, h_err) = (m(0, |f| f.errors_per_s), m(1, |f| f.errors_per_s));
    let (u_cpu, h_cpu) = (m(0, |f| f.cpu_ms_per_1k), m(1, |f| f.cpu_ms_per_1k));
    println!("\n  {name} (medians):");
    println!(
        "    requests/s  understudy {u_rps:>9.0}  haproxy {h_rps:>9.0}  ratio {:.2} (target >= 1.1)",
        u_rps / h_rps
    );
    println!(
        "    p50         understudy {u_p50:>7.3} ms  haproxy {h_p50:>7.3} ms  ratio {:.2}",
        u_p50 / h_p50
    );
    println!(
        "    p99         understudy {u_p99:>7.3} ms  haproxy {h_p99:>7.3} ms  ratio {:.2} (target <= 1)",
        u_p99 / h_p99
    );
    println!("    errors/s    understudy {u_err:>9.1}  haproxy {h_err:>9.1}");
    println!(
        "    CPU/1k req  understudy {u_cpu:>7.1} ms  haproxy {h_cpu:>7.1} ms  ratio {:.2}",
        u_cpu / h_cpu
    );
    [u_rps, h_rps]
}

fn main() {
    require_root("the L7 benchmark");
    Netns::remove_stale();
    let ns = Netns::new("l7bench");
    let failing = Arc::new(AtomicBool::new(false));
    backends(&ns, failing.clone());
    let tls = tls_files();
    let config = understudy_config(&ns, &tls);
    let bin = env!("CARGO_BIN_EXE_understudy");
    let daemon = Daemon::start_with_env(&ns, bin.as_ref(), &config, &[("UNDERSTUDY_WORKERS", "1")]);
    // The daemon's threads, all of them, on the proxies' CPU.
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", PROXY_CPU, &daemon.pid().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset");
    let mut haproxy = start_haproxy(&ns, &tls, 1, true);
    let plain = pair("http", UNDERSTUDY_PORT, HAPROXY_PORT);
    let routed = pair("http", UNDERSTUDY_ROUTED_PORT, HAPROXY_ROUTED_PORT);
    let policy = pair("http", UNDERSTUDY_POLICY_PORT, HAPROXY_POLICY_PORT);
    let h2up = pair("http", UNDERSTUDY_H2_PORT, HAPROXY_H2_PORT);
    let grpc = pair("http", UNDERSTUDY_GRPC_PORT, HAPROXY_GRPC_PORT);
    let https = pair("https", UNDERSTUDY_TLS_PORT, HAPROXY_TLS_PORT);
    let bearer = vec![format!("Authorization: Bearer {}", token())];
    // Both must pass the token, or the scenario measures refusals; both must serve TLS.
    for t in policy.into_iter().chain(https) {
        let u = t.url();
        let code = ns
            .command("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &bearer[0],
            ])
            .arg(format!("{u}/"))
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&code.stdout).into_owned();
        assert_eq!(code, "200", "{} at {u} did not answer 200", t.name);
    }
    // Warm both (pools, caches).
    for t in grpc {
        let _ = grpc_load(&ns, t.port);
    }
    for t in [plain, routed, policy, h2up, https].into_iter().flatten() {
        let _ = ns
            .command("wrk")
            .args(["-t1", "-c", CONNECTIONS, "-d", "1s", "-H", &bearer[0]])
            .arg(format!("{}/", t.url()))
            .output();
    }
    println!(
        "L7: wrk -t1 -c{CONNECTIONS} -d{DURATION} on CPU {LOAD_CPU}; proxy (one worker) and 3 backends on CPU {PROXY_CPU}; {ROUNDS} rounds\n"
    );
    let last_route = format!("/r{}/x", ROUTES - 1);
    let none: Vec<String> = Vec::new();
    let close = vec!["Connection: close".to_string()];
    let pids = [daemon.pid(), haproxy.id()];
    let mut healthy = [0.0f64; 2];
    for (name, fail, targets, path, headers) in [
        ("healthy", false, plain, "/", &none),
        ("1 of 3 backends: 10% 503", true, plain, "/", &none),
        (
            "routed: 10 routes, the last",
            false,
            routed,
            last_route.as_str(),
            &none,
        ),
        ("policy: JWT + rate limit", false, policy, "/", &bearer),
        ("h2 upstream (h2c backends)", false, h2up, "/", &none),
        ("gRPC unary (h2c both sides)", false, grpc, "/", &none),
        ("close: Connection: close", false, plain, "/", &close),
        ("TLS termination", false, https, "/", &none),
    ] {
        failing.store(fail, Ordering::Relaxed);
        let grpc = name.starts_with("gRPC");
        let rps = scenario(&ns, name, targets, pids, path, headers, grpc);
        if name == "healthy" {
            healthy = rps;
        } else if headers == &bearer {
            println!(
                "    vs healthy  understudy {:.2} of its plain rate, haproxy {:.2} of its own",
                rps[0] / healthy[0],
                rps[1] / healthy[1]
            );
        }
        println!();
    }
    failing.store(false, Ordering::Relaxed);
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    drop(daemon);

    // Two workers against two threads, on both CPUs.
    let daemon = Daemon::start_with_env(&ns, bin.as_ref(), &config, &[("UNDERSTUDY_WORKERS", "2")]);
    let mut haproxy = start_haproxy(&ns, &tls, 2, false);
    let pids = [daemon.pid(), haproxy.id()];
    println!(
        "L7, 2 workers against nbthread 2, neither pinned (wrk stays on CPU {LOAD_CPU}; {ROUNDS} rounds)\n"
    );
    for (name, headers) in [("2 workers: healthy", &none), ("2 workers: close", &close)] {
        scenario(&ns, name, plain, pids, "/", headers, false);
        println!();
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    drop(daemon);
}
