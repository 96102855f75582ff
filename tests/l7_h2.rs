//! HTTP/2 to the backends: pools with `protocol = "h2c"` behind the proxy, against hyper HTTP/2
//! servers on loopback that answer the way gRPC servers do (`application/grpc`, a length-prefixed
//! message, trailers with `grpc-status`). A unary call and a server stream pass with their
//! trailers; concurrent calls share one upstream connection; a trailers-only `UNAVAILABLE` is
//! retried on another backend when the route allows it, and passed on when it does not.
//!
//! The calls are made with hyper's HTTP/2 client speaking the gRPC wire format by hand, not with
//! tonic: what the proxy must carry (frames, trailers, `te: trailers`) is the same.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::{
    HeaderMap, Request, Response, Version,
    body::{Bytes, Frame, Incoming},
    service::service_fn,
};
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

/// A gRPC message: the 5-byte prefix (not compressed, length) and the payload.
fn message(payload: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

fn trailers(status: u32) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", status.into());
    t.insert("grpc-message", "done".parse().unwrap());
    t
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct GrpcBackend {
    addr: SocketAddr,
    calls: Arc<AtomicU32>,
    connections: Arc<AtomicU32>,
}

/// An HTTP/2 (prior knowledge) server. `/Unary`: one message and trailers; `/Stream`: five
/// messages 20 ms apart, then trailers. `unavailable`: every call gets a trailers-only 14.
async fn grpc_backend(name: &'static str, unavailable: bool) -> GrpcBackend {
    grpc_backend_tls(name, unavailable, None).await
}

/// As [`grpc_backend`], over TLS when `tls` is given.
async fn grpc_backend_tls(
    name: &'static str,
    unavailable: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> GrpcBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = GrpcBackend {
        addr: listener.local_addr().unwrap(),
        calls: Arc::default(),
        connections: Arc::default(),
    };
    let (calls, connections) = (b.calls.clone(), b.connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let calls = calls.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(req.version(), Version::HTTP_2, "the upstream speaks h2");
                        assert_eq!(req.headers()["te"], "trailers", "te: trailers reaches gRPC");
                        let path = req.uri().path().to_string();
                        let _ = req.into_body().collect().await;
                        let mut r: Response<Body> = if unavailable {
                            // Trailers-only: the status in the headers, no body.
                            let mut r = Response::new(Full::new(Bytes::new()).boxed());
                            r.headers_mut().insert("grpc-status", 14.into());
                            r
                        } else if path == "/Stream" {
                            let (tx, rx) =
                                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
                            tokio::spawn(async move {
                                for i in 0..5 {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    let m = message(format!("{name} part {i}").as_bytes());
                                    let _ = tx.send(Ok(Frame::data(m))).await;
                                }
                                let _ = tx.send(Ok(Frame::trailers(trailers(0)))).await;
                            });
                            let stream = tokio_stream_from(rx);
                            Response::new(StreamBody::new(stream).boxed())
                        } else {
                            let body = Full::new(message(name.as_bytes()))
                                .with_trailers(async { Some(Ok(trailers(0))) });
                            Response::new(body.boxed())
                        };
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = h2.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
            });
        }
    });
    b
}

/// A receiver as a stream of frames, without pulling in tokio-stream.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn proxy(backends: &[SocketAddr], retry: &str) -> SocketAddr {
    proxy_with(backends, retry, "h2c", "").await
}

/// `protocol`: the pool's; `sections`: more of the service's sections (TLS).
async fn proxy_with(
    backends: &[SocketAddr],
    retry: &str,
    protocol: &str,
    sections: &str,
) -> SocketAddr {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\n[[service]]\nname = \"grpc\"\nvip = \"127.0.0.1:1\"\n\
         mode = \"http\"\n[service.http]\nattempt_header = \"x-understudy-attempts\"\n\
         [service.retry]\n{retry}\n[service.circuit]\nconsecutive_failures = 1000\n{sections}\n\
         [[service.route]]\npools = [\"rpc\"]\n[[pool]]\nname = \"rpc\"\nprotocol = \"{protocol}\"\n"
    );
    for b in backends {
        text.push_str(&format!("[[pool.backend]]\naddress = \"{b}\"\n"));
    }
    let config = Config::parse(std::path::Path::new("h2-test.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let availability = new_availability();
    let members = backends
        .iter()
        .map(|&b| MemberView::new(b, 0, 1, true, true))
        .collect();
    availability
        .write()
        .unwrap()
        .insert("rpc".into(), Arc::new(PoolView::new(members)));
    let service = ServiceProxy::new(
        &config.services[0],
        availability,
        None,
        None,
        L7Metrics::default(),
        &Arc::new(understudy::l7::auth::Credentials::new(&config.gateway)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(l7::serve(
        listener,
        Arc::new(ArcSwap::from_pointee(service)),
    ));
    addr
}

type H2Client = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn h2_client() -> H2Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One call: the messages' payloads, the trailers' `grpc-status` (or the headers' for a
/// trailers-only answer), and the attempts.
async fn call(c: &H2Client, proxy: SocketAddr, method: &str) -> (Vec<String>, Option<String>, u32) {
    let req = Request::post(format!("http://{proxy}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message(b"request")))
        .unwrap();
    let resp = c.request(req).await.expect("the proxy answers");
    assert_eq!(resp.version(), Version::HTTP_2);
    let attempts = resp
        .headers()
        .get("x-understudy-attempts")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let mut status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = resp.into_body();
    let mut messages = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            // One message per frame here (the backend sends them so, and they are small).
            messages.push(String::from_utf8_lossy(&d[5..]).into_owned());
        } else if let Some(t) = frame.trailers_ref() {
            status = t
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string());
        }
    }
    (messages, status, attempts)
}

#[tokio::test]
async fn a_unary_call_and_a_stream_pass_through_h2c_with_their_trailers() {
    let b = grpc_backend("be", false).await;
    let p = proxy(&[b.addr], "").await;
    let c = h2_client();
    let (messages, status, _) = call(&c, p, "Unary").await;
    assert_eq!(
        (messages, status.as_deref()),
        (vec!["be".to_string()], Some("0"))
    );
    let (messages, status, _) = call(&c, p, "Stream").await;
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert_eq!(messages[4], "be part 4");
    assert_eq!(status.as_deref(), Some("0"), "the trailers came through");

    // Concurrent calls multiplex over the pool's HTTP/2 connection.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { call(&c, p, "Stream").await })
        })
        .collect();
    for t in calls {
        assert_eq!(t.await.unwrap().1.as_deref(), Some("0"));
    }
    assert_eq!(b.calls.load(Ordering::SeqCst), 22);
    assert_eq!(
        b.connections.load(Ordering::SeqCst),
        1,
        "22 calls, 20 at once, over one upstream connection"
    );
}

#[tokio::test]
async fn an_unavailable_backend_is_retried_on_another_when_the_route_allows_it() {
    let bad = grpc_backend("bad", true).await;
    let good = grpc_backend("good", false).await;
    let p = proxy(
        &[bad.addr, good.addr],
        "non_idempotent = true\nbudget_ratio = 1.0",
    )
    .await;
    let c = h2_client();
    for _ in 0..10 {
        let (messages, status, _) = call(&c, p, "Unary").await;
        assert_eq!(
            (messages, status.as_deref()),
            (vec!["good".to_string()], Some("0"))
        );
    }
    assert!(
        bad.calls.load(Ordering::SeqCst) >= 1,
        "some calls tried bad first"
    );

    // By default a gRPC call (a POST) that reached a backend is not retried: the client gets
    // the UNAVAILABLE.
    let bad = grpc_backend("bad", true).await;
    let good = grpc_backend("good", false).await;
    let p = proxy(&[bad.addr, good.addr], "").await;
    let mut unavailable = 0;
    for _ in 0..10 {
        let (_, status, attempts) = call(&c, p, "Unary").await;
        assert_eq!(attempts, 1);
        if status.as_deref() == Some("14") {
            unavailable += 1;
        }
    }
    assert_eq!(unavailable, bad.calls.load(Ordering::SeqCst));
    assert!(unavailable >= 1);
}

/// A TLS server config for `name`'s self-signed certificate offering `alpn`; and its PEM files
/// (certificate, key) under `dir`.
fn tls_server(
    dir: &std::path::Path,
    name: &str,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::TlsAcceptor,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let key = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
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
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        cert_path,
        key_path,
    )
}

#[tokio::test]
async fn a_call_passes_through_tls_with_alpn_h2_on_both_sides() {
    let dir = std::env::temp_dir().join(format!("understudy-h2-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for protocol in ["h2", "auto"] {
        let (backend_tls, backend_ca, _) = tls_server(&dir, "backend.internal", &[b"h2"]);
        let (_, proxy_cert, proxy_key) = tls_server(&dir, "grpc.example", &[]);
        let b = grpc_backend_tls("tls-be", false, Some(backend_tls)).await;
        let p = proxy_with(
            &[b.addr],
            "",
            protocol,
            &format!(
                "[service.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
                 [service.upstream_tls]\nca_file = \"{}\"\nsni = \"backend.internal\"\n",
                proxy_cert.display(),
                proxy_key.display(),
                backend_ca.display()
            ),
        )
        .await;
        // The client: TLS to the proxy with ALPN h2, then HTTP/2 over it.
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&proxy_cert).unwrap();
        for c in rustls_pemfile_certs(&pem) {
            roots.add(c).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(p).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("grpc.example".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        for method in ["Unary", "Stream"] {
            let req = Request::post(format!("https://grpc.example/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(message(b"request")))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let mut body = resp.into_body();
            let (mut messages, mut status) = (0, None);
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap();
                if frame.is_data() {
                    messages += 1;
                } else if let Some(t) = frame.trailers_ref() {
                    status = t
                        .get("grpc-status")
                        .map(|v| v.to_str().unwrap().to_string());
                }
            }
            let want = if method == "Unary" { 1 } else { 5 };
            assert_eq!(
                (messages, status.as_deref()),
                (want, Some("0")),
                "{protocol} {method}"
            );
        }
        assert_eq!(
            b.calls.load(Ordering::SeqCst),
            2,
            "{protocol}: the backend saw HTTP/2 over TLS"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The DER certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}
