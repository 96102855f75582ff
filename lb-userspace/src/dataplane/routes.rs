//! Asking the kernel how it reaches an address, as `ip route get` does (one `RTM_GETROUTE`
//! request over rtnetlink): the tunnels' default outer source, and the path-following checks'
//! own, is the answer's source. DSR needs its backends on-link: a route through a gateway would
//! hand the frame to a router that routes the VIP straight back, so such a config is refused
//! where the backend is written.

use std::{io, net::IpAddr};

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

use super::netlink::request;
use crate::config::{Config, ConfigError, Mode};

/// What the kernel's routing answered for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would send from (`src` in `ip route get`).
    pub source: Option<IpAddr>,
    pub kind: RouteType,
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The route the calling thread's network namespace would use toward `ip`.
pub fn route_to(ip: IpAddr) -> io::Result<Route> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(ip)));
    let answers = request(RouteNetlinkMessage::GetRoute(msg), 0)?;
    let Some(RouteNetlinkMessage::NewRoute(route)) = answers.into_iter().next() else {
        return Err(io::Error::other("no route in the kernel's answer"));
    };
    let find = |want: fn(&RouteAttribute) -> Option<&RouteAddress>| {
        route
            .attributes
            .iter()
            .find_map(|a| want(a).and_then(address))
    };
    Ok(Route {
        gateway: find(|a| match a {
            RouteAttribute::Gateway(g) => Some(g),
            _ => None,
        }),
        source: find(|a| match a {
            RouteAttribute::PrefSource(s) => Some(s),
            _ => None,
        }),
        kind: route.header.kind,
    })
}

/// Refuses a DSR service whose backend this host does not reach on-link, naming the backend's
/// line in the config.
pub fn check_on_link(config: &Config) -> Result<(), ConfigError> {
    for (i, svc) in config.services.iter().enumerate() {
        if svc.mode != Mode::Dsr {
            continue;
        }
        for (j, b) in svc.backends.iter().enumerate() {
            let ip = b.address.ip();
            let problem = match route_to(ip) {
                Ok(Route {
                    gateway: Some(gw), ..
                }) => format!(
                    "DSR backend {ip} is reached through the gateway {gw}, not on-link: DSR \
                     rewrites only the MAC, so the frame would go to the router"
                ),
                Ok(Route {
                    kind: RouteType::Unicast,
                    ..
                }) => continue,
                Ok(Route { kind, .. }) => {
                    format!("DSR backend {ip} has a route of type {kind:?}, not an on-link one")
                }
                Err(e) => format!("DSR backend {ip} has no route on this host ({e})"),
            };
            return Err(config.backend_error(
                i,
                j,
                &problem,
                "put the backend on a subnet of one of the balancer's interfaces (same L2 \
                 segment), or use mode = \"tunnel\", which crosses routers",
            ));
        }
    }
    Ok(())
}
