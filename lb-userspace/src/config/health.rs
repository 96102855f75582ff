//! Validation of `[service.health]` and `[service.passive]`: the active check and passive
//! detection of one service, applied to each of its backends by its own task.

use std::{fmt, ops::Range, path::PathBuf, time::Duration};

use toml::Spanned;

use super::{
    ConfigError,
    error::Locator,
    raw::{RawCheckKind, RawHealth, RawPassive},
};

/// Defaults follow HAProxy's `inter 2s`, `rise 2`, `fall 3`, with Envoy-style 10% jitter so that
/// many balancers do not probe a backend in lockstep.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_JITTER: f64 = 0.1;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

/// The active health check of a service's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Each wait is `interval` times a random factor in `1 ± jitter`.
    pub jitter: f64,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Probe this port instead of the backend's.
    pub port: Option<u16>,
    /// Which way the checks go in DSR and tunnel modes.
    pub via: Via,
}

/// `via`: the way a DSR or tunnel service's checks reach a backend. In NAT and HTTP services
/// both are the same: the backend's own address is where client traffic goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The client's path, as Katran's encapsulated checks: to the VIP (and the check's port),
    /// through the service's MAC rewrite or tunnel. A backend whose VIP binding or
    /// decapsulation is broken fails. The default.
    #[default]
    Path,
    /// The backend's own address, as in NAT mode: it says the server runs, not that clients
    /// reach it.
    Direct,
}

/// What an active check does, with exactly the settings its kind needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// No active check: backends are up unless passive detection ejects them. The default.
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.1 request; the status (and optionally the body) decide.
    Http(HttpCheck),
    /// The same over TLS.
    Https(HttpCheck, TlsCheck),
    /// A datagram sent; the reply must match.
    Udp(UdpCheck),
}

impl fmt::Display for Check {
    /// The config's word for the kind (`kind = "..."`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::None => "none",
            Check::Tcp => "tcp",
            Check::Http(_) => "http",
            Check::Https(..) => "https",
            Check::Udp(_) => "udp",
        })
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            check: Check::None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            jitter: DEFAULT_JITTER,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            port: None,
            via: Via::Path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// Host header; the backend's address when unset.
    pub host: Option<String>,
    /// Inclusive status ranges that pass. Default 200-399.
    pub expect_status: Vec<(u16, u16)>,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCheck {
    /// PEM roots to trust instead of the bundled Web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Server name to send and verify; the Host, else the backend's IP, when unset.
    pub sni: Option<String>,
    /// Accept any certificate. For lab use.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpCheck {
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
    /// The reply must start with `expect` rather than equal it.
    pub prefix: bool,
}

/// Passive detection: kernel-observed failures that eject a backend before its next probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    /// Events within `window` that eject the backend; 0 turns passive ejection off.
    pub events_to_eject: u32,
    pub window: Duration,
    /// First ejection; each further one doubles it, up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// A SYN retransmitted this long after its flow began with no SYN-ACK is an event; 0 = off.
    pub syn_timeout: Duration,
    /// Passive evidence (the kernel's and the L7 proxy's) may hold out at most this share of
    /// the service's backends at once: at least one, never the last in service. Default 10
    /// (Envoy's `max_ejection_percent`).
    pub max_ejection_percent: u32,
}

impl Default for Passive {
    fn default() -> Self {
        // Five events, as Envoy's consecutive-5xx default. A SYN timeout of 2 s lets the
        // first retransmission (at 1 s) through, so one lost SYN is not evidence.
        Passive {
            events_to_eject: 5,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            syn_timeout: Duration::from_secs(2),
            max_ejection_percent: crate::ejection::DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

/// The longest duration any setting takes: a day. Every `now + d` the daemon computes then
/// stays far from overflowing an `Instant`, so no value can panic a request or stop a health task.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A positive duration of at most [`MAX_DURATION`], or `default` when absent. A zero timeout
/// or interval would fail every request or spin a task, so it is refused.
pub(super) fn duration(
    at: &Locator<'_>,
    value: &Option<Spanned<String>>,
    field: String,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration_or_zero(at, value, field.clone(), default)?;
    match value {
        Some(v) if d.is_zero() => Err(at.error(
            Some(v.span()),
            field,
            format!("\"{}\" is zero", v.get_ref()),
            "give a positive duration, such as \"100ms\" or \"2s\"",
        )),
        _ => Ok(d),
    }
}

/// A duration from zero up to [`MAX_DURATION`], for the settings where zero means "off".
pub(super) fn duration_or_zero(
    at: &Locator<'_>,
    value: &Option<Spanned<String>>,
    field: String,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
        at.error(
            Some(v.span()),
            field.clone(),
            format!("\"{}\" is not a duration ({e})", v.get_ref()),
            "write a number with a unit, such as \"100ms\", \"2s\" or \"1m\"",
        )
    })?;
    if d > MAX_DURATION {
        return Err(at.error(
            Some(v.span()),
            field,
            format!("\"{}\" is longer than a day", v.get_ref()),
            "use a duration of at most \"24h\"",
        ));
    }
    Ok(d)
}

fn count(
    at: &Locator<'_>,
    value: &Option<Spanned<u32>>,
    field: String,
    default: u32,
) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=100).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(at.error(
            Some(v.span()),
            field,
            format!("{} is out of range", v.get_ref()),
            "use a count from 1 to 100",
        )),
    }
}

/// A field only some check kinds use: its name, where it was given, those kinds, and their names.
type KindSpecific<'a> = (&'a str, Option<Range<usize>>, &'a [RawCheckKind], &'a str);

fn kind_name(k: RawCheckKind) -> &'static str {
    match k {
        RawCheckKind::None => "none",
        RawCheckKind::Tcp => "tcp",
        RawCheckKind::Http => "http",
        RawCheckKind::Https => "https",
        RawCheckKind::Udp => "udp",
    }
}

fn status_range(
    at: &Locator<'_>,
    v: &Spanned<String>,
    field: String,
) -> Result<(u16, u16), ConfigError> {
    let text = v.get_ref().trim();
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
        (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => Ok((lo, hi)),
        _ => Err(at.error(
            Some(v.span()),
            field,
            format!("\"{text}\" is not a status or a range of statuses"),
            "write a status such as \"200\" or a range such as \"200-399\", within 100-599",
        )),
    }
}

pub(super) fn validate_health(
    at: &Locator<'_>,
    prefix: &str,
    raw: Option<&Spanned<RawHealth>>,
) -> Result<HealthCheck, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HealthCheck::default());
    };
    let h = raw.get_ref();
    let f = |name: &str| format!("{prefix}.{name}");
    let kind = h.kind;
    let http_kinds = [RawCheckKind::Http, RawCheckKind::Https];
    // Fields that only some check kinds use: (name, where it was given, kinds, kinds in words).
    let specific: [KindSpecific<'_>; 11] = [
        (
            "method",
            h.method.as_ref().map(Spanned::span),
            &http_kinds,
            "http and https",
        ),
        (
            "path",
            h.path.as_ref().map(Spanned::span),
            &http_kinds,
            "http and https",
        ),
        (
            "host",
            h.host.as_ref().map(Spanned::span),
            &http_kinds,
            "http and https",
        ),
        (
            "expect_status",
            h.expect_status.as_ref().map(Spanned::span),
            &http_kinds,
            "http and https",
        ),
        (
            "expect_body",
            h.expect_body.as_ref().map(Spanned::span),
            &http_kinds,
            "http and https",
        ),
        (
            "ca_file",
            h.ca_file.as_ref().map(Spanned::span),
            &[RawCheckKind::Https],
            "https",
        ),
        (
            "sni",
            h.sni.as_ref().map(Spanned::span),
            &[RawCheckKind::Https],
            "https",
        ),
        (
            "insecure_skip_verify",
            h.insecure_skip_verify.as_ref().map(Spanned::span),
            &[RawCheckKind::Https],
            "https",
        ),
        (
            "send",
            h.send.as_ref().map(Spanned::span),
            &[RawCheckKind::Udp],
            "udp",
        ),
        (
            "expect",
            h.expect.as_ref().map(Spanned::span),
            &[RawCheckKind::Udp],
            "udp",
        ),
        (
            "expect_prefix",
            h.expect_prefix.as_ref().map(Spanned::span),
            &[RawCheckKind::Udp],
            "udp",
        ),
    ];
    for (field, given, kinds, names) in specific {
        if let Some(given) = given
            && !kinds.contains(&kind)
        {
            return Err(at.error(
                Some(given),
                format!("{prefix}.{field}"),
                format!("`{field}` applies to {names} checks only"),
                format!("remove it, or set kind = \"{}\"", kind_name(kinds[0])),
            ));
        }
    }

    let interval = duration(at, &h.interval, f("interval"), DEFAULT_INTERVAL)?;
    let timeout = duration(at, &h.timeout, f("timeout"), DEFAULT_TIMEOUT.min(interval))?;
    if interval < Duration::from_millis(10) {
        return Err(at.error(
            h.interval.as_ref().map(Spanned::span),
            f("interval"),
            format!("{interval:?} is too short"),
            "use an interval of at least 10ms",
        ));
    }
    if timeout.is_zero() || timeout > interval {
        return Err(at.error(
            h.timeout.as_ref().map(Spanned::span),
            f("timeout"),
            format!(
                "timeout {timeout:?} must be above zero and at most the interval ({interval:?})"
            ),
            "shorten the timeout or lengthen the interval",
        ));
    }
    let jitter = match &h.jitter {
        None => DEFAULT_JITTER,
        Some(j) if (0.0..=0.5).contains(j.get_ref()) => *j.get_ref(),
        Some(j) => {
            return Err(at.error(
                Some(j.span()),
                f("jitter"),
                format!("{} is out of range", j.get_ref()),
                "use a fraction from 0.0 to 0.5 (0.1 spreads probes by ±10%)",
            ));
        }
    };

    let check = match kind {
        RawCheckKind::None => Check::None,
        RawCheckKind::Tcp => Check::Tcp,
        RawCheckKind::Http => Check::Http(http_settings(at, prefix, h)?),
        RawCheckKind::Https => {
            Check::Https(http_settings(at, prefix, h)?, tls_settings(at, prefix, h)?)
        }
        RawCheckKind::Udp => Check::Udp(udp_settings(at, prefix, raw)?),
    };
    Ok(HealthCheck {
        check,
        interval,
        timeout,
        jitter,
        rise: count(at, &h.rise, f("rise"), DEFAULT_RISE)?,
        fall: count(at, &h.fall, f("fall"), DEFAULT_FALL)?,
        port: h.port.as_ref().map(|p| *p.get_ref()),
        via: h.via.unwrap_or_default(),
    })
}

fn http_settings(at: &Locator<'_>, prefix: &str, h: &RawHealth) -> Result<HttpCheck, ConfigError> {
    let f = |name: &str| format!("{prefix}.{name}");
    let method = h
        .method
        .as_ref()
        .map_or("GET".to_string(), |m| m.get_ref().clone());
    if hyper::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
        return Err(at.error(
            h.method.as_ref().map(Spanned::span),
            f("method"),
            format!("\"{method}\" is not an HTTP method"),
            "use GET, HEAD or another method token",
        ));
    }
    let path = h
        .path
        .as_ref()
        .map_or("/".to_string(), |p| p.get_ref().clone());
    if !path.starts_with('/') {
        return Err(at.error(
            h.path.as_ref().map(Spanned::span),
            f("path"),
            format!("\"{path}\" does not start with '/'"),
            "write an absolute path such as \"/healthz\"",
        ));
    }
    let expect_status = match &h.expect_status {
        None => vec![(200, 399)],
        Some(list) => list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, v)| status_range(at, v, format!("{prefix}.expect_status[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(HttpCheck {
        method,
        path,
        host: h.host.as_ref().map(|v| v.get_ref().clone()),
        expect_status,
        expect_body: h.expect_body.as_ref().map(|v| v.get_ref().clone()),
    })
}

fn tls_settings(at: &Locator<'_>, prefix: &str, h: &RawHealth) -> Result<TlsCheck, ConfigError> {
    let f = |name: &str| format!("{prefix}.{name}");
    let ca_file = match &h.ca_file {
        None => None,
        Some(path) => {
            let p = PathBuf::from(path.get_ref());
            let certs = std::fs::read(&p).map_err(|e| {
                at.error(
                    Some(path.span()),
                    f("ca_file"),
                    format!("cannot read {}: {e}", p.display()),
                    "give the path of a readable PEM file of CA certificates",
                )
            })?;
            if !String::from_utf8_lossy(&certs).contains("-----BEGIN CERTIFICATE-----") {
                return Err(at.error(
                    Some(path.span()),
                    f("ca_file"),
                    format!("{} holds no PEM certificate", p.display()),
                    "give a PEM file with at least one -----BEGIN CERTIFICATE----- block",
                ));
            }
            Some(p)
        }
    };
    Ok(TlsCheck {
        ca_file,
        sni: h.sni.as_ref().map(|v| v.get_ref().clone()),
        insecure_skip_verify: h
            .insecure_skip_verify
            .as_ref()
            .is_some_and(|v| *v.get_ref()),
    })
}

fn udp_settings(
    at: &Locator<'_>,
    prefix: &str,
    raw: &Spanned<RawHealth>,
) -> Result<UdpCheck, ConfigError> {
    let f = |name: &str| format!("{prefix}.{name}");
    let h = raw.get_ref();
    let (Some(send), Some(expect)) = (&h.send, &h.expect) else {
        return Err(at.error(
            Some(raw.span()),
            prefix.to_string(),
            "a udp check needs `send` and `expect`",
            "add send = \"...\" (the request) and expect = \"...\" (the reply, or its start with expect_prefix = true)",
        ));
    };
    if send.get_ref().is_empty() {
        return Err(at.error(
            Some(send.span()),
            f("send"),
            "the request is empty",
            "give the bytes to send, such as \"ping\"",
        ));
    }
    Ok(UdpCheck {
        send: send.get_ref().as_bytes().to_vec(),
        expect: expect.get_ref().as_bytes().to_vec(),
        prefix: h.expect_prefix.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

pub(super) fn validate_passive(
    at: &Locator<'_>,
    prefix: &str,
    raw: Option<&Spanned<RawPassive>>,
) -> Result<Passive, ConfigError> {
    let d = Passive::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let p = raw.get_ref();
    let f = |name: &str| format!("{prefix}.{name}");
    let base_ejection = duration(at, &p.base_ejection, f("base_ejection"), d.base_ejection)?;
    let max_ejection = duration(at, &p.max_ejection, f("max_ejection"), d.max_ejection)?;
    if max_ejection < base_ejection {
        return Err(at.error(
            p.max_ejection.as_ref().map(Spanned::span),
            f("max_ejection"),
            format!("{max_ejection:?} is shorter than base_ejection ({base_ejection:?})"),
            "make max_ejection at least base_ejection",
        ));
    }
    let syn_timeout = duration_or_zero(at, &p.syn_timeout, f("syn_timeout"), d.syn_timeout)?;
    if syn_timeout > Duration::from_secs(60) {
        return Err(at.error(
            p.syn_timeout.as_ref().map(Spanned::span),
            f("syn_timeout"),
            format!("{syn_timeout:?} is longer than a minute"),
            "use a timeout up to \"60s\", or \"0s\" to turn SYN-timeout detection off",
        ));
    }
    Ok(Passive {
        events_to_eject: p
            .events_to_eject
            .as_ref()
            .map_or(d.events_to_eject, |v| *v.get_ref()),
        window: duration(at, &p.window, f("window"), d.window)?,
        base_ejection,
        max_ejection,
        syn_timeout,
        max_ejection_percent: match &p.max_ejection_percent {
            None => d.max_ejection_percent,
            Some(v) if *v.get_ref() <= 100 => *v.get_ref(),
            Some(v) => {
                return Err(at.error(
                    Some(v.span()),
                    f("max_ejection_percent"),
                    format!("{} is more than 100 percent", v.get_ref()),
                    "use a share from 0 to 100 (at least one backend may always be ejected)",
                ));
            }
        },
    })
}
