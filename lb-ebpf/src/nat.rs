//! `forwarding = FORWARD_NAT`: the destination becomes the backend ([`steer`]), and the
//! backend's replies are translated back to the VIP that `REVERSE` names for it ([`reply`]): a
//! flow has one entry, in `FLOWS`, which its replies find only to record passive evidence. Then
//! the address and port rewriting itself, with incremental checksum updates (IPv4 header,
//! TCP/UDP over the pseudo-header). IPv6 has no header checksum; its addresses enter the L4
//! checksum only.
//!
//! The updates assume a complete checksum, as every packet off a wire carries. A locally sent
//! packet on a veth with TX checksum offload carries a partial one, which no XDP program can fix;
//! the test topologies turn that offload off on the hosts' ends.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Counter, FAMILY_V4, FRAG_REWRITE_DST, FRAG_REWRITE_SRC, FlowKey, PROTO_TCP, ServiceInfo,
    checksum::{replace_addr, replace_u16, replace_u32, udp_fixup},
    edge::ReverseValue,
};

use crate::{
    forward::{finish, pass, route, to_backend},
    fragment,
    maps::{BACKEND_STATS, account, count},
    packet::{TCP_ACK, TCP_SYN, load, store},
    parse::Parsed,
    passive::{client_syn, observe_reply},
    select::Choice,
};

/// Sends a client's packet to the chosen backend by destination NAT. A SYN on a flow already
/// pinned is watched for passive evidence (a retransmission past `syn_timeout`).
#[inline(always)]
pub fn steer(ctx: &XdpContext, p: &Parsed, svc: &ServiceInfo, choice: &Choice) -> u32 {
    let b = &choice.backend;
    if !choice.new_flow && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        client_syn(&p.key, svc.syn_timeout_ms);
    }
    if rewrite(ctx, p, Side::Destination, &b.addr, b.port).is_none() {
        return pass(Counter::PassTruncated);
    }
    fragment::remember(p, FRAG_REWRITE_DST, &b.addr, choice.id);
    let out = FlowKey {
        dst: b.addr,
        dst_port: b.port,
        ..p.key
    };
    to_backend(ctx, p, &out, choice.id)
}

/// Which end of the 5-tuple a rewrite replaces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source: a backend's reply made to look as if the VIP sent it.
    Source,
    /// The destination: a client's packet to a VIP sent on to a backend.
    Destination,
}

/// Translates a backend's reply back to the VIP `REVERSE` names for it (`rev`), watching it for
/// passive evidence. The FIB is asked first: a packet to this host itself is the balancer's own
/// connection to the backend (a health check, the L7 proxy) and passes untouched.
#[inline(always)]
pub fn reply(ctx: &XdpContext, p: &Parsed, rev: &ReverseValue, bytes: u64) -> u32 {
    let out = FlowKey {
        src: rev.vip,
        src_port: rev.vip_port,
        ..p.key
    };
    let next = route(ctx, p, &out);
    if let Err(Counter::PassNotForwarded) = next {
        return pass(Counter::PassNotForwarded);
    }
    if p.ttl <= 1 {
        return pass(Counter::PassTtl);
    }
    observe_reply(p, &out.reversed(), rev.backend);
    account(&BACKEND_STATS, rev.backend, bytes, false);
    if rewrite(ctx, p, Side::Source, &rev.vip, rev.vip_port).is_none() {
        return pass(Counter::PassTruncated);
    }
    fragment::remember(p, FRAG_REWRITE_SRC, &rev.vip, rev.backend);
    count(Counter::ReplyTranslated);
    finish(ctx, p, next)
}

/// Replaces one end's address and port (`port` in network byte order) and fixes the checksums.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, p: &Parsed, side: Side, addr: &[u32; 4], port: u16) -> Option<()> {
    let v4 = p.key.family == FAMILY_V4;
    let (old_addr, old_port) = match side {
        Side::Source => (p.key.src, p.key.src_port),
        Side::Destination => (p.key.dst, p.key.dst_port),
    };
    let words = if v4 { 1 } else { 4 };

    let check_at = p.l4 + if p.key.proto == PROTO_TCP { 16 } else { 6 };
    let old_check: u16 = load(ctx, check_at)?;
    let mut check = replace_addr(old_check, &old_addr, addr, words);
    check = replace_u16(check, old_port, port);
    if p.key.proto != PROTO_TCP {
        check = udp_fixup(old_check, check);
    }
    store(ctx, check_at, check)?;
    store(ctx, p.l4 + if side == Side::Source { 0 } else { 2 }, port)?;
    rewrite_address(ctx, p, side, addr)
}

/// Replaces one end's address only, for a later fragment (it has no transport header): the IPv4
/// header checksum follows; IPv6 has none.
#[inline(always)]
pub fn rewrite_address(ctx: &XdpContext, p: &Parsed, side: Side, addr: &[u32; 4]) -> Option<()> {
    let old = match side {
        Side::Source => p.key.src,
        Side::Destination => p.key.dst,
    };
    if p.key.family == FAMILY_V4 {
        store(
            ctx,
            p.l3 + if side == Side::Source { 12 } else { 16 },
            addr[0],
        )?;
        let ip_check: u16 = load(ctx, p.l3 + 10)?;
        store(ctx, p.l3 + 10, replace_u32(ip_check, old[0], addr[0]))
    } else {
        store(ctx, p.l3 + if side == Side::Source { 8 } else { 24 }, *addr)
    }
}

/// Decrements the IPv4 TTL or IPv6 hop limit, as any router must. `None` if it would expire.
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, p: &Parsed) -> Option<()> {
    if p.key.family == FAMILY_V4 {
        // TTL and protocol share one 16-bit word of the header checksum.
        let word: u16 = load(ctx, p.l3 + 8)?;
        let bytes = word.to_ne_bytes();
        if bytes[0] <= 1 {
            return None;
        }
        let new = u16::from_ne_bytes([bytes[0] - 1, bytes[1]]);
        store(ctx, p.l3 + 8, new)?;
        let ip_check: u16 = load(ctx, p.l3 + 10)?;
        store(ctx, p.l3 + 10, replace_u16(ip_check, word, new))
    } else {
        // Next header and hop limit together: one-byte packet accesses compile to a bounds check
        // the verifier cannot follow.
        let [next, hop]: [u8; 2] = load(ctx, p.l3 + 6)?;
        if hop <= 1 {
            return None;
        }
        store(ctx, p.l3 + 6, [next, hop - 1])
    }
}
