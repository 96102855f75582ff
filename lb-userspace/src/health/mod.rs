//! The health engine: one task per backend ([`task`]) runs active probes ([`probe`]) through a
//! rise/fall machine ([`state`]) and takes passive-detection events from the kernel. Every state
//! change goes on one channel to the single map writer (`failover::Writer`).

pub mod probe;
pub mod state;
pub mod task;

use std::time::Instant;

/// A backend's health changed.
#[derive(Debug, Clone)]
pub struct Update {
    /// Global backend id.
    pub backend: u32,
    pub up: bool,
    pub reason: String,
    /// When the decision was taken: the writer measures decision-to-visible from here.
    pub decided: Instant,
}
