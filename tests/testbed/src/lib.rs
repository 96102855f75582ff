//! Test hosts for Understudy: network namespaces joined by veth pairs, built with `ip` and torn
//! down on drop, plus small traffic helpers (echo servers, a packet sniffer). The end-to-end tests,
//! the kernel `test_run` tests and the `cargo xtask run` demo all build their networks with it.
//!
//! Every namespace gets a name unique to this process and call, so tests run in parallel, and is
//! deleted when its guard drops, even when a test panics.

mod daemon;
mod echo;
mod fib;
mod netns;
mod sniff;
mod topology;
pub mod traffic;

pub use daemon::{Daemon, NotifySocket};
pub use echo::{EchoServer, echo_roundtrip};
pub use fib::{CLIENT_MAC, FibNamespace, XB_MAC, XC_MAC, backend_mac};
pub use netns::{Netns, run, run_ok};
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
