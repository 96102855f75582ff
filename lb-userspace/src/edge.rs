//! What edge protection writes into the maps, computed from the config and the plan, as pure
//! data (so it is tested without a kernel): the access-list prefixes per scope, each service's
//! rate limit, the flood guard's setting, each service's flag bits, and the `REVERSE` entry
//! of every NAT backend, which translates its replies without per-flow state.

use std::net::IpAddr;

use ipnet::IpNet;
use lb_common::{
    addr_words,
    edge::{
        ACL_ALLOW, ACL_DENY, ACL_EXEMPT, ACL_GLOBAL, DropReason, FLOOD_WINDOW_NS,
        RateLimit as KernelLimit, ReverseKey, ReverseValue, SERVICE_F_ACL, SERVICE_F_ACL_ALLOWLIST,
        SERVICE_F_GLOBAL_ACL, SERVICE_F_GLOBAL_ALLOWLIST, SERVICE_F_RATE_LIMIT, SERVICE_F_RATE_RST,
        SERVICE_F_REFUSE_RST, Settings,
    },
};

use crate::{
    config::{Acl, Config, Encap, Mode, Refusal, Service},
    plan::PlannedService,
};

/// One prefix of one scope in `ACL_V4` or `ACL_V6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AclEntry {
    /// `ACL_GLOBAL`, a service id, or `ACL_EXEMPT` + a service id.
    pub scope: u32,
    pub net: IpNet,
    /// `ACL_ALLOW` or `ACL_DENY`.
    pub value: u32,
}

impl AclEntry {
    /// The trie key: the prefix length counts the scope's 32 bits, and the address is stored as
    /// the packet carries it.
    pub fn key_parts(&self) -> (u32, [u32; 4]) {
        let (words, _) = addr_words(self.net.network());
        (32 + self.net.prefix_len() as u32, words)
    }
}

/// Everything edge protection installs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgePlan {
    pub acl: Vec<AclEntry>,
    /// (service id, its limit) for each rate-limited service.
    pub rate_limits: Vec<(u32, KernelLimit)>,
    pub settings: Settings,
    /// `[dataplane] flood_threshold` as configured (per second; `settings` holds it per window).
    pub flood_threshold: u32,
    pub reverse: Vec<(ReverseKey, ReverseValue)>,
    /// (backend id, its outer header) for each backend of a tunnel service.
    pub tunnels: Vec<(u32, TunnelPlan)>,
}

/// A tunnel backend's outer header, before its source is resolved (`EdgeMaps::install`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPlan {
    pub backend: std::net::IpAddr,
    /// The configured outer source for the backend's family, if any; otherwise the balancer's
    /// source on the route to it.
    pub source: Option<std::net::IpAddr>,
    /// GUE's port (host order), or 0 for IPIP.
    pub port: u16,
}

/// The flag bits edge protection sets in a kernel service's `SERVICES` entry.
pub fn service_flags(config: &Config, svc: &Service) -> u32 {
    let mut flags = 0;
    let bit = |on: bool, f: u32| if on { f } else { 0 };
    flags |= bit(!config.acl.is_empty(), SERVICE_F_GLOBAL_ACL);
    flags |= bit(!config.acl.allow.is_empty(), SERVICE_F_GLOBAL_ALLOWLIST);
    flags |= bit(!svc.acl.is_empty(), SERVICE_F_ACL);
    flags |= bit(!svc.acl.allow.is_empty(), SERVICE_F_ACL_ALLOWLIST);
    // The global lists' action applies where the service has no lists of its own.
    let action = if svc.acl.is_empty() {
        config.acl.action
    } else {
        svc.acl.action
    };
    flags |= bit(action == Refusal::Reset, SERVICE_F_REFUSE_RST);
    if let Some(r) = &svc.rate_limit {
        flags |= SERVICE_F_RATE_LIMIT | bit(r.action == Refusal::Reset, SERVICE_F_RATE_RST);
    }
    flags
}

fn scoped(scope: u32, acl: &Acl, out: &mut Vec<AclEntry>) {
    for (net, allowed) in acl.entries() {
        out.push(AclEntry {
            scope,
            net,
            value: if allowed { ACL_ALLOW } else { ACL_DENY },
        });
    }
}

/// The edge plan of `config`, whose kernel services were planned as `services`.
pub fn plan(config: &Config, services: &[PlannedService]) -> EdgePlan {
    let mut edge = EdgePlan {
        settings: Settings {
            flood_per_window: per_window(config.flood_threshold),
            // The data plane's own (`EdgeMaps` bumps it).
            hop_generation: 0,
        },
        flood_threshold: config.flood_threshold,
        ..EdgePlan::default()
    };
    scoped(ACL_GLOBAL, &config.acl, &mut edge.acl);
    for (svc, planned) in config.services.iter().zip(services) {
        if planned.serving.kernel().is_none() {
            continue;
        }
        scoped(planned.id, &svc.acl, &mut edge.acl);
        if let Some(r) = &svc.rate_limit {
            edge.rate_limits.push((
                planned.id,
                KernelLimit {
                    per_second: r.per_second,
                    burst: r.burst,
                    v4_prefix: r.ipv4_prefix as u32,
                    v6_prefix: r.ipv6_prefix as u32,
                },
            ));
            for net in &r.exempt {
                edge.acl.push(AclEntry {
                    scope: ACL_EXEMPT + planned.id,
                    net: *net,
                    value: ACL_ALLOW,
                });
            }
        }
        if let Mode::Tunnel(t) = &svc.mode {
            for m in &planned.members {
                let backend = m.address.ip();
                edge.tunnels.push((
                    m.id,
                    TunnelPlan {
                        backend,
                        source: if backend.is_ipv4() {
                            t.source_v4.map(std::net::IpAddr::V4)
                        } else {
                            t.source_v6.map(std::net::IpAddr::V6)
                        },
                        port: if t.encap == Encap::Gue { t.port } else { 0 },
                    },
                ));
            }
        }
        // Only NAT translates replies. A backend's key is its service's, with the backend's
        // address and port.
        if svc.mode != Mode::Nat {
            continue;
        }
        for m in &planned.members {
            let (addr, family) = addr_words(m.address.ip());
            edge.reverse.push((
                ReverseKey {
                    addr,
                    port: m.address.port().to_be(),
                    proto: planned.key.proto,
                    family,
                },
                ReverseValue {
                    vip: planned.key.addr,
                    vip_port: planned.key.port,
                    _pad: 0,
                    service: planned.id,
                    backend: m.id,
                },
            ));
        }
    }
    edge
}

/// `flood_threshold` (per second) as the kernel's per-window count; 0 stays off, and any
/// other threshold allows at least one SYN per window.
pub fn per_window(per_second: u32) -> u32 {
    let windows_per_second = 1_000_000_000 / FLOOD_WINDOW_NS;
    if per_second == 0 {
        0
    } else {
        (per_second as u64 / windows_per_second).max(1) as u32
    }
}

impl EdgePlan {
    /// How the kernel's access lists answer `ip` for `svc`, modelled on the entries as written
    /// (longest prefix per scope, the global scope first): `None` when allowed, else the
    /// refusal's reason. `understudy explain` reports it; the kernel tests hold it to the kernel.
    pub fn refusal(&self, svc: &PlannedService, ip: IpAddr) -> Option<&'static str> {
        let flags = svc.serving.entry()?.flags;
        let longest = |scope: u32| {
            self.acl
                .iter()
                .filter(|e| e.scope == scope && e.net.contains(&ip))
                .max_by_key(|e| e.net.prefix_len())
                .map(|e| e.value)
        };
        let verdict = |scope, on, allowlist, deny: DropReason, not_allowed: DropReason| {
            if flags & on == 0 {
                return None;
            }
            match longest(scope) {
                Some(ACL_DENY) => Some(deny.name()),
                None if flags & allowlist != 0 => Some(not_allowed.name()),
                _ => None,
            }
        };
        verdict(
            ACL_GLOBAL,
            SERVICE_F_GLOBAL_ACL,
            SERVICE_F_GLOBAL_ALLOWLIST,
            DropReason::GlobalDeny,
            DropReason::GlobalNotAllowed,
        )
        .or_else(|| {
            verdict(
                svc.id,
                SERVICE_F_ACL,
                SERVICE_F_ACL_ALLOWLIST,
                DropReason::Deny,
                DropReason::NotAllowed,
            )
        })
    }
}
