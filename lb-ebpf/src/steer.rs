//! The forwarding seam, as Katran's `pckt_encap.h`: a service's `forwarding` mode picks how a
//! packet reaches the backend selection chose. Each mode is one arm here and one module
//! (`nat.rs`, `dsr.rs`, `encap.rs`), which owns whatever state the mode needs.
//!
//! NAT finishes in [`steer`]. The modes that leave the packet's addresses alone hand back a
//! [`Forward`], which [`forward`] sends, for first fragments and later ones (`fragment`) alike.
//! Tunnels go through a tail call into `understudy_encap` (see [`forward`]).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Counter, FORWARD_DSR, FORWARD_GUE, FORWARD_IPIP, FORWARD_NAT, FRAG_FORWARD, PROGRAM_ENCAP,
    ServiceInfo,
};

use crate::{
    dsr, encap,
    forward::pass,
    fragment,
    maps::{HANDOFF, PROGRAMS},
    nat,
    parse::Parsed,
    passive::client_packet,
    select::Choice,
};

/// A packet to send, unchanged, to a backend by a mode other than NAT.
#[derive(Clone, Copy)]
pub struct Forward {
    /// `FORWARD_DSR`, `FORWARD_IPIP` or `FORWARD_GUE`.
    pub mode: u32,
    pub backend: u32,
    pub addr: [u32; 4],
}

/// What steering decided: an action, or a packet still to send.
pub enum Steered {
    Done(u32),
    Forward(Forward),
}

#[inline(always)]
pub fn steer(ctx: &XdpContext, p: &Parsed, svc: &ServiceInfo, choice: &Choice) -> Steered {
    match svc.forwarding {
        FORWARD_NAT => Steered::Done(nat::steer(ctx, p, svc, choice)),
        FORWARD_DSR | FORWARD_IPIP | FORWARD_GUE => {
            // The backend's replies bypass the balancer: the client's packets are the evidence.
            client_packet(
                p,
                choice.new_flow,
                choice.state,
                choice.id,
                svc.syn_timeout_ms,
            );
            let addr = choice.backend.addr;
            fragment::remember(p, FRAG_FORWARD + svc.forwarding, &addr, choice.id);
            Steered::Forward(Forward {
                mode: svc.forwarding,
                backend: choice.id,
                addr,
            })
        }
        // A mode this program does not know (a newer daemon): the stack decides, counted.
        _ => Steered::Done(pass(Counter::PassUnsupported)),
    }
}

/// Sends `f` by its mode: DSR's MAC rewrite here; a tunnel in `understudy_encap`, tail-called
/// with `f` in `HANDOFF` (kernel-only, so its layout lives here). That program parses the
/// packet again: offsets read back from a map have no bounds the verifier knows. The outer headers, the FIB lookup and the too-big
/// answer do not fit the main program's 512-byte stack beside everything else; a tail call
/// starts a fresh one.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Parsed, f: &Forward) -> u32 {
    match f.mode {
        FORWARD_DSR => dsr::to(ctx, p, f.backend, &f.addr),
        FORWARD_IPIP | FORWARD_GUE => {
            if let Some(slot) = HANDOFF.get_ptr_mut(0) {
                // SAFETY: this CPU's slot, read by the program tail-called next on this CPU.
                unsafe { *slot = *f };
                unsafe { PROGRAMS.tail_call(ctx, PROGRAM_ENCAP) };
            }
            pass(Counter::ErrTailCall)
        }
        _ => pass(Counter::PassUnsupported),
    }
}

/// `understudy_encap`'s work: the packet, wrapped toward the backend `HANDOFF` names.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext) -> u32 {
    let Some(f) = HANDOFF.get(0) else {
        return pass(Counter::ErrTailCall);
    };
    let f = *f;
    let p = match crate::parse::parse(ctx) {
        Ok(p) => p,
        Err(reason) => return pass(reason),
    };
    encap::wrap(ctx, &p, f.backend, &f.addr, f.mode == FORWARD_GUE)
}
