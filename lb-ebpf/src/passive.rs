//! Passive detection: what backends send back tells on them before the next active probe does.
//! A RST answering a SYN, an ICMP destination-unreachable about a flow to a backend, and a SYN
//! retransmitted past the service's `syn_timeout` without a SYN-ACK each become a
//! `BackendEvent` on the `EVENTS` ring buffer. User space decides what they mean.
//!
//! Only what only the backend's side can say counts. An ICMP error is evidence only when its
//! outer source is the backend itself and its code means that nothing listens (port, protocol,
//! host, administratively prohibited). Anything else quoting a translated flow, such as a
//! client forging an unreachable about its own connection or a path-MTU message, is counted
//! (`icmp_not_evidence`) and passed on without an event.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    BackendEvent, Counter, EventKind, FAMILY_V4, FLOW_OPENED_BY_SYN, FLOW_SYNACK_SEEN, FlowKey,
    PROTO_TCP,
};

use crate::{
    maps::{BACKEND_SYNACK, BACKENDS, EVENTS, FLOWS, count},
    packet::{ICMP_DEST_UNREACH, ICMPV6_DEST_UNREACH, TCP_ACK, TCP_RST, TCP_SYN},
    parse::Parsed,
};

/// ICMPv4 destination-unreachable codes that say nothing listens: host (1), protocol (2), port
/// (3), and the administratively prohibited ones (9, 10, 13). Not frag-needed (4).
#[inline(always)]
fn no_listener_v4(code: u8) -> bool {
    matches!(code, 1 | 2 | 3 | 9 | 10 | 13)
}

/// ICMPv6 destination-unreachable codes that say nothing listens: administratively prohibited
/// (1), address (3) and port (4) unreachable. Packet Too Big is another type.
#[inline(always)]
fn no_listener_v6(code: u8) -> bool {
    matches!(code, 1 | 3 | 4)
}

/// Sends one event about `backend`.
#[inline(always)]
pub fn report(backend: u32, kind: EventKind) {
    let Some(b) = BACKENDS.get(backend) else {
        return;
    };
    let event = BackendEvent {
        backend,
        generation: b.generation,
        kind: kind as u32,
        _pad: 0,
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    match EVENTS.output::<BackendEvent>(&event, 0) {
        Ok(()) => count(Counter::EventSent),
        Err(_) => count(Counter::ErrEventLost),
    }
}

/// Watches a reply from `backend` to the flow whose client 5-tuple is `client`: a SYN-ACK marks
/// the flow answered, a RST before any SYN-ACK means nothing listens. Only those two kinds of
/// segment look the flow up; data costs nothing.
#[inline(always)]
pub fn observe_reply(p: &Parsed, client: &FlowKey, backend: u32) {
    if p.key.proto != PROTO_TCP {
        return;
    }
    let synack = p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    if !synack && p.tcp_flags & TCP_RST == 0 {
        return;
    }
    let Some(flow) = FLOWS.get_ptr_mut(client) else {
        return;
    };
    // SAFETY: a map value this CPU may write; a racing writer sets the same bits.
    let (state, pinned) = unsafe { ((*flow).state, (*flow).backend) };
    if pinned != backend {
        // Pinned elsewhere (re-selected): this backend's answer is about a flow it never had.
        return;
    }
    if synack {
        if state & FLOW_SYNACK_SEEN == 0 {
            unsafe { (*flow).state = state | FLOW_SYNACK_SEEN };
            if let Some(at) = BACKEND_SYNACK.get_ptr_mut(backend) {
                unsafe { *at = bpf_ktime_get_ns() };
            }
        }
    } else if state & (FLOW_SYNACK_SEEN | FLOW_OPENED_BY_SYN) == FLOW_OPENED_BY_SYN {
        report(backend, EventKind::RstToSyn);
    }
}

/// Called for a client SYN on a flow already pinned to a backend. After a SYN-ACK it is a new
/// connection reusing the 5-tuple (clients recycle ephemeral ports): the flow starts over, so the
/// backend's answer to it counts again. Before any SYN-ACK it is a retransmission: past
/// `timeout_ms` the backend is reported (unless it answered other SYNs meanwhile), and the clock
/// restarts so one stuck flow reports at most once per timeout.
#[inline(always)]
pub fn client_syn(key: &FlowKey, timeout_ms: u32) {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let state = unsafe { (*flow).state };
    if state & FLOW_SYNACK_SEEN != 0 {
        unsafe {
            (*flow).state = FLOW_OPENED_BY_SYN;
            (*flow).since_ns = now;
        }
        return;
    }
    if timeout_ms == 0 || state & FLOW_OPENED_BY_SYN == 0 {
        return;
    }
    let since = unsafe { (*flow).since_ns };
    if now.saturating_sub(since) >= timeout_ms as u64 * 1_000_000 {
        unsafe { (*flow).since_ns = now };
        let backend = unsafe { (*flow).backend };
        // A backend that answered other SYNs since this flow began is listening: this SYN (or
        // its answer) was lost on the way, under load or by the client's network.
        if BACKEND_SYNACK.get(backend).is_some_and(|&at| at > since) {
            count(Counter::SynTimeoutNotEvidence);
            return;
        }
        report(backend, EventKind::SynTimeout);
    }
}

/// Called for a client's ACK (no SYN) on a flow pinned by its SYN and not yet answered, in the
/// modes where the backend's replies bypass the balancer (DSR, tunnels): the client's third
/// packet is the only sign that the backend answered. It ends the flow's SYN-timeout watch, as
/// a SYN-ACK does under NAT, and counts as the backend answering a SYN.
#[inline(always)]
pub fn client_ack(key: &FlowKey, backend: u32) {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value this CPU may write; a racing writer sets the same bits.
    unsafe { (*flow).state |= FLOW_SYNACK_SEEN };
    if let Some(at) = BACKEND_SYNACK.get_ptr_mut(backend) {
        unsafe { *at = bpf_ktime_get_ns() };
    }
    count(Counter::HandshakeSeen);
}

/// Watches a client packet of a flow in a mode whose replies bypass the balancer: a SYN on a
/// pinned flow may be a retransmission ([`client_syn`]), the first ACK completes the handshake
/// ([`client_ack`]).
#[inline(always)]
pub fn client_packet(p: &Parsed, new_flow: bool, state: u32, backend: u32, timeout_ms: u32) {
    if p.key.proto != PROTO_TCP || new_flow {
        return;
    }
    let flags = p.tcp_flags & (TCP_SYN | TCP_ACK);
    if flags == TCP_SYN {
        client_syn(&p.key, timeout_ms);
    } else if flags == TCP_ACK
        && state & (FLOW_SYNACK_SEEN | FLOW_OPENED_BY_SYN) == FLOW_OPENED_BY_SYN
    {
        client_ack(&p.key, backend);
    }
}

/// An ICMP error quoting `quoted` (a packet the balancer sent client -> backend) is evidence
/// against `backend` only when its outer source is the backend itself and it is a
/// destination-unreachable that means nothing listens; anything else is counted and no event.
#[inline(always)]
pub fn icmp_evidence(p: &Parsed, quoted: &FlowKey, kind: u8, code: u8, backend: u32) {
    let v4 = p.key.family == FAMILY_V4;
    let listener = if v4 {
        kind == ICMP_DEST_UNREACH && no_listener_v4(code)
    } else {
        kind == ICMPV6_DEST_UNREACH && no_listener_v6(code)
    };
    if p.key.src != quoted.dst || !listener {
        count(Counter::IcmpNotEvidence);
        return;
    }
    report(backend, EventKind::IcmpUnreachable);
}
