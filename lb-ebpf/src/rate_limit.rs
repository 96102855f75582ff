//! Per-source rate limits on new connections: a token bucket per (service, source prefix) in
//! an LRU map, refilled from the elapsed time on each new connection, so an idle source costs
//! nothing and a forgotten one starts with a full bucket. Only connection starts are charged (a
//! TCP SYN, a UDP packet with no flow), never the packets of an established flow. Sources in the
//! service's exemption list (`ACL_EXEMPT + id`) are never limited.
//!
//! CPUs update a shared bucket without locks: two racing connection starts may both take the
//! last token. The limit is exact to within one connection per CPU, which is what a per-source
//! limit needs.

use lb_common::{
    FAMILY_V4, ServiceInfo,
    edge::{ACL_EXEMPT, Bucket, BucketKey, TOKEN},
};

use crate::{
    acl,
    maps::{RATE_BUCKETS, RATE_LIMITS},
    parse::Parsed,
};

/// A refill covers at most this much idle time, so `elapsed × per_second` cannot overflow
/// (user space keeps `per_second` at or below 10^7).
const MAX_REFILL_NS: u64 = 60_000_000_000;

/// The mask of the first `bits` bits of a network-order word.
#[inline(always)]
fn mask(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else if bits >= 32 {
        u32::MAX
    } else {
        (u32::MAX << (32 - bits)).to_be()
    }
}

/// Whether the packet's source has used up its new connections (and, if not, takes one).
#[inline(always)]
pub fn over(p: &Parsed, svc: &ServiceInfo, now: u64) -> bool {
    let Some(limit) = RATE_LIMITS.get(svc.id) else {
        return false;
    };
    if acl::lookup(ACL_EXEMPT + svc.id, p).is_some() {
        return false;
    }
    let src = p.key.src;
    let addr = if p.key.family == FAMILY_V4 {
        [src[0] & mask(limit.v4_prefix), 0, 0, 0]
    } else {
        let b = limit.v6_prefix;
        [
            src[0] & mask(b),
            src[1] & mask(b.saturating_sub(32)),
            src[2] & mask(b.saturating_sub(64)),
            src[3] & mask(b.saturating_sub(96)),
        ]
    };
    let key = BucketKey {
        addr,
        service: svc.id,
        family: p.key.family as u32,
    };
    let full = limit.burst as u64 * TOKEN;
    let Some(bucket) = RATE_BUCKETS.get_ptr_mut(&key) else {
        // A source not seen lately starts with a full bucket, less this connection.
        let fresh = Bucket {
            nanotokens: full.saturating_sub(TOKEN),
            at_ns: now,
        };
        let _ = RATE_BUCKETS.insert(&key, &fresh, 0);
        return false;
    };
    let b = unsafe { &mut *bucket };
    let elapsed = now.saturating_sub(b.at_ns).min(MAX_REFILL_NS);
    let tokens = (b.nanotokens + elapsed * limit.per_second as u64).min(full);
    b.at_ns = now;
    if tokens >= TOKEN {
        b.nanotokens = tokens - TOKEN;
        false
    } else {
        b.nanotokens = tokens;
        true
    }
}
