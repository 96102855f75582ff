//! The L7 proxy for `mode = "http"` services: HTTP/1.1 and HTTP/2 (ALPN over TLS, prior
//! knowledge in clear text) on hyper, TLS termination with SNI on tokio-rustls, and pooled
//! upstream HTTP/1.1 connections. It shares the pools, tiers, health and fallback ordering of the
//! L4 services through [`availability`], which the map writer publishes, and it reports the
//! backends its circuits eject to the same health engine.
//!
//! - [`select`]: the order a request tries backends in.
//! - [`decide`]: what an attempt's outcome means: retry, and evidence against the backend.
//! - [`proxy`]: the retry loop and the errors clients see.
//! - [`circuit`] and [`budget`]: per-backend limits and ejection; the retry budget.
//! - [`headers`], [`body`], [`tls`], [`connector`], [`metrics`].

pub mod availability;
pub mod body;
pub mod budget;
pub mod circuit;
pub mod connector;
pub mod decide;
pub mod headers;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod select;
pub mod tls;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use hyper::{Request, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

pub use headers::ClientInfo;
pub use proxy::{Carried, Ejection, ServiceProxy};

/// Per-connection HTTP/1 buffer limit, both towards clients and towards backends (hyper's
/// default is about 400 KiB). A streamed body holds at most about this much per side, as HAProxy
/// holds `tune.bufsize` (16 KiB).
pub const BUFFER: usize = 64 * 1024;

/// The proxy a listener serves; swapped whole on reload, so requests in flight finish on the
/// config they started with.
pub type Current = Arc<ArcSwap<ServiceProxy>>;

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, current: Current) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, client, current.clone()));
    }
}

async fn connection(stream: TcpStream, client: SocketAddr, current: Current) {
    let proxy = current.load_full();
    let info = Arc::new(ClientInfo::new(client));
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let current = current.clone();
        let info = info.clone();
        async move {
            let proxy = current.load_full();
            Ok::<_, std::convert::Infallible>(proxy.handle(req, &info).await)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(BUFFER)
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.settings.header_timeout);
    let served = match &proxy.tls {
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
            Err(e) => {
                debug!(%client, error = %e, "TLS handshake failed");
                return;
            }
        },
    };
    if let Err(e) = served {
        debug!(%client, error = %e, "connection ended with an error");
    }
}
