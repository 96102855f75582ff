//! The config file as written: serde structs with `deny_unknown_fields`, before any validation.
//! Only `config::validate` reads these; everything else holds a validated `Config`.

use serde::Deserialize;
use toml::Spanned;

use super::{
    edge::{RawAcl, RawRateLimit},
    model::{Encap, HashMode, OnAllDown, Protocol, XdpMode},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub dataplane: Spanned<RawDataplane>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub announce: Option<Spanned<super::announce::RawAnnounce>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<Spanned<RawPool>>,
    pub gateway: Option<Spanned<super::gateway::RawGateway>>,
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<Spanned<super::gateway::RawConsumer>>,
}

/// A `[[pool]]`: backends with tiers and health that HTTP services' routes are served from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: Spanned<String>,
    /// What the backends speak: "http1", "h2c", "h2" or "auto".
    pub protocol: Option<super::model::UpstreamProtocol>,
    #[serde(default)]
    pub hash: HashMode,
    pub min_healthy: Option<Spanned<toml::Value>>,
    pub wait_for_first_check: Option<bool>,
    pub slow_start: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
    pub passive: Option<Spanned<RawPassive>>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Spanned<RawBackend>>,
}

impl RawPool {
    /// The pool as a service without a VIP, so one validation serves both.
    pub fn into_service(self) -> RawService {
        RawService {
            vip: Spanned::new(self.name.span(), String::new()),
            name: self.name,
            protocol: Protocol::Tcp,
            mode: RawMode::Pool,
            hash: self.hash,
            table_size: None,
            min_healthy: self.min_healthy,
            on_all_down: OnAllDown::Drop,
            wait_for_first_check: self.wait_for_first_check,
            slow_start: self.slow_start,
            announce: Default::default(),
            health: self.health,
            passive: self.passive,
            http: None,
            tls: None,
            upstream_tls: None,
            retry: None,
            circuit: None,
            access_log: None,
            tunnel: None,
            acl: None,
            rate_limit: None,
            routes: Vec::new(),
            pool_protocol: self.protocol,
            backends: self.backends,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    /// Named tokens, `[[admin.tokens]] name = "alice"  file = "..."`: the audit log says who.
    pub tokens: Option<Vec<Spanned<RawAdminToken>>>,
    pub allowed_hosts: Option<Vec<Spanned<String>>>,
    /// The audit log's path, or "off".
    pub audit_log: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub name: Spanned<String>,
    pub file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataplane {
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    pub instance: Option<Spanned<String>>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    pub max_flows: Option<Spanned<u32>>,
    /// SYNs per second per CPU above which new flows go unwritten (0 turns the guard off).
    pub flood_threshold: Option<Spanned<u32>>,
    /// The map writer thread's SCHED_FIFO priority (0: the normal scheduler).
    pub writer_priority: Option<Spanned<u8>>,
    /// Source access lists for every kernel-served VIP.
    pub acl: Option<Spanned<RawAcl>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub vip: Spanned<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: RawMode,
    #[serde(default)]
    pub hash: HashMode,
    pub table_size: Option<Spanned<u32>>,
    /// An integer (backends) or a fraction of the tier (0 < x <= 1).
    pub min_healthy: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub on_all_down: OnAllDown,
    pub wait_for_first_check: Option<bool>,
    /// A returning backend ramps to its full share over this (HTTP services and pools).
    pub slow_start: Option<Spanned<String>>,
    #[serde(default)]
    pub announce: super::announce::AnnouncePolicy,
    pub health: Option<Spanned<RawHealth>>,
    pub passive: Option<Spanned<RawPassive>>,
    /// `mode = "http"` only.
    pub http: Option<Spanned<RawHttp>>,
    pub tls: Option<Spanned<RawTls>>,
    pub upstream_tls: Option<Spanned<RawUpstreamTls>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub circuit: Option<Spanned<RawCircuit>>,
    pub access_log: Option<Spanned<RawAccessLog>>,
    /// `mode = "http"` only: ordered routes, each served from a chain of pools.
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<super::route::RawRoute>>,
    /// Set from a `[[pool]]`'s `protocol`; never written in a `[[service]]`.
    #[serde(skip)]
    pub pool_protocol: Option<super::model::UpstreamProtocol>,
    /// `mode = "tunnel"` only.
    pub tunnel: Option<Spanned<RawTunnel>>,
    /// Kernel-served (`nat`, `dsr`, `tunnel`) services only.
    pub acl: Option<Spanned<RawAcl>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Spanned<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: RawCheckKind,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub jitter: Option<Spanned<f64>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub port: Option<Spanned<u16>>,
    pub via: Option<super::health::Via>,
    // http and https
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<Vec<Spanned<String>>>>,
    pub expect_body: Option<Spanned<String>>,
    // https
    pub ca_file: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
    // udp
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub expect_prefix: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub events_to_eject: Option<Spanned<u32>>,
    pub window: Option<Spanned<String>>,
    pub base_ejection: Option<Spanned<String>>,
    pub max_ejection: Option<Spanned<String>>,
    pub syn_timeout: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<u32>>,
}

/// `kind` as written; validation turns it into [`Check`](super::Check), with its settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawCheckKind {
    /// No active check: backends are up unless passive detection ejects them. The default.
    #[default]
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.1 request; the status (and optionally the body) decide.
    Http,
    /// The same over TLS.
    Https,
    /// A datagram sent; the reply must match.
    Udp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub tier: Option<Spanned<u32>>,
    #[serde(default)]
    pub drain: bool,
}

/// `mode` as written; validation turns it into [`Mode`](super::Mode), with its settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    /// Destination NAT to the backend, with the replies translated back to the VIP. Backends
    /// must route their replies through the balancer.
    #[default]
    Nat,
    /// L2 direct server return: the destination MAC alone changes.
    Dsr,
    /// IPIP or GUE encapsulation to the backend (`[service.tunnel]`).
    Tunnel,
    /// The daemon terminates HTTP (and TLS) on the VIP and proxies each request, with retries
    /// over the fallback order and circuit breaking.
    Http,
    /// A `[[pool]]` (never written as a mode).
    #[serde(skip)]
    Pool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    #[serde(default)]
    pub encap: Encap,
    pub port: Option<Spanned<u16>>,
    pub source_v4: Option<Spanned<String>>,
    pub source_v6: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub attempt_header: Option<Spanned<String>>,
    pub via: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_idle_per_backend: Option<Spanned<u32>>,
    pub max_connections: Option<Spanned<u32>>,
    pub client_idle_timeout: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    /// What the service's own backends speak.
    pub protocol: Option<super::model::UpstreamProtocol>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Spanned<Vec<Spanned<RawCertificate>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<u32>>,
    pub per_try_timeout: Option<Spanned<String>>,
    pub deadline: Option<Spanned<String>>,
    pub on_status: Option<Spanned<Vec<Spanned<u16>>>>,
    pub on_429: Option<bool>,
    pub retry_after_cap: Option<Spanned<String>>,
    pub budget_ratio: Option<Spanned<f64>>,
    pub budget_min_per_second: Option<Spanned<u32>>,
    pub non_idempotent: Option<bool>,
    pub buffer: Option<Spanned<u64>>,
    pub grpc_status: Option<Spanned<Vec<Spanned<u32>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuit {
    pub max_requests: Option<Spanned<u32>>,
    pub max_pending: Option<Spanned<u32>>,
    pub consecutive_failures: Option<Spanned<u32>>,
    pub failure_statuses: Option<Spanned<Vec<Spanned<u16>>>>,
    pub base_ejection: Option<Spanned<String>>,
    pub max_ejection: Option<Spanned<String>>,
}

/// `[service.access_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(default)]
    pub enabled: bool,
    pub file: Option<Spanned<String>>,
    pub sample: Option<Spanned<f64>>,
}
