//! The SYN-flood guard, as Katran's flood mode but automatic: each CPU counts the SYNs that start
//! new flows over a 100 ms window. Past `[dataplane] flood_threshold` (a per-CPU rate), the CPU
//! is in flood mode and stops looking SYNs up in `FLOWS` and writing them to it: spoofed SYNs
//! then cannot evict the entries of established flows. Consistent hashing still sends each SYN
//! to the backend its flow would have been pinned to, and the handshake's next packet (an ACK,
//! which spoofed sources never send) writes the flow as usual. It leaves at the end of the first window under the
//! threshold. Transitions are counted (`flood_enter`, `flood_leave`); user space reads the state.

use lb_common::{
    Counter,
    edge::{FLOOD_WINDOW_NS, Flood},
};

use crate::maps::{FLOOD, SETTINGS, count};

/// Counts one SYN-started new flow on this CPU at `now`; true when the CPU is in flood mode.
#[inline(always)]
pub fn syn(now: u64) -> bool {
    let limit = match SETTINGS.get(0) {
        Some(s) if s.flood_per_window != 0 => s.flood_per_window,
        _ => return false,
    };
    let Some(f) = FLOOD.get_ptr_mut(0) else {
        return false;
    };
    let f: &mut Flood = unsafe { &mut *f };
    let elapsed = now.wrapping_sub(f.window_start_ns);
    if elapsed >= FLOOD_WINDOW_NS {
        // The window just ended: it decides whether flood mode stays (a window with no SYN at
        // all, long ago, counts as quiet).
        if f.active != 0 && (f.new_flows <= limit || elapsed >= 2 * FLOOD_WINDOW_NS) {
            f.active = 0;
            count(Counter::FloodLeave);
        }
        f.window_start_ns = now;
        f.new_flows = 0;
    }
    f.new_flows = f.new_flows.saturating_add(1);
    if f.active == 0 && f.new_flows > limit {
        // Entered mid-window, as soon as the count passes: a flood is met within one window.
        f.active = 1;
        count(Counter::FloodEnter);
    }
    f.active != 0
}
