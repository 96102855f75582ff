//! Sends a translated packet on: a FIB lookup (or, toward a backend, the next hop cached from an
//! earlier one) gives the egress interface and next-hop MACs, then XDP_TX (same interface) or
//! XDP_REDIRECT. Whatever the FIB cannot settle (an unresolved
//! neighbour, a local or missing route, an MTU problem) goes to the stack with XDP_PASS: the packet
//! is already translated, so the kernel's own forwarding finishes the job and resolves neighbours.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Counter, FAMILY_V4, FlowKey};

use crate::{
    maps::{NEXT_HOPS, SETTINGS, count},
    nat::decrement_ttl,
    packet::{load, store},
    parse::Parsed,
};

/// IP lengths every link carries, so a cached hop serves them without a length seen first:
/// IPv6's minimum MTU (RFC 8200), and for IPv4 the 576 bytes every host must accept (RFC 791),
/// which no practical link is below.
const MIN_MTU_V4: u32 = 576;
const MIN_MTU_V6: u32 = 1280;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Forwards the packet whose (already rewritten) 5-tuple is `key`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Parsed, key: &FlowKey) -> u32 {
    finish(ctx, p, route(ctx, p, key))
}

/// The FIB's next hop for a packet that will carry the 5-tuple `key`, or why the stack must
/// forward it instead. It reads only the IP length from the packet, so it may run before the
/// rewrite (the reply path asks first whether the packet is for this host).
#[inline(always)]
pub fn route(ctx: &XdpContext, p: &Parsed, key: &FlowKey) -> Result<Hop, Counter> {
    // A tagged frame must leave on the right VLAN device, which XDP cannot redirect to.
    if p.vlan {
        return Err(Counter::PassVlan);
    }
    let len = ip_len(ctx, p).ok_or(Counter::PassTruncated)?;
    lookup(ctx, key, len)
}

/// Why a lookup gave no next hop to send to.
#[derive(Clone, Copy)]
pub enum NoHop {
    /// The stack must forward the packet, counted under this reason.
    Stack(Counter),
    /// Longer than the egress MTU (the FIB's `mtu_result`).
    TooBig(u32),
    /// The next hop is a gateway where only an on-link backend will do (DSR).
    NotOnLink,
}

impl From<NoHop> for Counter {
    fn from(n: NoHop) -> Counter {
        match n {
            NoHop::Stack(c) => c,
            NoHop::TooBig(_) => Counter::PassFibOther,
            NoHop::NotOnLink => Counter::DropDsrNotOnLink,
        }
    }
}

/// The FIB lookup itself, for a packet of IP length `len` that will carry `key`.
#[inline(always)]
fn lookup(ctx: &XdpContext, key: &FlowKey, len: u32) -> Result<Hop, Counter> {
    fib(ctx, key, len, false).map_err(Counter::from)
}

/// [`lookup`], telling an MTU refusal (with the MTU) from the rest; with `on_link`, a next hop
/// through a gateway is refused.
#[inline(always)]
fn fib(ctx: &XdpContext, key: &FlowKey, len: u32, on_link: bool) -> Result<Hop, NoHop> {
    let (rc, fib) = ask_fib(ctx.as_ptr(), ctx.ingress_ifindex() as u32, key, len);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if on_link && via_gateway(&fib, key) {
                return Err(NoHop::NotOnLink);
            }
            Ok(Hop {
                ifindex: fib.ifindex,
                dmac: fib.dmac,
                smac: fib.smac,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(NoHop::Stack(Counter::PassNoNeighbour)),
        BPF_FIB_LKUP_RET_NOT_FWDED => Err(NoHop::Stack(Counter::PassNotForwarded)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(NoHop::TooBig(
            unsafe { fib.__bindgen_anon_1.mtu_result } as u32,
        )),
        _ => Err(NoHop::Stack(Counter::PassFibOther)),
    }
}

/// Asks the FIB about a packet of IP length `len` carrying `key`, as if it came in on
/// `ifindex`: the answer code, and the parameters it filled (egress interface, MACs, and the
/// next hop's address over the destination). `ctx` is the program's context, XDP or TC.
#[inline(always)]
pub fn ask_fib(ctx: *mut c_void, ifindex: u32, key: &FlowKey, len: u32) -> (u32, FibParams) {
    let mut fib = zeroed_params();
    fib.l4_protocol = key.proto;
    fib.sport = key.src_port;
    fib.dport = key.dst_port;
    fib.ifindex = ifindex;
    if key.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = key.src[0];
        fib.__bindgen_anon_4.ipv4_dst = key.dst[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = key.src;
        fib.__bindgen_anon_4.ipv6_dst = key.dst;
    }
    // At most 65,535: `ip_len` saturates.
    fib.__bindgen_anon_1.tot_len = len as u16;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx,
            &mut fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    (rc as u32, fib)
}

/// Whether the FIB's answer for `key` goes through a gateway: it writes the gateway's address
/// over the destination when there is one.
#[inline(always)]
pub fn via_gateway(fib: &FibParams, key: &FlowKey) -> bool {
    if key.family == FAMILY_V4 {
        unsafe { fib.__bindgen_anon_4.ipv4_dst != key.dst[0] }
    } else {
        unsafe { fib.__bindgen_anon_4.ipv6_dst != key.dst }
    }
}

/// A zeroed parameter block. Eight volatile stores, because LLVM turns a plain zeroing into a
/// call to `memset`, a BPF subprogram, and a program that tail-calls may have none while its
/// BTF is not loaded.
#[inline(always)]
fn zeroed_params() -> FibParams {
    const WORDS: usize = size_of::<FibParams>() / 8;
    const _: () = assert!(size_of::<FibParams>() == WORDS * 8);
    let mut block = core::mem::MaybeUninit::<FibParams>::uninit();
    let words = block.as_mut_ptr() as *mut u64;
    for i in 0..WORDS {
        // SAFETY: inside the block; every byte is written before it is read.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: all zero, a valid value for this plain C struct.
    unsafe { block.assume_init() }
}

/// Where to send a packet: the egress interface and the frame's MACs.
#[derive(Clone, Copy)]
pub struct Hop {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// Sends a packet, rewritten since `route` answered `next`, as [`forward`] would have: TTL,
/// MACs, then out of the interface.
#[inline(always)]
pub fn finish(ctx: &XdpContext, p: &Parsed, next: Result<Hop, Counter>) -> u32 {
    match next {
        Ok(hop) => send(ctx, p, hop.ifindex, hop.dmac, hop.smac),
        Err(reason) => pass(reason),
    }
}

/// The IP length as the FIB's MTU check sees it. Saturating: an IPv6 payload length that lies
/// near 65535 must fail the MTU check, not wrap round to a small length and pass it (the packet
/// fuzzer found it).
#[inline(always)]
pub fn ip_len(ctx: &XdpContext, p: &Parsed) -> Option<u32> {
    if p.key.family == FAMILY_V4 {
        load::<u16>(ctx, p.l3 + 2).map(|v| u16::from_be(v) as u32)
    } else {
        load::<u16>(ctx, p.l3 + 4).map(|v| u16::from_be(v).saturating_add(40) as u32)
    }
}

/// Forwards a packet already rewritten to backend `id` (its 5-tuple is `key`) through
/// [`next_hop`], as [`forward`] would. So an established flow costs no FIB lookup.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, p: &Parsed, key: &FlowKey, id: u32) -> u32 {
    if p.vlan {
        return pass(Counter::PassVlan);
    }
    let Some(len) = ip_len(ctx, p) else {
        return pass(Counter::PassTruncated);
    };
    match next_hop(ctx, key, id, len, false) {
        Ok(hop) => send(ctx, p, hop.ifindex, hop.dmac, hop.smac),
        Err(reason) => pass(reason.into()),
    }
}

/// The next hop toward backend `id` for a packet of IP length `len` whose (outer) 5-tuple is
/// `key`. The backend's cached hop serves when it is current (`Settings::hop_generation`) and
/// the packet is no longer than the family's minimum MTU or than one it has carried before;
/// otherwise the FIB is asked and its answer cached. A neighbour the FIB cannot resolve still
/// goes to the stack, which resolves it. ECMP and policy routing by source or ingress are
/// decided once per backend, not per flow. With `on_link`, a hop through a gateway is refused
/// (and never cached): DSR rewrites the MAC alone.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    key: &FlowKey,
    id: u32,
    len: u32,
    on_link: bool,
) -> Result<Hop, NoHop> {
    let generation = SETTINGS.get(0).map_or(0, |s| s.hop_generation);
    if generation != 0
        && let Some(hop) = NEXT_HOPS.get(id)
        && hop.generation == generation
        && len <= hop.max_len
    {
        return Ok(Hop {
            ifindex: hop.ifindex,
            dmac: hop.dmac,
            smac: hop.smac,
        });
    }
    let fib = fib(ctx, key, len, on_link)?;
    count(Counter::NextHopLookup);
    if generation != 0
        && let Some(hop) = NEXT_HOPS.get_ptr_mut(id)
    {
        // SAFETY: an array slot; a racing CPU writes the same answer, and the generation goes
        // last so a reader sees it only after the rest.
        unsafe {
            let same = (*hop).generation == generation && (*hop).ifindex == fib.ifindex;
            let floor = if key.family == FAMILY_V4 {
                MIN_MTU_V4
            } else {
                MIN_MTU_V6
            };
            let known = if same { (*hop).max_len } else { floor };
            (*hop).max_len = len.max(known);
            (*hop).ifindex = fib.ifindex;
            (*hop).dmac = fib.dmac;
            (*hop).smac = fib.smac;
            (*hop).generation = generation;
        }
    }
    Ok(fib)
}

/// TTL, MACs, then out of interface `ifindex`: XDP_TX when it is the one the packet came in on.
#[inline(always)]
pub fn send(ctx: &XdpContext, p: &Parsed, ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) -> u32 {
    if decrement_ttl(ctx, p).is_none() {
        return pass(Counter::PassTtl);
    }
    emit(ctx, ifindex, dmac, smac)
}

/// MACs, then out of interface `ifindex`, the IP packet as it is.
#[inline(always)]
pub fn emit(ctx: &XdpContext, ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) -> u32 {
    if store(ctx, 0, dmac).is_none() || store(ctx, 6, smac).is_none() {
        return pass(Counter::PassTruncated);
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        count(Counter::Tx);
        XDP_TX
    } else {
        count(Counter::Redirect);
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}

#[inline(always)]
pub fn pass(reason: Counter) -> u32 {
    count(reason);
    XDP_PASS
}

#[inline(always)]
pub fn drop(reason: Counter) -> u32 {
    count(reason);
    XDP_DROP
}
