//! Sends a translated packet on: a FIB lookup gives the egress interface and next-hop MACs, then
//! XDP_TX (same interface) or XDP_REDIRECT. Whatever the FIB cannot settle (an unresolved
//! neighbour, a local or missing route, an MTU problem) goes to the stack with XDP_PASS: the packet
//! is already translated, so the kernel's own forwarding finishes the job and resolves neighbours.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
        xdp_action::{XDP_PASS, XDP_TX},
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Counter, FAMILY_V4, FlowKey};

use crate::{
    maps::count,
    nat::decrement_ttl,
    packet::{load, store},
    parse::Parsed,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards the packet whose (already rewritten) 5-tuple is `key`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Parsed, key: &FlowKey) -> u32 {
    match route(ctx, p, key) {
        Ok(fib) => transmit(ctx, p, &fib),
        Err(reason) => pass(reason),
    }
}

/// The FIB's next hop for a packet that will carry the 5-tuple `key`, or why the stack must
/// forward it instead. It reads only the IP length from the packet, so it may run before the
/// rewrite (the stateless reply path asks first whether the packet is for this host).
#[inline(always)]
pub fn route(ctx: &XdpContext, p: &Parsed, key: &FlowKey) -> Result<FibParams, Counter> {
    // A tagged frame must leave on the right VLAN device, which XDP cannot redirect to.
    if p.vlan {
        return Err(Counter::PassVlan);
    }
    let mut fib: FibParams = unsafe { zeroed() };
    fib.l4_protocol = key.proto;
    fib.sport = key.src_port;
    fib.dport = key.dst_port;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    if key.family == FAMILY_V4 {
        fib.family = AF_INET;
        let tot_len: u16 = load(ctx, p.l3 + 2).ok_or(Counter::PassTruncated)?;
        fib.__bindgen_anon_1.tot_len = u16::from_be(tot_len);
        fib.__bindgen_anon_3.ipv4_src = key.src[0];
        fib.__bindgen_anon_4.ipv4_dst = key.dst[0];
    } else {
        fib.family = AF_INET6;
        let payload: u16 = load(ctx, p.l3 + 4).ok_or(Counter::PassTruncated)?;
        // Saturating: a payload length that lies near 65535 must fail the MTU check, not wrap
        // round to a small length and pass it (the packet fuzzer found it).
        fib.__bindgen_anon_1.tot_len = u16::from_be(payload).saturating_add(40);
        fib.__bindgen_anon_3.ipv6_src = key.src;
        fib.__bindgen_anon_4.ipv6_dst = key.dst;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(fib),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Counter::PassNoNeighbour),
        BPF_FIB_LKUP_RET_NOT_FWDED => Err(Counter::PassNotForwarded),
        _ => Err(Counter::PassFibOther),
    }
}

/// Sends a translated packet to the next hop `fib` gave: TTL, MACs, then out of the interface.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, p: &Parsed, fib: &FibParams) -> u32 {
    if decrement_ttl(ctx, p).is_none() {
        return pass(Counter::PassTtl);
    }
    if store(ctx, 0, fib.dmac).is_none() || store(ctx, 6, fib.smac).is_none() {
        return pass(Counter::PassTruncated);
    }
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        count(Counter::Tx);
        XDP_TX
    } else {
        count(Counter::Redirect);
        unsafe { bpf_redirect(fib.ifindex, 0) as u32 }
    }
}

#[inline(always)]
pub fn pass(reason: Counter) -> u32 {
    count(reason);
    XDP_PASS
}
