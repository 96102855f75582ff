//! `forwarding = FORWARD_DSR`: L2 direct server return, as IPVS's "direct routing". The packet
//! keeps its addresses and ports; only the Ethernet destination becomes the backend's MAC (from
//! the cached next hop), and the backend, which holds the VIP on a loopback or dummy address,
//! answers the client directly. The TTL is decremented, as by any hop that forwards.
//!
//! The backend must be on-link: a next hop through a gateway would send the frame to a router
//! that routes the VIP straight back, so it is dropped and counted (`drop_dsr_not_on_link`), and
//! the daemon refuses such a config. Nothing else can go to the stack either: the packet is still
//! addressed to the VIP, which the stack would deliver here or route back. So a neighbour not yet
//! resolved is a drop too (the client retransmits; the daemon's checks to the backend's own
//! address keep its neighbour entry resolved).

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FlowKey};

use crate::{
    forward::{NoHop, drop, ip_len, next_hop, pass, send},
    parse::Parsed,
};

/// Sends the packet to backend `id` at `addr` by its MAC.
#[inline(always)]
pub fn to(ctx: &XdpContext, p: &Parsed, id: u32, addr: &[u32; 4]) -> u32 {
    if p.vlan {
        return pass(Counter::PassVlan);
    }
    let Some(len) = ip_len(ctx, p) else {
        return pass(Counter::PassTruncated);
    };
    // The FIB is asked about the backend's own address: the route and neighbour toward it.
    let toward = FlowKey {
        dst: *addr,
        ..p.key
    };
    match next_hop(ctx, &toward, id, len, true) {
        Ok(hop) => send(ctx, p, hop.ifindex, hop.dmac, hop.smac),
        Err(NoHop::Stack(_)) => drop(Counter::DropDsrNoHop),
        Err(NoHop::TooBig(_)) => drop(Counter::DropTooBig),
        Err(NoHop::NotOnLink) => drop(Counter::DropDsrNotOnLink),
    }
}
