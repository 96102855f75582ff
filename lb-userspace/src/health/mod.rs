//! The health engine: one task per backend ([`task`]) runs active probes ([`probe`]) through a
//! rise/fall machine ([`state`]) and takes passive-detection events from the kernel. Every state
//! change goes on one channel to the single map writer (`failover::Writer`).

pub mod probe;
pub mod state;
pub mod task;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Passive ejections the services' caps refused, since start (`/metrics`).
static CAPPED_EJECTIONS: AtomicU64 = AtomicU64::new(0);

fn count_capped_ejection() {
    CAPPED_EJECTIONS.fetch_add(1, Ordering::Relaxed);
}

/// Passive ejections refused by `max_ejection_percent` or because the backend was its
/// service's last in service.
pub fn capped_ejections() -> u64 {
    CAPPED_EJECTIONS.load(Ordering::Relaxed)
}

/// The last probe of a backend, whatever its outcome: the status page shows it even when the
/// health did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    pub ok: bool,
    pub reason: String,
    /// Unix time.
    pub at: u64,
}

/// Every backend's last probe, indexed by backend id. Tasks write their own entry.
pub type Board = Arc<RwLock<Vec<Option<LastCheck>>>>;

pub fn new_board() -> Board {
    Arc::new(RwLock::new(vec![None; lb_common::MAX_BACKENDS as usize]))
}

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
