//! Reads the kernel's passive-detection events (`EVENTS` ring buffer) and hands each one to the
//! task of the backend it is about. Events about a backend id whose generation has since changed
//! are dropped. The L7 proxy's ejections arrive by backend address ([`route_ejections`]) and go
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
            if let Some(Some(tx)) = router.tasks.get(id) {
                debug!(backend = id, kind = kind.name(), "passive event");
                let _ = tx.try_send(Signal::Kernel(kind));
            }
        }
        guard.clear_ready();
    }
}
