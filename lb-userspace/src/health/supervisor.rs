//! Health supervision: one task per backend id, started, kept, replaced or stopped as the plan
//! changes (`reconcile`), each with the service's passive-ejection gate and a fresh epoch, and
//! the router that hands kernel events to them replaced whole.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use tokio::sync::mpsc;

use super::{
    Board, Epochs, Update,
    passive::{Router, Signal},
    probe::{Path, Prober},
    task::BackendTask,
};
use crate::{
    config::{Config, Mode, Service, Via},
    dataplane::probe_path::probe_source,
    ejection::Gate,
    plan::{Plan, forwarding, forwarding_name},
};

/// The way backend `id`'s checks follow the client's path: in DSR and tunnel modes with an active
/// check, unless the service says `via = "direct"`.
fn path(svc: &Service, id: u32, backend: std::net::SocketAddr, active: bool) -> Option<Path> {
    if !active || svc.health.via != Via::Path || !matches!(svc.mode, Mode::Dsr | Mode::Tunnel(_)) {
        return None;
    }
    let mode = forwarding(&svc.mode);
    Some(Path {
        vip: svc.vip,
        mark: lb_common::probe::mark(mode, id),
        source: probe_source(svc.vip.ip(), backend.ip()),
        mode: forwarding_name(mode),
    })
}

/// The health tasks, one per backend id, and the router that feeds them kernel events.
pub struct Supervisor {
    by_id: HashMap<u32, Task>,
    router: Arc<RwLock<Router>>,
    updates: mpsc::Sender<Update>,
    board: Board,
    /// Each service's passive-ejection cap, by name, kept across reloads.
    gates: HashMap<String, Arc<Gate>>,
    /// Each backend id's current task epoch, shared with the writer.
    epochs: Arc<Epochs>,
}

struct Task {
    abort: tokio::task::AbortHandle,
    /// Everything the task was started from; a task whose fingerprint is unchanged is kept.
    fingerprint: String,
    events: mpsc::Sender<Signal>,
}

impl Supervisor {
    pub fn new(
        router: Arc<RwLock<Router>>,
        updates: mpsc::Sender<Update>,
        board: Board,
        epochs: Arc<Epochs>,
    ) -> Supervisor {
        Supervisor {
            by_id: HashMap::new(),
            router,
            updates,
            board,
            gates: HashMap::new(),
            epochs,
        }
    }

    /// Brings the tasks in line with `plan`: keeps the unchanged, replaces the changed (starting
    /// from the backend's current health), starts the new, stops the removed.
    pub fn reconcile(
        &mut self,
        config: &Config,
        plan: &Plan,
        health: &[Option<bool>],
    ) -> anyhow::Result<()> {
        let mut router = Router {
            tasks: vec![None; plan.backends.len()],
            generations: plan.backends.iter().map(|b| b.generation).collect(),
            addresses: vec![None; plan.backends.len()],
        };
        let mut keep = HashSet::new();
        self.gates
            .retain(|name, _| config.services.iter().any(|s| &s.name == name));
        for (svc, planned) in config.services.iter().zip(&plan.services) {
            let gate = self
                .gates
                .entry(svc.name.clone())
                .or_insert_with(|| Gate::new(svc.passive.max_ejection_percent))
                .clone();
            let ids: Vec<u32> = planned.members.iter().map(|m| m.id).collect();
            gate.configure(svc.passive.max_ejection_percent, &ids);
            let prober = Arc::new(
                Prober::new(&svc.health)
                    .map_err(|e| anyhow::anyhow!("service {}: health check: {e}", svc.name))?,
            );
            for (backend, id) in svc
                .backends
                .iter()
                .zip(planned.members.iter().map(|m| m.id))
            {
                let path = path(svc, id, backend.address, prober.is_active());
                let fingerprint = format!(
                    "{}|{}|{}|{:?}|{:?}|{:?}",
                    svc.name,
                    backend.address,
                    plan.backends[id as usize].generation,
                    svc.health,
                    svc.passive,
                    path
                );
                keep.insert(id);
                router.addresses[id as usize] = Some(backend.address);
                if let Some(t) = self.by_id.get(&id)
                    && t.fingerprint == fingerprint
                {
                    router.tasks[id as usize] = Some(t.events.clone());
                    continue;
                }
                if let Some(old) = self.by_id.remove(&id) {
                    old.abort.abort();
                }
                let (tx, rx) = mpsc::channel(64);
                let task = BackendTask {
                    id,
                    generation: plan.backends[id as usize].generation,
                    epoch: self.epochs.start(id),
                    service: svc.name.clone(),
                    address: backend.address,
                    path,
                    prober: prober.clone(),
                    check: svc.health.clone(),
                    passive: svc.passive.clone(),
                    initially_up: health
                        .get(id as usize)
                        .copied()
                        .flatten()
                        .unwrap_or(planned.initially_healthy),
                    board: self.board.clone(),
                    gate: gate.clone(),
                };
                let handle = tokio::spawn(task.run(self.updates.clone(), rx));
                router.tasks[id as usize] = Some(tx.clone());
                self.by_id.insert(
                    id,
                    Task {
                        abort: handle.abort_handle(),
                        fingerprint,
                        events: tx,
                    },
                );
            }
        }
        self.by_id.retain(|id, t| {
            let kept = keep.contains(id);
            if !kept {
                t.abort.abort();
            }
            kept
        });
        if let Ok(mut r) = self.router.write() {
            *r = router;
        }
        Ok(())
    }
}
