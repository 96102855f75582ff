//! HTTP/2 to the backends: pools with `protocol = "h2c"` behind the proxy, against hyper HTTP/2
//! servers on loopback that answer the way gRPC servers do (`application/grpc`, a length-prefixed
//! message, trailers with `grpc-status`). A unary call and a server stream pass with their
//! trailers; concurrent calls share one upstream connection; a trailers-only `UNAVAILABLE` is
//! retried on another backend when the route allows it, and passed on when it does not.
//!
//! The first tests speak the gRPC wire format by hand with hyper (to count frames and upstream
//! connections); the `tonic_*` tests make the same calls with a tonic client against tonic
//! servers (`tests/grpc`), through h2c and through TLS with ALPN h2 on both sides.

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

// gRPC with tonic on both ends: the client and the backends are tonic's, built from
// `tests/grpc` (the `understudy.test.Echo` service, generated without protoc).

mod tonic_echo {
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
    };

    use tonic::{Request, Response, Status};
    use understudy_grpc_test::{Hello, Reply, echo_server};

    /// A tonic backend named `name`; with `unavailable`, every call fails with UNAVAILABLE.
    pub struct Echo {
        pub name: &'static str,
        pub unavailable: bool,
        pub calls: Arc<AtomicU32>,
    }

    type Replies = Pin<Box<dyn futures_util::Stream<Item = Result<Reply, Status>> + Send>>;

    #[tonic::async_trait]
    impl echo_server::Echo for Echo {
        async fn say(&self, req: Request<Hello>) -> Result<Response<Reply>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.unavailable {
                return Err(Status::unavailable("draining"));
            }
            Ok(Response::new(Reply {
                backend: self.name.into(),
                text: format!("hello {}", req.into_inner().name),
            }))
        }

        type CountStream = Replies;

        async fn count(&self, req: Request<Hello>) -> Result<Response<Replies>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.unavailable {
                return Err(Status::unavailable("draining"));
            }
            let backend = self.name.to_string();
            let n = req.into_inner().count;
            let replies = (0..n).map(move |i| {
                Ok(Reply {
                    backend: backend.clone(),
                    text: i.to_string(),
                })
            });
            Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
        }
    }
}

struct TonicBackend {
    addr: std::net::SocketAddr,
    calls: Arc<AtomicU32>,
}

/// A tonic server on loopback, in clear (h2c) or with TLS (`tls`: certificate and key PEM).
async fn tonic_backend(
    name: &'static str,
    unavailable: bool,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> TonicBackend {
    let calls = Arc::new(AtomicU32::new(0));
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        server = server
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .unwrap();
    }
    let router = server.add_service(understudy_grpc_test::echo_server::EchoServer::new(
        tonic_echo::Echo {
            name,
            unavailable,
            calls: calls.clone(),
        },
    ));
    tokio::spawn(router.serve_with_incoming(incoming));
    TonicBackend { addr, calls }
}

fn hello(name: &str, count: u32) -> understudy_grpc_test::Hello {
    understudy_grpc_test::Hello {
        name: name.into(),
        count,
    }
}

/// A unary and a streaming call of `client`: the unary reply's (backend, text) and the stream's
/// texts.
async fn both_calls(
    client: &mut understudy_grpc_test::echo_client::EchoClient<tonic::transport::Channel>,
) -> ((String, String), Vec<String>) {
    let r = client.say(hello("proxy", 0)).await.unwrap().into_inner();
    let mut stream = client.count(hello("proxy", 5)).await.unwrap().into_inner();
    let mut texts = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        texts.push(m.text);
    }
    ((r.backend, r.text), texts)
}

#[tokio::test]
async fn tonic_calls_pass_through_h2c_and_unavailable_is_retried_elsewhere() {
    let b = tonic_backend("be", false, None).await;
    let p = proxy(&[b.addr], "").await;
    let mut client = understudy_grpc_test::echo_client::EchoClient::connect(format!("http://{p}"))
        .await
        .unwrap();
    let ((backend, text), stream) = both_calls(&mut client).await;
    assert_eq!((backend.as_str(), text.as_str()), ("be", "hello proxy"));
    assert_eq!(stream, ["0", "1", "2", "3", "4"]);
    assert_eq!(b.calls.load(Ordering::SeqCst), 2);

    // UNAVAILABLE from one backend: retried on the other when the route allows retrying calls
    // that reached a backend; passed on to the client otherwise.
    let bad = tonic_backend("bad", true, None).await;
    let good = tonic_backend("good", false, None).await;
    let p = proxy(
        &[bad.addr, good.addr],
        "non_idempotent = true\nbudget_ratio = 1.0",
    )
    .await;
    let mut client = understudy_grpc_test::echo_client::EchoClient::connect(format!("http://{p}"))
        .await
        .unwrap();
    for _ in 0..10 {
        let r = client.say(hello("x", 0)).await.unwrap().into_inner();
        assert_eq!(r.backend, "good");
    }
    assert!(
        bad.calls.load(Ordering::SeqCst) >= 1,
        "some calls tried bad first"
    );

    let bad = tonic_backend("bad", true, None).await;
    let good = tonic_backend("good", false, None).await;
    let p = proxy(&[bad.addr, good.addr], "").await;
    let mut client = understudy_grpc_test::echo_client::EchoClient::connect(format!("http://{p}"))
        .await
        .unwrap();
    let mut unavailable = 0;
    for _ in 0..10 {
        match client.say(hello("x", 0)).await {
            Ok(r) => assert_eq!(r.into_inner().backend, "good"),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s}");
                unavailable += 1;
            }
        }
    }
    assert!(unavailable >= 1);
    assert_eq!(unavailable, bad.calls.load(Ordering::SeqCst));
}

#[tokio::test]
async fn tonic_calls_pass_through_tls_with_alpn_h2_on_both_sides() {
    let dir = std::env::temp_dir().join(format!("understudy-tonic-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, backend_cert, backend_key) = tls_server(&dir, "backend.internal", &[b"h2"]);
    let (_, proxy_cert, proxy_key) = tls_server(&dir, "grpc.example", &[]);
    let b = tonic_backend(
        "tls-be",
        false,
        Some((
            std::fs::read(&backend_cert).unwrap(),
            std::fs::read(&backend_key).unwrap(),
        )),
    )
    .await;
    let p = proxy_with(
        &[b.addr],
        "",
        "h2",
        &format!(
            "[service.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
             [service.upstream_tls]\nca_file = \"{}\"\nsni = \"backend.internal\"\n",
            proxy_cert.display(),
            proxy_key.display(),
            backend_cert.display()
        ),
    )
    .await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&proxy_cert).unwrap(),
        ))
        .domain_name("grpc.example");
    let channel = tonic::transport::Channel::from_shared(format!("https://{p}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = understudy_grpc_test::echo_client::EchoClient::new(channel);
    let ((backend, text), stream) = both_calls(&mut client).await;
    assert_eq!((backend.as_str(), text.as_str()), ("tls-be", "hello proxy"));
    assert_eq!(stream.len(), 5);
    assert_eq!(
        b.calls.load(Ordering::SeqCst),
        2,
        "the backend saw both calls over TLS"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
