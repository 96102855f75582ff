//! Reads the kernel's passive-detection events (`EVENTS` ring buffer) and hands each one to the
//! task of the backend it is about. Events about a backend id whose generation has since changed
//! are dropped, and each backend's events are rate-limited ([`EVENTS_PER_SECOND`]): a flood of
//! evidence, genuine or forged, costs the daemon a bounded amount of work and can do no more
//! than `events_to_eject` already does. The L7 proxy's ejections arrive by backend address ([`route_ejections`]) and go
//! to every backend task with that address, in whatever service: one health engine.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{Arc, RwLock},
};

use aya::maps::{MapData, RingBuf};
use lb_common::{BackendEvent, EventKind};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, warn};

/// Events per backend per second passed on to its task; the rest are counted and dropped.
pub const EVENTS_PER_SECOND: u32 = 20;

/// Events dropped by the per-backend rate limit since start (`/metrics`).
static SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Passive events dropped by the per-backend rate limit since start.
pub fn suppressed_events() -> u64 {
    SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A fixed one-second window per backend id.
#[derive(Default)]
struct Limiter {
    windows: std::collections::HashMap<u32, (std::time::Instant, u32)>,
}

impl Limiter {
    fn admit(&mut self, id: u32, now: std::time::Instant) -> bool {
        let (start, n) = self.windows.entry(id).or_insert((now, 0));
        if now.duration_since(*start) >= std::time::Duration::from_secs(1) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= EVENTS_PER_SECOND
    }
}

/// Where events go: `tasks[id]` is backend `id`'s event channel and `generations[id]` its
/// current generation. Replaced whole on reload.
#[derive(Default)]
pub struct Router {
    pub tasks: Vec<Option<mpsc::Sender<Signal>>>,
    pub generations: Vec<u32>,
    /// `addresses[id]`: backend `id`'s address.
    pub addresses: Vec<Option<SocketAddr>>,
}

/// Passive evidence about a backend, for its health task.
#[derive(Debug, Clone)]
pub enum Signal {
    /// From the kernel: counts towards `events_to_eject`.
    Kernel(EventKind),
    /// The L7 proxy's circuit opened: eject now.
    Ejected(String),
}

/// Hands each L7 ejection to every health task of a backend with that address.
pub async fn route_ejections(
    mut ejections: mpsc::UnboundedReceiver<crate::l7::Ejection>,
    router: Arc<RwLock<Router>>,
) {
    while let Some(e) = ejections.recv().await {
        let Ok(r) = router.read() else {
            return;
        };
        for (id, address) in r.addresses.iter().enumerate() {
            if *address == Some(e.address)
                && let Some(Some(tx)) = r.tasks.get(id)
            {
                let _ = tx.try_send(Signal::Ejected(e.reason.clone()));
            }
        }
    }
}

/// Forwards events until the ring buffer fails.
pub async fn forward_events(ring: RingBuf<MapData>, router: Arc<RwLock<Router>>) {
    let fd = ring.as_raw_fd();
    // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which drops it.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(r) => r,
        Err(e) => {
            warn!(fd, error = %e, "cannot poll the passive-detection ring buffer");
            return;
        }
    };
    let mut limiter = Limiter::default();
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "passive-detection reader stopped");
                return;
            }
        };
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() < size_of::<BackendEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a BackendEvent (shared layout), perhaps unaligned.
            let event = unsafe { (item.as_ptr() as *const BackendEvent).read_unaligned() };
            let Some(kind) = EventKind::from_u32(event.kind) else {
                continue;
            };
            let id = event.backend as usize;
            let Ok(router) = router.read() else {
                return;
            };
            if router.generations.get(id) != Some(&event.generation) {
                continue;
            }
            if !limiter.admit(event.backend, std::time::Instant::now()) {
                SUPPRESSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            if let Some(Some(tx)) = router.tasks.get(id) {
                if let Some(address) = router.addresses.get(id).copied().flatten() {
                    debug!(backend = %address, backend_id = id, kind = kind.name(), "passive event");
                }
                let _ = tx.try_send(Signal::Kernel(kind));
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_gets_its_own_budget_per_second() {
        let mut l = Limiter::default();
        let t = std::time::Instant::now();
        let passed = (0..100).filter(|_| l.admit(7, t)).count();
        assert_eq!(passed, EVENTS_PER_SECOND as usize);
        assert!(
            l.admit(8, t),
            "another backend is not limited by 7's events"
        );
        assert!(
            l.admit(7, t + std::time::Duration::from_secs(1)),
            "a new second"
        );
    }
}
