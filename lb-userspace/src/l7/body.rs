//! Request and response bodies. A request body is either kept whole (small enough for the retry
//! buffer, so every attempt can send it) or streamed to the first attempt that reaches a
//! backend. A streamed body of unknown length (HTTP/2 and gRPC clients send no
//! `content-length`) is recorded as it streams, up to the retry buffer: if it ended within
//! that, a later attempt replays the recording, as Envoy's per-request buffer does; past it,
//! the recording is dropped and the body can no longer be retried.
//! A streamed body stays with the proxy until an attempt actually polls it, so a try
//! that fails to connect leaves it intact for the next backend. The proxy can wait for a
//! streamed body to end ([`RequestBody::sent`]): the backend's time to answer starts there.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

use super::circuit::Permit;

/// The body type the proxy sends and returns.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A client's body as the attempts see it.
pub enum RequestBody {
    /// Kept whole: sent again on every attempt.
    Kept(Bytes),
    /// Streamed once; `None` inside once an attempt took it.
    Stream(Arc<Slot>),
}

/// Where a streamed body waits until an attempt polls it.
pub struct Slot {
    body: Mutex<Option<Incoming>>,
    taken: AtomicBool,
    /// The body ended (or failed): all of it went to the backend.
    ended: AtomicBool,
    ended_notify: Notify,
    /// The data sent so far and the room left, while it fits (see [`RequestBody::recorded`]).
    recording: Mutex<Option<Recording>>,
    /// Set when the body ended whole, and within the recording's limit.
    replayable: AtomicBool,
}

struct Recording {
    frames: Vec<Bytes>,
    room: usize,
    /// The retry buffers' memory this recording holds.
    _reserved: super::limits::Reserved<'static>,
}

impl Slot {
    fn end(&self, whole: bool) {
        let recorded = self.recording.lock().ok().is_some_and(|r| r.is_some());
        self.replayable.store(whole && recorded, Ordering::Release);
        self.ended.store(true, Ordering::Release);
        self.ended_notify.notify_waiters();
    }

    /// Records a frame that went to the backend; a frame past the room, or trailers, end the
    /// recording.
    fn record(&self, frame: &Frame<Bytes>) {
        let Ok(mut r) = self.recording.lock() else {
            return;
        };
        let fits = match (r.as_mut(), frame.data_ref()) {
            (Some(rec), Some(data)) if data.len() <= rec.room => {
                rec.room -= data.len();
                rec.frames.push(data.clone());
                true
            }
            _ => false,
        };
        if !fits {
            *r = None;
        }
    }

    /// The recorded body, when it ended whole within the limit.
    fn replay(&self) -> Option<Bytes> {
        if !self.replayable.load(Ordering::Acquire) {
            return None;
        }
        let r = self.recording.lock().ok()?;
        let rec = r.as_ref()?;
        let mut all = Vec::with_capacity(rec.frames.iter().map(Bytes::len).sum());
        for f in &rec.frames {
            all.extend_from_slice(f);
        }
        Some(all.into())
    }
}

impl RequestBody {
    pub fn stream(body: Incoming) -> RequestBody {
        RequestBody::with_recording(body, None)
    }

    /// A streamed body recorded up to `limit` bytes, held in `reserved` of the retry buffers,
    /// so that it can be replayed if it ends within the limit.
    pub fn recorded(
        body: Incoming,
        limit: usize,
        reserved: super::limits::Reserved<'static>,
    ) -> RequestBody {
        RequestBody::with_recording(
            body,
            Some(Recording {
                frames: Vec::new(),
                room: limit,
                _reserved: reserved,
            }),
        )
    }

    fn with_recording(body: Incoming, recording: Option<Recording>) -> RequestBody {
        RequestBody::Stream(Arc::new(Slot {
            body: Mutex::new(Some(body)),
            taken: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            ended_notify: Notify::new(),
            recording: Mutex::new(recording),
            replayable: AtomicBool::new(false),
        }))
    }

    /// Resolves once the whole body has gone to a backend: at once for a kept body.
    pub async fn sent(&self) {
        let RequestBody::Stream(slot) = self else {
            return;
        };
        loop {
            let notified = slot.ended_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if slot.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Whether a later attempt can send the body again (or still send it for the first time).
    pub fn available(&self) -> bool {
        match self {
            RequestBody::Kept(_) => true,
            RequestBody::Stream(slot) => {
                !slot.taken.load(Ordering::Acquire) || slot.replayable.load(Ordering::Acquire)
            }
        }
    }

    /// Whether a later attempt can send it again: a kept body, or a recorded one that ended
    /// within its limit.
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Kept(_) => true,
            RequestBody::Stream(slot) => slot.replayable.load(Ordering::Acquire),
        }
    }

    /// The body for one attempt.
    pub fn for_attempt(&self) -> ProxyBody {
        match self {
            RequestBody::Kept(b) => full(b.clone()),
            RequestBody::Stream(slot) if slot.taken.load(Ordering::Acquire) => {
                full(slot.replay().unwrap_or_default())
            }
            RequestBody::Stream(slot) => OnceBody {
                slot: slot.clone(),
                inner: None,
            }
            .boxed(),
        }
    }
}

/// Takes the body out of its slot on the first poll.
struct OnceBody {
    slot: Arc<Slot>,
    inner: Option<Incoming>,
}

impl Body for OnceBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.inner.is_none() {
            self.slot.taken.store(true, Ordering::Release);
            let taken = self.slot.body.lock().ok().and_then(|mut b| b.take());
            match taken {
                Some(b) => self.inner = Some(b),
                None => return Poll::Ready(None),
            }
        }
        let Some(b) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *b).poll_frame(cx);
        // (ended, whole): an error ends the body, but not whole.
        let (ended, whole) = match &polled {
            Poll::Ready(None) => (true, true),
            Poll::Ready(Some(Err(_))) => (true, false),
            Poll::Ready(Some(Ok(_))) => (b.is_end_stream(), true),
            Poll::Pending => (false, false),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.slot.record(frame);
        }
        if ended {
            self.slot.end(whole);
        }
        polled
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => self
                .slot
                .body
                .lock()
                .ok()
                .and_then(|b| b.as_ref().map(Body::size_hint))
                .unwrap_or_default(),
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// A response body that keeps something until the body ends (or is dropped): the backend's
/// circuit permit, so `max_requests` counts streaming responses too ([`Guarded`]), or what the
/// request filters hold, such as a concurrency slot.
pub struct Holding<B, T> {
    pub inner: B,
    pub held: Option<T>,
}

/// An upstream response body holding its backend's circuit permit.
pub type Guarded = Holding<Incoming, Permit>;

impl<B, T> Body for Holding<B, T>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
    T: Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.held = None;
        }
        polled
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
