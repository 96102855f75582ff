//! The forwarding seam, as Katran's `pckt_encap.h`: a service's `forwarding` mode picks how a
//! packet reaches the backend selection chose. Each mode is one arm here and one module
//! (`nat.rs`, `dsr.rs`, `encap.rs`), which owns whatever state the mode needs.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FORWARD_DSR, FORWARD_GUE, FORWARD_IPIP, FORWARD_NAT, ServiceInfo};

use crate::{dsr, encap, forward::pass, nat, parse::Parsed, select::Choice};

#[inline(always)]
pub fn steer(ctx: &XdpContext, p: &Parsed, svc: &ServiceInfo, choice: &Choice) -> u32 {
    match svc.forwarding {
        FORWARD_NAT => nat::steer(ctx, p, svc, choice),
        FORWARD_DSR => dsr::steer(ctx, p, svc, choice),
        FORWARD_IPIP | FORWARD_GUE => encap::steer(ctx, p, svc, choice),
        // A mode this program does not know (a newer daemon): the stack decides, counted.
        _ => pass(Counter::PassUnsupported),
    }
}
