//! ICMP errors about translated flows, translated both ways, so path-MTU discovery works through
//! the balancer and no ICMP a client receives names a backend (as IPVS and Cilium do):
//!
//! - **From the backend's side** (the backend, or a router on its path, about a packet the
//!   balancer sent it): the quoted packet went client → backend. The outer source becomes the
//!   VIP and the quoted destination the VIP's address and port; the message goes on to the
//!   client. Only such messages can be evidence against a backend ([`crate::passive`]).
//! - **From the client's side** (a router on the client's path, about a backend reply the
//!   balancer translated, such as frag-needed or Packet Too Big): it is addressed to the VIP and
//!   quotes VIP → client. The outer destination becomes the backend and the quoted source the
//!   backend's address and port; the message goes on to the backend, whose TCP then lowers its
//!   segment size.
//!
//! Every checksum is updated incrementally: the outer IPv4 header's, the ICMP checksum over the
//! changed quoted words (and, for ICMPv6, its pseudo-header), the quoted IPv4 header's, and the
//! quoted UDP or TCP checksum when the quote holds it. Anything else (echo, unknown flows, quotes
//! cut short) passes untouched.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, programs::XdpContext};
use lb_common::{
    BACKEND_ALIVE, Counter, FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP,
    checksum::{replace_addr, replace_u16, replace_u32},
    edge::ReverseKey,
};

use crate::{
    forward::{finish, forward, pass, route},
    maps::{BACKENDS, FLOWS, REVERSE, count},
    packet::{
        ICMP_DEST_UNREACH, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH,
        ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAMETER_PROBLEM, ICMPV6_TIME_EXCEEDED, load, store,
    },
    parse::Parsed,
    passive,
};

/// Where the quoted packet's headers are, and its 5-tuple.
struct Quote {
    /// Offset of the quoted IP header.
    ip: usize,
    /// Offset of the quoted UDP or TCP header.
    l4: usize,
    key: FlowKey,
}

#[inline(always)]
fn is_error(v4: bool, kind: u8) -> bool {
    if v4 {
        matches!(
            kind,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    } else {
        matches!(
            kind,
            ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAMETER_PROBLEM
        )
    }
}

/// The quoted packet's headers, if the quote holds at least its IP header and ports.
#[inline(always)]
fn quote(ctx: &XdpContext, p: &Parsed, v4: bool) -> Option<Quote> {
    let ip = p.l4 + 8;
    let mut key = FlowKey {
        src: [0; 4],
        dst: [0; 4],
        src_port: 0,
        dst_port: 0,
        proto: 0,
        family: p.key.family,
        _pad: 0,
    };
    let l4 = if v4 {
        let h: [u8; 20] = load(ctx, ip)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        key.proto = h[9];
        key.src[0] = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
        key.dst[0] = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
        ip + ((h[0] & 0x0f) as usize) * 4
    } else {
        let h: [u32; 10] = load(ctx, ip)?;
        key.proto = (h[1].to_ne_bytes())[2];
        key.src = [h[2], h[3], h[4], h[5]];
        key.dst = [h[6], h[7], h[8], h[9]];
        ip + 40
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return None;
    }
    let ports: [u16; 2] = load(ctx, l4)?;
    key.src_port = ports[0];
    key.dst_port = ports[1];
    Some(Quote { ip, l4, key })
}

/// Which end of the quoted packet (and of the outer header) a translation replaces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// Replaces the quoted packet's `end` address and port with `addr`:`port`, and the outer header's
/// `outer` end address with `outer_addr`, fixing every checksum on the way.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    p: &Parsed,
    q: &Quote,
    end: End,
    addr: &[u32; 4],
    port: u16,
    outer: End,
    outer_addr: &[u32; 4],
) -> Option<()> {
    let v4 = p.key.family == FAMILY_V4;
    let words = if v4 { 1 } else { 4 };
    let icmp_check_at = p.l4 + 2;
    let mut icmp_check: u16 = load(ctx, icmp_check_at)?;

    // The quoted address and port.
    let (old_addr, old_port) = match end {
        End::Source => (q.key.src, q.key.src_port),
        End::Destination => (q.key.dst, q.key.dst_port),
    };
    let addr_at = q.ip
        + match (v4, end) {
            (true, End::Source) => 12,
            (true, End::Destination) => 16,
            (false, End::Source) => 8,
            (false, End::Destination) => 24,
        };
    if v4 {
        store(ctx, addr_at, addr[0])?;
    } else {
        store(ctx, addr_at, *addr)?;
    }
    icmp_check = replace_addr(icmp_check, &old_addr, addr, words);
    let port_at = q.l4 + if end == End::Source { 0 } else { 2 };
    store(ctx, port_at, port)?;
    icmp_check = replace_u16(icmp_check, old_port, port);

    // The quoted IPv4 header's checksum.
    if v4 {
        let old: u16 = load(ctx, q.ip + 10)?;
        let new = replace_u32(old, old_addr[0], addr[0]);
        store(ctx, q.ip + 10, new)?;
        icmp_check = replace_u16(icmp_check, old, new);
    }
    // The quoted transport checksum, when the quote reaches it (UDP's always does). A zero UDP
    // checksum over IPv4 means none and stays zero.
    let l4_check_at = q.l4 + if q.key.proto == PROTO_TCP { 16 } else { 6 };
    if let Some(old) = load::<u16>(ctx, l4_check_at)
        && !(q.key.proto == PROTO_UDP && v4 && old == 0)
    {
        let mut new = replace_addr(old, &old_addr, addr, words);
        new = replace_u16(new, old_port, port);
        if q.key.proto == PROTO_UDP && new == 0 {
            new = 0xffff;
        }
        store(ctx, l4_check_at, new)?;
        icmp_check = replace_u16(icmp_check, old, new);
    }

    // The outer header, and for ICMPv6 the pseudo-header its checksum covers.
    let outer_old = match outer {
        End::Source => p.key.src,
        End::Destination => p.key.dst,
    };
    let outer_at = p.l3
        + match (v4, outer) {
            (true, End::Source) => 12,
            (true, End::Destination) => 16,
            (false, End::Source) => 8,
            (false, End::Destination) => 24,
        };
    if v4 {
        store(ctx, outer_at, outer_addr[0])?;
        let ip_check: u16 = load(ctx, p.l3 + 10)?;
        store(
            ctx,
            p.l3 + 10,
            replace_u32(ip_check, outer_old[0], outer_addr[0]),
        )?;
    } else {
        store(ctx, outer_at, *outer_addr)?;
        icmp_check = replace_addr(icmp_check, &outer_old, outer_addr, 4);
    }
    store(ctx, icmp_check_at, icmp_check)
}

#[inline(always)]
pub fn icmp(ctx: &XdpContext, p: &Parsed) -> u32 {
    let v4 = p.key.family == FAMILY_V4;
    // Type and code together: a one-byte packet load compiles to a bounds check the verifier
    // cannot follow.
    let Some([kind, code]) = load::<[u8; 2]>(ctx, p.l4) else {
        return pass(Counter::PassTruncated);
    };
    if !is_error(v4, kind) {
        return pass(Counter::PassUnsupported);
    }
    let Some(q) = quote(ctx, p, v4) else {
        return pass(Counter::PassUnsupported);
    };
    // From the backend's side: the quoted packet went client -> backend, whose VIP `REVERSE`
    // knows. Not when the error is for this host (about its own health check).
    let backend = ReverseKey {
        addr: q.key.dst,
        port: q.key.dst_port,
        proto: q.key.proto,
        family: q.key.family,
    };
    if let Some(nat) = unsafe { REVERSE.get(&backend) }.copied() {
        passive::icmp_evidence(p, &q.key, kind, code, nat.backend);
        // Not on its way to the flow's client (a client forging one to the VIP): untouched.
        if p.key.dst != q.key.src {
            return XDP_PASS;
        }
        if p.ttl <= 1 {
            return pass(Counter::PassTtl);
        }
        let out = FlowKey {
            src: nat.vip,
            ..p.key
        };
        let next = route(ctx, p, &out);
        if let Err(Counter::PassNotForwarded) = next {
            return pass(Counter::PassNotForwarded);
        }
        if rewrite(
            ctx,
            p,
            &q,
            End::Destination,
            &nat.vip,
            nat.vip_port,
            End::Source,
            &nat.vip,
        )
        .is_none()
        {
            return pass(Counter::PassTruncated);
        }
        count(Counter::IcmpToClient);
        return finish(ctx, p, next);
    }
    // From the client's side, to the VIP: the quoted packet went VIP -> client.
    let flow_key = q.key.reversed();
    if p.key.dst == q.key.src
        && let Some(flow) = unsafe { FLOWS.get(&flow_key) }
        && let Some(b) = BACKENDS.get(flow.backend)
        && b.generation == flow.generation
        && b.state & BACKEND_ALIVE != 0
    {
        let b = *b;
        if p.ttl <= 1 {
            return pass(Counter::PassTtl);
        }
        if rewrite(
            ctx,
            p,
            &q,
            End::Source,
            &b.addr,
            b.port,
            End::Destination,
            &b.addr,
        )
        .is_none()
        {
            return pass(Counter::PassTruncated);
        }
        count(Counter::IcmpToBackend);
        let out = FlowKey {
            dst: b.addr,
            ..p.key
        };
        return forward(ctx, p, &out);
    }
    pass(Counter::PassUnsupported)
}
