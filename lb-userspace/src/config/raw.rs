//! The config file as written: serde structs with `deny_unknown_fields`, before any validation.
//! Only `config::validate` reads these; everything else holds a validated `Config`.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub dataplane: Spanned<RawDataplane>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataplane {
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub vip: Spanned<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: ForwardingMode,
    #[serde(default)]
    pub hash: HashMode,
    pub table_size: Option<Spanned<u32>>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Spanned<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// How packets reach a backend. Only `nat` exists so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardingMode {
    /// Destination NAT to the backend, with the replies translated back to the VIP. Backends
    /// must route their replies through the balancer.
    #[default]
    Nat,
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
