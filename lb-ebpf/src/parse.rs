//! Header parsing: Ethernet, one VLAN tag, IPv4 (options allowed), IPv6 (hop-by-hop, routing and
//! destination options headers skipped), TCP and UDP. Anything else is reported as a reason to
//! pass the packet untouched: two VLAN tags, a routing header with segments left (its
//! destination is not final), UDP over IPv6 with the zero checksum RFC 8200 forbids.

use aya_ebpf::programs::XdpContext;

use crate::packet::{ETH_P_IP, ETH_P_IPV6, load, ptr_at, words16};
use lb_common::{
    Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, vlan::VlanHdr};

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers skipped before giving up; real traffic rarely carries more than two.
const IPV6_MAX_EXT: usize = 4;

/// A fragment's place in its datagram.
#[derive(Clone, Copy)]
pub struct Fragment {
    /// IP identification (16 bits for IPv4).
    pub id: u32,
    /// Offset 0: it carries the transport header, and its ports.
    pub first: bool,
}

/// Where the headers of a parsed packet are, and its 5-tuple.
pub struct Parsed {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    pub vlan: bool,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Set for a fragment. A later one (not `first`) has no transport header: its ports are 0
    /// and `l4` is where its payload starts.
    pub frag: Option<Fragment>,
    /// TCP flags (byte 13 of the header); 0 for UDP and ICMP.
    pub tcp_flags: u8,
    pub key: FlowKey,
}

/// Parses the packet up to its ports, or says why it must pass untouched.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Counter> {
    let eth: EthHdr = load(ctx, 0).ok_or(Counter::PassTruncated)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    let mut vlan = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag: VlanHdr = load(ctx, l3).ok_or(Counter::PassTruncated)?;
        ether_type = u16::from_be(tag.ether_type);
        l3 += VlanHdr::LEN;
        vlan = true;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return Err(Counter::PassQinq);
        }
    }
    let ttl;
    let mut frag = None;
    let mut key = FlowKey {
        src: [0; 4],
        dst: [0; 4],
        src_port: 0,
        dst_port: 0,
        proto: 0,
        family: 0,
        _pad: 0,
    };
    let l4 = match ether_type {
        ETH_P_IP => {
            let ip: Ipv4Hdr = load(ctx, l3).ok_or(Counter::PassTruncated)?;
            let ihl = ((ip.vihl & 0x0f) as usize) * 4;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
                return Err(Counter::PassUnsupported);
            }
            // MF set or a non-zero offset: a fragment. Only the first has ports; the later ones
            // follow it (see `fragment`).
            let more = ip.frags[0] & 0x20 != 0;
            let offset_nonzero = (ip.frags[0] & 0x1f) != 0 || ip.frags[1] != 0;
            if more || offset_nonzero {
                frag = Some(Fragment {
                    id: u16::from_ne_bytes(ip.id) as u32,
                    first: !offset_nonzero,
                });
            }
            key.family = FAMILY_V4;
            key.proto = ip.proto;
            ttl = ip.ttl;
            key.src[0] = u32::from_ne_bytes(ip.src_addr);
            key.dst[0] = u32::from_ne_bytes(ip.dst_addr);
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = load(ctx, l3).ok_or(Counter::PassTruncated)?;
            if ip.vcf[0] >> 4 != 6 {
                return Err(Counter::PassUnsupported);
            }
            key.family = FAMILY_V6;
            ttl = ip.hop_limit;
            key.src = words16(ip.src_addr);
            key.dst = words16(ip.dst_addr);
            let mut next = ip.next_hdr;
            let mut off = l3 + Ipv6Hdr::LEN;
            for _ in 0..IPV6_MAX_EXT {
                match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                        let ext: [u8; 4] = load(ctx, off).ok_or(Counter::PassTruncated)?;
                        // Segments left: the packet is still on its way through the route.
                        if next == IPV6_ROUTING && ext[3] != 0 {
                            return Err(Counter::PassRoutingHeader);
                        }
                        next = ext[0];
                        off += (ext[1] as usize + 1) * 8;
                    }
                    _ => break,
                }
            }
            if next == IPV6_FRAGMENT {
                let hdr: [u8; 8] = load(ctx, off).ok_or(Counter::PassTruncated)?;
                next = hdr[0];
                let offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                frag = Some(Fragment {
                    id: u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                    first: offset == 0,
                });
                off += 8;
            }
            key.proto = next;
            off
        }
        _ => return Err(Counter::PassNotIp),
    };
    // A later fragment has no transport header to read.
    if frag.is_some_and(|f| !f.first) {
        if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
            return Err(Counter::PassUnsupported);
        }
        return Ok(Parsed {
            l3,
            l4,
            vlan,
            ttl,
            frag,
            tcp_flags: 0,
            key,
        });
    }
    // TCP needs its full fixed header (the checksum is at 16), UDP and ICMP their 8 bytes.
    let mut tcp_flags = 0;
    match key.proto {
        PROTO_TCP => {
            let hdr: [u8; 20] = load(ctx, l4).ok_or(Counter::PassTruncated)?;
            key.src_port = u16::from_ne_bytes([hdr[0], hdr[1]]);
            key.dst_port = u16::from_ne_bytes([hdr[2], hdr[3]]);
            tcp_flags = hdr[13];
        }
        PROTO_UDP => {
            let hdr: [u8; 8] = load(ctx, l4).ok_or(Counter::PassTruncated)?;
            if key.family == FAMILY_V6 && hdr[6] == 0 && hdr[7] == 0 {
                return Err(Counter::PassUdp6ZeroChecksum);
            }
            key.src_port = u16::from_ne_bytes([hdr[0], hdr[1]]);
            key.dst_port = u16::from_ne_bytes([hdr[2], hdr[3]]);
        }
        // Only looked at for passive detection; ports stay 0, so no service or flow matches.
        PROTO_ICMP | PROTO_ICMPV6 => {
            ptr_at::<[u8; 8]>(ctx, l4).ok_or(Counter::PassTruncated)?;
        }
        _ => return Err(Counter::PassUnsupported),
    }
    Ok(Parsed {
        l3,
        l4,
        vlan,
        ttl,
        frag,
        tcp_flags,
        key,
    })
}
