//! `understudy_probe`, on the TC egress of the probe interface (`lb_common::probe`): the daemon's
//! health checks in DSR and tunnel modes, addressed to the VIP, leave the way a client's packets
//! do. The socket's mark names the mode and the backend; DSR sends the packet unchanged to the
//! backend's MAC, the tunnels wrap it in the same outer header `encap` writes (from `TUNNELS`).
//! The kernel's neighbour code fills the MACs (`bpf_redirect_neigh`), so a probe also resolves
//! the backend's neighbour entry, which the XDP path then finds. The replies come straight back
//! from the backend, from the VIP, to the socket.
//!
//! Anything else on the interface is dropped and counted: nothing but marked probes is routed
//! there.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use lb_common::{
    Counter, FAMILY_V4, FAMILY_V6, FORWARD_DSR, FORWARD_GUE, FORWARD_IPIP, FlowKey, probe,
};

use crate::{
    encap::{outer, write_outer},
    forward::{AF_INET, AF_INET6, ask_fib, via_gateway},
    maps::{BACKENDS, TUNNELS, count},
    packet::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, load, words16},
};

/// Sends one marked probe toward its backend, or drops it.
#[inline(always)]
pub fn route(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context the kernel passed.
    let (mark, ifindex, len) = unsafe { ((*skb).mark, (*skb).ifindex, (*skb).len) };
    let Some((mode, id)) = probe::decode(mark) else {
        return shot(Counter::DropProbeUnknown);
    };
    let Some(backend) = BACKENDS.get(id) else {
        return shot(Counter::DropProbeUnknown);
    };
    if backend.family == 0 {
        return shot(Counter::DropProbeUnknown);
    }
    let Some(inner) = inner_key(ctx) else {
        return shot(Counter::DropProbeUnknown);
    };
    let ip_len = len.saturating_sub(ETH_LEN as u32);
    if mode == FORWARD_DSR {
        // As `dsr::to`: the FIB is asked about the backend's own address, which must be on-link.
        let toward = FlowKey {
            dst: backend.addr,
            ..inner
        };
        let (rc, fib) = ask_fib(ctx.as_ptr(), ifindex, &toward, ip_len);
        if !(rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
            || via_gateway(&fib, &toward)
        {
            return shot(Counter::DropProbeNoRoute);
        }
        return redirect(fib.ifindex, backend.family, backend.addr);
    }
    if mode != FORWARD_IPIP && mode != FORWARD_GUE {
        return shot(Counter::DropProbeUnknown);
    }
    let gue = mode == FORWARD_GUE;
    let Some(t) = TUNNELS.get(id) else {
        return shot(Counter::DropNoTunnel);
    };
    if t.family == 0 {
        return shot(Counter::DropNoTunnel);
    }
    let outer_v4 = t.family == FAMILY_V4;
    let Some((outer, mut header)) = outer(t, &inner, &backend.addr, gue, ip_len) else {
        return shot(Counter::DropProbeFailed);
    };
    let outer_len = header.len as u32;
    let (rc, fib) = ask_fib(ctx.as_ptr(), ifindex, &outer, outer_len);
    if !(rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        return shot(Counter::DropProbeNoRoute);
    }
    // The next hop: the FIB wrote the gateway's address over the destination if there is one.
    let next = if outer_v4 {
        [unsafe { fib.__bindgen_anon_4.ipv4_dst }, 0, 0, 0]
    } else {
        unsafe { fib.__bindgen_anon_4.ipv6_dst }
    };
    let Some(tos) = inner_tos(ctx, inner.family) else {
        return shot(Counter::DropProbeUnknown);
    };
    // Room behind the Ethernet header; the flags set the skb's encapsulation fields and its
    // protocol to the outer family (for 6in4 and 4in6).
    let mut flags = if outer_v4 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } as u64;
    if gue {
        flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64;
    }
    if ctx
        .adjust_room((outer_len - ip_len) as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return shot(Counter::DropProbeFailed);
    }
    header.tos = tos;
    if write_outer(ctx, &header).is_none() {
        return shot(Counter::DropProbeFailed);
    }
    redirect(fib.ifindex, t.family, next)
}

/// The probe's own 5-tuple, from its IP header (the daemon's sockets send no IP options or
/// IPv6 extension headers).
#[inline(always)]
fn inner_key(ctx: &TcContext) -> Option<FlowKey> {
    let ethertype = u16::from_be(load::<u16>(ctx, 12)?);
    if ethertype == ETH_P_IP {
        let [version_ihl, _]: [u8; 2] = load(ctx, ETH_LEN)?;
        let l4 = ETH_LEN + ((version_ihl & 0x0f) as usize) * 4;
        // TTL, then protocol.
        let [_, proto]: [u8; 2] = load(ctx, ETH_LEN + 8)?;
        let src: u32 = load(ctx, ETH_LEN + 12)?;
        let dst: u32 = load(ctx, ETH_LEN + 16)?;
        let ports: [u16; 2] = load(ctx, l4)?;
        Some(FlowKey {
            src: [src, 0, 0, 0],
            dst: [dst, 0, 0, 0],
            src_port: ports[0],
            dst_port: ports[1],
            proto,
            family: FAMILY_V4,
            _pad: 0,
        })
    } else if ethertype == ETH_P_IPV6 {
        // Next header, then hop limit.
        let [proto, _]: [u8; 2] = load(ctx, ETH_LEN + 6)?;
        let src: [u8; 16] = load(ctx, ETH_LEN + 8)?;
        let dst: [u8; 16] = load(ctx, ETH_LEN + 24)?;
        let ports: [u16; 2] = load(ctx, ETH_LEN + 40)?;
        Some(FlowKey {
            src: words16(src),
            dst: words16(dst),
            src_port: ports[0],
            dst_port: ports[1],
            proto,
            family: FAMILY_V6,
            _pad: 0,
        })
    } else {
        None
    }
}

/// The probe's TOS or traffic class, copied to the outer header as `encap` copies a client's.
#[inline(always)]
fn inner_tos(ctx: &TcContext, family: u8) -> Option<u8> {
    let [a, b]: [u8; 2] = load(ctx, ETH_LEN)?;
    Some(if family == FAMILY_V4 {
        b
    } else {
        (a & 0x0f) << 4 | b >> 4
    })
}

/// Out of interface `ifindex` to the neighbour at `next` (of `family`), whose MAC the kernel
/// resolves if it must.
#[inline(always)]
fn redirect(ifindex: u32, family: u8, next: [u32; 4]) -> i32 {
    let mut nh = bpf_redir_neigh {
        nh_family: if family == FAMILY_V4 {
            AF_INET as u32
        } else {
            AF_INET6 as u32
        },
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: next },
    };
    let rc = unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut nh as *mut bpf_redir_neigh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if rc as i32 == TC_ACT_REDIRECT {
        count(Counter::ProbeSent);
    } else {
        count(Counter::DropProbeFailed);
    }
    rc as i32
}

#[inline(always)]
fn shot(reason: Counter) -> i32 {
    count(reason);
    TC_ACT_SHOT as i32
}
