//! Watches that turn the kernel's counters into log lines an operator can act on, rate-limited
//! so a long incident does not flood the log: frames dropped after a redirect, the forwarding
//! modes' drops, and the SYN-flood guard entering and leaving flood mode.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::Counter;
use tracing::{info, warn};

use crate::dataplane::CounterSnapshot;

/// Growing totals, each reported at its first growth and then at most once a minute while it
/// keeps growing.
struct Growth<K> {
    /// Per key: the total last reported, and when.
    seen: BTreeMap<K, (u64, Option<Instant>)>,
}

impl<K: Ord> Default for Growth<K> {
    fn default() -> Self {
        Growth {
            seen: BTreeMap::new(),
        }
    }
}

impl<K: Ord> Growth<K> {
    const EVERY: Duration = Duration::from_secs(60);

    /// How much `key`'s `total` grew since it was last reported, if it is to be reported now.
    fn report(&mut self, key: K, total: u64, now: Instant) -> Option<u64> {
        let (last, warned) = self.seen.entry(key).or_insert((0, None));
        if total <= *last || warned.is_some_and(|w| now.duration_since(w) < Self::EVERY) {
            return None;
        }
        let grown = total - *last;
        *last = total;
        *warned = Some(now);
        Some(grown)
    }
}

/// Warns when frames redirected into an interface are dropped by the kernel, with the driver's
/// likely cause. Every drop is counted in `/metrics` regardless.
#[derive(Default)]
pub struct DropWatch {
    /// Per interface index.
    seen: Growth<u32>,
}

impl DropWatch {
    pub fn check(&mut self, totals: BTreeMap<u32, u64>) {
        let now = Instant::now();
        for (ifindex, total) in totals {
            let Some(dropped) = self.seen.report(ifindex, total, now) else {
                continue;
            };
            let interface = crate::dataplane::redirect_drops::interface_name(ifindex);
            let driver = crate::dataplane::driver::driver(&interface);
            let cause = driver
                .as_deref()
                .and_then(crate::dataplane::driver::needs)
                .unwrap_or("the interface refused the frames: down, or its driver cannot transmit XDP frames");
            warn!(
                %interface,
                dropped,
                total,
                driver = driver.as_deref().unwrap_or("unknown"),
                cause,
                "frames redirected into the interface were dropped by the kernel"
            );
        }
    }
}

/// The forwarding modes' drops, each with what an operator should look at. They are counted in
/// `/metrics` (`understudy_datapath_packets_total{reason}`) whatever the log says.
const FORWARDING_DROPS: &[(Counter, &str)] = &[
    (
        Counter::DropDsrNotOnLink,
        "a DSR backend is now reached through a gateway (the routes changed since the config was \
         applied): put it back on-link, or use mode = \"tunnel\"",
    ),
    (
        Counter::DropDsrNoHop,
        "the FIB gave a DSR backend no next hop: its neighbour is unresolved or it has no route \
         (`ip neigh`, `ip route get <backend>` on the balancer)",
    ),
    (
        Counter::DropTooBig,
        "IPv4 packets without DF no longer fit the backend link once wrapped: raise that link's \
         MTU by the tunnel overhead (README: Forwarding modes)",
    ),
    (
        Counter::DropNoTunnel,
        "a tunnel backend has no outer source (no route to it when the config was applied): fix \
         the route or set [service.tunnel] source_v4/source_v6, then reload",
    ),
    (
        Counter::DropEncapFailed,
        "the driver leaves too little XDP headroom for the outer headers",
    ),
    (
        Counter::DropProbeUnknown,
        "packets reached the probe interface (understudy-hc) without a probe's mark, or naming a \
         backend since removed: only the daemon's marked checks should be routed there (`ip rule`, \
         `ip route show table 21845`)",
    ),
    (
        Counter::DropProbeNoRoute,
        "a path-following check found no route to its backend (in DSR, none on-link): `ip route \
         get <backend>` on the balancer; its checks fail until there is one",
    ),
    (
        Counter::DropProbeFailed,
        "a path-following check could not be wrapped or redirected toward its backend (is IP \
         forwarding on? the probe program looks routes up as a forwarded packet)",
    ),
    (
        Counter::ErrTailCall,
        "later fragments or tunnel packets found no program to hand them to (PROGRAMS is empty: \
         a daemon and object that do not match); they went to the stack",
    ),
];

/// Warns when one of [`FORWARDING_DROPS`] grows, with its cause.
#[derive(Default)]
pub struct ForwardingWatch {
    seen: Growth<u32>,
}

impl ForwardingWatch {
    /// Warns, and returns the counters warned about (for tests).
    pub fn check(&mut self, counters: &CounterSnapshot) -> Vec<Counter> {
        let now = Instant::now();
        let mut warned = Vec::new();
        for &(counter, cause) in FORWARDING_DROPS {
            let total = counters.get(counter);
            if let Some(grown) = self.seen.report(counter as u32, total, now) {
                warn!(
                    reason = counter.name(),
                    packets = grown,
                    total,
                    cause,
                    "packets dropped"
                );
                warned.push(counter);
            }
        }
        warned
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pairs: &[(Counter, u64)]) -> CounterSnapshot {
        CounterSnapshot(pairs.to_vec())
    }

    #[test]
    fn forwarding_drops_warn_at_their_first_growth_then_at_most_once_a_minute() {
        let mut w = ForwardingWatch::default();
        assert!(w.check(&snapshot(&[(Counter::Redirect, 9)])).is_empty());
        assert_eq!(
            w.check(&snapshot(&[(Counter::DropTooBig, 3), (Counter::Tx, 4)])),
            vec![Counter::DropTooBig]
        );
        // Growing again within the minute: counted in /metrics, not logged again.
        assert!(w.check(&snapshot(&[(Counter::DropTooBig, 9)])).is_empty());
        // Another reason is its own.
        assert_eq!(
            w.check(&snapshot(&[
                (Counter::DropTooBig, 9),
                (Counter::DropNoTunnel, 1)
            ])),
            vec![Counter::DropNoTunnel]
        );
    }

    #[test]
    fn growth_reports_what_grew_since_the_last_report() {
        let mut g = Growth::default();
        let t0 = Instant::now();
        assert_eq!(g.report(1u32, 5, t0), Some(5));
        assert_eq!(g.report(1, 8, t0 + Duration::from_secs(1)), None);
        assert_eq!(g.report(1, 8, t0 + Duration::from_secs(61)), Some(3));
        assert_eq!(
            g.report(1, 8, t0 + Duration::from_secs(200)),
            None,
            "no growth"
        );
    }
}
