//! Watches that turn the kernel's counters into log lines an operator can act on, rate-limited
//! so a long incident does not flood the log: frames dropped after a redirect, and the SYN-flood
//! guard entering and leaving flood mode.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::Counter;
use tracing::{info, warn};

use crate::dataplane::CounterSnapshot;

/// Warns when frames redirected into an interface are dropped by the kernel: at the first drops,
/// then at most once a minute per interface while they keep growing, with the driver's likely
/// cause. Every drop is counted in `/metrics` regardless.
#[derive(Default)]
pub struct DropWatch {
    /// Per interface index: the total last seen, and when it was last reported.
    seen: BTreeMap<u32, (u64, Option<Instant>)>,
}

impl DropWatch {
    const EVERY: Duration = Duration::from_secs(60);

    pub fn check(&mut self, totals: BTreeMap<u32, u64>) {
        let now = Instant::now();
        for (ifindex, total) in totals {
            let (last, warned) = self.seen.entry(ifindex).or_insert((0, None));
            if total <= *last || warned.is_some_and(|w| now.duration_since(w) < Self::EVERY) {
                continue;
            }
            let interface = crate::dataplane::redirect_drops::interface_name(ifindex);
            let driver = crate::dataplane::driver::driver(&interface);
            let cause = driver
                .as_deref()
                .and_then(crate::dataplane::driver::needs)
                .unwrap_or("the interface refused the frames: down, or its driver cannot transmit XDP frames");
            warn!(
                %interface,
                dropped = total - *last,
                total,
                driver = driver.as_deref().unwrap_or("unknown"),
                cause,
                "frames redirected into the interface were dropped by the kernel"
            );
            *last = total;
            *warned = Some(now);
        }
    }
}

/// Logs when CPUs enter flood mode (a warning with the SYNs left unwritten so far) and when the
/// last one leaves it. The transitions themselves are counted in the kernel.
#[derive(Default)]
pub struct FloodWatch {
    flooded: Vec<usize>,
    /// `flood_unwritten` when the current flood began.
    unwritten_at_start: u64,
}

impl FloodWatch {
    pub fn check(&mut self, cpus: &[usize], counters: &CounterSnapshot) {
        let unwritten = counters.get(Counter::FloodUnwritten);
        if cpus == self.flooded.as_slice() {
            return;
        }
        if self.flooded.is_empty() {
            self.unwritten_at_start = unwritten;
            warn!(
                cpus = ?cpus,
                "SYN-flood mode: new flows on these CPUs pass [dataplane] flood_threshold; new SYN flows \
                 are steered by the ring alone and not written to the flow table, so established flows \
                 keep their entries"
            );
        } else if cpus.is_empty() {
            info!(
                unwritten = unwritten.saturating_sub(self.unwritten_at_start),
                "SYN-flood mode over: new flows are written to the flow table again"
            );
        } else {
            info!(cpus = ?cpus, "SYN-flood mode: CPUs in flood mode changed");
        }
        self.flooded = cpus.to_vec();
    }
}
