//! The one test harness of Understudy: network namespaces joined by veth pairs, built with `ip`
//! and torn down on drop; the daemon under test with its readiness socket ([`Daemon`]); traffic
//! helpers (echo and HTTP backends, a packet sniffer, a bounded SYN flood); the CLI, admin API and status page as an
//! operator reaches them ([`cli`], [`admin`], [`chromium_dom`]); and crafted packets for the
//! kernel `test_run` tests ([`packet`]). The end-to-end tests, the kernel tests and the
//! `cargo xtask run` demo all build on it. Only the kernel tests' `Bed`, which needs the daemon's
//! library, stays beside them in `lb-userspace/tests/support`.
//!
//! Every namespace gets a name unique to this process and call, so tests run in parallel, and is
//! deleted when its guard drops, even when a test panics.

mod bird;
mod daemon;
mod decap;
mod echo;
mod fib;
mod flood;
mod netns;
mod ops;
pub mod packet;
mod sniff;
mod topology;
pub mod traffic;
pub mod wrk;

pub use bird::{BIRD_TEST_TIMERS, Bird, bird_routes};
pub use daemon::{Daemon, Launch, NotifySocket, unblock_stop_signals};
pub use decap::Decap;
pub use echo::{EchoServer, echo_connections, echo_payload, echo_roundtrip};
pub use fib::{CLIENT_MAC, FibNamespace, XB_MAC, XC_MAC, backend_mac};
pub use flood::syn_flood;
pub use netns::{Netns, run, run_ok};
pub use ops::{
    ADMIN_CLIENT_HEADER, ADMIN_LISTEN, HttpBackend, admin, chromium_dom, cli, http_get,
    named_echo_servers,
};
pub use sniff::Sniffer;
pub use topology::{CLIENT_V4, CLIENT_V6, Topology, VIP_V4, VIP_V6, backend_v4, backend_v6};

/// Panics with a clear message unless the process can create namespaces and load BPF.
pub fn require_root(what: &str) {
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "{what} needs root (it creates network namespaces and loads XDP programs); \
             run it through `cargo xtask test` as root. Privileged tests never skip."
        );
    }
}

/// How many times slower than native this machine runs the tests: `UNDERSTUDY_GUEST_SLOWDOWN`,
/// which `cargo xtask test` sets for the kernel matrix's emulated (TCG) guest, or 1. Only waits
/// for something to start (the daemon's readiness, a decapsulator's attach, the first health
/// verdicts) scale by it; the windows a test asserts about behaviour (detection, failover) are
/// widened by name in the test itself, if at all.
pub fn slowdown() -> u32 {
    std::env::var("UNDERSTUDY_GUEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// `d` scaled by [`slowdown`].
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d * slowdown()
}
