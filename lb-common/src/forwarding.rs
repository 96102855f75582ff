//! The forwarding modes beside NAT (`ServiceInfo::forwarding`), the per-backend tunnel entry the
//! encapsulating modes read, and the layouts of the backend-side decapsulator
//! (`understudy-decap`). The overheads here are the ones the README's mode table states.

/// L2 direct server return: only the destination MAC changes (to the backend's, which must be
/// on-link); the backend holds the VIP and answers the client directly.
pub const FORWARD_DSR: u32 = 1;
/// IP-in-IP: the packet is wrapped in an outer IPv4 or IPv6 header to the backend (protocol 4
/// for an IPv4 inner packet, 41 for IPv6, whatever the outer family).
pub const FORWARD_IPIP: u32 = 2;
/// GUE variant 1 (direct IP over UDP, draft-ietf-intarea-gue section 4): an outer IP and UDP
/// header, the UDP source port from the flow hash so the backend's NIC spreads flows over its
/// queues, as Katran's GUE does.
pub const FORWARD_GUE: u32 = 3;

/// IP protocol numbers of the encapsulated packet.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;

/// Outer header bytes each encapsulation adds, by outer family.
pub const IPIP_OVERHEAD_V4: u32 = 20;
pub const IPIP_OVERHEAD_V6: u32 = 40;
pub const GUE_OVERHEAD_V4: u32 = 28;
pub const GUE_OVERHEAD_V6: u32 = 48;

/// The bytes an encapsulation adds: GUE or IPIP, over an IPv4 or IPv6 outer header.
#[inline(always)]
pub const fn overhead(outer_v4: bool, gue: bool) -> u32 {
    match (outer_v4, gue) {
        (true, false) => IPIP_OVERHEAD_V4,
        (false, false) => IPIP_OVERHEAD_V6,
        (true, true) => GUE_OVERHEAD_V4,
        (false, true) => GUE_OVERHEAD_V6,
    }
}

/// The GUE port backends listen on unless the service says otherwise (Katran's default).
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// The outer header's TTL or hop limit.
pub const OUTER_TTL: u8 = 64;

/// GUE source ports carry the flow hash in this range (the dynamic ports, RFC 6335), so they
/// never look like a well-known service.
pub const GUE_SPORT_BASE: u16 = 49152;
pub const GUE_SPORT_SPAN: u32 = 16384;

/// The GUE source port of a flow with hash `hash` (host byte order).
#[inline(always)]
pub const fn gue_source_port(hash: u32) -> u16 {
    GUE_SPORT_BASE + (hash % GUE_SPORT_SPAN) as u16
}

/// `TUNNELS` value, indexed by backend id: the outer header's source for that backend (the
/// balancer's address toward it, or the service's configured one) and, for GUE, the backend's
/// port. Written by the daemon with the backend; an entry of family 0 means none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    pub src: [u32; 4],
    /// GUE destination port, network byte order (0 for IPIP).
    pub port: u16,
    /// The outer family: the backend's (`FAMILY_V4`/`FAMILY_V6`).
    pub family: u8,
    pub _pad: u8,
}

/// Sizes of the decapsulator's maps.
pub const DECAP_VIPS_CAPACITY: u32 = 1024;
pub const DECAP_ADDRS_CAPACITY: u32 = 64;

/// `DECAP_VIPS` and `DECAP_ADDRS` key: an address and its family. `DECAP_ADDRS` holds the
/// backend's own addresses (outer destinations to strip); `DECAP_VIPS` the inner destinations
/// it serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapAddr {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `DECAP_CONFIG[0]`: the GUE port to strip (network byte order, 0 for none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    pub gue_port: u16,
    pub _pad: [u8; 6],
}

counters! {
/// The decapsulator's per-CPU counters (`DECAP_COUNTERS`), by index.
DecapCounter {
    /// IPIP or IP6IP6 to this host, stripped and delivered to the stack.
    DecapIpip => "decap_ipip",
    /// GUE to this host's GUE port, stripped and delivered to the stack.
    DecapGue => "decap_gue",
    /// Dropped: encapsulated to this host, but the inner destination is no VIP it serves.
    DropForeignVip => "drop_foreign_vip",
    /// Dropped: encapsulated to this host, but the inner packet is cut short or not IP.
    DropTruncated => "drop_truncated",
    /// Not encapsulated, or not to this host: passed untouched.
    PassOther => "pass_other",
}
}

/// Map names of the decapsulator.
pub mod decap_map_names {
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_CONFIG: &str = "DECAP_CONFIG";
    pub const DECAP_COUNTERS: &str = "DECAP_COUNTERS";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Tunnel {}
    unsafe impl aya::Pod for DecapAddr {}
    unsafe impl aya::Pod for DecapConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Tunnel>(), 20);
        assert_eq!(size_of::<DecapAddr>(), 20);
        assert_eq!(size_of::<DecapConfig>(), 8);
    }

    #[test]
    fn gue_source_ports_stay_in_the_dynamic_range() {
        assert_eq!(gue_source_port(0), 49152);
        assert_eq!(gue_source_port(u32::MAX), 49152 + (u32::MAX % 16384) as u16);
        assert_eq!(gue_source_port(16383), 65535);
    }
}
