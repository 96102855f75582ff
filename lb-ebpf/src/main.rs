//! Understudy's kernel side: the XDP program `understudy_xdp`, attached to every interface that
//! carries client or backend traffic. It parses (`parse`), selects a backend for packets to a
//! VIP (`select`), hands them to the service's forwarding mode (`steer`: `nat` so far), has NAT
//! translate the backends' replies back, translates ICMP errors (`icmp`) and later fragments
//! (`fragment`), and leaves everything else to the stack untouched. User space owns the maps
//! (see `lb-common`); this program only reads the service, backend and ring maps and writes
//! flows, fragments and counters.
#![no_std]
#![no_main]

#[cfg(feature = "bench")]
mod bench;
mod forward;
mod fragment;
mod icmp;
mod maps;
mod nat;
mod packet;
mod parse;
mod passive;
mod redirect_drops;
mod reject;
mod select;
mod steer;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use lb_common::{Counter, PROTO_ICMP, PROTO_ICMPV6, ServiceKey};

use crate::{
    forward::pass,
    icmp::icmp,
    maps::{BACKEND_STATS, NAT_REPLIES, SERVICE_STATS, SERVICES, account, count},
    parse::parse,
    reject::reject,
    select::{Miss, choose},
};

#[xdp]
pub fn understudy_xdp(ctx: XdpContext) -> u32 {
    let p = match parse(&ctx) {
        Ok(p) => p,
        Err(reason) => return pass(reason),
    };
    if let Some(f) = p.frag
        && !f.first
    {
        return fragment::follow(&ctx, &p, f.id);
    }
    if p.key.proto == PROTO_ICMP || p.key.proto == PROTO_ICMPV6 {
        return icmp(&ctx, &p);
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let service_key = ServiceKey {
        addr: p.key.dst,
        port: p.key.dst_port,
        proto: p.key.proto,
        family: p.key.family,
    };
    if let Some(svc) = unsafe { SERVICES.get(&service_key) } {
        // Before any state or rewrite: the stack's time-exceeded then quotes the VIP.
        if p.ttl <= 1 {
            return pass(Counter::PassTtl);
        }
        let choice = match choose(&p, svc) {
            Ok(c) => c,
            Err(Miss::Reject) => return reject(&ctx, &p),
            Err(Miss::Drop(reason)) => {
                if reason == Counter::DropBadBackend {
                    warn!(&ctx, "service {}: ring names a missing backend", svc.id);
                }
                count(reason);
                return XDP_DROP;
            }
        };
        account(&SERVICE_STATS, svc.id, bytes, choice.new_flow);
        account(&BACKEND_STATS, choice.id, bytes, choice.new_flow);
        return steer::steer(&ctx, &p, svc, &choice);
    }

    // A backend's reply to a NAT flow.
    if let Some(nat) = NAT_REPLIES.get_ptr_mut(&p.key) {
        return nat::reply(&ctx, &p, nat, bytes);
    }

    count(Counter::PassNotVip);
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
