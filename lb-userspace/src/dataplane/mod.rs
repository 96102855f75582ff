//! The kernel side as user space sees it: loading the embedded XDP object, attaching it, writing
//! the maps from a [`Plan`](crate::plan::Plan), and reading the counters back.

mod attach;
pub mod driver;
pub mod edge;
pub mod features;
mod maps;
mod netlink;
pub mod next_hops;
pub mod probe_path;
pub mod redirect_drops;
mod rings;
pub mod routes;
mod stats;

pub use attach::{Attachment, attach, resolve};
pub use maps::{Dataplane, DataplaneError};
pub use stats::{CounterSnapshot, TrafficSnapshot};

/// The compiled eBPF object, built by build.rs from `lb-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/understudy"));

/// CPUs the kernel counts in a list such as `/sys/devices/system/cpu/possible` ("0-3,8"); 1 when
/// unreadable. The per-CPU LRU flow maps give each possible CPU an equal share.
fn cpus_in(path: &str) -> u32 {
    let Ok(list) = std::fs::read_to_string(path) else {
        return 1;
    };
    list.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<u32>()
        .max(1)
}

/// CPUs the kernel may ever bring online (the per-CPU maps are sized by this).
pub fn possible_cpus() -> u32 {
    cpus_in("/sys/devices/system/cpu/possible")
}

/// CPUs online now.
pub fn online_cpus() -> u32 {
    cpus_in("/sys/devices/system/cpu/online")
}

/// Name of the production XDP program in the object.
pub const XDP_PROGRAM: &str = "understudy_xdp";
