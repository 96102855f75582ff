//! Bounds on what clients can hold: connections per listener (HAProxy's `maxconn`), idle
//! connections ([`Activity`]), and memory in retry buffers across all services
//! ([`BufferBudget`]).
//!
//! - **Connections.** A listener at `max_connections` stops accepting until one closes, as
//!   HAProxy does: new clients wait in the kernel's accept queue instead of being refused, and
//!   the daemon keeps file descriptors for its health probes and admin listener.
//! - **Idle.** A connection that moves no byte either way for `client_idle_timeout` is closed
//!   gracefully (HAProxy's `timeout client`, nginx's `keepalive_timeout`). Bytes of a long
//!   download or upload count as activity, so only truly idle connections go.
//! - **Retry buffers.** Bodies kept for retries hold at most [`RETRY_BUFFER_TOTAL`] bytes in all;
//!   past it, requests stream to one backend without a retry.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

/// What an accept loop does when `accept` fails: out of file descriptors (`EMFILE`, `ENFILE`)
/// or buffers, retrying at once would spin a core. It waits, longer for descriptors, and warns
/// at most once a second.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    pub async fn back_off(&mut self, listener: &str, e: &io::Error) {
        let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let hint = if out_of_fds {
                "out of file descriptors: lower max_connections or raise LimitNOFILE"
            } else {
                "retrying"
            };
            tracing::warn!(listener, error = %e, suppressed = self.suppressed, hint, "accept failed");
            self.last_warning = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let wait = if out_of_fds { 100 } else { 10 };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Memory all services' retry buffers may hold at once.
pub const RETRY_BUFFER_TOTAL: u64 = 256 << 20;

/// Open connections of one listener, kept across reloads.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    open: AtomicUsize,
    closed: Notify,
}

/// One open connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_one();
    }
}

impl ConnectionCount {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until fewer than `max()` connections are open, then takes a place. `max` is read
    /// again after every close, so a reload that raises it applies at once. `on_full` runs once
    /// each time the listener finds itself full.
    pub async fn acquire(
        self: &Arc<Self>,
        max: impl Fn() -> usize,
        on_full: impl FnOnce(),
    ) -> Slot {
        let mut on_full = Some(on_full);
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open = self.open.load(Ordering::Acquire);
            if open < max() {
                self.open.fetch_add(1, Ordering::AcqRel);
                return Slot(self.clone());
            }
            if let Some(f) = on_full.take() {
                f();
            }
            notified.await;
        }
    }
}

/// Milliseconds since a fixed start, for cheap activity stamps.
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// When a connection last moved a byte.
#[derive(Debug)]
pub struct LastActivity {
    epoch: Instant,
    at_ms: AtomicU64,
}

impl LastActivity {
    pub fn new() -> Arc<LastActivity> {
        Arc::new(LastActivity {
            epoch: Instant::now(),
            at_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.at_ms.store(now_ms(self.epoch), Ordering::Relaxed);
    }

    /// How long the connection has been idle.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(now_ms(self.epoch).saturating_sub(self.at_ms.load(Ordering::Relaxed)))
    }

    /// Resolves once the connection has been idle for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A stream that stamps [`LastActivity`] whenever bytes move.
pub struct Activity<T> {
    inner: T,
    last: Arc<LastActivity>,
}

impl<T> Activity<T> {
    pub fn new(inner: T, last: Arc<LastActivity>) -> Self {
        last.touch();
        Activity { inner, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The process-wide budget for retry buffers: a semaphore of bytes, so a reservation is given
/// back when its guard drops.
#[derive(Debug)]
pub struct BufferBudget {
    bytes: tokio::sync::Semaphore,
    limit: u64,
}

/// Bytes reserved in a [`BufferBudget`], given back on drop.
pub type Reserved<'a> = tokio::sync::SemaphorePermit<'a>;

impl BufferBudget {
    pub const fn new(limit: u64) -> BufferBudget {
        BufferBudget {
            bytes: tokio::sync::Semaphore::const_new(limit as usize),
            limit,
        }
    }

    /// Reserves `bytes`, or `None` when the budget cannot hold them.
    pub fn reserve(&self, bytes: u64) -> Option<Reserved<'_>> {
        let n = u32::try_from(bytes).ok()?;
        self.bytes.try_acquire_many(n).ok()
    }

    pub fn held(&self) -> u64 {
        self.limit - self.bytes.available_permits() as u64
    }
}

/// The one budget every service's proxy reserves from.
pub static RETRY_BUFFERS: BufferBudget = BufferBudget::new(RETRY_BUFFER_TOTAL);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_budget_refuses_past_its_limit_and_frees_on_drop() {
        let b = BufferBudget::new(100);
        let first = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none(), "60 + 41 > 100");
        let second = b.reserve(40).unwrap();
        assert_eq!(b.held(), 100);
        drop(first);
        assert_eq!(b.held(), 40);
        drop(second);
        assert!(b.reserve(100).is_some());
    }

    #[tokio::test]
    async fn a_full_listener_waits_for_a_close() {
        let count = Arc::new(ConnectionCount::default());
        let a = count.acquire(|| 1, || {}).await;
        let waiting = {
            let count = count.clone();
            tokio::spawn(async move {
                let mut full = false;
                let _b = count.acquire(|| 1, || full = true).await;
                full
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second waits");
        assert_eq!(count.open(), 1);
        drop(a);
        assert!(waiting.await.unwrap(), "it found the listener full first");
    }
}
