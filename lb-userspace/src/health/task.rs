//! The task that owns one backend's health: it probes on its own jittered interval, runs the
//! rise/fall machine, takes passive-detection events from the kernel, ejects the backend with
//! exponential backoff when they pile up (if the service's ejection cap allows), and sends every
//! state change to the map writer.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tracing::{info, warn};

use super::{
    Board, LastCheck, Update,
    passive::Signal,
    probe::{Path, ProbeError, Prober, jittered},
    state::HealthState,
};
use crate::{
    config::{HealthCheck, Passive},
    ejection::{Backoff, Gate, Standing},
};

/// Everything one backend's task needs.
pub struct BackendTask {
    pub id: u32,
    /// The backend's generation, and this task's epoch: every update carries both.
    pub generation: u32,
    pub epoch: u64,
    pub service: String,
    pub address: SocketAddr,
    /// In DSR and tunnel modes (unless `via = "direct"`), the way the checks follow clients.
    pub path: Option<Path>,
    pub prober: Arc<Prober>,
    pub check: HealthCheck,
    pub passive: Passive,
    pub initially_up: bool,
    pub board: Board,
    /// The service's passive-ejection cap, shared with its other backends' tasks.
    pub gate: Arc<Gate>,
}

impl BackendTask {
    pub async fn run(self, updates: mpsc::Sender<Update>, mut events: mpsc::Receiver<Signal>) {
        let active = self.prober.is_active();
        let mut state = HealthState::new(self.initially_up, self.check.rise, self.check.fall);
        let mut next_probe = Instant::now();
        let mut ejected_until: Option<Instant> = None;
        let mut backoff = Backoff::default();
        backoff.back(Instant::now().into_std());
        let standing = |up: bool, ejected: bool| match (up, ejected) {
            (_, true) => Standing::Ejected,
            (true, false) => Standing::Up,
            (false, false) => Standing::Down,
        };
        self.gate.set(self.id, standing(state.up, false));
        let mut recent: VecDeque<Instant> = VecDeque::new();
        // A backend that must pass a first check and has not: it takes no traffic, so say why,
        // after `rise` failed checks and again after 2x, 4x... as many (a stuck state is never
        // silent, and never floods the log).
        let mut waiting = active && !state.up;
        let mut first_failures = 0u32;
        let mut warn_at = self.check.rise.max(1);
        let started = Instant::now();
        let far = Duration::from_secs(86_400);
        loop {
            let wake = if active {
                next_probe
            } else {
                ejected_until.unwrap_or_else(|| Instant::now() + far)
            };
            tokio::select! {
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    let serving = ejected_until.is_none_or(|u| now >= u);
                    let (ok, reason) = if !active {
                        (true, "ejection over".to_string())
                    } else {
                        match self.prober.probe(self.address, self.path.as_ref()).await {
                            Ok(()) if serving => (true, "check passed".to_string()),
                            Ok(()) => (false, "ejected (backoff)".to_string()),
                            Err(ProbeError::Backend(why)) => (false, why),
                            Err(e @ ProbeError::Local(_)) => {
                                // Not the backend's answer: no result, the state stays.
                                warn!(service = %self.service, backend = %self.address, error = %e, "health check could not run");
                                next_probe = Instant::now() + jittered(self.check.interval, self.check.jitter);
                                continue;
                            }
                        }
                    };
                    if serving {
                        ejected_until = None;
                    }
                    if active {
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        if let Ok(mut board) = self.board.write()
                            && let Some(slot) = board.get_mut(self.id as usize)
                        {
                            *slot = Some(LastCheck { ok, reason: reason.clone(), at, waiting });
                        }
                    }
                    if waiting && !ok {
                        first_failures += 1;
                        if first_failures == warn_at {
                            warn_at = warn_at.saturating_mul(2);
                            warn!(
                                service = %self.service,
                                backend = %self.address,
                                %reason,
                                failed_checks = first_failures,
                                waited_ms = started.elapsed().as_millis() as u64,
                                "backend has not passed its first check: it takes no traffic until it does"
                            );
                        }
                    }
                    let changed = if active {
                        state.observe(ok)
                    } else if !state.up {
                        state.up = true;
                        Some(true)
                    } else {
                        None
                    };
                    self.gate.set(self.id, standing(state.up, ejected_until.is_some()));
                    if let Some(up) = changed {
                        if up {
                            backoff.back(now.into_std());
                            waiting = false;
                        }
                        self.report(&updates, up, reason).await;
                    }
                    next_probe = Instant::now() + jittered(self.check.interval, self.check.jitter);
                }
                Some(signal) = events.recv() => {
                    let now = Instant::now();
                    let what = match signal {
                        Signal::Kernel(kind) => {
                            if self.passive.events_to_eject == 0 {
                                continue;
                            }
                            recent.push_back(now);
                            while recent.front().is_some_and(|t| now.duration_since(*t) > self.passive.window) {
                                recent.pop_front();
                            }
                            if recent.len() < self.passive.events_to_eject as usize {
                                continue;
                            }
                            format!("passive: {} x{}", kind.name(), self.passive.events_to_eject)
                        }
                        Signal::Ejected(reason) => reason,
                    };
                    if !state.up {
                        continue;
                    }
                    recent.clear();
                    if let Err(refused) = self.gate.try_eject(self.id) {
                        warn!(service = %self.service, backend = %self.address, evidence = %what, %refused, "passive ejection refused");
                        super::count_capped_ejection();
                        continue;
                    }
                    let length = backoff.next(now.into_std(), self.passive.base_ejection, self.passive.max_ejection);
                    ejected_until = Some(now + length);
                    state.force_down();
                    let reason = format!("{what} (ejection {}, {length:?})", backoff.count());
                    self.report(&updates, false, reason).await;
                    // Probe at once: the ejection ends only after the backoff and passing checks.
                    next_probe = now;
                }
            }
        }
    }

    /// Sends the decision to the writer, then logs it: the log line's formatting and write are
    /// not on the decision's way to the kernel, and the decision is timed from here.
    async fn report(&self, updates: &mpsc::Sender<Update>, up: bool, reason: String) {
        let decided = std::time::Instant::now();
        let _ = updates
            .send(Update {
                backend: self.id,
                generation: self.generation,
                task: self.epoch,
                up,
                reason: reason.clone(),
                decided,
            })
            .await;
        if up {
            info!(service = %self.service, backend = %self.address, old = "down", new = "up", %reason, "backend up");
        } else {
            warn!(service = %self.service, backend = %self.address, old = "up", new = "down", %reason, "backend down");
        }
    }
}
