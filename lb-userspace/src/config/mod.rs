//! Configuration: TOML in, a validated [`Config`] out. A caller never holds an unvalidated config.
//! Every error names the file, line, column and field, and says how to fix it.

mod announce;
mod edge;
mod error;
mod forwarding;
mod gateway;
mod health;
mod http;
mod model;
mod raw;
mod route;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use lb_common::{MAX_BACKENDS, MAX_RING_SIZE, MAX_SERVICES, edge::ACL_CAPACITY};

use crate::maglev::{is_prime, next_prime};
use toml::Spanned;

pub use announce::{Announce, AnnouncePolicy};
pub use edge::{Acl, DEFAULT_FLOOD_THRESHOLD, RateLimit, Refusal};
pub use error::ConfigError;
pub use gateway::{Allow, AuthMethod, Consumer, Gateway, Jwt, LimitPer, Policy, RouteLimit};
pub use health::{Check, HealthCheck, HttpCheck, Passive, TlsCheck, UdpCheck, Via};
pub use http::{AccessLog, Certificate, CircuitPolicy, HttpService, RetryPolicy};
pub use model::{Encap, HashMode, Mode, OnAllDown, Protocol, Tunnel, UpstreamProtocol, XdpMode};
pub use route::{Failover, HostMatch, PathMatch, PoolRef, Route, RouteMatch, RouteRequest};

use error::Locator;
use raw::{RawBackend, RawConfig, RawMode, RawService};

/// Maglev table size when a service does not set `table_size`.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Backend weight when a backend does not set `weight`.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;

/// Highest backend tier (0 is primary).
pub const MAX_TIER: u32 = 15;

/// Where the admin listener binds when the config does not say: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";

/// Where the audit log is written when `[admin] audit_log` is not given. The systemd unit's
/// `LogsDirectory=understudy` creates the directory; the daemon creates it when it is missing.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/understudy/audit.log";

/// The name the audit log gives the caller of `[admin] token_file`'s unnamed token.
pub const UNNAMED_TOKEN: &str = "admin";

/// One admin bearer token and whose it is.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for AdminToken {
    // Never a secret in a log line or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({:?})", self.name)
    }
}

/// The admin listener: metrics, status, drain and enable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// `None` when `listen = "off"`.
    pub listen: Option<SocketAddr>,
    /// With any, every request must carry `Authorization: Bearer <token>` of one of them. Read
    /// from `token_file` (named [`UNNAMED_TOKEN`]) and `[[admin.tokens]]` when the config is
    /// loaded, so a reload rotates them.
    pub tokens: Vec<AdminToken>,
    /// Host names (besides IP literals and `localhost`) a request's `Host` may carry, for an
    /// admin listener reached by name. Anything else is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// The append-only audit log (`None`: `audit_log = "off"`). Default [`DEFAULT_AUDIT_LOG`].
    pub audit_log: Option<PathBuf>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub admin: Admin,
    /// `[announce]`: VIPs announced through BIRD; `None` announces nothing.
    pub announce: Option<Announce>,
    pub interfaces: Vec<Interface>,
    pub xdp_mode: XdpMode,
    /// Names the pinned state under `/sys/fs/bpf/understudy/<instance>`. Default "default".
    pub instance: String,
    /// Entries of `FLOWS`, set when the program is loaded. Default
    /// [`DEFAULT_MAX_FLOWS`].
    pub max_flows: u32,
    /// `[dataplane] flood_threshold`: SYNs per second per CPU; 0 turns the guard off.
    pub flood_threshold: u32,
    /// `[dataplane] writer_priority`: the map writer thread's SCHED_FIFO priority, 1 to 99, or
    /// 0 for the normal scheduler. Default [`DEFAULT_WRITER_PRIORITY`].
    pub writer_priority: u8,
    /// `[dataplane.acl]`: source access lists for every kernel-served VIP.
    pub acl: Acl,
    pub services: Vec<Service>,
    /// `[gateway]` and the `[[consumer]]`s: the credentials routes' `auth` checks.
    pub gateway: Gateway,
}

/// `[dataplane] max_flows` when not given: a million tracked flows, about 250 MiB of kernel
/// memory for the flow map (see the README's figure).
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;

/// `[dataplane] writer_priority` when not given. A real-time thread runs as soon as a health
/// decision wakes it instead of waiting its turn behind the checkers, the proxy and whatever else
/// the node runs (keepalived offers the same for its checkers, `checker_rt_priority`). 10 is below
/// the kernel's threaded interrupt handlers (50), so it never delays packets.
pub const DEFAULT_WRITER_PRIORITY: u8 = 10;

impl Config {
    /// Where this instance's maps and links are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.instance)
    }
}

/// Where an instance's maps and links are pinned.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/understudy").join(instance)
}

/// An interface the XDP program is attached to, with where it was named (for later errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub line: usize,
    pub column: usize,
    pub index_in_list: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub mode: Mode,
    pub hash: HashMode,
    /// Maglev table size, a prime.
    pub table_size: u32,
    /// How many healthy backends a tier needs to carry the service alone.
    pub min_healthy: MinHealthy,
    pub on_all_down: OnAllDown,
    /// A backend takes no traffic until its first check passes. Default true.
    pub wait_for_first_check: bool,
    /// Whether this node announces the VIP (with `[announce]`).
    pub announce: AnnouncePolicy,
    pub health: HealthCheck,
    pub passive: Passive,
    /// The service's own source access lists (kernel-served services).
    pub acl: Acl,
    /// New connections per source (kernel-served services).
    pub rate_limit: Option<RateLimit>,
    /// What the backends speak to the HTTP proxy (pools, and HTTP services' own backends).
    pub upstream: UpstreamProtocol,
    /// A backend that comes back ramps to its full share of requests over this (HAProxy's
    /// `slowstart`); off by default. HTTP services and pools only.
    pub slow_start: Option<std::time::Duration>,
    pub backends: Vec<Backend>,
    /// Where each backend's `address` is written (line, column), for errors found later, such
    /// as a DSR backend the host does not reach on-link.
    pub backend_at: Vec<(usize, usize)>,
}

/// The healthy share a tier must keep to carry the service without the next tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinHealthy {
    /// At least this many healthy backends. The default is 1.
    Count(u32),
    /// At least this fraction of the tier's backends (0 < x <= 1).
    Ratio(f64),
}

impl MinHealthy {
    /// Whether `healthy` of `total` backends meet it. An empty tier never does.
    pub fn met(self, healthy: usize, total: usize) -> bool {
        total > 0
            && healthy > 0
            && match self {
                MinHealthy::Count(n) => healthy >= n as usize,
                MinHealthy::Ratio(r) => healthy as f64 >= r * total as f64,
            }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: SocketAddr,
    pub weight: u32,
    /// Priority tier: 0 is primary; higher tiers take traffic when lower ones fall short.
    pub tier: u32,
    /// No new flows; established ones finish.
    pub drain: bool,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            problem: format!("cannot read the file: {e}"),
            fix: "check the path and that the file is readable".into(),
        })?;
        Config::parse(file, &source)
    }

    /// Validates config text; `file` is only used in error messages.
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let at = Locator { file, source };
        let raw = deserialize(&at)?;
        validate(&at, raw)
    }

    /// The error for backend `j` of service `i`, found after validation (from the host).
    pub fn backend_error(&self, i: usize, j: usize, problem: &str, fix: &str) -> ConfigError {
        let (line, column) = self.services[i].backend_at[j];
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: format!("service[{i}].backend[{j}].address"),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The error for an interface this host does not have.
    pub fn interface_error(&self, iface: &Interface, problem: &str, fix: &str) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: iface.line,
            column: iface.column,
            field: format!("dataplane.interfaces[{}]", iface.index_in_list),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

fn deserialize(at: &Locator<'_>) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(at.source).map_err(|e| {
        at.error(
            e.span(),
            "",
            e.message().trim().to_string(),
            "fix the TOML syntax at this position",
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        let fix = if message.contains("unknown field") {
            "remove the field or correct its spelling; the message lists the fields allowed here"
        } else if message.contains("unknown variant") {
            "use one of the values the message lists"
        } else if message.contains("missing field") {
            "add the missing field (see the configuration reference in README.md)"
        } else if message.contains("invalid type") {
            "give the value the type the message asks for"
        } else {
            "correct the value (see the configuration reference in README.md)"
        };
        at.error(inner.span(), field, message, fix)
    })
}

fn validate(at: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let dataplane = raw.dataplane.into_inner();
    let list_span = dataplane.interfaces.span();
    let list = dataplane.interfaces.into_inner();
    if list.is_empty() {
        return Err(at.error(
            Some(list_span),
            "dataplane.interfaces",
            "no interface is listed, so the balancer would see no packet",
            "list the interfaces that carry client and backend traffic, e.g. interfaces = [\"eth0\"]",
        ));
    }
    let mut interfaces: Vec<Interface> = Vec::new();
    for (i, name) in list.iter().enumerate() {
        let field = format!("dataplane.interfaces[{i}]");
        let n = name.get_ref();
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
            return Err(at.error(
                Some(name.span()),
                field,
                format!("\"{n}\" is not a valid interface name"),
                "use a name as `ip link` shows it: 1 to 15 characters, no '/' or spaces",
            ));
        }
        if let Some(first) = interfaces.iter().find(|x| &x.name == n) {
            return Err(at.error(
                Some(name.span()),
                field,
                format!("\"{n}\" is listed twice (first at line {})", first.line),
                "list each interface once",
            ));
        }
        let (line, column) = at.position(name.span().start);
        interfaces.push(Interface {
            name: n.clone(),
            line,
            column,
            index_in_list: i,
        });
    }

    if raw.services.len() > MAX_SERVICES as usize {
        return Err(at.error(
            Some(raw.services[MAX_SERVICES as usize].span()),
            format!("service[{MAX_SERVICES}]"),
            format!("more than {MAX_SERVICES} services"),
            format!("keep at most {MAX_SERVICES} services per balancer"),
        ));
    }
    let mut services: Vec<Service> = Vec::new();
    let mut vips: HashMap<(SocketAddr, Protocol), (String, usize)> = HashMap::new();
    let mut total_backends = 0usize;
    let acl = match &dataplane.acl {
        Some(a) => edge::acl(at, a.get_ref(), "dataplane.acl")?,
        None => Acl::default(),
    };
    // Prefixes the access-list tries must hold, per family (a bigger set would fail only when
    // written into the kernel).
    let mut prefixes = edge::Prefixes::default();
    prefixes.add(acl.entries().iter().map(|(net, _)| net));
    let pool_names: Vec<String> = raw
        .pools
        .iter()
        .map(|p| p.get_ref().name.get_ref().clone())
        .collect();
    let pool_protocols: HashMap<String, UpstreamProtocol> = raw
        .pools
        .iter()
        .map(|p| {
            (
                p.get_ref().name.get_ref().clone(),
                p.get_ref().protocol.unwrap_or_default(),
            )
        })
        .collect();
    let raw_pools = raw.pools;
    let gateway = gateway::validate_gateway(at, raw.gateway.as_ref(), &raw.consumers)?;
    let as_services = raw
        .services
        .into_iter()
        .map(|s| (Section::Service, s))
        .chain(raw_pools.into_iter().enumerate().map(|(k, p)| {
            let span = p.span();
            (
                Section::Pool(k),
                Spanned::new(span, p.into_inner().into_service()),
            )
        }));
    let mut first_pool = None;
    for (i, (section, svc)) in as_services.enumerate() {
        if let Section::Pool(_) = section {
            first_pool.get_or_insert(i);
        }
        // Where the service's prefixes are: its acl table, else the service.
        let span = svc.get_ref().acl.as_ref().map_or(svc.span(), Spanned::span);
        let index = match section {
            Section::Service => i,
            Section::Pool(k) => k,
        };
        let service = validate_service(
            at,
            Where {
                section,
                index,
                pools: &pool_names,
                protocols: &pool_protocols,
                gateway: &gateway,
            },
            svc.into_inner(),
            &services,
            &mut vips,
        )?;
        prefixes.add(service.acl.entries().iter().map(|(net, _)| net));
        prefixes.add(service.rate_limit.iter().flat_map(|r| &r.exempt));
        if let Some(family) = prefixes.over() {
            return Err(at.error(
                Some(span),
                format!("service[{i}].acl"),
                format!(
                    "the access lists and rate-limit exemptions hold more than {ACL_CAPACITY} \
                     {family} prefixes in all"
                ),
                format!(
                    "keep at most {ACL_CAPACITY} {family} prefixes over [dataplane.acl] and every \
                     service, merging neighbouring prefixes into shorter ones"
                ),
            ));
        }
        total_backends += service.backends.len();
        if total_backends > MAX_BACKENDS as usize {
            return Err(at.error(
                None,
                format!("service[{i}].backend"),
                format!("more than {MAX_BACKENDS} backends in all services"),
                format!("keep the total number of backends at or below {MAX_BACKENDS}"),
            ));
        }
        services.push(service);
    }
    let instance = match &dataplane.instance {
        None => "default".to_string(),
        Some(i) => {
            let name = i.get_ref();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(at.error(
                    Some(i.span()),
                    "dataplane.instance",
                    format!("\"{name}\" is not a valid instance name"),
                    "use 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            name.clone()
        }
    };
    let max_flows = match &dataplane.max_flows {
        None => DEFAULT_MAX_FLOWS,
        Some(v) if (1024..=1 << 26).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            return Err(at.error(
                Some(v.span()),
                "dataplane.max_flows",
                format!("{} is out of range", v.get_ref()),
                "use a count from 1024 to 67108864 (each flow costs about 250 bytes of kernel memory)",
            ));
        }
    };
    let writer_priority = match &dataplane.writer_priority {
        None => DEFAULT_WRITER_PRIORITY,
        Some(v) if *v.get_ref() <= 99 => *v.get_ref(),
        Some(v) => {
            return Err(at.error(
                Some(v.span()),
                "dataplane.writer_priority",
                format!("{} is out of range", v.get_ref()),
                "use a SCHED_FIFO priority from 1 to 99, or 0 for the normal scheduler",
            ));
        }
    };
    Ok(Config {
        file: at.file.to_path_buf(),
        admin: validate_admin(at, raw.admin.as_ref())?,
        announce: announce::validate(at, raw.announce.as_ref())?,
        interfaces,
        xdp_mode: dataplane.xdp_mode,
        instance,
        max_flows,
        flood_threshold: dataplane
            .flood_threshold
            .as_ref()
            .map_or(DEFAULT_FLOOD_THRESHOLD, |t| *t.get_ref()),
        writer_priority,
        acl,
        services,
        gateway,
    })
}

fn validate_admin(
    at: &Locator<'_>,
    raw: Option<&Spanned<raw::RawAdmin>>,
) -> Result<Admin, ConfigError> {
    let listen = raw.and_then(|r| r.get_ref().listen.as_ref());
    let listen = match listen {
        Some(l) if l.get_ref() == "off" => None,
        Some(l) => Some(l.get_ref().parse::<SocketAddr>().map_err(|_| {
            at.error(
                Some(l.span()),
                "admin.listen",
                format!("\"{}\" is not an address with a port", l.get_ref()),
                format!("write an address and port such as \"{DEFAULT_ADMIN_LISTEN}\", or \"off\""),
            )
        })?),
        None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
    };
    let mut tokens = Vec::new();
    if let Some(path) = raw.and_then(|r| r.get_ref().token_file.as_ref()) {
        tokens.push(AdminToken {
            name: UNNAMED_TOKEN.to_string(),
            token: read_token(at, path, "admin.token_file")?,
        });
    }
    for (i, t) in raw
        .and_then(|r| r.get_ref().tokens.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = t.get_ref();
        let field = format!("admin.tokens[{i}]");
        let name = t.name.get_ref().trim();
        if !gateway::name_ok(name) {
            return Err(at.error(
                Some(t.name.span()),
                format!("{field}.name"),
                format!("\"{}\" is not a token name", t.name.get_ref()),
                "name the token after its holder, with letters, digits, '-', '_', '.' or '@', such as \"alice\" or \"deploy-bot\"",
            ));
        }
        if tokens.iter().any(|k: &AdminToken| k.name == name) {
            return Err(at.error(
                Some(t.name.span()),
                format!("{field}.name"),
                format!(
                    "a token named \"{name}\" is already configured{}",
                    if name == UNNAMED_TOKEN {
                        " (token_file's token is named \"admin\")"
                    } else {
                        ""
                    }
                ),
                "give every token its own name, so the audit log can tell who acted",
            ));
        }
        let token = read_token(at, &t.file, &format!("{field}.file"))?;
        if let Some(other) = tokens.iter().find(|k| k.token == token) {
            return Err(at.error(
                Some(t.file.span()),
                format!("{field}.file"),
                format!("this token is also the token of \"{}\"", other.name),
                "give every holder a token of its own (`openssl rand -hex 32`), so the audit log can tell who acted",
            ));
        }
        tokens.push(AdminToken {
            name: name.to_string(),
            token,
        });
    }
    let audit_log = match raw.and_then(|r| r.get_ref().audit_log.as_ref()) {
        None => Some(PathBuf::from(DEFAULT_AUDIT_LOG)),
        Some(p) if p.get_ref() == "off" => None,
        Some(p) if std::path::Path::new(p.get_ref()).is_absolute() => {
            Some(PathBuf::from(p.get_ref()))
        }
        Some(p) => {
            return Err(at.error(
                Some(p.span()),
                "admin.audit_log",
                format!("\"{}\" is not an absolute path", p.get_ref()),
                format!("give an absolute path such as \"{DEFAULT_AUDIT_LOG}\", or \"off\""),
            ));
        }
    };
    let mut allowed_hosts = Vec::new();
    for h in raw
        .and_then(|r| r.get_ref().allowed_hosts.as_ref())
        .into_iter()
        .flatten()
    {
        let name = h.get_ref().trim().to_ascii_lowercase();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(at.error(
                Some(h.span()),
                "admin.allowed_hosts",
                format!("\"{}\" is not a host name", h.get_ref()),
                "list host names without a port or scheme, such as \"lb1.example.com\"",
            ));
        }
        allowed_hosts.push(name);
    }
    Ok(Admin {
        listen,
        tokens,
        allowed_hosts,
        audit_log,
    })
}

/// Reads one admin token file: one token, without spaces.
fn read_token(
    at: &Locator<'_>,
    path: &Spanned<String>,
    field: &str,
) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path.get_ref()).map_err(|e| {
        at.error(
            Some(path.span()),
            field,
            format!("cannot read {}: {e}", path.get_ref()),
            "give the path of a readable file holding the token",
        )
    })?;
    let token = text.trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(at.error(
            Some(path.span()),
            field,
            format!("{} holds no usable token", path.get_ref()),
            "put one token, without spaces, in the file",
        ));
    }
    Ok(token)
}

/// Whether a `[[service]]` or a `[[pool]]` is validated: a pool is a service without a VIP, whose
/// backends, tiers and health serve the routes of HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Service,
    /// The pool's index among the `[[pool]]`s.
    Pool(usize),
}

/// What [`validate_service`] validates, and the pools routes may name.
struct Where<'a> {
    section: Section,
    /// The index in its own section, for field names.
    index: usize,
    pools: &'a [String],
    protocols: &'a HashMap<String, UpstreamProtocol>,
    gateway: &'a Gateway,
}

fn validate_service(
    at: &Locator<'_>,
    place: Where<'_>,
    svc: RawService,
    earlier: &[Service],
    vips: &mut HashMap<(SocketAddr, Protocol), (String, usize)>,
) -> Result<Service, ConfigError> {
    let i = place.index;
    let is_pool = place.section != Section::Service;
    let section = if is_pool { "pool" } else { "service" };
    let f = |name: &str| format!("{section}[{i}].{name}");
    let name = svc.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(at.error(
            Some(svc.name.span()),
            f("name"),
            format!("\"{name}\" is not a valid {section} name"),
            "use letters, digits, '-', '_' and '.' only, such as \"web\"",
        ));
    }
    if let Some(other) = earlier.iter().find(|s| s.name == name) {
        let what = if other.mode == Mode::Pool {
            "pool"
        } else {
            "service"
        };
        return Err(at.error(
            Some(svc.name.span()),
            f("name"),
            format!("another {what} is already named \"{name}\""),
            "give every service and pool its own name (they share status, metrics and drain commands)",
        ));
    }
    if !is_pool && place.pools.contains(&name) {
        return Err(at.error(
            Some(svc.name.span()),
            f("name"),
            format!("a [[pool]] is already named \"{name}\""),
            "give every service and pool its own name (they share status, metrics and drain commands)",
        ));
    }

    let vip = if is_pool {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        socket_addr(
            at,
            &svc.vip,
            f("vip"),
            "\"10.0.0.10:80\" or \"[2001:db8::10]:80\"",
        )?
    };
    if !is_pool {
        if vip.ip().is_unspecified() || vip.ip().is_multicast() {
            return Err(at.error(
                Some(svc.vip.span()),
                f("vip"),
                format!("{} cannot be a VIP", vip.ip()),
                "use the unicast address clients connect to",
            ));
        }
        let (line, _) = at.position(svc.vip.span().start);
        if let Some((other, other_line)) = vips.get(&(vip, svc.protocol)) {
            return Err(at.error(
                Some(svc.vip.span()),
                f("vip"),
                format!(
                    "{vip}/{} is already the VIP of service \"{other}\" (line {other_line})",
                    svc.protocol
                ),
                "give each service its own address, port or protocol",
            ));
        }
        vips.insert((vip, svc.protocol), (name.clone(), line));
    }

    // An HTTP service with routes may be served from [[pool]]s alone.
    let routed = svc.mode == RawMode::Http && !svc.routes.is_empty();
    if svc.backends.is_empty() && !routed {
        return Err(at.error(
            Some(svc.name.span()),
            f("backend"),
            format!("{section} \"{name}\" has no backend"),
            format!("add at least one [[{section}.backend]] with address = \"IP:port\""),
        ));
    }
    if !svc.routes.is_empty() && svc.mode != RawMode::Http {
        return Err(at.error(
            Some(svc.routes[0].span()),
            f("route"),
            "routes choose a pool per HTTP request, and this service is not an HTTP service",
            "add mode = \"http\" to the service, or remove its [[service.route]]s",
        ));
    }
    let mut backends: Vec<Backend> = Vec::new();
    for (j, b) in svc.backends.iter().enumerate() {
        backends.push(validate_backend(
            at,
            (section, i, j),
            b.get_ref(),
            vip,
            &backends,
            svc.mode == RawMode::Tunnel || is_pool,
        )?);
    }

    let table_size = match &svc.table_size {
        None => DEFAULT_TABLE_SIZE,
        Some(t) => {
            let m = *t.get_ref();
            let n = backends.len() as u32;
            if m > MAX_RING_SIZE || m < n.max(2) || !is_prime(m) {
                let suggestion = next_prime(m.max(n * 100).clamp(2, MAX_RING_SIZE));
                let problem = if m > MAX_RING_SIZE {
                    format!("{m} is larger than the largest table, {MAX_RING_SIZE}")
                } else if m < n.max(2) {
                    format!("{m} is smaller than the number of backends ({n})")
                } else {
                    format!("{m} is not a prime")
                };
                return Err(at.error(
                    Some(t.span()),
                    f("table_size"),
                    problem,
                    format!(
                        "use a prime of at least 100 x the backends, such as {} (or leave it out for {DEFAULT_TABLE_SIZE})",
                        suggestion.min(MAX_RING_SIZE)
                    ),
                ));
            }
            m
        }
    };
    let min_healthy = match &svc.min_healthy {
        None => MinHealthy::Count(1),
        Some(v) => match v.get_ref() {
            toml::Value::Integer(n) if (1..=MAX_BACKENDS as i64).contains(n) => {
                MinHealthy::Count(*n as u32)
            }
            toml::Value::Float(r) if *r > 0.0 && *r <= 1.0 => MinHealthy::Ratio(*r),
            other => {
                return Err(at.error(
                    Some(v.span()),
                    f("min_healthy"),
                    format!("{other} is neither a backend count nor a fraction"),
                    "give a count of backends such as 2, or a fraction of the tier such as 0.5",
                ));
            }
        },
    };
    let health = health::validate_health(at, &f("health"), svc.health.as_ref())?;
    let passive = health::validate_passive(at, &f("passive"), svc.passive.as_ref())?;
    if svc.protocol == Protocol::Udp && matches!(health.check, Check::Http(_) | Check::Https(..)) {
        return Err(at.error(
            svc.health.as_ref().map(Spanned::span),
            f("health.kind"),
            format!("an {} check on a UDP service", health.check),
            "use kind = \"udp\" (or \"tcp\" against a TCP port given with `port`)",
        ));
    }
    let http_sections = [
        ("http", svc.http.as_ref().map(Spanned::span)),
        ("tls", svc.tls.as_ref().map(Spanned::span)),
        ("upstream_tls", svc.upstream_tls.as_ref().map(Spanned::span)),
        ("retry", svc.retry.as_ref().map(Spanned::span)),
        ("circuit", svc.circuit.as_ref().map(Spanned::span)),
    ];
    let mode = match svc.mode {
        RawMode::Http => {
            let kernel_only = [
                ("acl", svc.acl.as_ref().map(Spanned::span)),
                ("rate_limit", svc.rate_limit.as_ref().map(Spanned::span)),
                ("tunnel", svc.tunnel.as_ref().map(Spanned::span)),
            ];
            if let Some((section, span)) = kernel_only.iter().find(|(_, s)| s.is_some()) {
                return Err(at.error(
                    span.clone(),
                    f(section),
                    format!(
                        "[service.{section}] is the XDP program's, which serves the nat, dsr and \
                         tunnel modes; an HTTP service's packets go to the proxy's sockets"
                    ),
                    "remove the section, or serve the VIP with mode = \"nat\"",
                ));
            }
            if svc.protocol == Protocol::Udp {
                return Err(at.error(
                    Some(svc.vip.span()),
                    f("protocol"),
                    "an HTTP service over UDP",
                    "remove protocol = \"udp\" (HTTP services are TCP), or use mode = \"nat\"",
                ));
            }
            let mut http = http::validate_http(
                at,
                &format!("service[{i}]"),
                http::RawSections {
                    http: svc.http.as_ref(),
                    tls: svc.tls.as_ref(),
                    upstream_tls: svc.upstream_tls.as_ref(),
                    retry: svc.retry.as_ref(),
                    circuit: svc.circuit.as_ref(),
                    access_log: svc.access_log.as_ref(),
                },
            )?;
            // The service's own backends are a pool named after it.
            let mut usable = place.pools.to_vec();
            if !svc.backends.is_empty() {
                usable.push(name.clone());
            }
            let mut protocols = place.protocols.clone();
            protocols.insert(name.clone(), http.protocol);
            http.routes = route::validate_routes(
                at,
                &format!("service[{i}]"),
                &svc.routes,
                &usable,
                &protocols,
                place.gateway,
            )?;
            // HTTP/2 over TLS needs the TLS settings, which are the service's.
            let own = (!svc.backends.is_empty()).then_some(name.as_str());
            let chains = http
                .routes
                .iter()
                .flat_map(|r| r.chain.iter().map(|p| p.pool.as_str()));
            if http.upstream_tls.is_none()
                && let Some(pool) = own
                    .into_iter()
                    .chain(chains)
                    .find(|p| protocols.get(*p).copied() == Some(UpstreamProtocol::H2))
            {
                return Err(at.error(
                    Some(svc.name.span()),
                    f("upstream_tls"),
                    format!("pool \"{pool}\" speaks h2 (HTTP/2 over TLS), and the service has no [service.upstream_tls]"),
                    "add [service.upstream_tls] (ca_file, sni), or use protocol = \"h2c\" for HTTP/2 in clear",
                ));
            }
            if !http.routes.is_empty()
                && !svc.backends.is_empty()
                && !http
                    .routes
                    .iter()
                    .any(|r| r.chain.iter().any(|p| p.pool == name))
            {
                return Err(at.error(
                    Some(svc.backends[0].span()),
                    f("backend"),
                    format!("no route uses the service's own backends (its pool \"{name}\")"),
                    format!(
                        "add \"{name}\" to a route's pools, or move the backends into a [[pool]]"
                    ),
                ));
            }
            Mode::Http(Box::new(http))
        }
        RawMode::Pool => Mode::Pool,
        RawMode::Nat | RawMode::Dsr | RawMode::Tunnel => {
            if let Some((section, span)) = http_sections.iter().find(|(_, s)| s.is_some()) {
                return Err(at.error(
                    span.clone(),
                    f(section),
                    format!("[service.{section}] applies to HTTP services only"),
                    "add mode = \"http\" to the service, or remove the section",
                ));
            }
            if let Some(t) = &svc.tunnel
                && svc.mode != RawMode::Tunnel
            {
                return Err(at.error(
                    Some(t.span()),
                    f("tunnel"),
                    format!("[service.tunnel] applies to mode = \"tunnel\", and this service's mode is {}", match svc.mode {
                        RawMode::Dsr => "dsr",
                        _ => "nat",
                    }),
                    "add mode = \"tunnel\" to the service, or remove the section",
                ));
            }
            match svc.mode {
                RawMode::Dsr => {
                    forwarding::check_backends(at, i, &svc, &backends, vip, true)?;
                    Mode::Dsr
                }
                RawMode::Tunnel => {
                    forwarding::check_backends(at, i, &svc, &backends, vip, false)?;
                    Mode::Tunnel(forwarding::tunnel(at, i, svc.tunnel.as_ref())?)
                }
                _ => {
                    // A reply is matched to its VIP in REVERSE by (backend, port, protocol): two NAT
                    // services on one backend address could not tell their replies apart.
                    for (j, b) in backends.iter().enumerate() {
                        let shared = earlier.iter().find(|e| {
                            e.mode == Mode::Nat
                                && e.protocol == svc.protocol
                                && e.backends.iter().any(|eb| eb.address == b.address)
                        });
                        if let Some(other) = shared {
                            return Err(at.error(
                                Some(svc.backends[j].get_ref().address.span()),
                                format!("service[{i}].backend[{j}].address"),
                                format!(
                                    "backend {} is already a backend of the NAT service \"{}\": the replies \
                                     of two NAT services on one backend address cannot be told apart",
                                    b.address, other.name
                                ),
                                "give the backend a second port for this service (it may listen on both), \
                                 or serve both VIPs from one service",
                            ));
                        }
                    }
                    Mode::Nat
                }
            }
        }
    };
    // HTTP services and pools ramp a backend's share of requests; kernel services its Maglev
    // entries (writer::ramp).
    let slow_start = match &svc.slow_start {
        None => None,
        Some(_) => Some(health::duration(
            at,
            &svc.slow_start,
            f("slow_start"),
            std::time::Duration::ZERO,
        )?),
    };
    let upstream = match (&mode, svc.pool_protocol) {
        (Mode::Http(h), _) => h.protocol,
        (_, Some(p)) => p,
        _ => UpstreamProtocol::Http1,
    };
    Ok(Service {
        name,
        vip,
        protocol: svc.protocol,
        mode,
        hash: svc.hash,
        table_size,
        min_healthy,
        on_all_down: svc.on_all_down,
        wait_for_first_check: svc.wait_for_first_check.unwrap_or(true),
        announce: svc.announce,
        health,
        passive,
        acl: match &svc.acl {
            Some(a) => edge::acl(at, a.get_ref(), &f("acl"))?,
            None => Acl::default(),
        },
        rate_limit: match &svc.rate_limit {
            Some(r) => Some(edge::rate_limit(at, r.get_ref(), &f("rate_limit"))?),
            None => None,
        },
        upstream,
        slow_start,
        backend_at: svc
            .backends
            .iter()
            .map(|b| at.position(b.get_ref().address.span().start))
            .collect(),
        backends,
    })
}

/// `place`: the section ("service" or "pool"), its index and the backend's. `any_family`: the
/// backend may be of the other IP family than the VIP (tunnels, pools).
fn validate_backend(
    at: &Locator<'_>,
    place: (&str, usize, usize),
    b: &RawBackend,
    vip: SocketAddr,
    earlier: &[Backend],
    any_family: bool,
) -> Result<Backend, ConfigError> {
    let (section, i, j) = place;
    let f = |name: &str| format!("{section}[{i}].backend[{j}].{name}");
    let address = socket_addr(at, &b.address, f("address"), "\"10.0.11.2:8080\"")?;
    if address.is_ipv4() != vip.is_ipv4() && !any_family {
        return Err(at.error(
            Some(b.address.span()),
            f("address"),
            format!("backend {address} and VIP {vip} are of different IP families"),
            "NAT and DSR do not translate between IPv4 and IPv6: use a backend of the VIP's family, \
             or mode = \"tunnel\", which carries one inside the other",
        ));
    }
    if earlier.iter().any(|e| e.address == address) {
        return Err(at.error(
            Some(b.address.span()),
            f("address"),
            format!("backend {address} is listed twice in this {section}"),
            "list each backend once; use `weight` to give it a larger share",
        ));
    }
    let weight = match &b.weight {
        None => DEFAULT_WEIGHT,
        Some(w) if (1..=MAX_WEIGHT).contains(w.get_ref()) => *w.get_ref(),
        Some(w) => {
            return Err(at.error(
                Some(w.span()),
                f("weight"),
                format!("weight {} is out of range", w.get_ref()),
                format!("use a weight from 1 to {MAX_WEIGHT}"),
            ));
        }
    };
    let tier = match &b.tier {
        None => 0,
        Some(t) if *t.get_ref() <= MAX_TIER => *t.get_ref(),
        Some(t) => {
            return Err(at.error(
                Some(t.span()),
                f("tier"),
                format!("tier {} is out of range", t.get_ref()),
                format!("use a tier from 0 (primary) to {MAX_TIER}"),
            ));
        }
    };
    Ok(Backend {
        address,
        weight,
        tier,
        drain: b.drain,
    })
}

fn socket_addr(
    at: &Locator<'_>,
    value: &Spanned<String>,
    field: String,
    example: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = value.get_ref();
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        Ok(_) => Err(at.error(
            Some(value.span()),
            field,
            "port 0 is not a port a client can use",
            format!("give a real port, such as {example}"),
        )),
        Err(_) => Err(at.error(
            Some(value.span()),
            field,
            format!("\"{text}\" is not an address with a port"),
            format!("write an IP address and a port, such as {example}"),
        )),
    }
}

#[cfg(test)]
mod tests;
