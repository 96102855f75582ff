//! The validated model's small enums: what a service serves, over which protocol, and what it
//! does when its backends are down. They deserialize straight from the TOML (their spelling is
//! the config's) and print the same way, so logs, `/status` and the config use one word each.

use std::fmt;

use serde::Deserialize;

use super::HttpService;

/// How a service is served: by the XDP program (NAT, DSR or a tunnel), or by the daemon's HTTP
/// proxy.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Destination NAT in XDP, with the replies translated back to the VIP. Backends must route
    /// their replies through the balancer.
    Nat,
    /// L2 direct server return: only the destination MAC changes. Backends are on-link, hold the
    /// VIP on a loopback or dummy address, and answer clients directly.
    Dsr,
    /// The packet, untouched, inside an outer header to the backend, which decapsulates it
    /// (`understudy decap`) and answers clients directly.
    Tunnel(Tunnel),
    /// The daemon terminates HTTP (and TLS) on the VIP and proxies each request, with retries
    /// over the fallback order and circuit breaking.
    Http(Box<HttpService>),
    /// A `[[pool]]`: no VIP, no listener; its backends, tiers and health serve HTTP routes.
    Pool,
}

impl Mode {
    /// The HTTP settings, for an HTTP service.
    pub fn http(&self) -> Option<&HttpService> {
        match self {
            Mode::Http(h) => Some(h),
            Mode::Nat | Mode::Dsr | Mode::Tunnel(_) | Mode::Pool => None,
        }
    }

    /// Whether the XDP program serves the VIP (every mode but HTTP, and pools, which have none).
    pub fn kernel(&self) -> bool {
        !matches!(self, Mode::Http(_) | Mode::Pool)
    }
}

/// A tunnel service's encapsulation (`[service.tunnel]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub encap: Encap,
    /// GUE's destination port on the backends.
    pub port: u16,
    /// The outer source toward IPv4 backends; by default the balancer's own address toward
    /// each (the kernel's choice of source for the route to it).
    pub source_v4: Option<std::net::Ipv4Addr>,
    /// The same toward IPv6 backends.
    pub source_v6: Option<std::net::Ipv6Addr>,
}

/// `encap`: how a tunnel wraps the packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encap {
    /// IPIP / IP6IP6 / 6in4 / 4in6: an outer IP header only (20 or 40 bytes).
    #[default]
    Ipip,
    /// GUE variant 1: outer IP and UDP (28 or 48 bytes), the UDP source port from the flow
    /// hash.
    Gue,
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encap::Ipip => "ipip",
            Encap::Gue => "gue",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::Tunnel(_) => "tunnel",
            Mode::Http(_) => "http",
            Mode::Pool => "pool",
        })
    }
}

/// A service's transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// What a new flow's position in the Maglev table is hashed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashMode {
    /// Addresses, ports and protocol: flows spread independently. The default.
    #[default]
    FiveTuple,
    /// The client address only: one client's flows share a backend (affinity).
    SourceIp,
}

/// What a service does when no backend is available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAllDown {
    /// Drop new flows (counted). The default: nothing is sent to a backend known to be down.
    #[default]
    Drop,
    /// Answer new TCP flows with a RST from XDP, so clients fail fast.
    Reject,
    /// Use every backend, healthy or not: better a chance than certain failure.
    FailOpen,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// In the driver (fastest); fails where the driver has no XDP support.
    Native,
    /// In the generic (skb) path: works everywhere, slower.
    Generic,
    /// Native, falling back to generic per interface. The default.
    #[default]
    Auto,
}

/// What a pool's backends speak (`protocol` of a `[[pool]]`, `[service.http] protocol` for a
/// service's own backends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, in clear or over TLS with ALPN `http/1.1`. The default.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, in clear (gRPC backends usually are).
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`); needs `[service.upstream_tls]`.
    H2,
    /// Over TLS, whatever ALPN settles (`h2` preferred, else `http/1.1`); in clear, HTTP/1.1.
    Auto,
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Auto => "auto",
        })
    }
}
