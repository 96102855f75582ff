//! What the operations tests do from outside the daemon: the CLI and the admin API from the
//! balancer's namespace (`nsenter --net`, so pinned state under /sys/fs/bpf stays visible), the
//! status page in headless Chromium, and backends that say who answered.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;

use crate::{EchoServer, Netns, Topology};

/// Runs `BIN ARGS` (the `understudy` binary) in `lb`; returns success, stdout and stderr.
pub fn cli(bin: &str, lb: &Netns, args: &[&str]) -> (bool, String, String) {
    let out = lb
        .command_net_only(bin)
        .args(args)
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Debian's headless Chromium in `ns` (from its own fresh profile), dumping the DOM of `url`
/// after `extra` flags; returns the DOM. Panics with Chromium's stderr when it fails.
pub fn chromium_dom(ns: &Netns, url: &str, extra: &[&str]) -> String {
    let profile =
        std::env::temp_dir().join(format!("{}-chromium-{}", ns.name(), std::process::id()));
    let out = ns
        .command("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium (installed by cargo xtask setup)");
    std::fs::remove_dir_all(&profile).ok();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One admin request to the default listener, from inside `lb` (its loopback).
pub fn admin(lb: &Netns, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    lb.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(admin_request(token, method, path))
    })
    .expect("admin request")
}

/// The admin listener's default address (`understudy::config::DEFAULT_ADMIN_LISTEN`).
pub const ADMIN_LISTEN: &str = "127.0.0.1:9180";

/// The header the admin guard asks of state-changing requests (`understudy::admin::guard`).
pub const ADMIN_CLIENT_HEADER: &str = "x-understudy-client";

/// One request as the CLI makes it: with the client header the admin guard asks of POSTs, and
/// the token as a bearer credential.
async fn admin_request(
    token: Option<&str>,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(ADMIN_CLIENT_HEADER, "understudy-tests")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    request(ADMIN_LISTEN.parse()?, method, path, &headers).await
}

/// One HTTP/1.1 request on a new connection to `to`, with a `Host` of `to` and `headers`;
/// returns the status and the body.
async fn request(
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(to).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, to.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET of `path` from `to` on a new connection, from the calling thread's namespace, given
/// up after `timeout`: the status and body, or why it failed.
pub fn http_get(to: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(async {
            match tokio::time::timeout(timeout, request(to, "GET", path, &[])).await {
                Ok(r) => r.map_err(|e| format!("{e:#}")),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        })
}

/// An echo server on port 8080 of every backend, greeting each connection with "beI\n", so a
/// client knows where it landed.
pub fn named_echo_servers(topo: &Topology) -> Vec<EchoServer> {
    (1..=topo.backends.len())
        .map(|i| {
            EchoServer::start_greeting(
                &topo.backends[i - 1],
                SocketAddr::new(topo.backend_addr(i, false), 8080),
                Some(format!("be{i}\n")),
            )
        })
        .collect()
}

/// An HTTP server on port 8080 of a backend namespace: answers "NAME LEN" (LEN: the request
/// body's length, counted as it streams) or the status it is told to.
pub struct HttpBackend {
    pub hits: Arc<AtomicU32>,
    pub status: Arc<AtomicU16>,
    /// Milliseconds each answer waits (0 by default).
    pub delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl HttpBackend {
    /// One on port 8080 of every backend of `topo`, answering "beI LEN".
    pub fn on_every_backend(topo: &Topology) -> Vec<HttpBackend> {
        (1..=topo.backends.len())
            .map(|i| {
                HttpBackend::start(
                    &topo.backends[i - 1],
                    SocketAddr::new(topo.backend_addr(i, false), 8080),
                    format!("be{i}"),
                )
            })
            .collect()
    }

    pub fn start(ns: &Netns, addr: SocketAddr, name: String) -> HttpBackend {
        let b = HttpBackend {
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
            stop: Arc::default(),
        };
        let (hits, status, stop) = (b.hits.clone(), b.status.clone(), b.stop.clone());
        let delay = b.delay_ms.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        ns.thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok((stream, _))) =
                        tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
                    else {
                        continue;
                    };
                    let (hits, status, name) = (hits.clone(), status.clone(), name.clone());
                    let delay = delay.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (hits, status, name) = (hits.clone(), status.clone(), name.clone());
                            let delay = delay.load(Ordering::SeqCst);
                            async move {
                                hits.fetch_add(1, Ordering::SeqCst);
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                let mut body = req.into_body();
                                let mut len = 0usize;
                                while let Some(Ok(frame)) = body.frame().await {
                                    len += frame.data_ref().map_or(0, |d| d.len());
                                }
                                let mut r =
                                    Response::new(Full::new(Bytes::from(format!("{name} {len}"))));
                                *r.status_mut() =
                                    hyper::StatusCode::from_u16(status.load(Ordering::SeqCst))
                                        .unwrap();
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("backend listening");
        b
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
