//! `forwarding = FORWARD_IPIP | FORWARD_GUE`: the client's packet, untouched, is wrapped in an
//! outer IP header (and for GUE a UDP header) from the balancer to the backend, which strips it
//! (`understudy decap`, or the kernel's own ipip/fou) and answers the client directly. The outer
//! family is the backend's, so IPv6 can ride IPv4 (6in4) and the reverse.
//!
//! Katran's choices, kept: the outer header copies the inner TOS/traffic class, its TTL is 64,
//! IPv4's carries DF (the balancer answers too-big itself, see `too_big`), and GUE's source port
//! (IPv6's flow label too) carries the flow hash, so ECMP and the backend's NIC queues spread
//! flows. GUE is variant 1, the inner IP packet directly behind UDP, with a zero UDP checksum
//! (RFC 6935 allows it for tunnels over IPv6; Linux's receiver needs `udp6zerocsumrx` there).

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    Counter, FAMILY_V4, FlowKey, PROTO_UDP,
    forwarding::Tunnel,
    forwarding::{IPPROTO_IPIP, IPPROTO_IPV6, OUTER_TTL, gue_source_port, overhead},
    hash::flow_hash,
    headers,
};

use crate::{
    forward::{NoHop, drop, emit, ip_len, next_hop, pass},
    maps::{TUNNELS, count},
    packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, Frame, load, store},
    parse::Parsed,
    too_big,
};

/// Wraps the packet toward backend `id` at `addr` (`gue`: GUE, otherwise IPIP) and sends it.
#[inline(always)]
pub fn wrap(ctx: &XdpContext, p: &Parsed, id: u32, addr: &[u32; 4], gue: bool) -> u32 {
    let Some(t) = TUNNELS.get(id) else {
        return drop(Counter::DropNoTunnel);
    };
    if t.family == 0 {
        return drop(Counter::DropNoTunnel);
    }
    let Some(inner_len) = ip_len(ctx, p) else {
        return pass(Counter::PassTruncated);
    };
    let Some((outer, mut header)) = outer(t, &p.key, addr, gue, inner_len) else {
        return drop(Counter::DropTooBig);
    };
    let outer_len = header.len as u32;
    let overhead = outer_len - inner_len;
    // A tagged frame leaves untagged, through the stack: XDP cannot send on a VLAN device.
    let hop = if p.vlan {
        Err(NoHop::Stack(Counter::PassVlan))
    } else {
        next_hop(ctx, &outer, id, outer_len, false)
    };
    if let Err(NoHop::TooBig(mtu)) = hop {
        return too_big::answer(ctx, p, mtu.saturating_sub(overhead));
    }

    let Some(tos) = inner_tos(ctx, p) else {
        return pass(Counter::PassTruncated);
    };
    let Some(macs) = load::<[u8; 12]>(ctx, 0) else {
        return pass(Counter::PassTruncated);
    };
    // The inner packet stays where it is; the Ethernet header and the outer headers go in front.
    let delta = (ETH_LEN as i32 + overhead as i32) - p.l3 as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0 {
        return drop(Counter::DropEncapFailed);
    }
    header.tos = tos;
    let written = write_outer(ctx, &header);
    if written.is_none() {
        return drop(Counter::DropEncapFailed);
    }
    count(Counter::Encapsulated);
    match hop {
        Ok(h) => emit(ctx, h.ifindex, h.dmac, h.smac),
        Err(reason) => {
            // The stack forwards the outer packet (and resolves the neighbour): the frame keeps
            // the MACs it arrived with, so the stack takes it as addressed to this host.
            if store(ctx, 0, macs).is_none() {
                return drop(Counter::DropEncapFailed);
            }
            pass(reason.into())
        }
    }
}

/// The outer 5-tuple and header for the packet of `inner` (IP length `ip_len`) wrapped toward
/// `dst` through tunnel `t`, GUE or IPIP; `None` past 65,535 bytes. The TOS is left 0 for the
/// caller to copy from the inner header. Shared by the XDP path and the probes' TC program.
#[inline(always)]
pub fn outer(
    t: &Tunnel,
    inner: &FlowKey,
    dst: &[u32; 4],
    gue: bool,
    ip_len: u32,
) -> Option<(FlowKey, OuterHeader)> {
    let v4 = t.family == FAMILY_V4;
    let len = ip_len + overhead(v4, gue);
    if len > u16::MAX as u32 {
        return None;
    }
    let hash = flow_hash(inner);
    let sport = gue_source_port(hash);
    let inner_proto = if inner.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let proto = if gue { PROTO_UDP } else { inner_proto };
    let key = FlowKey {
        src: t.src,
        dst: *dst,
        src_port: if gue { sport.to_be() } else { 0 },
        dst_port: if gue { t.port } else { 0 },
        proto,
        family: t.family,
        _pad: 0,
    };
    let header = OuterHeader {
        v4,
        tos: 0,
        hash,
        len: len as u16,
        proto,
        src: t.src,
        dst: *dst,
        gue_ports: if gue {
            Some((sport, u16::from_be(t.port)))
        } else {
            None
        },
    };
    Some((key, header))
}

/// What goes in front of the inner packet.
pub struct OuterHeader {
    pub v4: bool,
    pub tos: u8,
    pub hash: u32,
    /// The outer IP length.
    pub len: u16,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// GUE's source and destination ports (host order).
    pub gue_ports: Option<(u16, u16)>,
}

/// Writes the Ethernet type, the outer IP header and GUE's UDP header behind the MACs, in an XDP
/// frame or (for the path-following health checks) an skb. Straight code with early returns:
/// closures here were outlined by LLVM into BPF subprograms whose stack frames add up past the
/// verifier's 512 bytes.
#[inline(always)]
pub fn write_outer(ctx: &impl Frame, h: &OuterHeader) -> Option<()> {
    let ip_len = if h.v4 {
        store(ctx, 12, ETH_P_IP.to_be())?;
        store(
            ctx,
            ETH_LEN,
            headers::ipv4(h.tos, h.len, true, h.proto, OUTER_TTL, h.src[0], h.dst[0]),
        )?;
        20
    } else {
        store(ctx, 12, ETH_P_IPV6.to_be())?;
        store(
            ctx,
            ETH_LEN,
            headers::ipv6(
                h.tos,
                h.hash,
                h.len - 40,
                h.proto,
                OUTER_TTL,
                &h.src,
                &h.dst,
            ),
        )?;
        40
    };
    if let Some((sport, dport)) = h.gue_ports {
        store(
            ctx,
            ETH_LEN + ip_len,
            headers::udp(sport, dport, h.len - ip_len as u16),
        )?;
    }
    Some(())
}

/// The inner packet's TOS (IPv4) or traffic class (IPv6), copied to the outer header.
#[inline(always)]
fn inner_tos(ctx: &XdpContext, p: &Parsed) -> Option<u8> {
    let [a, b]: [u8; 2] = load(ctx, p.l3)?;
    Some(if p.key.family == FAMILY_V4 {
        b
    } else {
        (a & 0x0f) << 4 | b >> 4
    })
}
