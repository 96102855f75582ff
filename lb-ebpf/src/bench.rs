//! Bench-only programs, never attached. `test_run` with `repeat` re-runs one buffer, so a program
//! that rewrites the packet would only see the original on its first run. `bench_wrapper` restores
//! the original frame on every run (its start too, after an encapsulating run), optionally makes it a brand new flow (a new client address or
//! port), and tail-calls the
//! program under test; the same wrapper tail-calling `bench_pass` is the baseline to subtract.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{BENCH_MAX, BenchPacket};

#[map]
static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_wrapper(ctx: XdpContext) -> u32 {
    let Some(pkt) = BENCH_PACKET.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    let pkt = unsafe { &mut *pkt };
    if pkt.len == 0 || pkt.len as usize > BENCH_MAX {
        return XDP_ABORTED;
    }
    // The 6.1 verifier does not learn "not 0" from the check above and refuses the store's
    // length. A second (volatile, so not folded into the first) read, masked and offset, is in
    // [1, BENCH_MAX] by construction, and equal to the checked length. BENCH_MAX is a power of 2.
    let raw = unsafe { core::ptr::read_volatile(&pkt.len) } as usize;
    let len = (raw.wrapping_sub(1) & (BENCH_MAX - 1)) + 1;
    let xdp = ctx.ctx;
    // An encapsulating program grew the head on the previous run: give the room back first, so
    // every run starts from the original frame where the original starts.
    // Unsigned and only when grown: a signed difference compiles to shifts of the packet
    // pointers, which the verifier refuses.
    let now = ctx.data_end() - ctx.data();
    if now > len && unsafe { bpf_xdp_adjust_head(xdp, (now - len) as i32) } != 0 {
        return XDP_ABORTED;
    }
    if unsafe { bpf_xdp_store_bytes(xdp, 0, pkt.data.as_mut_ptr().cast(), len as u32) } != 0 {
        return XDP_ABORTED;
    }
    let vary_at = pkt.vary_at;
    if vary_at != 0 {
        if let Some(seq) = BENCH_SEQ.get_ptr_mut(0) {
            let mut next = unsafe { *seq }.wrapping_add(1);
            unsafe { *seq = next };
            // Constant lengths: the verifier must see a length that cannot be 0.
            let word = (&mut next as *mut u32).cast();
            let ok = if pkt.vary_len == 2 {
                unsafe { bpf_xdp_store_bytes(xdp, vary_at, word, 2) }
            } else {
                unsafe { bpf_xdp_store_bytes(xdp, vary_at, word, 4) }
            };
            if ok != 0 {
                return XDP_ABORTED;
            }
        }
    }
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
