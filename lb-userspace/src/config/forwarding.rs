//! The config of the forwarding modes that leave the packet's addresses alone: `mode = "dsr"`
//! and `mode = "tunnel"` with `[service.tunnel]`. Both deliver the packet still addressed to the
//! VIP, so a backend's port must be the VIP's; DSR also keeps the IP header, so a backend must be
//! of the VIP's family, which only a tunnel can bridge.

use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::{
    Backend, ConfigError, Encap, Tunnel,
    error::Locator,
    raw::{RawService, RawTunnel},
};
use lb_common::forwarding::DEFAULT_GUE_PORT;

/// Checks what DSR and tunnels ask of every backend: the VIP's port, and for DSR its family.
pub fn check_backends(
    at: &Locator<'_>,
    i: usize,
    svc: &RawService,
    backends: &[Backend],
    vip: SocketAddr,
    dsr: bool,
) -> Result<(), ConfigError> {
    let mode = if dsr { "dsr" } else { "tunnel" };
    for (j, b) in backends.iter().enumerate() {
        let span = Some(svc.backends[j].get_ref().address.span());
        let field = format!("service[{i}].backend[{j}].address");
        if dsr && b.address.is_ipv4() != vip.is_ipv4() {
            return Err(at.error(
                span,
                field,
                format!(
                    "backend {} and VIP {vip} are of different IP families, and DSR rewrites only \
                     the MAC",
                    b.address
                ),
                "use a backend of the VIP's family, or mode = \"tunnel\", which carries one family \
                 inside the other",
            ));
        }
        if b.address.port() != vip.port() {
            return Err(at.error(
                span,
                field,
                format!(
                    "backend {} listens on another port than the VIP {vip}: in {mode} mode the \
                     packet reaches the backend still addressed to the VIP and its port",
                    b.address
                ),
                format!(
                    "write the backend as \"{}\" and have it listen on the VIP {} (bound on a \
                     loopback or dummy address), or use mode = \"nat\"",
                    SocketAddr::new(b.address.ip(), vip.port()),
                    vip
                ),
            ));
        }
    }
    Ok(())
}

/// `[service.tunnel]`, or the defaults (IPIP, the balancer's own source) when it is absent.
pub fn tunnel(
    at: &Locator<'_>,
    i: usize,
    raw: Option<&Spanned<RawTunnel>>,
) -> Result<Tunnel, ConfigError> {
    let f = |name: &str| format!("service[{i}].tunnel.{name}");
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Ok(Tunnel {
            encap: Encap::Ipip,
            port: DEFAULT_GUE_PORT,
            source_v4: None,
            source_v6: None,
        });
    };
    let port = match &raw.port {
        None => DEFAULT_GUE_PORT,
        Some(p) if raw.encap == Encap::Ipip => {
            return Err(at.error(
                Some(p.span()),
                f("port"),
                "`port` is GUE's UDP port, and this tunnel is IPIP",
                "remove `port`, or set encap = \"gue\"",
            ));
        }
        Some(p) if *p.get_ref() == 0 => {
            return Err(at.error(
                Some(p.span()),
                f("port"),
                "port 0 is no UDP port",
                format!(
                    "use the port the backends' decapsulators listen on, such as {DEFAULT_GUE_PORT}"
                ),
            ));
        }
        Some(p) => *p.get_ref(),
    };
    let source = |value: &Option<Spanned<String>>, name: &str, v4: bool| match value {
        None => Ok(None),
        Some(s) => match s.get_ref().parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv4() == v4 && !ip.is_unspecified() && !ip.is_multicast() => {
                Ok(Some(ip))
            }
            _ => Err(at.error(
                Some(s.span()),
                f(name),
                format!(
                    "\"{}\" is not a unicast IPv{} address",
                    s.get_ref(),
                    if v4 { 4 } else { 6 }
                ),
                format!(
                    "give this balancer's address toward the {} backends, such as {}, or leave \
                     it out to use the route's source",
                    if v4 { "IPv4" } else { "IPv6" },
                    if v4 { "\"10.0.1.1\"" } else { "\"fd00:1::1\"" }
                ),
            )),
        },
    };
    let source_v4 = source(&raw.source_v4, "source_v4", true)?.map(|ip| match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("checked above"),
    });
    let source_v6 = source(&raw.source_v6, "source_v6", false)?.map(|ip| match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(_) => unreachable!("checked above"),
    });
    Ok(Tunnel {
        encap: raw.encap,
        port,
        source_v4,
        source_v6,
    })
}
