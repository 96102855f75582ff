//! `on_all_down = "reject"`: answer a TCP packet to a service with nothing to offer with a RST,
//! built in place from the packet and sent back out with XDP_TX, so clients fail fast instead of
//! waiting out SYN retransmissions. What cannot be answered that way (UDP, a RST itself, IPv6
//! with extension headers) is dropped and counted.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use lb_common::{Counter, FAMILY_V4, PROTO_TCP, checksum::fold};

use crate::{
    maps::count,
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, load, store},
    parse::Parsed,
};

/// Length of the RST's TCP header: no options.
const TCP_LEN: usize = 20;

/// `on_all_down = "reject"`: a RST, counted `reject_rst`, or a drop, counted `drop_reject`.
#[inline(always)]
pub fn reject(ctx: &XdpContext, p: &Parsed) -> u32 {
    answer(ctx, p, Counter::RejectRst, Counter::DropReject)
}

/// Answers the packet with a RST, counted under `sent`, or drops it, counted under `dropped`.
#[inline(always)]
pub fn answer(ctx: &XdpContext, p: &Parsed, sent: Counter, dropped: Counter) -> u32 {
    let v4 = p.key.family == FAMILY_V4;
    let answered = p.key.proto == PROTO_TCP
        && p.tcp_flags & TCP_RST == 0
        && (v4 || p.l4 == p.l3 + 40)
        && build_rst(ctx, p, v4).is_some();
    if answered {
        count(sent);
        XDP_TX
    } else {
        count(dropped);
        XDP_DROP
    }
}

#[inline(always)]
fn build_rst(ctx: &XdpContext, p: &Parsed, v4: bool) -> Option<()> {
    let hdr: [u8; 20] = load(ctx, p.l4)?;
    let seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let ack = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let doff = ((hdr[12] >> 4) as usize) * 4;
    let ip_len = (p.l4 - p.l3) as u32;
    let total: u16 = load(ctx, p.l3 + if v4 { 2 } else { 4 })?;
    let total = u16::from_be(total) as u32 + if v4 { 0 } else { 40 };
    let payload = total.saturating_sub(ip_len + doff as u32);

    // RFC 793: answer an ACK with its acknowledgement as our sequence; answer anything else with
    // an acknowledgement of everything it occupied.
    let (new_seq, new_ack, flags) = if p.tcp_flags & TCP_ACK != 0 {
        (ack, 0u32, TCP_RST)
    } else {
        let occupied =
            payload + (p.tcp_flags & TCP_SYN != 0) as u32 + (p.tcp_flags & TCP_FIN != 0) as u32;
        (0u32, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };

    let eth: [u8; 12] = load(ctx, 0)?;
    store(
        ctx,
        0,
        [
            eth[6], eth[7], eth[8], eth[9], eth[10], eth[11], eth[0], eth[1], eth[2], eth[3],
            eth[4], eth[5],
        ],
    )?;

    let mut rst = [0u8; TCP_LEN];
    rst[0..2].copy_from_slice(&hdr[2..4]);
    rst[2..4].copy_from_slice(&hdr[0..2]);
    rst[4..8].copy_from_slice(&new_seq.to_be_bytes());
    rst[8..12].copy_from_slice(&new_ack.to_be_bytes());
    rst[12] = ((TCP_LEN / 4) as u8) << 4;
    rst[13] = flags;
    // IPv4 options are not echoed (a record-route or source-route option must not come back):
    // the RST's IP header is the bare 20 bytes, and its TCP header follows it.
    let l4 = if v4 { p.l3 + 20 } else { p.l4 };
    store(ctx, l4, rst)?;

    let src = p.key.dst;
    let dst = p.key.src;
    if v4 {
        let ihl = 20;
        store(ctx, p.l3, u16::from_ne_bytes([0x45, 0]))?; // version 4, IHL 5; TOS 0
        store(ctx, p.l3 + 2, ((ihl + TCP_LEN) as u16).to_be())?;
        store(ctx, p.l3 + 4, [0u8, 0, 0, 0])?; // id, flags, fragment offset
        store(ctx, p.l3 + 8, [64u8, PROTO_TCP])?; // TTL and protocol
        store(ctx, p.l3 + 10, 0u16)?;
        store(ctx, p.l3 + 12, src[0])?;
        store(ctx, p.l3 + 16, dst[0])?;
    } else {
        store(ctx, p.l3 + 4, (TCP_LEN as u16).to_be())?;
        store(ctx, p.l3 + 6, [PROTO_TCP, 64u8])?; // next header and hop limit
        store(ctx, p.l3 + 8, src)?;
        store(ctx, p.l3 + 24, dst)?;
    }

    let new_len = (l4 + TCP_LEN) as i32;
    let old_len = (ctx.data_end() - ctx.data()) as i32;
    if new_len < old_len && unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len - old_len) } != 0 {
        return None;
    }

    // Checksums from scratch: the header is new.
    if v4 {
        // One bounds check for the whole fixed header: a constant-length word loop compiles to
        // a check on `pkt_end + 1`, which the verifier refuses.
        let words: [u16; 10] = load(ctx, p.l3)?;
        let mut sum = 0u64;
        for w in words {
            sum += w as u64;
        }
        store(ctx, p.l3 + 10, !fold(sum))?;
    }
    let words = if v4 { 1 } else { 4 };
    let mut pseudo = 0u64;
    for i in 0..4 {
        if i < words {
            pseudo += (src[i] & 0xffff) as u64 + (src[i] >> 16) as u64;
            pseudo += (dst[i] & 0xffff) as u64 + (dst[i] >> 16) as u64;
        }
    }
    pseudo += (PROTO_TCP as u16).to_be() as u64 + (TCP_LEN as u16).to_be() as u64;
    let tcp: [u16; TCP_LEN / 2] = load(ctx, l4)?;
    let mut sum = pseudo;
    for w in tcp {
        sum += w as u64;
    }
    store(ctx, l4 + 16, !fold(sum))
}
