//! The access log (`[service.access_log]`): one record per request, written when the response
//! body has gone out (or the client went away), so it carries the bytes sent and the total time.
//!
//! The fields follow HAProxy's HTTP log where the proxy can measure the same thing:
//! - `tq_us`: from the request head to the start of the first attempt (filters, reading a kept
//!   body), HAProxy's `Tq`;
//! - `tr_us`: from the start of the last attempt to its response headers, `Tr`;
//! - `ta_us`: from the request head to the end of the response body, `Ta`.
//!
//! HAProxy's `Tw` (queueing) and `Tc` (connect) have no counterpart: the proxy queues nothing,
//! and hyper's pooled client connects inside the attempt, so the connect is part of `tr_us`.
//! Records go to the daemon's log under target `access` (human, or JSON with `--log-json`), or
//! as JSON lines to the section's `file`.

use std::{
    fs::File,
    io::Write as _,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use serde::Serialize;
use tracing::{info, warn};

use super::body::ProxyBody;
use crate::config::AccessLog;

/// Where a service's records go, and which requests are logged.
pub struct AccessLogger {
    sample: f64,
    file: Option<Mutex<File>>,
}

impl AccessLogger {
    pub fn open(cfg: &AccessLog) -> Result<AccessLogger, String> {
        let file = match &cfg.file {
            None => None,
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        let hint = if e.kind() == std::io::ErrorKind::NotFound {
                            " (create its directory; the packaged unit's LogsDirectory makes /var/log/understudy)"
                        } else {
                            ""
                        };
                        format!("cannot open the access log {}: {e}{hint}", path.display())
                    })?,
            )),
        };
        Ok(AccessLogger {
            sample: cfg.sample,
            file,
        })
    }

    /// Whether this request is logged.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    fn write(&self, r: &Record) {
        match &self.file {
            Some(f) => {
                let mut line = serde_json::to_vec(r).unwrap_or_default();
                line.push(b'\n');
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                // One write per record: with O_APPEND the line lands whole.
                if let Err(e) = f.write_all(&line) {
                    warn!(error = %e, "writing the access log failed");
                }
            }
            None => info!(
                target: "access",
                client = %r.client,
                service = %r.service,
                route = %r.route,
                consumer = r.consumer.as_deref().unwrap_or("-"),
                pool = r.pool.as_deref().unwrap_or("-"),
                backend = r.backend.as_deref().unwrap_or("-"),
                method = %r.method,
                path = %r.path,
                status = r.status,
                attempts = r.attempts,
                tried = %r.tried.join(","),
                bytes_in = r.bytes_in,
                bytes_out = r.bytes_out,
                tq_us = r.tq_us,
                tr_us = r.tr_us,
                ta_us = r.ta_us,
                complete = r.complete,
                "request"
            ),
        }
    }
}

/// One request's record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub client: SocketAddr,
    pub service: String,
    pub route: String,
    /// The authenticated consumer (routes with `auth`).
    pub consumer: Option<String>,
    /// The pool and backend that gave the response; absent when none did.
    pub pool: Option<String>,
    pub backend: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub attempts: u32,
    /// Every backend tried, in order.
    pub tried: Vec<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub tq_us: u64,
    pub tr_us: u64,
    pub ta_us: u64,
    /// Whether the response body went out whole.
    pub complete: bool,
}

/// A response body that writes the request's record when it ends or is dropped.
pub struct Logged {
    inner: ProxyBody,
    record: Option<Record>,
    started: Instant,
    logger: Arc<AccessLogger>,
}

impl Logged {
    pub fn new(
        inner: ProxyBody,
        record: Record,
        started: Instant,
        logger: Arc<AccessLogger>,
    ) -> Logged {
        Logged {
            inner,
            record: Some(record),
            started,
            logger,
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut r) = self.record.take() {
            r.complete = complete;
            r.ta_us = micros(self.started.elapsed());
            self.logger.write(&r);
        }
    }
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

impl Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(r)) = (frame.data_ref(), self.record.as_mut()) {
                    r.bytes_out += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body never polled to its end: the client left, or the response had no body.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

/// The path and query as logged: the value of the query parameter that carries API keys
/// (`[gateway] api_key_query`) is replaced, so the log never holds a credential.
pub fn redact(path_and_query: &str, key_param: Option<&str>) -> String {
    key_param
        .and_then(|p| super::headers::with_query_param(path_and_query, p, Some("REDACTED")))
        .unwrap_or_else(|| path_and_query.to_string())
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn the_key_parameter_is_redacted_and_the_rest_kept() {
        assert_eq!(
            super::redact("/a?x=1&api_key=s3cret&y=2", Some("api_key")),
            "/a?x=1&api_key=REDACTED&y=2"
        );
        assert_eq!(super::redact("/a?x=1", Some("api_key")), "/a?x=1");
        assert_eq!(super::redact("/a?api_key=k", None), "/a?api_key=k");
    }
}
