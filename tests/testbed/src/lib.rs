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

pub use bird::{BIRD_TEST_TIMERS, Bird, bird_routes};
pub use daemon::{Daemon, Launch, NotifySocket, unblock_stop_signals};
pub use decap::Decap;
pub use echo::{EchoServer, echo_connections, echo_payload, echo_roundtrip};
pub use fib::{CLIENT_MAC, FibNamespace, XB_MAC, XC_MAC, backend_mac};
pub use flood::syn_flood;
pub use netns::{Netns, run, run_ok};
pub use ops::{
    ADMIN_CLIENT_HEADER, ADMIN_LISTEN, HttpBackend, admin, chromium_dom, cli, named_echo_servers,
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
