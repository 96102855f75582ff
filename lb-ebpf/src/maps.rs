//! Every map of the data plane. Their layouts come from `lb-common`, which user space shares.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
    },
};
use lb_common::{
    BackendInfo, Counter, EVENTS_BYTES, FLOWS_CAPACITY, FRAGS_CAPACITY, FlowKey, FlowValue,
    FragKey, FragValue, MAX_BACKENDS, MAX_SERVICES, PROGRAMS_LEN, REDIRECT_DROPS_INTERFACES,
    RINGS_CHUNKS, RingChunk, ServiceInfo, ServiceKey, Traffic,
    edge::{
        ACL_CAPACITY, AclV4, AclV6, BACKEND_PORT_WORDS, Bucket, BucketKey, DropReason, Flood,
        NextHop, RATE_BUCKETS_CAPACITY, RateLimit, ReverseKey, ReverseValue, ServiceDrops,
        Settings,
    },
    forwarding::Tunnel,
};

/// Target interface index to frames its driver refused after XDP redirected them into it
/// (`redirect_drops.rs`). Not pinned: a counter that restarts with the daemon.
#[map]
pub static REDIRECT_DROPS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(REDIRECT_DROPS_INTERFACES, 0);

/// The programs `understudy_xdp` tail-calls (`PROGRAM_*`), filled by user space at load.
#[map]
pub static PROGRAMS: ProgramArray = ProgramArray::with_max_entries(PROGRAMS_LEN, 0);

/// This CPU's packet on its way into `understudy_encap` (`steer::forward`).
#[map]
pub static HANDOFF: PerCpuArray<crate::steer::Forward> = PerCpuArray::with_max_entries(1, 0);

/// VIP (address, port, protocol) to service.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Backend id to address and state.
#[map]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Maglev tables: `RING_SLOTS` slots of `MAX_RING_SIZE` backend ids per service. Memory-mappable,
/// so user space fills an idle slot with plain stores instead of one syscall per entry.
#[map]
pub static RINGS: Array<RingChunk> = Array::with_max_entries(RINGS_CHUNKS, BPF_F_MMAPABLE);

/// Client 5-tuple to the backend its flow is pinned to, and the flow's passive state. Per-CPU
/// LRU lists, as Katran uses: an insert that must evict takes no lock shared with the other
/// CPUs (each CPU evicts from its own share of the capacity).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(FLOWS_CAPACITY, BPF_F_NO_COMMON_LRU);

/// The first fragment's translation, for a datagram's later fragments (see `fragment`).
#[map]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(FRAGS_CAPACITY, 0);

/// When each backend last answered a SYN (`bpf_ktime_get_ns`): a SYN timeout is evidence only
/// when its backend has answered none since the flow began.
#[map]
pub static BACKEND_SYNACK: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Passive-detection reports to user space (`lb_common::BackendEvent`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Source prefixes allowed or denied, per scope (`edge::ACL_*`): IPv4 and IPv6.
#[map]
pub static ACL_V4: LpmTrie<AclV4, u32> = LpmTrie::with_max_entries(ACL_CAPACITY, 0);
#[map]
pub static ACL_V6: LpmTrie<AclV6, u32> = LpmTrie::with_max_entries(ACL_CAPACITY, 0);

/// Per service: its new-connection rate limit per source, when `SERVICE_F_RATE_LIMIT` is set.
#[map]
pub static RATE_LIMITS: Array<RateLimit> = Array::with_max_entries(MAX_SERVICES, 0);

/// Per (service, source prefix): its token bucket. A common LRU: one source's bucket must be
/// the same bucket whichever CPU its packets land on.
#[map]
pub static RATE_BUCKETS: LruHashMap<BucketKey, Bucket> =
    LruHashMap::with_max_entries(RATE_BUCKETS_CAPACITY, 0);

/// Node-wide settings (`SETTINGS[0]`), written by user space.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// The flood guard's window and state, per CPU.
#[map]
pub static FLOOD: PerCpuArray<Flood> = PerCpuArray::with_max_entries(1, 0);

/// Refusals per service and reason.
#[map]
pub static SERVICE_DROPS: PerCpuArray<ServiceDrops> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// A NAT backend (address, port, protocol) to the VIP its replies come from.
#[map]
pub static REVERSE: HashMap<ReverseKey, ReverseValue> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// A bit per port some NAT backend listens on (`edge::port_bit`): replies come from those only.
#[map]
pub static BACKEND_PORTS: Array<u64> = Array::with_max_entries(BACKEND_PORT_WORDS, 0);

/// The outer source (and GUE port) of each tunnel backend (`encap.rs`).
#[map]
pub static TUNNELS: Array<Tunnel> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The next hop to each backend, as the FIB last gave it (`forward::to_backend`).
#[map]
pub static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Global pass, forward and drop counters, indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU: no other writer, no atomics needed.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn account(stats: &PerCpuArray<Traffic>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(t) = stats.get_ptr_mut(index) {
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
            if new_flow {
                (*t).new_flows += 1;
            }
        }
    }
}

/// Counts one refusal of a packet to service `id`.
#[inline(always)]
pub fn count_refusal(id: u32, reason: DropReason) {
    if let Some(d) = SERVICE_DROPS.get_ptr_mut(id)
        && let Some(n) = unsafe { (*d).by_reason.get_mut(reason as usize) }
    {
        *n += 1;
    }
}
