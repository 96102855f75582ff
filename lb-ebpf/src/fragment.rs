//! Fragments follow their first fragment, as Cilium's do. Only the first fragment of a datagram
//! carries the transport header, so only it can be matched to a service or a flow. When it is
//! translated, `FRAGS` records, under (source, destination, IP id, protocol), the address the
//! translation put in; each later fragment is found there and gets the same address (its header
//! checksum updated; it has no transport checksum of its own, since the first fragment's covers
//! the whole datagram). A later fragment that arrives before its first, or whose first was not
//! translated, goes to the stack untouched and is counted. In DSR and tunnel modes nothing is
//! rewritten: `FRAGS` names the backend, and later fragments go to it as the first did.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FRAG_FORWARD, FRAG_REWRITE_DST, FlowKey, FragKey, FragValue};

use crate::{
    forward::{forward, pass},
    maps::{BACKEND_STATS, FRAGS, account, count},
    nat::{Side, rewrite_address},
    parse::Parsed,
    steer::{Forward, Steered},
};

#[inline(always)]
fn key(p: &Parsed, id: u32) -> FragKey {
    FragKey {
        src: p.key.src,
        dst: p.key.dst,
        id,
        proto: p.key.proto,
        family: p.key.family,
        _pad: 0,
    }
}

/// Records how the first fragment of a datagram (`p`, before its rewrite) was translated: its
/// `side` (`FRAG_REWRITE_*`) now holds `addr`, or (`FRAG_FORWARD` + mode) it went to the
/// backend at `addr`. A packet that is not a first fragment records
/// nothing.
#[inline(always)]
pub fn remember(p: &Parsed, side: u32, addr: &[u32; 4], backend: u32) {
    let Some(f) = p.frag else {
        return;
    };
    let value = FragValue {
        addr: *addr,
        side,
        backend,
    };
    if FRAGS.insert(&key(p, f.id), &value, 0).is_err() {
        count(Counter::ErrFlowInsert);
    }
}

/// A later fragment: translated as its first fragment was, handed back to be sent as its first
/// was ([`Steered::Forward`]), or passed.
#[inline(always)]
pub fn follow(ctx: &XdpContext, p: &Parsed, id: u32) -> Steered {
    let Some(v) = (unsafe { FRAGS.get(&key(p, id)) }) else {
        return Steered::Done(pass(Counter::FragmentBeforeFirst));
    };
    let v = *v;
    if p.ttl <= 1 {
        return Steered::Done(pass(Counter::PassTtl));
    }
    if v.side >= FRAG_FORWARD {
        followed(ctx, v.backend);
        return Steered::Forward(Forward {
            mode: v.side - FRAG_FORWARD,
            backend: v.backend,
            addr: v.addr,
        });
    }
    let side = if v.side == FRAG_REWRITE_DST {
        Side::Destination
    } else {
        Side::Source
    };
    if rewrite_address(ctx, p, side, &v.addr).is_none() {
        return Steered::Done(pass(Counter::PassTruncated));
    }
    followed(ctx, v.backend);
    let out = match side {
        Side::Destination => FlowKey {
            dst: v.addr,
            ..p.key
        },
        Side::Source => FlowKey {
            src: v.addr,
            ..p.key
        },
    };
    Steered::Done(forward(ctx, p, &out))
}

/// Counts a later fragment sent on after its first, to `backend`.
#[inline(always)]
fn followed(ctx: &XdpContext, backend: u32) {
    account(
        &BACKEND_STATS,
        backend,
        (ctx.data_end() - ctx.data()) as u64,
        false,
    );
    count(Counter::FragmentTranslated);
}
