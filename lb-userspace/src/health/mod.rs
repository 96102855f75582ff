//! The health engine: one task per backend ([`task`]) runs active probes ([`probe`]) through a
//! rise/fall machine ([`state`]) and takes passive-detection events from the kernel and the L7
//! proxy ([`passive`]). [`supervisor`] keeps one task per backend id as the plan changes. Every
//! state change goes on one channel to the single map writer (`writer::Writer`).

pub mod passive;
pub mod probe;
pub mod state;
pub mod supervisor;
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
    /// The backend started down (`wait_for_first_check`) and has not passed its first check.
    pub waiting: bool,
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
    /// The generation of the backend the task checks: an update about an id's former owner
    /// (the id was since given to another backend) is dropped by the writer.
    pub generation: u32,
    /// The epoch of the task that decided (see [`Epochs`]): an update from a task since
    /// replaced is dropped, so a backend that must pass its new check is never marked up by
    /// its old one.
    pub task: u64,
    pub up: bool,
    pub reason: String,
    /// When the decision was taken: the writer measures decision-to-visible from here.
    pub decided: Instant,
}

/// The epoch of each backend id's current health task. A task gets a new epoch when it is
/// started; the writer drops updates whose epoch is no longer the id's.
#[derive(Debug)]
pub struct Epochs {
    by_id: Vec<std::sync::atomic::AtomicU64>,
    next: AtomicU64,
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs {
            by_id: (0..lb_common::MAX_BACKENDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            next: AtomicU64::new(1),
        }
    }
}

impl Epochs {
    /// A new epoch for a task about to start on backend `id`; it is current from now on.
    pub fn start(&self, id: u32) -> u64 {
        let epoch = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.by_id.get(id as usize) {
            slot.store(epoch, Ordering::Release);
        }
        epoch
    }

    /// Whether `epoch` is the current task's for backend `id`.
    pub fn is_current(&self, id: u32, epoch: u64) -> bool {
        self.by_id
            .get(id as usize)
            .is_some_and(|e| e.load(Ordering::Acquire) == epoch)
    }
}
