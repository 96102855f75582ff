//! Backend selection: an established flow keeps its backend while that backend is alive and is
//! still the same backend (generation); otherwise, and for a new flow, the flow hashes into the
//! service's active Maglev slot. A dead backend's flows thus move on their very next packet, with
//! no map walk: failover for established flows is one state flip in `BACKENDS`, and so is it for
//! new flows, since each ring entry carries the backend to use while its own is down
//! (`lb_common::ring_entry`). Selection only
//! selects and remembers the flow; what a forwarding mode needs besides (NAT's reply entries) is
//! the mode's own (`steer`). A connection start is first charged to its source's rate limit
//! (`rate_limit`) and counted by the flood guard (`flood`), which may leave it unwritten.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    BACKEND_ALIVE, BACKEND_NO_NEW, BackendInfo, Counter, FLOW_OPENED_BY_SYN, FORWARD_GUE,
    FORWARD_IPIP, FlowValue, MAX_RING_SIZE, MAX_SERVICES, NO_BACKEND, PROTO_TCP, REJECT,
    RING_CHUNK, RING_SLOTS, SERVICE_F_HASH_SRC_IP, ServiceInfo,
    edge::{DropReason, SERVICE_F_RATE_LIMIT},
    hash::{flow_hash, source_hash},
    ring_entry, ring_index,
};

use crate::{
    flood,
    maps::{BACKENDS, FLOWS, RINGS, count},
    packet::{TCP_ACK, TCP_SYN},
    parse::Parsed,
    rate_limit,
};

/// The backend chosen for a packet.
pub struct Choice {
    pub id: u32,
    pub backend: BackendInfo,
    /// True when this packet started (or re-started) the flow.
    pub new_flow: bool,
    /// The flow's `FLOW_*` bits as `FLOWS` held them (0 for a new flow).
    pub state: u32,
}

/// Why no backend was chosen.
pub enum Miss {
    /// Drop the packet, counted under this reason.
    Drop(Counter),
    /// Answer it with a reject (`on_all_down = "reject"`).
    Reject,
    /// Refused by the service's edge protection, for this reason.
    Refuse(DropReason),
}

/// A ring entry's backend id, or what its marker says to do.
#[inline(always)]
fn marker(id: u32) -> Result<u32, Miss> {
    match id {
        NO_BACKEND => Err(Miss::Drop(Counter::DropNoBackend)),
        REJECT => Err(Miss::Reject),
        id => Ok(id),
    }
}

#[inline(always)]
fn usable(id: u32, generation: u32) -> Option<BackendInfo> {
    let b = BACKENDS.get(id)?;
    (b.state & BACKEND_ALIVE != 0 && b.generation == generation).then_some(*b)
}

/// Picks the backend for packet `p` to the service `svc`, and remembers a new flow in `FLOWS`.
#[inline(always)]
pub fn choose(p: &Parsed, svc: &ServiceInfo) -> Result<Choice, Miss> {
    let key = &p.key;
    let tcp = key.proto == PROTO_TCP;
    let syn = tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // Only SYNs feed the flood guard: UDP flows and the ACKs of unwritten flows would keep it on
    // by themselves. In flood mode a SYN skips `FLOWS` altogether, as in Katran: a lookup that
    // misses in a full table is most of a new flow's cost, and the ring gives a retransmitted
    // SYN the backend its first one got while the ring is unchanged.
    let syn_at = if syn {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let flooding = syn && flood::syn(syn_at);
    let mut moved = false;
    if !flooding {
        if let Some(flow) = unsafe { FLOWS.get(key) } {
            if let Some(backend) = usable(flow.backend, flow.generation)
                && !(syn && backend.state & BACKEND_NO_NEW != 0)
            {
                return Ok(Choice {
                    id: flow.backend,
                    backend,
                    new_flow: false,
                    state: flow.state,
                });
            }
            moved = true;
        } else if tcp && p.tcp_flags & TCP_SYN == 0 {
            count(Counter::FlowMissEstablished);
        }
    }
    // A connection start: a SYN, or a datagram of no known flow. An evicted TCP flow's packets
    // are not charged to anything.
    let start = !tcp || syn;
    let now = if syn {
        syn_at
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    if start && svc.flags & SERVICE_F_RATE_LIMIT != 0 && rate_limit::over(p, svc, now) {
        return Err(Miss::Refuse(DropReason::RateLimited));
    }

    if svc.ring_size == 0 || svc.ring_size > MAX_RING_SIZE || svc.id >= MAX_SERVICES {
        return Err(Miss::Drop(Counter::DropNoBackend));
    }
    let hash = if svc.flags & SERVICE_F_HASH_SRC_IP != 0 {
        source_hash(key)
    } else {
        flow_hash(key)
    };
    let slot = svc.active_slot % RING_SLOTS;
    let at = ring_index(svc.id, slot, hash % svc.ring_size);
    let chunk = RINGS
        .get(at / RING_CHUNK)
        .ok_or(Miss::Drop(Counter::DropBadBackend))?;
    let entry = chunk[(at % RING_CHUNK) as usize];
    let mut id = marker(ring_entry::primary(entry))?;
    let mut backend = *BACKENDS
        .get(id)
        .ok_or(Miss::Drop(Counter::DropBadBackend))?;
    // The entry's backend is down and the writer has not replaced the entry yet: its
    // alternative is where the new table sends it (see `lb_common::ring_entry`).
    if backend.state & BACKEND_ALIVE == 0
        && let Some(alternative) = ring_entry::alternative(entry)
    {
        let alternative = marker(alternative)?;
        match BACKENDS.get(alternative) {
            Some(b) if b.state & BACKEND_ALIVE != 0 => {
                id = alternative;
                backend = *b;
                count(Counter::RingAlternative);
            }
            _ => count(Counter::RingStale),
        }
    }
    // Only a tunnel carries one family inside the other.
    if backend.family != key.family && !tunnel(svc.forwarding) {
        return Err(Miss::Drop(Counter::DropBadBackend));
    }
    if moved {
        count(Counter::Reselected);
    }

    if !flooding {
        let pinned = FlowValue {
            backend: id,
            generation: backend.generation,
            since_ns: now,
            state: if syn { FLOW_OPENED_BY_SYN } else { 0 },
            _pad: 0,
        };
        // A failed insert does not stop this packet: the next one is hashed to the same backend
        // anyway while the ring is unchanged.
        if FLOWS.insert(key, &pinned, 0).is_err() {
            count(Counter::ErrFlowInsert);
        }
    } else {
        count(Counter::FloodUnwritten);
    }
    Ok(Choice {
        id,
        backend,
        new_flow: true,
        state: 0,
    })
}

/// Whether a `forwarding` mode encapsulates.
#[inline(always)]
pub fn tunnel(forwarding: u32) -> bool {
    forwarding == FORWARD_IPIP || forwarding == FORWARD_GUE
}
