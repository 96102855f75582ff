//! The L7 proxy for `mode = "http"` services: HTTP/1.1 and HTTP/2 (ALPN over TLS, prior
//! knowledge in clear text) on hyper, TLS termination with SNI on tokio-rustls, and pooled
//! upstream HTTP/1.1 connections. Requests take the first route they match, served from a chain
//! of pools (`[[pool]]`s, or the service's own backends). It shares the pools, tiers, health and
//! fallback ordering of the L4 services through [`availability`], which the map writer publishes, and it reports the
//! backends its circuits eject to the same health engine.
//!
//! - [`route`]: which route a request takes, and the chain of pools that serves it;
//!   [`shift`]: moving a route between those pools on errors and latency.
//! - [`filter`]: the request-filter chain that runs before a backend is chosen (auth and rate
//!   limits plug in here).
//! - [`select`]: the order a request tries backends in.
//! - [`decide`]: what an attempt's outcome means: retry, and evidence against the backend.
//! - [`proxy`]: the retry loop and the errors clients see.
//! - [`circuit`] and [`budget`]: per-backend limits and ejection; the retry budget.
//! - [`limits`]: connections per listener, idle clients, memory in retry buffers.
//! - [`access`]: the access log; [`upgrade`]: WebSocket and other HTTP/1.1 upgrades.
//! - [`headers`], [`body`], [`tls`], [`connector`], [`metrics`].

pub mod access;
pub mod auth;
pub mod availability;
pub mod body;
pub mod budget;
pub mod circuit;
pub mod connector;
pub mod decide;
pub mod filter;
pub mod headers;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod select;
pub mod shift;
pub mod tls;
pub mod upgrade;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use hyper::{Request, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
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

/// HTTP/2 connections are pinged this often when quiet, and closed when a ping goes unanswered
/// for [`H2_PING_TIMEOUT`]: a vanished peer does not hold its connection.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a connection told to close (idle) may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Set to `true` to drain a listener: it stops accepting, and its connections finish what they
/// are doing (up to `drain_timeout`) and close.
pub type Drain = tokio::sync::watch::Receiver<bool>;

/// Accepts connections until the task is aborted, at most `max_connections` at once.
pub async fn serve(listener: TcpListener, current: Current) {
    let (_never, drain) = tokio::sync::watch::channel(false);
    serve_until(listener, current, drain).await
}

/// As [`serve`], until `drain` turns true: then the listening socket is closed at once (new
/// connections are refused), HTTP/2 connections get a GOAWAY, HTTP/1 connections close after
/// the response in progress (which carries `Connection: close`) or at once when idle, and any
/// connection still open after `drain_timeout` is closed.
pub async fn serve_until(listener: TcpListener, current: Current, mut drain: Drain) {
    let mut accept_errors = limits::AcceptErrors::default();
    loop {
        let proxy = current.load_full();
        let connections = proxy.carried.connections.clone();
        let accepted = async {
            let slot = connections
                .acquire(
                    || current.load().settings.max_connections,
                    || proxy.listener_full(),
                )
                .await;
            (slot, listener.accept().await)
        };
        let (slot, accepted) = tokio::select! {
            biased;
            () = async { let _ = drain.wait_for(|d| *d).await; } => return,
            a = accepted => a,
        };
        let (stream, client) = match accepted {
            Ok(c) => c,
            Err(e) => {
                accept_errors.back_off(&proxy.name, &e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            client,
            current.clone(),
            slot,
            drain.clone(),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    client: SocketAddr,
    current: Current,
    _slot: limits::Slot,
    mut drain: Drain,
) {
    let proxy = current.load_full();
    let info = Arc::new(ClientInfo::new(client, &proxy.settings.trusted_proxies));
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
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let io = match &proxy.tls {
        None => Either::Left(stream),
        Some(acceptor) => {
            match tokio::time::timeout(proxy.settings.handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => Either::Right(Box::new(tls)),
                Ok(Err(e)) => {
                    debug!(%client, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%client, "TLS handshake timed out");
                    proxy.client_timeout("handshake");
                    return;
                }
            }
        }
    };
    let last = limits::LastActivity::new();
    // With upgrades: a 101 hands the connection to the tunnel (see [`upgrade`]).
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(limits::Activity::new(io, last.clone())),
        service,
    );
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        () = last.idle_for(proxy.settings.client_idle_timeout) => {
            debug!(%client, "closing an idle client connection");
            proxy.client_timeout("idle");
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        () = async { let _ = drain.wait_for(|d| *d).await; } => {
            conn.as_mut().graceful_shutdown();
            let limit = proxy.settings.drain_timeout;
            match tokio::time::timeout(limit, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(service = %proxy.name, %client, drain_timeout = ?limit, "closing a connection still busy at the end of the drain");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = served {
        debug!(%client, error = %e, "connection ended with an error");
    }
}
