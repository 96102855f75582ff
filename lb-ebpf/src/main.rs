//! Understudy's kernel side: the XDP program `understudy_xdp`, attached to every interface that
//! carries client or backend traffic. It parses (`parse`), refuses sources the access lists
//! deny (`acl`), selects a backend for packets to a VIP (`select`, with the per-source
//! `rate_limit` and the SYN-`flood` guard), hands them to the service's forwarding mode
//! (`steer`: `nat`, `dsr`, or the `encap` tunnels, which answer `too_big` packets), has NAT translate the backends' replies back (through `REVERSE`),
//! translates ICMP errors (`icmp`) and later fragments (`fragment`), and leaves everything else to the stack untouched. User space owns the maps
//! (see `lb-common`); this program only reads the service, backend and ring maps and writes
//! flows, fragments and counters.
#![no_std]
#![no_main]

mod acl;
#[cfg(feature = "bench")]
mod bench;
mod dsr;
mod encap;
mod flood;
mod forward;
mod fragment;
mod icmp;
mod maps;
mod nat;
mod packet;
mod parse;
mod passive;
mod probe;
mod rate_limit;
mod redirect_drops;
mod reject;
mod select;
mod steer;
mod too_big;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use lb_common::{
    Counter, PROGRAM_FRAGMENT, PROTO_ICMP, PROTO_ICMPV6, ServiceInfo, ServiceKey,
    edge::{DropReason, ReverseKey, SERVICE_F_RATE_RST, SERVICE_F_REFUSE_RST, port_bit},
};

use crate::{
    forward::{drop, pass},
    icmp::icmp,
    maps::{
        BACKEND_PORTS, BACKEND_STATS, PROGRAMS, REVERSE, SERVICE_STATS, SERVICES, account, count,
        count_refusal,
    },
    parse::{Parsed, parse},
    reject::{answer, reject},
    select::{Miss, choose},
    steer::Steered,
};

// Inlined into the entry the macro generates: a program that tail-calls may have no BPF
// subprograms while its BTF is not loaded (see the README's limitations).
#[xdp]
#[inline(always)]
pub fn understudy_xdp(ctx: XdpContext) -> u32 {
    let p = match parse(&ctx) {
        Ok(p) => p,
        Err(reason) => return pass(reason),
    };
    if let Some(f) = p.frag
        && !f.first
    {
        // Later fragments in a program of their own (a tail call: a fresh stack), so the main
        // path carries no second copy of the forwarding modes.
        unsafe { PROGRAMS.tail_call(&ctx, PROGRAM_FRAGMENT) };
        return pass(Counter::ErrTailCall);
    }
    if p.key.proto == PROTO_ICMP || p.key.proto == PROTO_ICMPV6 {
        return icmp(&ctx, &p);
    }
    let service_key = ServiceKey {
        addr: p.key.dst,
        port: p.key.dst_port,
        proto: p.key.proto,
        family: p.key.family,
    };
    match unsafe { SERVICES.get(&service_key) } {
        Some(svc) => finish(&ctx, &p, to_vip(&ctx, &p, svc)),
        None => from_elsewhere(&ctx, &p),
    }
}

/// `understudy_xdp`'s later fragments, tail-called: each follows its first fragment.
// Inlined into the entry the macro generates: a program that tail-calls may have no BPF
// subprograms while its BTF is not loaded (see the README's limitations).
#[xdp]
#[inline(always)]
pub fn understudy_fragment(ctx: XdpContext) -> u32 {
    let p = match parse(&ctx) {
        Ok(p) => p,
        Err(reason) => return pass(reason),
    };
    match p.frag {
        Some(f) if !f.first => finish(&ctx, &p, fragment::follow(&ctx, &p, f.id)),
        _ => pass(Counter::ErrTailCall),
    }
}

/// Tunnel packets, tail-called from `understudy_xdp` and `understudy_fragment`: the outer headers
/// go on with a fresh stack.
// Inlined into the entry the macro generates: a program that tail-calls may have no BPF
// subprograms while its BTF is not loaded (see the README's limitations).
#[xdp]
#[inline(always)]
pub fn understudy_encap(ctx: XdpContext) -> u32 {
    steer::encapsulate(&ctx)
}

/// Sends what steering handed back.
/// The path-following health checks, on the probe interface's TC egress (`probe`).
#[classifier]
#[inline(always)]
pub fn understudy_probe(ctx: TcContext) -> i32 {
    probe::route(&ctx)
}

#[inline(always)]
fn finish(ctx: &XdpContext, p: &Parsed, steered: Steered) -> u32 {
    match steered {
        Steered::Done(action) => action,
        Steered::Forward(f) => steer::forward(ctx, p, &f),
    }
}

/// A packet to the VIP of `svc`: refused, or a backend chosen and the packet steered to it.
#[inline(always)]
fn to_vip(ctx: &XdpContext, p: &Parsed, svc: &ServiceInfo) -> Steered {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    // Before any state or rewrite: the stack's time-exceeded then quotes the VIP.
    if p.ttl <= 1 {
        return Steered::Done(pass(Counter::PassTtl));
    }
    if let Some(reason) = acl::refused(p, svc) {
        return Steered::Done(refuse(ctx, p, svc, reason));
    }
    let choice = match choose(p, svc) {
        Ok(c) => c,
        Err(Miss::Reject) => return Steered::Done(reject(ctx, p)),
        Err(Miss::Refuse(reason)) => return Steered::Done(refuse(ctx, p, svc, reason)),
        Err(Miss::Drop(reason)) => {
            if reason == Counter::DropBadBackend {
                warn!(ctx, "service {}: ring names a missing backend", svc.id);
            }
            return Steered::Done(drop(reason));
        }
    };
    account(&SERVICE_STATS, svc.id, bytes, choice.new_flow);
    account(&BACKEND_STATS, choice.id, bytes, choice.new_flow);
    steer::steer(ctx, p, svc, &choice)
}

/// A packet to no VIP. A backend's reply to a NAT flow: only packets from a backend's address
/// and port can be one. Everything else passes after one array read (a port no backend uses) or
/// one small lookup, never touching the flow table.
#[inline(always)]
fn from_elsewhere(ctx: &XdpContext, p: &Parsed) -> u32 {
    let (word, bit) = port_bit(u16::from_be(p.key.src_port));
    let backend = ReverseKey {
        addr: p.key.src,
        port: p.key.src_port,
        proto: p.key.proto,
        family: p.key.family,
    };
    if BACKEND_PORTS.get(word).is_some_and(|w| w & bit != 0)
        && let Some(rev) = unsafe { REVERSE.get(&backend) }
    {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        return nat::reply(ctx, p, rev, bytes);
    }
    count(Counter::PassNotVip);
    XDP_PASS
}

/// Refuses a packet to `svc` for `reason`: counted per service, then a RST or a drop.
#[inline(always)]
fn refuse(ctx: &XdpContext, p: &Parsed, svc: &ServiceInfo, reason: DropReason) -> u32 {
    count_refusal(svc.id, reason);
    let rst = if reason == DropReason::RateLimited {
        SERVICE_F_RATE_RST
    } else {
        SERVICE_F_REFUSE_RST
    };
    if svc.flags & rst != 0 {
        answer(ctx, p, Counter::RefuseRst, Counter::DropRefused)
    } else {
        drop(Counter::DropRefused)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
