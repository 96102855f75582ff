//! Frames the kernel drops after the XDP program redirected them. `XDP_REDIRECT` only asks; the
//! kernel may still refuse the frame when it enqueues it (a veth whose peer has neither an XDP
//! program nor GRO cannot take XDP frames: `xdp:xdp_redirect_err`), or the target driver may
//! refuse it at flush time (`xdp:xdp_devmap_xmit` with drops). Nothing on the packet path says
//! so. These two tracepoint programs count both, per target interface, so that user space can
//! name the interface and the likely cause.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use lb_common::{devmap_xmit, redirect_err};

use crate::maps::REDIRECT_DROPS;

#[inline(always)]
fn add(to: i32, n: i32) {
    if n <= 0 || to <= 0 {
        return;
    }
    let key = to as u32;
    match REDIRECT_DROPS.get_ptr_mut(&key) {
        // Per CPU: no other writer.
        Some(total) => unsafe { *total += n as u64 },
        None => {
            let _ = REDIRECT_DROPS.insert(&key, &(n as u64), 0);
        }
    }
}

#[tracepoint]
pub fn understudy_redirect_errors(ctx: TracePointContext) -> u32 {
    // SAFETY: an offset within the tracepoint's fixed record (`lb_common::redirect_err`).
    if let Ok(to) = unsafe { ctx.read_at::<i32>(redirect_err::TO_IFINDEX) } {
        add(to, 1);
    }
    0
}

#[tracepoint]
pub fn understudy_xmit_drops(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets within the tracepoint's fixed record (`lb_common::devmap_xmit`).
    let to = unsafe { ctx.read_at::<i32>(devmap_xmit::TO_IFINDEX) };
    let drops = unsafe { ctx.read_at::<i32>(devmap_xmit::DROPS) };
    if let (Ok(to), Ok(drops)) = (to, drops) {
        add(to, drops);
    }
    0
}
