//! Backend selection: an established flow keeps its backend while that backend is alive and is
//! still the same backend (generation); a new flow hashes into the service's active Maglev slot.

use lb_common::{
    BACKEND_ALIVE, BackendInfo, Counter, FlowKey, FlowValue, MAX_RING_SIZE, MAX_SERVICES,
    NO_BACKEND, NatValue, RING_CHUNK, RING_SLOTS, SERVICE_F_HASH_SRC_IP, ServiceInfo,
    hash::{flow_hash, source_hash},
    ring_index,
};

use crate::maps::{BACKENDS, FLOWS, NAT_REPLIES, RINGS, count};

/// The backend chosen for a packet.
pub struct Choice {
    pub id: u32,
    pub backend: BackendInfo,
    /// True when this packet started (or re-started) the flow.
    pub new_flow: bool,
}

#[inline(always)]
fn usable(id: u32, generation: u32) -> Option<BackendInfo> {
    let b = BACKENDS.get(id)?;
    (b.state & BACKEND_ALIVE != 0 && b.generation == generation).then_some(*b)
}

/// Picks the backend for `key`, a packet to the service `svc`, and remembers new flows in both
/// directions.
#[inline(always)]
pub fn choose(key: &FlowKey, svc: &ServiceInfo) -> Result<Choice, Counter> {
    if let Some(flow) = unsafe { FLOWS.get(key) } {
        if let Some(backend) = usable(flow.backend, flow.generation) {
            return Ok(Choice {
                id: flow.backend,
                backend,
                new_flow: false,
            });
        }
    }

    if svc.ring_size == 0 || svc.ring_size > MAX_RING_SIZE || svc.id >= MAX_SERVICES {
        return Err(Counter::DropNoBackend);
    }
    let hash = if svc.flags & SERVICE_F_HASH_SRC_IP != 0 {
        source_hash(key)
    } else {
        flow_hash(key)
    };
    let slot = svc.active_slot % RING_SLOTS;
    let at = ring_index(svc.id, slot, hash % svc.ring_size);
    let chunk = RINGS.get(at / RING_CHUNK).ok_or(Counter::DropBadBackend)?;
    let id = chunk[(at % RING_CHUNK) as usize];
    if id == NO_BACKEND {
        return Err(Counter::DropNoBackend);
    }
    let backend = *BACKENDS.get(id).ok_or(Counter::DropBadBackend)?;
    if backend.family != key.family {
        return Err(Counter::DropBadBackend);
    }

    let pinned = FlowValue {
        backend: id,
        generation: backend.generation,
    };
    let reply = FlowKey {
        src: backend.addr,
        dst: key.src,
        src_port: backend.port,
        dst_port: key.src_port,
        proto: key.proto,
        family: key.family,
        _pad: 0,
    };
    let nat = NatValue {
        vip: key.dst,
        vip_port: key.dst_port,
        _pad: 0,
        service: svc.id,
        backend: id,
    };
    // A failed insert does not stop this packet: the next one is hashed to the same backend
    // anyway while the ring is unchanged.
    if FLOWS.insert(key, &pinned, 0).is_err() || NAT_REPLIES.insert(&reply, &nat, 0).is_err() {
        count(Counter::ErrFlowInsert);
    }
    Ok(Choice {
        id,
        backend,
        new_flow: true,
    })
}
