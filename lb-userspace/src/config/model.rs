//! The validated model's small enums: what a service serves, over which protocol, and what it
//! does when its backends are down. They deserialize straight from the TOML (their spelling is
//! the config's) and print the same way, so logs, `/status` and the config use one word each.

use std::fmt;

use serde::Deserialize;

use super::HttpService;

/// How a service is served: by the XDP program (NAT), or by the daemon's HTTP proxy.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Destination NAT in XDP, with the replies translated back to the VIP. Backends must route
    /// their replies through the balancer.
    Nat,
    /// The daemon terminates HTTP (and TLS) on the VIP and proxies each request, with retries
    /// over the fallback order and circuit breaking.
    Http(Box<HttpService>),
}

impl Mode {
    /// The HTTP settings, for an HTTP service.
    pub fn http(&self) -> Option<&HttpService> {
        match self {
            Mode::Http(h) => Some(h),
            Mode::Nat => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Nat => "nat",
            Mode::Http(_) => "http",
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
