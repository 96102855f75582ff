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

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP, helpers::bpf_xdp_adjust_head, programs::XdpContext,
};
use lb_common::{
    Counter, FAMILY_V4, FORWARD_GUE, FlowKey, PROTO_UDP, ServiceInfo,
    forwarding::{
        GUE_OVERHEAD_V4, GUE_OVERHEAD_V6, IPIP_OVERHEAD_V4, IPIP_OVERHEAD_V6, IPPROTO_IPIP,
        IPPROTO_IPV6, OUTER_TTL, gue_source_port,
    },
    hash::flow_hash,
    headers,
};

use crate::{
    forward::{NoHop, emit, ip_len, next_hop, pass},
    maps::{TUNNELS, count},
    packet::{load, store},
    parse::Parsed,
    passive::client_packet,
    select::Choice,
    too_big,
};

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[inline(always)]
pub fn steer(ctx: &XdpContext, p: &Parsed, svc: &ServiceInfo, choice: &Choice) -> u32 {
    client_packet(
        p,
        choice.new_flow,
        choice.state,
        choice.id,
        svc.syn_timeout_ms,
    );
    let Some(t) = TUNNELS.get(choice.id) else {
        return drop(Counter::DropNoTunnel);
    };
    if t.family == 0 {
        return drop(Counter::DropNoTunnel);
    }
    let outer_v4 = t.family == FAMILY_V4;
    let gue = svc.forwarding == FORWARD_GUE;
    let overhead = match (outer_v4, gue) {
        (true, false) => IPIP_OVERHEAD_V4,
        (false, false) => IPIP_OVERHEAD_V6,
        (true, true) => GUE_OVERHEAD_V4,
        (false, true) => GUE_OVERHEAD_V6,
    };
    let Some(inner_len) = ip_len(ctx, p) else {
        return pass(Counter::PassTruncated);
    };
    let outer_len = inner_len + overhead;
    if outer_len > u16::MAX as u32 {
        return drop(Counter::DropTooBig);
    }
    let hash = flow_hash(&p.key);
    let inner_proto = if p.key.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let sport = gue_source_port(hash);
    let outer = FlowKey {
        src: t.src,
        dst: choice.backend.addr,
        src_port: if gue { sport.to_be() } else { 0 },
        dst_port: if gue { t.port } else { 0 },
        proto: if gue { PROTO_UDP } else { inner_proto },
        family: t.family,
        _pad: 0,
    };
    // A tagged frame leaves untagged, through the stack: XDP cannot send on a VLAN device.
    let hop = if p.vlan {
        Err(NoHop::Stack(Counter::PassVlan))
    } else {
        next_hop(ctx, &outer, choice.id, outer_len, false)
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
    let ip_at = ETH_LEN;
    let written = if outer_v4 {
        let proto = outer.proto;
        store(ctx, 12, ETH_P_IP.to_be()).and_then(|_| {
            store(
                ctx,
                ip_at,
                headers::ipv4(
                    tos,
                    outer_len as u16,
                    true,
                    proto,
                    OUTER_TTL,
                    t.src[0],
                    outer.dst[0],
                ),
            )
        })
    } else {
        store(ctx, 12, ETH_P_IPV6.to_be()).and_then(|_| {
            store(
                ctx,
                ip_at,
                headers::ipv6(
                    tos,
                    hash,
                    (outer_len - 40) as u16,
                    outer.proto,
                    OUTER_TTL,
                    &t.src,
                    &outer.dst,
                ),
            )
        })
    };
    let udp_at = ip_at + if outer_v4 { 20 } else { 40 };
    let written = written.and_then(|_| {
        if gue {
            store(
                ctx,
                udp_at,
                headers::udp(sport, u16::from_be(t.port), (inner_len + 8) as u16),
            )
        } else {
            Some(())
        }
    });
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

#[inline(always)]
fn drop(reason: Counter) -> u32 {
    count(reason);
    XDP_DROP
}
