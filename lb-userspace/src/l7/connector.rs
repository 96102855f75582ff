//! The upstream connector: hyper-util's TCP connector with a per-backend cap on connections being
//! opened at once (`circuit.max_pending`). A request past the cap fails at once with
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

use hyper::Uri;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::net::TcpStream;
use tower_service::Service;

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
}

impl Limited {
    pub fn new(connect_timeout: Duration, max_pending: u32) -> Limited {
        let mut inner = HttpConnector::new();
        inner.set_connect_timeout(Some(connect_timeout));
        inner.set_nodelay(true);
        Limited {
            inner,
            pending: Arc::default(),
            max: max_pending,
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
    type Response = TokioIo<TcpStream>;
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
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let result = connecting.await.map_err(Into::into);
            drop(guard);
            result
        })
    }
}
