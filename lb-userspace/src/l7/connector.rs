//! The upstream connector: hyper-util's TCP connector with a per-backend cap on connections being
//! opened at once (`circuit.max_pending`), and TLS to the backend when `[service.upstream_tls]`
//! asks for it (tokio-rustls, ALPN http/1.1). A request past the cap fails at once with
//! [`PendingFull`] and moves on to the next backend instead of queueing behind a slow one.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use hyper::{
    Uri,
    rt::{Read, ReadBufCursor, Write},
};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::either::Either;
use tower_service::Service;

use crate::{
    config::TlsCheck,
    health::probe::{server_name, tls_config},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Too many connections to this backend are being opened already.
#[derive(Debug)]
pub struct PendingFull;

impl fmt::Display for PendingFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many pending connections to the backend")
    }
}

impl std::error::Error for PendingFull {}

/// Whether an error (or one of its sources) is [`PendingFull`].
pub fn is_pending_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<PendingFull>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[derive(Clone)]
pub struct Limited {
    inner: HttpConnector,
    pending: Arc<Mutex<HashMap<String, u32>>>,
    max: u32,
    tls: Option<(TlsConnector, Option<String>)>,
}

impl Limited {
    /// `alpn`: the protocols offered over TLS, preferred first (`h2`, `http/1.1`).
    pub fn new(
        connect_timeout: Duration,
        max_pending: u32,
        tls: Option<&TlsCheck>,
        alpn: &[&[u8]],
    ) -> Result<Limited, String> {
        let mut inner = HttpConnector::new();
        inner.set_connect_timeout(Some(connect_timeout));
        inner.set_nodelay(true);
        let tls = match tls {
            None => None,
            Some(t) => {
                let mut config = tls_config(t)?;
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                Some((TlsConnector::from(Arc::new(config)), t.sni.clone()))
            }
        };
        Ok(Limited {
            inner,
            pending: Arc::default(),
            max: max_pending,
            tls,
        })
    }
}

/// A connection to a backend, in clear or in TLS, as hyper's I/O (a local type, so that it can
/// tell the pool it is a [`Connection`]).
pub struct UpstreamIo(TokioIo<Either<TcpStream, Box<TlsStream<TcpStream>>>>);

impl Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for UpstreamIo {
    /// Says when TLS negotiated `h2`, so a client offering both protocols speaks HTTP/2.
    fn connected(&self) -> Connected {
        match self.0.inner() {
            Either::Right(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

/// Frees a pending-connection slot when dropped.
struct Pending {
    map: Arc<Mutex<HashMap<String, u32>>>,
    key: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Service<Uri> for Limited {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let key = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let guard = {
            let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(key.clone()).or_default();
            if *n >= self.max {
                return Box::pin(async { Err(Box::new(PendingFull) as BoxError) });
            }
            *n += 1;
            Pending {
                map: self.pending.clone(),
                key,
            }
        };
        let target = uri.authority().and_then(|a| a.as_str().parse().ok());
        let connecting = self.inner.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let result = async {
                let tcp = connecting.await?.into_inner();
                let Some((connector, sni)) = tls else {
                    return Ok(UpstreamIo(TokioIo::new(Either::Left(tcp))));
                };
                let target = target.ok_or("the backend address is not an IP and port")?;
                let name = server_name(sni.as_deref(), target)?;
                let stream = connector.connect(name, tcp).await?;
                Ok(UpstreamIo(TokioIo::new(Either::Right(Box::new(stream)))))
            }
            .await;
            drop(guard);
            result
        })
    }
}
