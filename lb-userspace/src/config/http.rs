//! Validation of an HTTP service's `[service.http]`, `[service.tls]`, `[service.retry]` and
//! `[service.circuit]`. The defaults are written next to each field; they follow Envoy where it
//! has one (three attempts like HAProxy's `retries 3`, 5xx retry codes, the 20% budget, consecutive
//! failures of five) and are chosen for fast failover where it does not.

use std::{path::PathBuf, time::Duration};

use hyper::http::HeaderName;
use toml::Spanned;

use super::{
    ConfigError,
    error::Locator,
    health::TlsCheck,
    health::{duration, duration_or_zero},
    raw::{RawCircuit, RawHttp, RawRetry, RawTls, RawUpstreamTls},
};

/// Everything an HTTP service adds to the pool it shares with L4 services.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpService {
    /// Response header that carries the number of attempts; none by default.
    pub attempt_header: Option<HeaderName>,
    /// `Via` value (such as "understudy") added to requests and responses; none by default.
    pub via: Option<String>,
    /// Upstream TCP connect timeout. Default 1 s.
    pub connect_timeout: Duration,
    /// A client must send a whole HTTP/1 request head within this (slowloris protection, as
    /// HAProxy's `timeout http-request`). Default 10 s.
    pub header_timeout: Duration,
    /// Idle upstream connections are closed after this. Default 90 s (as Envoy's pool).
    pub idle_timeout: Duration,
    /// Idle upstream connections kept per backend. Default 64.
    pub max_idle_per_backend: usize,
    /// Client connections open at once on the listener (HAProxy's `maxconn`); past it the
    /// listener stops accepting until one closes. Default 10,000.
    pub max_connections: usize,
    /// A client connection that moves no byte for this long is closed (HAProxy's
    /// `timeout client`). Default 60 s.
    pub client_idle_timeout: Duration,
    /// A TLS handshake must finish within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// On a stop, or a reload that removes the listener: how long requests in flight may take to
    /// finish before their connections are closed. Default 30 s (a stop waits this long at most,
    /// well inside systemd's 90 s `TimeoutStopSec`).
    pub drain_timeout: Duration,
    /// What the service's own backends speak. Default HTTP/1.1.
    pub protocol: super::UpstreamProtocol,
    /// Peers whose `X-Forwarded-For` and `Forwarded` are kept and appended to. From anyone
    /// else they are replaced, and `X-Real-IP` removed, so the client address the backends see
    /// cannot be spoofed. Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TLS termination; plain HTTP (HTTP/1.1 or h2c) when `None`.
    pub tls: Option<Vec<Certificate>>,
    /// TLS to the backends (HTTP/1.1 inside); plain HTTP when `None`.
    pub upstream_tls: Option<TlsCheck>,
    pub retry: RetryPolicy,
    pub circuit: CircuitPolicy,
    /// Ordered routes (`[[service.route]]`); empty: every request goes to the service's own
    /// backends.
    pub routes: Vec<super::Route>,
    /// One line per request; off by default (`[service.access_log]`).
    pub access_log: Option<AccessLog>,
}

/// `[service.access_log]`. Off by default: at tens of thousands of requests per second a line
/// each costs more than the proxying, and the per-route metrics already count every request.
/// Turned on, it logs every request (`sample = 1.0`), or a random share of them.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// JSON lines appended to this file; without it, lines go to the daemon's log (target
    /// `access`), human or JSON as `--log-json` says.
    pub file: Option<PathBuf>,
    /// The share of requests logged, 0 < sample <= 1.
    pub sample: f64,
}

/// A certificate chain and its key, both PEM files. The first is served to clients that send no
/// SNI or a name no certificate covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When and how a request is tried again on the next backend.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included. Default 3; 1 turns retries off.
    pub attempts: u32,
    /// Each try's limit for the response headers. Default 5 s.
    pub per_try_timeout: Duration,
    /// The whole request's limit for the response headers, retries and waits included.
    /// Default 15 s (Envoy's route timeout).
    pub deadline: Duration,
    /// Upstream statuses that are retried. Default 502, 503, 504.
    pub on_status: Vec<u16>,
    /// Retry a 429 on another backend, and keep new requests off the 429ing backend for its
    /// `Retry-After` (at most `retry_after_cap`). Default true.
    pub on_429: bool,
    /// Longest `Retry-After` honoured. Default 10 s.
    pub retry_after_cap: Duration,
    /// Retries may be at most this share of requests (over a 10 s window). Default 0.2.
    pub budget_ratio: f64,
    /// ... but at least this many retries per second are always allowed. Default 3.
    pub budget_min_per_second: u32,
    /// Retry POST and PATCH after they were sent (only when their body fit `buffer`).
    /// Default false: they are retried only when nothing reached a backend.
    pub non_idempotent: bool,
    /// Largest request body kept for a retry; a larger one is streamed and can be sent once.
    /// Default 64 KiB.
    pub buffer: u64,
    /// gRPC statuses of a trailers-only response (`grpc-status` in the headers) that are retried
    /// as a 503 would be: default 14 (`UNAVAILABLE`); add 8 for `RESOURCE_EXHAUSTED`. gRPC calls
    /// are POSTs, so they are retried after being sent only with `non_idempotent = true`.
    pub grpc_status: Vec<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            per_try_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
            on_status: vec![502, 503, 504],
            on_429: true,
            retry_after_cap: Duration::from_secs(10),
            budget_ratio: 0.2,
            budget_min_per_second: 3,
            non_idempotent: false,
            buffer: 64 * 1024,
            grpc_status: vec![14],
        }
    }
}

/// Per-backend limits and outlier ejection.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitPolicy {
    /// Requests in flight to one backend; past it the backend is skipped. Default 1024 (Envoy).
    pub max_requests: u32,
    /// Requests waiting for a new upstream connection to one backend. Default 256.
    pub max_pending: u32,
    /// Consecutive gateway failures that eject. Default 5 (Envoy's
    /// `consecutive_gateway_failure`).
    pub consecutive_failures: u32,
    /// The statuses that count as a gateway failure, besides connect failures, resets before the
    /// response and the backend's own timeouts. Default 502, 503, 504. A 500 or 501 is the
    /// application's answer to one request, so by default it ejects nothing: a client could
    /// otherwise take healthy backends out by asking for a failing URL.
    pub failure_statuses: Vec<u16>,
    /// First ejection; each further one doubles, up to `max_ejection`. Defaults 10 s and 5 min.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        CircuitPolicy {
            max_requests: 1024,
            max_pending: 256,
            consecutive_failures: 5,
            failure_statuses: vec![502, 503, 504],
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// The sections of one service, as written.
pub(super) struct RawSections<'a> {
    pub http: Option<&'a Spanned<RawHttp>>,
    pub tls: Option<&'a Spanned<RawTls>>,
    pub upstream_tls: Option<&'a Spanned<RawUpstreamTls>>,
    pub retry: Option<&'a Spanned<RawRetry>>,
    pub circuit: Option<&'a Spanned<RawCircuit>>,
    pub access_log: Option<&'a Spanned<super::raw::RawAccessLog>>,
}

fn number<T: Copy + PartialOrd + std::fmt::Display>(
    at: &Locator<'_>,
    value: &Option<Spanned<T>>,
    field: String,
    range: (T, T),
    default: T,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() >= range.0 && *v.get_ref() <= range.1 => Ok(*v.get_ref()),
        Some(v) => Err(at.error(
            Some(v.span()),
            field,
            format!("{} is out of range", v.get_ref()),
            format!("use a value from {} to {}", range.0, range.1),
        )),
    }
}

/// A list of 5xx statuses, or `default` when absent.
fn server_errors(
    at: &Locator<'_>,
    value: &Option<Spanned<Vec<Spanned<u16>>>>,
    field: String,
    default: &[u16],
    fix: &str,
) -> Result<Vec<u16>, ConfigError> {
    let Some(list) = value else {
        return Ok(default.to_vec());
    };
    let mut codes = Vec::new();
    for code in list.get_ref() {
        let c = *code.get_ref();
        if !(500..=599).contains(&c) {
            return Err(at.error(
                Some(code.span()),
                field,
                format!("{c} is not a 5xx status"),
                fix,
            ));
        }
        codes.push(c);
    }
    Ok(codes)
}

pub(super) fn validate_http(
    at: &Locator<'_>,
    prefix: &str,
    raw: RawSections<'_>,
) -> Result<HttpService, ConfigError> {
    let f = |section: &str, name: &str| format!("{prefix}.{section}.{name}");
    let h = raw.http.map(Spanned::get_ref);
    let attempt_header = match h.and_then(|h| h.attempt_header.as_ref()) {
        None => None,
        Some(v) => Some(HeaderName::try_from(v.get_ref().as_str()).map_err(|_| {
            at.error(
                Some(v.span()),
                f("http", "attempt_header"),
                format!("\"{}\" is not a valid header name", v.get_ref()),
                "use letters, digits and '-', such as \"x-understudy-attempts\"",
            )
        })?),
    };
    let via = match h.and_then(|h| h.via.as_ref()) {
        None => None,
        Some(v) => {
            let text = v.get_ref();
            if text.is_empty() || !text.chars().all(|c| c.is_ascii_graphic()) {
                return Err(at.error(
                    Some(v.span()),
                    f("http", "via"),
                    format!("\"{text}\" is not a usable Via name"),
                    "use one word of visible ASCII, such as \"understudy\"",
                ));
            }
            Some(text.clone())
        }
    };
    let none = None;
    let connect_timeout = duration(
        at,
        h.map_or(&none, |h| &h.connect_timeout),
        f("http", "connect_timeout"),
        Duration::from_secs(1),
    )?;
    let header_timeout = duration(
        at,
        h.map_or(&none, |h| &h.header_timeout),
        f("http", "header_timeout"),
        Duration::from_secs(10),
    )?;
    if header_timeout.is_zero() {
        return Err(at.error(
            h.and_then(|h| h.header_timeout.as_ref()).map(Spanned::span),
            f("http", "header_timeout"),
            "a zero timeout would close every connection",
            "give a positive duration, such as \"10s\"",
        ));
    }
    let idle_timeout = duration(
        at,
        h.map_or(&none, |h| &h.idle_timeout),
        f("http", "idle_timeout"),
        Duration::from_secs(90),
    )?;
    let max_idle_per_backend = number(
        at,
        h.map_or(&None, |h| &h.max_idle_per_backend),
        f("http", "max_idle_per_backend"),
        (0, 100_000),
        64,
    )? as usize;
    let max_connections = number(
        at,
        h.map_or(&None, |h| &h.max_connections),
        f("http", "max_connections"),
        (1, 1_000_000),
        10_000,
    )? as usize;
    let drain_timeout = duration(
        at,
        h.map_or(&none, |h| &h.drain_timeout),
        f("http", "drain_timeout"),
        Duration::from_secs(30),
    )?;
    let client_idle_timeout = duration(
        at,
        h.map_or(&none, |h| &h.client_idle_timeout),
        f("http", "client_idle_timeout"),
        Duration::from_secs(60),
    )?;
    let handshake_timeout = duration(
        at,
        h.map_or(&none, |h| &h.handshake_timeout),
        f("http", "handshake_timeout"),
        Duration::from_secs(10),
    )?;
    let mut trusted_proxies = Vec::new();
    for cidr in h
        .and_then(|h| h.trusted_proxies.as_ref())
        .into_iter()
        .flatten()
    {
        let text = cidr.get_ref().trim();
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                at.error(
                    Some(cidr.span()),
                    f("http", "trusted_proxies"),
                    format!("\"{text}\" is not an address or a CIDR block"),
                    "write addresses or blocks such as \"10.0.0.0/8\" or \"fd00::1\"",
                )
            })?;
        trusted_proxies.push(net.trunc());
    }

    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let list = &t.get_ref().certificates;
            if list.get_ref().is_empty() {
                return Err(at.error(
                    Some(list.span()),
                    format!("{prefix}.tls.certificates"),
                    "no certificate is listed",
                    "list at least one { cert = \"FILE.pem\", key = \"FILE.key\" }, or remove [service.tls]",
                ));
            }
            let mut certs = Vec::new();
            for (k, c) in list.get_ref().iter().enumerate() {
                let c = c.get_ref();
                for (name, path) in [("cert", &c.cert), ("key", &c.key)] {
                    if let Err(e) = std::fs::metadata(path.get_ref()) {
                        return Err(at.error(
                            Some(path.span()),
                            format!("{prefix}.tls.certificates[{k}].{name}"),
                            format!("cannot read {}: {e}", path.get_ref()),
                            "give the path of a readable PEM file",
                        ));
                    }
                }
                certs.push(Certificate {
                    cert: c.cert.get_ref().into(),
                    key: c.key.get_ref().into(),
                });
            }
            Some(certs)
        }
    };

    let upstream_tls = match raw.upstream_tls.map(Spanned::get_ref) {
        None => None,
        Some(u) => {
            if let Some(ca) = &u.ca_file
                && let Err(e) = std::fs::metadata(ca.get_ref())
            {
                return Err(at.error(
                    Some(ca.span()),
                    format!("{prefix}.upstream_tls.ca_file"),
                    format!("cannot read {}: {e}", ca.get_ref()),
                    "give the path of a readable PEM file with the CA certificates",
                ));
            }
            if let Some(sni) = &u.sni
                && rustls::pki_types::ServerName::try_from(sni.get_ref().as_str()).is_err()
            {
                return Err(at.error(
                    Some(sni.span()),
                    format!("{prefix}.upstream_tls.sni"),
                    format!("\"{}\" is not a server name", sni.get_ref()),
                    "give a DNS name such as \"api.internal\"",
                ));
            }
            Some(TlsCheck {
                ca_file: u.ca_file.as_ref().map(|c| c.get_ref().into()),
                sni: u.sni.as_ref().map(|s| s.get_ref().clone()),
                insecure_skip_verify: u.insecure_skip_verify,
            })
        }
    };

    let d = RetryPolicy::default();
    let retry = match raw.retry.map(Spanned::get_ref) {
        None => d,
        Some(r) => {
            let per_try_timeout = duration(
                at,
                &r.per_try_timeout,
                f("retry", "per_try_timeout"),
                d.per_try_timeout,
            )?;
            let deadline = duration(at, &r.deadline, f("retry", "deadline"), d.deadline)?;
            if per_try_timeout.is_zero() || deadline.is_zero() {
                return Err(at.error(
                    r.deadline
                        .as_ref()
                        .or(r.per_try_timeout.as_ref())
                        .map(Spanned::span),
                    f("retry", "deadline"),
                    "a zero timeout would fail every request",
                    "give per_try_timeout and deadline a positive duration",
                ));
            }
            let on_status = server_errors(
                at,
                &r.on_status,
                f("retry", "on_status"),
                &d.on_status,
                "list 5xx statuses only (429 is governed by on_429)",
            )?;
            let budget_ratio = number(
                at,
                &r.budget_ratio,
                f("retry", "budget_ratio"),
                (0.0, 1.0),
                d.budget_ratio,
            )?;
            RetryPolicy {
                attempts: number(at, &r.attempts, f("retry", "attempts"), (1, 10), d.attempts)?,
                per_try_timeout,
                deadline,
                on_status,
                on_429: r.on_429.unwrap_or(d.on_429),
                retry_after_cap: duration_or_zero(
                    at,
                    &r.retry_after_cap,
                    f("retry", "retry_after_cap"),
                    d.retry_after_cap,
                )?,
                budget_ratio,
                budget_min_per_second: number(
                    at,
                    &r.budget_min_per_second,
                    f("retry", "budget_min_per_second"),
                    (0, 1_000_000),
                    d.budget_min_per_second,
                )?,
                non_idempotent: r.non_idempotent.unwrap_or(d.non_idempotent),
                buffer: number(at, &r.buffer, f("retry", "buffer"), (0, 64 << 20), d.buffer)?,
                grpc_status: match &r.grpc_status {
                    None => d.grpc_status,
                    Some(list) => {
                        let mut codes = Vec::new();
                        for c in list.get_ref() {
                            if !(1..=16).contains(c.get_ref()) {
                                return Err(at.error(
                                    Some(c.span()),
                                    f("retry", "grpc_status"),
                                    format!("{} is not a gRPC error status", c.get_ref()),
                                    "list gRPC status codes from 1 to 16, such as [14] (UNAVAILABLE) or [14, 8] (and RESOURCE_EXHAUSTED)",
                                ));
                            }
                            codes.push(*c.get_ref());
                        }
                        codes
                    }
                },
            }
        }
    };

    let d = CircuitPolicy::default();
    let circuit = match raw.circuit.map(Spanned::get_ref) {
        None => d,
        Some(c) => {
            let base_ejection = duration(
                at,
                &c.base_ejection,
                f("circuit", "base_ejection"),
                d.base_ejection,
            )?;
            let max_ejection = duration(
                at,
                &c.max_ejection,
                f("circuit", "max_ejection"),
                d.max_ejection.max(base_ejection),
            )?;
            if max_ejection < base_ejection {
                return Err(at.error(
                    c.max_ejection.as_ref().map(Spanned::span),
                    f("circuit", "max_ejection"),
                    format!("{max_ejection:?} is shorter than base_ejection ({base_ejection:?})"),
                    "make max_ejection at least base_ejection",
                ));
            }
            let limit = (1, 1_000_000);
            CircuitPolicy {
                max_requests: number(
                    at,
                    &c.max_requests,
                    f("circuit", "max_requests"),
                    limit,
                    d.max_requests,
                )?,
                max_pending: number(
                    at,
                    &c.max_pending,
                    f("circuit", "max_pending"),
                    limit,
                    d.max_pending,
                )?,
                consecutive_failures: number(
                    at,
                    &c.consecutive_failures,
                    f("circuit", "consecutive_failures"),
                    (1, 1000),
                    d.consecutive_failures,
                )?,
                failure_statuses: server_errors(
                    at,
                    &c.failure_statuses,
                    f("circuit", "failure_statuses"),
                    &d.failure_statuses,
                    "list 5xx statuses only",
                )?,
                base_ejection,
                max_ejection,
            }
        }
    };
    Ok(HttpService {
        attempt_header,
        via,
        connect_timeout,
        header_timeout,
        idle_timeout,
        max_idle_per_backend,
        max_connections,
        client_idle_timeout,
        handshake_timeout,
        drain_timeout,
        protocol: h.and_then(|h| h.protocol).unwrap_or_default(),
        trusted_proxies,
        tls,
        upstream_tls,
        retry,
        circuit,
        routes: Vec::new(),
        access_log: access_log(at, prefix, raw.access_log)?,
    })
}

fn access_log(
    at: &Locator<'_>,
    prefix: &str,
    raw: Option<&Spanned<super::raw::RawAccessLog>>,
) -> Result<Option<AccessLog>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let r = raw.get_ref();
    let sample = match &r.sample {
        None => 1.0,
        Some(v) if *v.get_ref() > 0.0 && *v.get_ref() <= 1.0 => *v.get_ref(),
        Some(v) => {
            return Err(at.error(
                Some(v.span()),
                format!("{prefix}.access_log.sample"),
                format!("{} is not a share of requests", v.get_ref()),
                "give a fraction above 0 and at most 1, such as 0.01 (or enabled = false)",
            ));
        }
    };
    if !r.enabled {
        return Ok(None);
    }
    let file = match &r.file {
        None => None,
        Some(f) if f.get_ref().starts_with('/') => Some(PathBuf::from(f.get_ref())),
        Some(f) => {
            return Err(at.error(
                Some(f.span()),
                format!("{prefix}.access_log.file"),
                format!("\"{}\" is not an absolute path", f.get_ref()),
                "give the log file's absolute path, such as \"/var/log/understudy/access.log\"",
            ));
        }
    };
    Ok(Some(AccessLog { file, sample }))
}
