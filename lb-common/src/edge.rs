//! Layouts of edge protection and of the reply path: source access lists (`ACL_V4`, `ACL_V6`,
//! LPM tries), per-source new-connection rate limits (`RATE_LIMITS`, `RATE_BUCKETS`), the
//! SYN-flood guard (`SETTINGS`, `FLOOD`), why a service dropped a packet (`SERVICE_DROPS`), the
//! backend-to-VIP map that translates every reply (`REVERSE`, with `BACKEND_PORTS` in front of
//! it), and the next hop cached per backend (`NEXT_HOPS`).

/// `ACL_*` scope of the global lists (`[dataplane.acl]`); a service's own lists use its id.
pub const ACL_GLOBAL: u32 = crate::MAX_SERVICES;
/// `ACL_*` scope offset of a service's rate-limit exemptions: `ACL_EXEMPT + service id`.
pub const ACL_EXEMPT: u32 = 2 * crate::MAX_SERVICES;
// Service ids, the global scope and the exemption scopes never meet.
const _: () = assert!(ACL_GLOBAL >= crate::MAX_SERVICES && ACL_EXEMPT > ACL_GLOBAL);

/// Prefixes the two access-list tries hold, all scopes together.
pub const ACL_CAPACITY: u32 = 16_384;

/// `ACL_*` value: the longest matching prefix allows the source.
pub const ACL_ALLOW: u32 = 1;
/// `ACL_*` value: the longest matching prefix denies the source. User space writes the lists so
/// that deny wins: an allow prefix inside a deny prefix is left out, so no lookup can find it.
pub const ACL_DENY: u32 = 2;

/// `ServiceInfo::flags`: the service's own lists are in the tries (look them up).
pub const SERVICE_F_ACL: u32 = 1 << 1;
/// `ServiceInfo::flags`: the service has an allow list, so a source it does not match is denied.
pub const SERVICE_F_ACL_ALLOWLIST: u32 = 1 << 2;
/// `ServiceInfo::flags`: the global lists apply (copied into every service, so the fast path
/// reads one word).
pub const SERVICE_F_GLOBAL_ACL: u32 = 1 << 3;
/// `ServiceInfo::flags`: the global lists include an allow list.
pub const SERVICE_F_GLOBAL_ALLOWLIST: u32 = 1 << 4;
/// `ServiceInfo::flags`: a TCP packet the access lists deny gets a RST instead of a silent drop.
pub const SERVICE_F_REFUSE_RST: u32 = 1 << 5;
/// `ServiceInfo::flags`: new connections are rate-limited per source (`RATE_LIMITS[id]`).
pub const SERVICE_F_RATE_LIMIT: u32 = 1 << 6;
/// `ServiceInfo::flags`: a rate-limited TCP packet gets a RST (`SERVICE_F_REFUSE_RST` is the
/// access lists').
pub const SERVICE_F_RATE_RST: u32 = 1 << 8;

/// `ACL_V4` key data (after the trie's prefix length): the scope, then the source address as the
/// packet carries it. The prefix length counts the scope's 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclV4 {
    /// Big-endian, so the trie's bit order is the number's.
    pub scope: u32,
    pub addr: u32,
}

/// `ACL_V6` key data: as [`AclV4`], with a 16-byte address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclV6 {
    pub scope: u32,
    pub addr: [u32; 4],
}

/// `RATE_LIMITS` value, indexed by service id: a token bucket of new connections per source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second: new connections a source may open per second, sustained.
    pub per_second: u32,
    /// Bucket size: connections a quiet source may open at once.
    pub burst: u32,
    /// Prefix lengths a source is grouped by (32 and 128 for one address each).
    pub v4_prefix: u32,
    pub v6_prefix: u32,
}

/// `RATE_BUCKETS` key: the service and the source, masked to the configured prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub addr: [u32; 4],
    pub service: u32,
    pub family: u32,
}

/// `RATE_BUCKETS` value. Tokens are kept in nanotokens (one connection costs 10^9), so a refill
/// is one multiplication with no division on the fast path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub nanotokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub at_ns: u64,
}

/// Cost of one new connection in [`Bucket::nanotokens`].
pub const TOKEN: u64 = 1_000_000_000;
/// Sources (or prefixes) with a live bucket, all services together; the LRU forgets the quiet.
pub const RATE_BUCKETS_CAPACITY: u32 = 65_536;

/// `SETTINGS[0]`: node-wide data-plane settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// New flows per [`FLOOD_WINDOW_NS`] on one CPU above which that CPU enters flood mode;
    /// 0 turns the guard off.
    pub flood_per_window: u32,
    /// The generation a `NEXT_HOPS` entry must carry to be used. User space bumps it whenever a
    /// route, neighbour or link changes (and on every reload); 0 is never valid.
    pub hop_generation: u32,
}

/// `NEXT_HOPS` value, indexed by backend id: the FIB's answer for that backend, kept so that
/// an established flow's packet needs no `bpf_fib_lookup`. The program writes it after a
/// successful lookup; a generation other than `Settings::hop_generation` marks it stale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub generation: u32,
    pub ifindex: u32,
    /// The longest IP length the FIB accepted on this hop (at least the family's minimum MTU): a
    /// longer packet asks the FIB again, which checks it against the MTU.
    pub max_len: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// The flood guard's measuring window: 100 ms, short enough to react within a few of them and
/// long enough that a burst of a few hundred new connections does not trip it.
pub const FLOOD_WINDOW_NS: u64 = 100_000_000;

/// `FLOOD[0]`, per CPU: the new-flow count of the current window and the guard's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flood {
    pub window_start_ns: u64,
    pub new_flows: u32,
    /// 1 while this CPU is in flood mode: new flows are not written to the flow tables.
    pub active: u32,
}

/// `BACKEND_PORTS`: one bit per port, set for every port a NAT backend (in `REVERSE`) listens
/// on, so a packet from any other port passes after one array read instead of a hash lookup.
pub const BACKEND_PORT_WORDS: u32 = 65_536 / 64;

/// The `BACKEND_PORTS` word and bit of a port (host byte order).
pub const fn port_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1 << (port % 64))
}

/// `REVERSE` key: a backend as its replies' source carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReverseKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `REVERSE` value: the VIP a backend's replies must appear to come from. The config refuses one
/// backend address in two NAT services, so the VIP is unique.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReverseValue {
    pub vip: [u32; 4],
    /// Network byte order.
    pub vip_port: u16,
    pub _pad: u16,
    pub service: u32,
    pub backend: u32,
}

/// Declares [`DropReason`] with its names, as `counters!` does for [`crate::Counter`].
macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// Why a service refused a packet: the index in a `SERVICE_DROPS` row.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)+
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)+];
            pub const COUNT: usize = Self::ALL.len();
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)+
                }
            }
        }
    };
}

drop_reasons! {
    /// The source matched a prefix of the global deny list.
    GlobalDeny => "global_deny",
    /// The global allow list exists and does not hold the source.
    GlobalNotAllowed => "global_not_allowed",
    /// The source matched a prefix of the service's deny list.
    Deny => "deny",
    /// The service's allow list exists and does not hold the source.
    NotAllowed => "not_allowed",
    /// The source opened new connections faster than the service's rate limit.
    RateLimited => "rate_limited",
}

/// `SERVICE_DROPS` value, per CPU and per service: refusals by [`DropReason`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceDrops {
    pub by_reason: [u64; DropReason::COUNT],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for AclV4 {}
    unsafe impl aya::Pod for AclV6 {}
    unsafe impl aya::Pod for RateLimit {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Flood {}
    unsafe impl aya::Pod for ReverseKey {}
    unsafe impl aya::Pod for ReverseValue {}
    unsafe impl aya::Pod for ServiceDrops {}
    unsafe impl aya::Pod for NextHop {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AclV4>(), 8);
        assert_eq!(size_of::<AclV6>(), 20);
        assert_eq!(size_of::<RateLimit>(), 16);
        assert_eq!(size_of::<BucketKey>(), 24);
        assert_eq!(size_of::<Bucket>(), 16);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<Flood>(), 16);
        assert_eq!(size_of::<ReverseKey>(), 20);
        assert_eq!(size_of::<ReverseValue>(), 28);
        assert_eq!(size_of::<NextHop>(), 24);
    }
}
