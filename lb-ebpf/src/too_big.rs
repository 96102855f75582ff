//! The answer to a packet that encapsulation would make longer than the egress MTU: ICMP
//! "fragmentation needed" (IPv4, only when the client set DF) or "Packet Too Big" (IPv6),
//! carrying the MTU less the tunnel's overhead, sent back out of the interface the packet came
//! in on, from the VIP. The client's path-MTU discovery then shrinks its segments, as Katran's
//! `send_icmp_too_big` does. An IPv4 packet without DF cannot be fragmented here: it is dropped
//! and counted (`drop_too_big`).
//!
//! The answer quotes the first [`QUOTE`] bytes of the packet (its IP header and the transport
//! header), which is what the client's stack matches to its socket. Too big means at least the
//! link's MTU less the overhead, far longer than the quote.

use aya_ebpf::{
    bindings::xdp_action::XDP_TX,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Counter, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, checksum::fold, headers};

use crate::{
    forward::drop,
    maps::count,
    packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, load, ptr_at, store},
    parse::Parsed,
};

/// Bytes of the offending packet quoted: its IP header (up to 60 bytes with options, 40 for
/// IPv6) and at least the ports behind it. A multiple of 4, as `bpf_csum_diff` needs.
const QUOTE: usize = 128;
const ICMP_LEN: usize = 8;
const TTL: u8 = 64;

#[inline(always)]
pub fn answer(ctx: &XdpContext, p: &Parsed, mtu: u32) -> u32 {
    let v4 = p.key.family == FAMILY_V4;
    if v4 {
        // Flags and fragment offset: DF is 0x4000.
        let Some(frag) = load::<u16>(ctx, p.l3 + 6) else {
            return drop(Counter::DropTooBig);
        };
        if u16::from_be(frag) & 0x4000 == 0 {
            return drop(Counter::DropTooBig);
        }
    }
    let Some(macs) = load::<[[u8; 6]; 2]>(ctx, 0) else {
        return drop(Counter::DropTooBig);
    };
    let ip_len = if v4 { 20 } else { 40 };
    let room = (ip_len + ICMP_LEN) as i32;
    // The quote starts at the packet's IP header: the Ethernet header is replaced in place.
    let head = room - (p.l3 as i32 - ETH_LEN as i32);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -head) } != 0 {
        return drop(Counter::DropTooBig);
    }
    let icmp_at = ETH_LEN + ip_len;
    let total = icmp_at + ICMP_LEN + QUOTE;
    let len = (ctx.data_end() - ctx.data()) as i32;
    if len < total as i32 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, total as i32 - len) } != 0 {
        return drop(Counter::DropTooBig);
    }
    let (vip, client) = (p.key.dst, p.key.src);
    let message_len = (ICMP_LEN + QUOTE) as u16;
    let ok = if v4 {
        store(ctx, 0, [macs[1], macs[0]])
            .and_then(|_| store(ctx, 12, ETH_P_IP.to_be()))
            .and_then(|_| {
                let h = headers::ipv4(
                    0,
                    20 + message_len,
                    false,
                    PROTO_ICMP,
                    TTL,
                    vip[0],
                    client[0],
                );
                store(ctx, ETH_LEN, h)
            })
            // Type 3 code 4, checksum 0 for now, unused, next-hop MTU.
            .and_then(|_| store(ctx, icmp_at, [3u8, 4, 0, 0, 0, 0]))
            .and_then(|_| store(ctx, icmp_at + 6, (mtu.min(u16::MAX as u32) as u16).to_be()))
    } else {
        store(ctx, 0, [macs[1], macs[0]])
            .and_then(|_| store(ctx, 12, ETH_P_IPV6.to_be()))
            .and_then(|_| {
                let h = headers::ipv6(0, 0, message_len, PROTO_ICMPV6, TTL, &vip, &client);
                store(ctx, ETH_LEN, h)
            })
            // Type 2 code 0, checksum 0 for now, MTU.
            .and_then(|_| store(ctx, icmp_at, [2u8, 0, 0, 0]))
            .and_then(|_| store(ctx, icmp_at + 4, mtu.to_be()))
    };
    if ok.is_none() {
        return drop(Counter::DropTooBig);
    }
    let Some(message) = ptr_at::<[u8; ICMP_LEN + QUOTE]>(ctx, icmp_at) else {
        return drop(Counter::DropTooBig);
    };
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            message as *mut u32,
            (ICMP_LEN + QUOTE) as u32,
            0,
        )
    };
    let mut total_sum = sum as u32 as u64;
    if !v4 {
        // The pseudo-header: both addresses, the length and the next header.
        total_sum += headers::addr_sum(&vip, 4)
            + headers::addr_sum(&client, 4)
            + u16::from_ne_bytes(message_len.to_be_bytes()) as u64
            + u16::from_ne_bytes([0, PROTO_ICMPV6]) as u64;
    }
    if store(ctx, icmp_at + 2, !fold(total_sum)).is_none() {
        return drop(Counter::DropTooBig);
    }
    count(Counter::TooBigAnswered);
    XDP_TX
}
