//! The kernel side as user space sees it: loading the embedded XDP object, attaching it, writing
//! the maps from a [`Plan`](crate::plan::Plan), and reading the counters back.

mod attach;
mod maps;
mod stats;

pub use attach::{Attachment, attach, resolve};
pub use maps::{Dataplane, DataplaneError};
pub use stats::{CounterSnapshot, TrafficSnapshot};

/// The compiled eBPF object, built by build.rs from `lb-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/understudy"));

/// Name of the production XDP program in the object.
pub const XDP_PROGRAM: &str = "understudy_xdp";
