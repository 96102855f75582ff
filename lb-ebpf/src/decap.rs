//! `understudy_decap`: the backend side of the tunnel modes, for hosts without the kernel's
//! `ipip`/`fou` modules (or beside them). Attached to a backend's interface, it strips IPIP,
//! IP6IP6, 6in4/4in6 and GUE variant 1 packets whose outer destination is one of this host's
//! addresses (`DECAP_ADDRS`) and hands the inner packet to the local stack, where the VIP is bound
//! on a loopback or dummy address. An inner destination that is no configured VIP (`DECAP_VIPS`)
//! is dropped and counted, so the tunnel is not an open relay into the host. Everything else,
//! outer fragments included, passes untouched.
#![no_std]
#![no_main]

// Shared with the balancer, which uses its TCP and ICMP constants; this program needs the accessors.
#[allow(dead_code)]
mod packet;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    FAMILY_V4, FAMILY_V6, PROTO_UDP,
    forwarding::{
        DECAP_ADDRS_CAPACITY, DECAP_VIPS_CAPACITY, DecapAddr, DecapConfig, DecapCounter,
        IPPROTO_IPIP, IPPROTO_IPV6,
    },
};

use crate::packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, load, store, words16};

#[map]
static DECAP_VIPS: HashMap<DecapAddr, u8> = HashMap::with_max_entries(DECAP_VIPS_CAPACITY, 0);
#[map]
static DECAP_ADDRS: HashMap<DecapAddr, u8> = HashMap::with_max_entries(DECAP_ADDRS_CAPACITY, 0);
#[map]
static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

#[inline(always)]
fn count(c: DecapCounter) {
    if let Some(v) = DECAP_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn verdict(c: DecapCounter, action: u32) -> u32 {
    count(c);
    action
}

/// Whether `map` (this host's addresses, or the VIPs) holds the address.
#[inline(always)]
fn holds(map: &HashMap<DecapAddr, u8>, addr: [u32; 4], family: u8) -> bool {
    let key = DecapAddr {
        addr,
        family,
        _pad: [0; 3],
    };
    unsafe { map.get(&key) }.is_some()
}

#[xdp]
pub fn understudy_decap(ctx: XdpContext) -> u32 {
    match decap(&ctx) {
        Some(action) => action,
        None => verdict(DecapCounter::PassOther, XDP_PASS),
    }
}

/// The verdict for an encapsulated packet to this host; `None` for anything else.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<u32> {
    let ether_type = u16::from_be(load::<u16>(ctx, 12)?);
    // Where the outer headers end, and what the outer protocol says the inner packet is.
    let (mut inner_at, proto) = if ether_type == ETH_P_IP {
        let [vihl, _]: [u8; 2] = load(ctx, ETH_LEN)?;
        let frag = u16::from_be(load::<u16>(ctx, ETH_LEN + 6)?);
        // More fragments, or an offset: a piece of a packet, for the stack to reassemble.
        if vihl >> 4 != 4 || frag & 0x3fff != 0 {
            return None;
        }
        let [_, proto]: [u8; 2] = load(ctx, ETH_LEN + 8)?;
        let dst: u32 = load(ctx, ETH_LEN + 16)?;
        if !matches!(proto, IPPROTO_IPIP | IPPROTO_IPV6 | PROTO_UDP)
            || !holds(&DECAP_ADDRS, [dst, 0, 0, 0], FAMILY_V4)
        {
            return None;
        }
        (ETH_LEN + ((vihl & 0x0f) as usize) * 4, proto)
    } else if ether_type == ETH_P_IPV6 {
        let [next, _]: [u8; 2] = load(ctx, ETH_LEN + 6)?;
        let dst: [u8; 16] = load(ctx, ETH_LEN + 24)?;
        if !matches!(next, IPPROTO_IPIP | IPPROTO_IPV6 | PROTO_UDP)
            || !holds(&DECAP_ADDRS, words16(dst), FAMILY_V6)
        {
            return None;
        }
        (ETH_LEN + 40, next)
    } else {
        return None;
    };
    let gue = proto == PROTO_UDP;
    if gue {
        let port = DECAP_CONFIG.get(0).map_or(0, |c| c.gue_port);
        let dport: u16 = load(ctx, inner_at + 2)?;
        if port == 0 || dport != port {
            return None;
        }
        inner_at += 8;
    }
    let Some([version, _]) = load::<[u8; 2]>(ctx, inner_at) else {
        return Some(verdict(DecapCounter::DropTruncated, XDP_DROP));
    };
    let family = match version >> 4 {
        4 if gue || proto == IPPROTO_IPIP => FAMILY_V4,
        6 if gue || proto == IPPROTO_IPV6 => FAMILY_V6,
        _ => return Some(verdict(DecapCounter::DropTruncated, XDP_DROP)),
    };
    let vip = if family == FAMILY_V4 {
        load::<u32>(ctx, inner_at + 16).map(|a| [a, 0, 0, 0])
    } else {
        load::<[u8; 16]>(ctx, inner_at + 24).map(words16)
    };
    let Some(vip) = vip else {
        return Some(verdict(DecapCounter::DropTruncated, XDP_DROP));
    };
    if !holds(&DECAP_VIPS, vip, family) {
        return Some(verdict(DecapCounter::DropForeignVip, XDP_DROP));
    }
    let macs: [u8; 12] = load(ctx, 0)?;
    // The outer headers go; a fresh Ethernet header, with the MACs the frame came with, sits in
    // front of the inner packet.
    let strip = (inner_at - ETH_LEN) as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip) } != 0 {
        return Some(verdict(DecapCounter::DropTruncated, XDP_DROP));
    }
    let inner_type = if family == FAMILY_V4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    if store(ctx, 0, macs).is_none() || store(ctx, 12, inner_type.to_be()).is_none() {
        return Some(verdict(DecapCounter::DropTruncated, XDP_DROP));
    }
    let done = if gue {
        DecapCounter::DecapGue
    } else {
        DecapCounter::DecapIpip
    };
    Some(verdict(done, XDP_PASS))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
