//! The one definition of every BPF map layout that Understudy's kernel program (`lb-ebpf`) and its
//! daemon (`lb-userspace`) share: keys, values, capacities, counter indices, the flow hash and the
//! incremental checksum arithmetic. Everything is `#![no_std]`, `#[repr(C)]` with explicit padding,
//! so both sides agree byte for byte; the `user` feature adds `aya::Pod` for the daemon.
//!
//! Conventions: addresses are four `u32` words holding the packet's bytes as loaded from memory
//! (network byte order, IPv4 in word 0 and the rest zero), and ports are `u16`s in network byte
//! order. Nothing is converted on the fast path; user space converts with [`addr_words`] and
//! [`u16::to_be`].
#![no_std]

#[cfg(test)]
extern crate std;

pub mod checksum;
#[macro_use]
pub mod counters;
pub mod edge;
pub mod forwarding;
pub mod hash;
pub mod headers;
pub mod probe;
pub mod ring_entry;

pub use counters::Counter;

use core::net::IpAddr;

/// Services the data plane can hold (`SERVICES`, per-service stats and ring slots).
pub const MAX_SERVICES: u32 = 128;
/// Backend entries across all services (`BACKENDS` and per-backend stats).
pub const MAX_BACKENDS: u32 = 4096;
/// Largest Maglev table, and the stride of one ring slot in `RINGS`.
pub const MAX_RING_SIZE: u32 = 65537;
/// Ring slots per service: user space fills the idle one, then flips `ServiceInfo::active_slot`.
pub const RING_SLOTS: u32 = 2;
/// Ring entries across all services and slots.
pub const RINGS_LEN: u32 = MAX_SERVICES * RING_SLOTS * MAX_RING_SIZE;
/// Ring entries per `RINGS` map element. The kernel pads every array element to 8 bytes, so a
/// `u32` element would leave holes in the memory-mapped view; 16 entries (64 bytes) leave none.
pub const RING_CHUNK: u32 = 16;
/// One `RINGS` map element.
pub type RingChunk = [u32; RING_CHUNK as usize];
/// Elements in the `RINGS` array.
pub const RINGS_CHUNKS: u32 = RINGS_LEN.div_ceil(RING_CHUNK);
/// Entries in the `FLOWS` LRU map (client 5-tuple to backend and the flow's passive state).
pub const FLOWS_CAPACITY: u32 = 262_144;
/// A ring entry that names no backend: new flows are dropped (and counted). Used for a service
/// with nothing to offer and for `on_all_down = "drop"`.
pub const NO_BACKEND: u32 = u32::MAX;
/// A ring entry that rejects new flows: a TCP RST (or, for UDP, a counted drop) straight from
/// XDP. Used for `on_all_down = "reject"`.
pub const REJECT: u32 = u32::MAX - 1;
/// Entries in the `FRAGS` LRU map: datagrams whose later fragments are being steered.
pub const FRAGS_CAPACITY: u32 = 65_536;
/// `FragValue::side`: later fragments get their destination rewritten (towards a backend).
pub const FRAG_REWRITE_DST: u32 = 0;
/// `FragValue::side`: later fragments get their source rewritten (a backend's reply, to the VIP).
pub const FRAG_REWRITE_SRC: u32 = 1;
/// `FragValue::side`: later fragments go to `backend` as the service's mode sends them, without
/// a rewrite: DSR's MAC, or the tunnel (`FRAG_FORWARD + FORWARD_*`).
pub const FRAG_FORWARD: u32 = 16;
/// `PROGRAMS` slot of `understudy_fragment`, which later fragments are tail-called into.
pub const PROGRAM_FRAGMENT: u32 = 0;
/// `PROGRAMS` slot of `understudy_encap`, which tunnel packets are tail-called into.
pub const PROGRAM_ENCAP: u32 = 1;
/// Slots in `PROGRAMS`.
pub const PROGRAMS_LEN: u32 = 2;
/// The programs in `PROGRAMS`, by slot.
pub const TAIL_PROGRAMS: [(u32, &str); 2] = [
    (PROGRAM_FRAGMENT, "understudy_fragment"),
    (PROGRAM_ENCAP, "understudy_encap"),
];
/// Interfaces `REDIRECT_DROPS` tracks (by index): far more than a balancer attaches to.
pub const REDIRECT_DROPS_INTERFACES: u32 = 1024;

/// The `xdp:xdp_devmap_xmit` tracepoint's record (see its `format` in tracefs): where frames
/// redirected by XDP were transmitted at flush time, and how many the target driver refused. The
/// layout has been stable since kernel 5.8.
pub mod devmap_xmit {
    pub const TO_IFINDEX: usize = 16;
    pub const DROPS: usize = 20;
}

/// The `xdp:xdp_redirect_err` tracepoint's record: one redirect the kernel refused at enqueue
/// time (for a veth, `-EOPNOTSUPP` while its peer can take no XDP frames). Stable since 4.x.
pub mod redirect_err {
    pub const TO_IFINDEX: usize = 24;
}

/// Capacity of the `EVENTS` ring buffer, in bytes (a power of two, a multiple of the page).
pub const EVENTS_BYTES: u32 = 256 * 1024;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// `ServiceInfo::flags`: hash only the client address, so one client sticks to one backend.
pub const SERVICE_F_HASH_SRC_IP: u32 = 1;

/// `BackendInfo::state`: the backend's established flows keep it. Without this bit a flow pinned
/// to the backend is re-selected on its next packet. (New flows follow the ring alone, which
/// leaves out draining and unhealthy backends.)
pub const BACKEND_ALIVE: u8 = 1;
/// `BackendInfo::state`: the backend takes no new connections (drained, or removed by a
/// reload); its established flows keep going. A client SYN whose 5-tuple still has a `FLOWS`
/// entry on it (a client port reused before the entry aged out) is a new connection, so it is
/// re-selected through the ring instead of following the old entry.
pub const BACKEND_NO_NEW: u8 = 2;

/// `FlowValue::state`: the backend answered this flow's SYN.
pub const FLOW_SYNACK_SEEN: u32 = 1;
/// `FlowValue::state`: the flow was pinned by a client SYN. Only such flows say anything about a
/// backend refusing connections: a flow re-selected mid-connection is answered with a RST by its
/// new backend, which knows nothing of it, and that says nothing about that backend's health.
pub const FLOW_OPENED_BY_SYN: u32 = 2;

/// Flat index of one ring entry: element `index / RING_CHUNK`, lane `index % RING_CHUNK`.
#[inline(always)]
pub const fn ring_index(service_id: u32, slot: u32, position: u32) -> u32 {
    (service_id * RING_SLOTS + slot) * MAX_RING_SIZE + position
}

/// Converts an address to the word layout used in every key and value, with its family.
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The inverse of [`addr_words`].
pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    let b = |i: usize| words[i].to_ne_bytes();
    if family == FAMILY_V4 {
        IpAddr::from(b(0))
    } else {
        let mut o = [0u8; 16];
        for i in 0..4 {
            o[i * 4..i * 4 + 4].copy_from_slice(&b(i));
        }
        IpAddr::from(o)
    }
}

/// `SERVICES` key: a VIP as the client addresses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `SERVICES` value. User space replaces it whole, so a reader sees the old or the new value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Index into per-service stats and `RINGS`, below [`MAX_SERVICES`].
    pub id: u32,
    /// Maglev table size (a prime, at most [`MAX_RING_SIZE`]).
    pub ring_size: u32,
    /// Which of the [`RING_SLOTS`] ring slots new flows hash into.
    pub active_slot: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
    /// A SYN retransmitted this long after its flow began, with no SYN-ACK seen, reports the
    /// backend (passive detection). 0 turns it off.
    pub syn_timeout_ms: u32,
    /// How packets reach the chosen backend: a `FORWARD_*` value (the kernel's `steer()`).
    pub forwarding: u32,
}

/// `ServiceInfo::forwarding`: destination NAT, replies translated back (the zero value, so
/// entries pinned before the field existed read as NAT).
pub const FORWARD_NAT: u32 = 0;
pub use forwarding::{FORWARD_DSR, FORWARD_GUE, FORWARD_IPIP};

/// `BACKENDS` value, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    /// `BACKEND_*` bits.
    pub state: u8,
    /// Bumped whenever the id is given to a different backend, so old `FLOWS` entries miss.
    pub generation: u32,
}

/// `FLOWS` key: a client's 5-tuple as it appears in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

impl FlowKey {
    /// The same flow as the other direction's packets carry it: ends swapped.
    pub const fn reversed(&self) -> FlowKey {
        self.reply_to(self.dst, self.dst_port)
    }

    /// The key of the reply to this flow once it is sent to `addr`:`port` (network byte
    /// order): the backend answering the client.
    pub const fn reply_to(&self, addr: [u32; 4], port: u16) -> FlowKey {
        FlowKey {
            src: addr,
            dst: self.src,
            src_port: port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
            _pad: 0,
        }
    }
}

/// `FLOWS` value: the backend a client flow is pinned to, and what its replies have shown. The
/// one entry a flow has: its replies find it from the other direction, through `REVERSE` (the
/// backend's VIP) and the client's 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    /// The backend's generation when the flow was pinned.
    pub generation: u32,
    /// `bpf_ktime_get_ns` when the flow was pinned (or last reported for a SYN timeout).
    pub since_ns: u64,
    /// `FLOW_*` bits for passive detection, set by the reply path.
    pub state: u32,
    pub _pad: u32,
}

/// `FRAGS` key: one IP datagram, as its fragments carry it (addresses before any rewrite, the
/// IP identification: 16 bits for IPv4, 32 for IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

/// `FRAGS` value: what the first fragment's translation did, for the later ones to repeat. They
/// have no ports, so only the address changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragValue {
    /// The address that replaces the source or destination.
    pub addr: [u32; 4],
    /// [`FRAG_REWRITE_DST`], [`FRAG_REWRITE_SRC`], or [`FRAG_FORWARD`] plus the mode.
    pub side: u32,
    /// The backend the datagram belongs to, for its traffic counters.
    pub backend: u32,
}

/// What the kernel saw a backend do wrong, sent to user space on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEvent {
    pub backend: u32,
    /// The backend's generation, so a report about a since-reused id is ignored.
    pub generation: u32,
    /// An [`EventKind`] discriminant.
    pub kind: u32,
    pub _pad: u32,
    pub time_ns: u64,
}

/// Declares [`EventKind`], its wire values and its names from one list, so they cannot drift
/// apart.
macro_rules! event_kinds {
    ($($(#[doc = $doc:literal])* $variant:ident = $value:literal => $name:literal,)+) => {
        /// Kinds of [`BackendEvent`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum EventKind {
            $($(#[doc = $doc])* $variant = $value,)+
        }

        impl EventKind {
            /// Every kind.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)+];

            pub const fn from_u32(v: u32) -> Option<EventKind> {
                match v {
                    $($value => Some(EventKind::$variant),)+
                    _ => None,
                }
            }

            pub const fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)+
                }
            }
        }
    };
}

event_kinds! {
    /// The backend answered a SYN with a RST: nothing listens.
    RstToSyn = 1 => "rst_to_syn",
    /// An ICMP destination-unreachable from the backend about a flow to it.
    IcmpUnreachable = 2 => "icmp_unreachable",
    /// A client retransmitted its SYN after the service's `syn_timeout` with no SYN-ACK seen, and
    /// the backend answered no other SYN meanwhile.
    SynTimeout = 3 => "syn_timeout",
}

/// Names of the maps both sides use: user space opens them by these names, and a host test
/// checks each against the object the kernel side builds.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RINGS: &str = "RINGS";
    pub const FLOWS: &str = "FLOWS";
    pub const FRAGS: &str = "FRAGS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const BACKEND_SYNACK: &str = "BACKEND_SYNACK";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const REDIRECT_DROPS: &str = "REDIRECT_DROPS";
    pub const ACL_V4: &str = "ACL_V4";
    pub const ACL_V6: &str = "ACL_V6";
    pub const RATE_LIMITS: &str = "RATE_LIMITS";
    pub const RATE_BUCKETS: &str = "RATE_BUCKETS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const FLOOD: &str = "FLOOD";
    pub const SERVICE_DROPS: &str = "SERVICE_DROPS";
    pub const REVERSE: &str = "REVERSE";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const BACKEND_PORTS: &str = "BACKEND_PORTS";
    pub const TUNNELS: &str = "TUNNELS";
    pub const PROGRAMS: &str = "PROGRAMS";
    pub const HANDOFF: &str = "HANDOFF";
    /// Every map of the production object.
    pub const ALL: &[&str] = &[
        SERVICES,
        BACKENDS,
        RINGS,
        FLOWS,
        FRAGS,
        SERVICE_STATS,
        BACKEND_STATS,
        BACKEND_SYNACK,
        COUNTERS,
        EVENTS,
        REDIRECT_DROPS,
        ACL_V4,
        ACL_V6,
        RATE_LIMITS,
        RATE_BUCKETS,
        SETTINGS,
        FLOOD,
        SERVICE_DROPS,
        REVERSE,
        NEXT_HOPS,
        BACKEND_PORTS,
        TUNNELS,
        PROGRAMS,
        HANDOFF,
    ];
}

/// Per-CPU traffic counters, one per service and one per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Largest packet the bench wrapper restores before each run.
pub const BENCH_MAX: usize = 256;
// The bench wrapper masks its store length with BENCH_MAX - 1 (for the 6.1 verifier).
const _: () = assert!(BENCH_MAX.is_power_of_two());

/// `BENCH_PACKET` value, used only by `cargo xtask bench`: the packet the bench-only wrapper
/// program writes back before every `test_run` repetition.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchPacket {
    pub len: u32,
    /// When non-zero, the offset of a field (the client address, or its port) overwritten with a
    /// fresh value on every run, so every run is a flow `FLOWS` has never seen.
    pub vary_at: u32,
    /// Bytes overwritten at `vary_at`: 4 (an IPv4 address) or 2 (a port).
    pub vary_len: u32,
    pub data: [u8; BENCH_MAX],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for BenchPacket {}
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for BackendEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;
    #[test]
    fn event_kinds_round_trip_and_have_distinct_names() {
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(EventKind::from_u32(*k as u32), Some(*k));
            assert!(EventKind::ALL[..i].iter().all(|o| o.name() != k.name()));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }

    #[test]
    fn the_reply_key_swaps_the_ends_and_puts_the_backend_first() {
        let client = FlowKey {
            src: [1, 0, 0, 0],
            dst: [10, 0, 0, 0],
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: 0,
        };
        let reply = client.reply_to([7, 0, 0, 0], 8080u16.to_be());
        assert_eq!(reply.src, [7, 0, 0, 0]);
        assert_eq!(reply.dst, client.src);
        assert_eq!(reply.src_port, 8080u16.to_be());
        assert_eq!(reply.dst_port, client.src_port);
        assert_eq!(
            (reply.proto, reply.family, reply._pad),
            (PROTO_TCP, FAMILY_V4, 0)
        );
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceInfo>(), 24);
        assert_eq!(size_of::<BackendInfo>(), 24);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowValue>(), 24);
        assert_eq!(size_of::<BackendEvent>(), 24);
        assert_eq!(size_of::<Traffic>(), 24);
    }

    #[test]
    fn address_words_round_trip() {
        for ip in ["10.1.2.3", "2001:db8::1:2", "::ffff:10.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(w, f), ip);
        }
        let (w, f) = addr_words("10.1.2.3".parse().unwrap());
        assert_eq!(f, FAMILY_V4);
        assert_eq!(w[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(&w[1..], &[0, 0, 0]);
    }

    #[test]
    fn ring_slots_do_not_overlap() {
        assert_eq!(ring_index(0, 1, 0), MAX_RING_SIZE);
        assert_eq!(ring_index(1, 0, 0), 2 * MAX_RING_SIZE);
        assert_eq!(
            ring_index(MAX_SERVICES - 1, RING_SLOTS - 1, MAX_RING_SIZE - 1),
            RINGS_LEN - 1
        );
    }
}
