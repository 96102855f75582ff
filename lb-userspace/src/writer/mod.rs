//! The single map writer. Health changes arrive on one channel; the writer takes every change
//! that is already waiting as one batch and makes it visible to the kernel, then prepares for
//! the next one, then records how long each decision took to become visible.
//!
//! **Visible first.** Every ring entry carries, besides its backend, where it goes if that
//! backend fails, and an entry whose owner is down names that owner first (see
//! [`alternatives`]). So the writer first writes the changed backends' `ALIVE` bits, which for
//! one backend failing or returning is the whole change as the kernel sees it; it checks that the
//! kernel's choice under the new bits is the new table, entry by entry, and only if not (several
//! changes at once, tiers switching, drains, slow start) writes the new table's backends into the
//! idle ring slot and flips it. That moment is the decision's "visible".
//!
//! **Then the next change.** The table is derived again (incrementally: only the base entries of
//! members inactive before or after the change, see [`fallback`](crate::fallback)), every
//! entry's alternative is derived for the new health view, and the entries that differ between
//! the idle slot and the new ones (the previous flip's changes and this one's) are written, then
//! the slot flips.
//!
//! - [`state`]: one [`MemberState`] per backend.
//! - [`alternatives`]: each entry's second backend.
//! - [`reload`]: moving to a new config, carrying health, drains and flows over; draining.
//! - [`snapshot`]: the status picture for `/status`, `/metrics` and the page.

mod alternatives;
mod history;
mod ramp;
mod reload;
mod snapshot;
mod state;
mod watch;

pub use state::{Change, MemberState};

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::Histogram;
use lb_common::{BACKEND_ALIVE, BACKEND_NO_NEW, ring_entry};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    fallback::{Active, active_set, derive, derive_slot, tier_activity},
    health::Update,
    l7::availability::{Availability, MemberView, PoolView, new_availability},
    plan::{Plan, PlannedService, Serving},
    status::{self, BackendStatus, ServiceStatus, Snapshot},
};

/// Decision-to-visible latencies in nanoseconds.
pub type Latency = Arc<Mutex<Histogram<u64>>>;

/// The same latencies for Prometheus, in seconds: 10 µs to about 1.3 s.
pub fn new_prometheus_latency() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.00001, 2.0, 18),
    )
}

/// A reload's outcome: the new plan, and each backend id's health (`None`: no backend).
pub type Reloaded = (Plan, Vec<Option<bool>>);

/// What the admin API asks of the writer.
pub enum Control {
    /// The current picture of services, backends and counters.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Apply a new, validated config: returns each backend id's health (for the daemon's tasks).
    Reload {
        config: Box<crate::config::Config>,
        reply: oneshot::Sender<Result<Reloaded, String>>,
    },
    /// Where a new flow from `client` to the service goes now, and why.
    Explain {
        service: String,
        client: std::net::SocketAddr,
        reply: oneshot::Sender<Result<crate::explain::Explanation, crate::explain::ExplainError>>,
    },
    /// Drain (`drain: true`) or enable a backend, named by service and "IP:port".
    Drain {
        service: String,
        backend: String,
        drain: bool,
        reply: oneshot::Sender<Result<(), DrainError>>,
    },
}

/// Why a drain or enable was not applied. The admin API answers each with its own status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("no service named {0}")]
    UnknownService(String),
    #[error("service {service} has no backend {backend}")]
    UnknownBackend { service: String, backend: String },
    #[error("writing the data plane failed: {0}")]
    MapWrite(String),
}

/// What applying one batch took.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// The batch's largest decision-to-visible: from a decision until the kernel chose by it.
    pub visible: Duration,
    /// From the batch's arrival at the writer until the last touched service was visible.
    pub write: Duration,
    /// The whole batch, with each entry's alternative prepared for the next change.
    pub took: Duration,
    /// Touched kernel services whose change their `ALIVE` bits alone made visible.
    pub by_bits: usize,
}

pub fn new_latency() -> Latency {
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
    ))
}

pub struct Writer {
    dp: Dataplane,
    plan: Plan,
    /// Per service, per member (in the plan's order).
    states: Vec<Vec<MemberState>>,
    /// Per service: what is installed.
    views: Vec<View>,
    /// Global backend id to (service index, member index); `None` for ids no backend holds.
    owner: Vec<Option<(usize, usize)>>,
    latency: Latency,
    prometheus_latency: prometheus_client::metrics::histogram::Histogram,
    changes: u64,
    /// The last generation each backend id has had (see `plan::plan_update`).
    generations: Vec<u32>,
    /// What the L7 proxy reads: the HTTP services' members, active and eligible.
    availability: Availability,
    /// The health tasks' epochs; without them (tests, benches) updates are not checked for it.
    epochs: Option<Arc<crate::health::Epochs>>,
    /// Updates dropped as stale: about an id's former owner, or from a replaced task.
    stale: u64,
    /// Route, neighbour and link changes, which make the cached next hops stale.
    hop_events: Option<mpsc::UnboundedReceiver<crate::dataplane::next_hops::HopEvent>>,
    /// Per service name: whether a backend is up (healthy and not drained). The announcer
    /// withdraws a `when_available` VIP when it goes false.
    available: tokio::sync::watch::Sender<std::collections::BTreeMap<String, bool>>,
    /// Each backend's last ten minutes, for the status page.
    history: history::History,
    /// The interfaces XDP is attached to: `/status` and `/metrics` show their redirect drops
    /// from zero, so an alert's `increase()` sees the first.
    interfaces: Vec<String>,
}

/// One service's installed state.
struct View {
    active: Active,
    /// The active table, as member indices (or the `NO_BACKEND`/`REJECT` markers).
    table: Vec<u32>,
    /// The entries in the active ring slot, as the kernel reads them (`lb_common::ring_entry`).
    entries: Vec<u32>,
    /// Entries the last flip changed; `None` when the idle slot's content is unknown.
    last_delta: Option<Vec<u32>>,
    /// The slow-start step of each member the table was built for (empty: no ramp).
    ramp: Vec<Option<u32>>,
}

/// Global backend id to (service index, member index).
fn owners(plan: &Plan) -> Vec<Option<(usize, usize)>> {
    let mut owner = vec![None; plan.backends.len()];
    for (si, s) in plan.services.iter().enumerate() {
        for (mi, m) in s.members.iter().enumerate() {
            owner[m.id as usize] = Some((si, mi));
        }
    }
    owner
}

/// Re-derives the entries a change from `view.active` to `next` can touch.
fn update_table(svc: &PlannedService, view: &mut View, next: Active) {
    match (&view.active, &next) {
        (Active::Members(old), Active::Members(new)) => {
            // An entry can change only if its base owner is inactive before or after: its owner
            // leaves, returns, or it is a reassigned entry whose ranking the change affects. So
            // only the base entries of those members are visited.
            let tier_active = tier_activity(&svc.prefs, &svc.members, new);
            for (m, member) in svc.members.iter().enumerate() {
                if old[m] && new[m] {
                    continue;
                }
                for &slot in &member.base_slots {
                    let slot = slot as usize;
                    view.table[slot] =
                        derive_slot(slot, &svc.base, &svc.prefs, &svc.members, new, &tier_active);
                }
            }
        }
        _ => view.table = derive(&svc.base, &svc.prefs, &svc.members, &next),
    }
    view.active = next;
}

/// Writes `entries` into a kernel service's idle ring slot and flips it: only the entries that
/// differ from the idle slot's (the previous flip's changes and this one's), or all of them when
/// the idle slot is unknown.
fn write_entries(
    dp: &mut Dataplane,
    svc: &PlannedService,
    view: &mut View,
    entries: Vec<u32>,
) -> Result<(), DataplaneError> {
    let same_len = view.entries.len() == entries.len();
    let delta: Vec<u32> = if same_len {
        (0..entries.len() as u32)
            .filter(|&i| entries[i as usize] != view.entries[i as usize])
            .collect()
    } else {
        Vec::new()
    };
    match view.last_delta.take().filter(|_| same_len) {
        Some(previous) => {
            let changed = previous
                .iter()
                .chain(&delta)
                .map(|&i| (i as usize, entries[i as usize]));
            dp.install_delta(svc, entries.len(), changed)?;
        }
        None => dp.install_table(svc, &entries)?,
    }
    // After a whole write of a table of another size the idle slot is of no use: whole again.
    view.last_delta = same_len.then_some(delta);
    view.entries = entries;
    Ok(())
}

/// `BackendInfo::state` for a backend: alive keeps its flows; drained takes no new ones.
fn state_bits(alive: bool, drained: bool) -> u8 {
    (if alive { BACKEND_ALIVE } else { 0 }) | (if drained { BACKEND_NO_NEW } else { 0 })
}

impl Writer {
    /// A writer for `plan`, with each backend in its initial health.
    pub fn new(dp: Dataplane, plan: Plan) -> Writer {
        let healthy = plan
            .services
            .iter()
            .map(|s| vec![s.initially_healthy; s.members.len()])
            .collect();
        Writer::with_health(dp, plan, healthy)
    }

    /// A writer for `plan` with the given health per service and member (as adopted from a
    /// previous daemon's pinned state).
    pub fn with_health(dp: Dataplane, plan: Plan, healthy: Vec<Vec<bool>>) -> Writer {
        let owner = owners(&plan);
        let states = healthy
            .iter()
            .map(|h| h.iter().map(|&up| MemberState::new(up)).collect())
            .collect();
        let views = plan
            .services
            .iter()
            .zip(&healthy)
            .map(|(s, h)| {
                let active = active_set(&s.members, h, s.min_healthy, s.on_all_down);
                let table = derive(&s.base, &s.prefs, &s.members, &active);
                View {
                    active,
                    table,
                    entries: Vec::new(),
                    last_delta: None,
                    ramp: Vec::new(),
                }
            })
            .collect();
        let generations = plan.backends.iter().map(|b| b.generation).collect();
        Writer {
            dp,
            plan,
            states,
            views,
            owner,
            latency: new_latency(),
            prometheus_latency: new_prometheus_latency(),
            changes: 0,
            generations,
            epochs: None,
            stale: 0,
            availability: new_availability(),
            hop_events: None,
            available: tokio::sync::watch::Sender::new(Default::default()),
            history: Default::default(),
            interfaces: Vec::new(),
        }
    }

    /// Per service name, whether any backend is up, kept current by this writer.
    pub fn available(
        &self,
    ) -> tokio::sync::watch::Receiver<std::collections::BTreeMap<String, bool>> {
        self.available.subscribe()
    }

    /// The health view the L7 proxy reads, kept current by this writer.
    pub fn availability(&self) -> Availability {
        self.availability.clone()
    }

    /// Publishes an HTTP service's members as the fallback ordering sees them now.
    fn publish(&self, si: usize) {
        let svc = &self.plan.services[si];
        let up = svc
            .members
            .iter()
            .zip(&self.states[si])
            .any(|(m, state)| state.healthy && !m.rank.drain);
        self.available
            .send_if_modified(|a| a.insert(svc.name.clone(), up) != Some(up));
        if svc.serving != Serving::Proxy {
            return;
        }
        let active = match &self.views[si].active {
            Active::Members(set) => set.clone(),
            Active::Drop | Active::Reject => vec![false; svc.members.len()],
        };
        let members = svc
            .members
            .iter()
            .zip(&self.states[si])
            .zip(active)
            .map(|((m, state), active)| {
                MemberView::new(
                    m.address,
                    m.rank.tier,
                    m.rank.weight,
                    active,
                    state.healthy && !m.rank.drain,
                )
                .ramping(state.up_since.zip(svc.slow_start))
            })
            .collect();
        if let Ok(mut a) = self.availability.write() {
            a.insert(svc.name.clone(), Arc::new(PoolView::new(members)));
        }
    }

    fn publish_all(&self) {
        self.available.send_if_modified(|a| {
            let before = a.len();
            a.retain(|name, _| self.plan.services.iter().any(|s| &s.name == name));
            a.len() != before
        });
        if let Ok(mut a) = self.availability.write() {
            a.retain(|name, _| {
                self.plan
                    .services
                    .iter()
                    .any(|s| s.serving == Serving::Proxy && &s.name == name)
            });
        }
        for si in 0..self.plan.services.len() {
            self.publish(si);
        }
    }

    /// The latency histogram the metrics endpoint exports (shared, updated live).
    pub fn prometheus_latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.prometheus_latency.clone()
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// Writes every backend and every service's table for the current health view.
    pub fn install(&mut self) -> Result<(), DataplaneError> {
        // Access lists and `REVERSE` before any service entry that uses them.
        self.dp.edge.install(&self.plan.edge)?;
        for si in 0..self.plan.services.len() {
            let svc = &self.plan.services[si];
            let health = state::health(&self.states[si]);
            for mi in 0..svc.members.len() {
                let alive = svc.alive(&health, mi);
                self.states[si][mi].alive = alive;
                let id = svc.members[mi].id;
                let info = self.backend_info(si, mi, alive);
                self.dp.set_backend(id, &info)?;
            }
            // Into both slots: then the idle slot is known, and every later change is a delta.
            let entries = alternatives::entries(svc, &health, &self.views[si].table, false);
            self.dp.install_table(svc, &entries)?;
            self.dp.install_table(svc, &entries)?;
            self.views[si].entries = entries;
            self.views[si].last_delta = Some(Vec::new());
        }
        self.publish_all();
        Ok(())
    }

    /// Member `mi` of service `si`'s kernel entry: alive or not, and whether it takes new
    /// connections (not while drained).
    fn backend_info(&self, si: usize, mi: usize, alive: bool) -> lb_common::BackendInfo {
        let m = &self.plan.services[si].members[mi];
        let mut info = self.plan.backends[m.id as usize];
        info.state = state_bits(alive, m.rank.drain);
        info
    }

    fn set_alive(&mut self, si: usize, mi: usize, alive: bool) -> Result<(), DataplaneError> {
        if self.states[si][mi].alive != alive {
            self.states[si][mi].alive = alive;
            let id = self.plan.services[si].members[mi].id;
            let info = self.backend_info(si, mi, alive);
            self.dp.set_backend(id, &info)?;
        }
        Ok(())
    }

    /// Brings one service's table and backend states in line with its health and drains.
    fn refresh(&mut self, si: usize) -> Result<(), DataplaneError> {
        self.write_alive(si)?;
        self.make_visible(si)?;
        self.prepare(si)
    }

    /// Writes the `ALIVE` bits the service's health view wants, both ways.
    fn write_alive(&mut self, si: usize) -> Result<(), DataplaneError> {
        let health = state::health(&self.states[si]);
        for mi in 0..self.plan.services[si].members.len() {
            let alive = self.plan.services[si].alive(&health, mi);
            self.set_alive(si, mi, alive)?;
        }
        Ok(())
    }

    /// Derives the service's new table; if the `ALIVE` bits written before do not already make
    /// the kernel choose it, writes its backends (without alternatives) and flips. Returns
    /// whether the bits sufficed.
    fn make_visible(&mut self, si: usize) -> Result<bool, DataplaneError> {
        let health = state::health(&self.states[si]);
        let svc = &self.plan.services[si];
        let view = &mut self.views[si];
        let next = active_set(&svc.members, &health, svc.min_healthy, svc.on_all_down);
        update_table(svc, view, next);
        // Slow start (kernel services): while a member ramps, and once more when the ramps end,
        // the whole table is derived.
        let steps = ramp::steps(svc, &self.states[si], Instant::now());
        if !steps.is_empty() || !view.ramp.is_empty() {
            view.table = ramp::table(svc, &view.active, &steps);
            view.ramp = steps;
        }
        if svc.serving.kernel().is_none() {
            // The proxy reads the published view: that is its "visible".
            self.publish(si);
            return Ok(false);
        }
        let mut alive_ids = vec![false; self.plan.backends.len()];
        for (m, state) in svc.members.iter().zip(&self.states[si]) {
            alive_ids[m.id as usize] = state.alive;
        }
        let alive = |id: u32| alive_ids.get(id as usize).copied().unwrap_or(false);
        let by_bits = view.entries.len() == view.table.len()
            && view
                .entries
                .iter()
                .zip(&view.table)
                .all(|(&e, &m)| ring_entry::choose(e, alive) == svc.backend_id(m));
        if !by_bits {
            let primaries = view
                .table
                .iter()
                .map(|&m| ring_entry::pack(svc.backend_id(m), None))
                .collect();
            write_entries(&mut self.dp, svc, view, primaries)?;
        }
        Ok(by_bits)
    }

    /// Writes every entry's alternative for the current health view (see [`alternatives`]), so
    /// that the next single change is its `ALIVE` bit alone, and publishes a kernel service (a
    /// proxied one was published as its change became visible).
    fn prepare(&mut self, si: usize) -> Result<(), DataplaneError> {
        let health = state::health(&self.states[si]);
        let svc = &self.plan.services[si];
        let view = &mut self.views[si];
        if svc.serving.kernel().is_some() {
            let entries = alternatives::entries(svc, &health, &view.table, !view.ramp.is_empty());
            write_entries(&mut self.dp, svc, view, entries)?;
            self.publish(si);
        }
        Ok(())
    }

    /// Checks every update's epoch against `epochs` from now on.
    pub fn with_epochs(mut self, epochs: Arc<crate::health::Epochs>) -> Writer {
        self.epochs = Some(epochs);
        self
    }

    /// Watches route, neighbour and link changes ([`crate::dataplane::next_hops`]); without
    /// it the cached next hops are only renewed by a reload.
    pub fn with_hop_events(
        mut self,
        events: mpsc::UnboundedReceiver<crate::dataplane::next_hops::HopEvent>,
    ) -> Writer {
        self.hop_events = Some(events);
        self
    }

    /// The generation backend `id` holds in the installed plan.
    pub fn generation_of(&self, id: u32) -> Option<u32> {
        self.plan.backends.get(id as usize).map(|b| b.generation)
    }

    /// Whether `u` is about the id's current backend and from its current task.
    fn current(&self, u: &Update) -> bool {
        self.generation_of(u.backend) == Some(u.generation)
            && self
                .epochs
                .as_ref()
                .is_none_or(|e| e.is_current(u.backend, u.task))
    }

    /// The plan installed now.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Updates dropped as stale since start.
    pub fn stale_updates(&self) -> u64 {
        self.stale
    }

    /// Applies one batch (see [`Applied`] for what it reports). Updates about an id's former owner
    /// or from a replaced task are dropped (and counted), so a reload can never let an old
    /// task's verdict stand for a backend that has not passed its own check.
    pub fn apply(&mut self, batch: &[Update]) -> Result<Applied, DataplaneError> {
        let started = Instant::now();
        let kept: Vec<Update>;
        let batch = if batch.iter().all(|u| self.current(u)) {
            batch
        } else {
            let (current, stale): (Vec<&Update>, Vec<&Update>) =
                batch.iter().partition(|u| self.current(u));
            for u in &stale {
                // By id: the update is about the id's former owner, whose address is gone.
                debug!(
                    backend_id = u.backend,
                    generation = u.generation,
                    task = u.task,
                    up = u.up,
                    "stale health update dropped"
                );
            }
            self.stale += stale.len() as u64;
            kept = current.into_iter().cloned().collect();
            &kept[..]
        };
        let mut touched = BTreeSet::new();
        let mut changed = Vec::new();
        for u in batch {
            let Some(&Some((si, mi))) = self.owner.get(u.backend as usize) else {
                continue;
            };
            if self.states[si][mi].set_healthy(u.up) {
                touched.insert(si);
                changed.push((si, mi, u.up));
            }
        }
        // The bits of every touched service first, then whatever more each needs to be
        // visible, then the preparation for the next change, which no decision waits for.
        for &si in &touched {
            self.write_alive(si)?;
        }
        let bits_at = Instant::now();
        let mut visible_at = BTreeMap::new();
        let mut by_bits = 0;
        for &si in &touched {
            let at = if self.make_visible(si)? {
                by_bits += 1;
                bits_at
            } else {
                Instant::now()
            };
            visible_at.insert(si, at);
        }
        let all_visible = Instant::now();
        // What no decision waits for: the history, the logs, the next change's entries.
        for (si, mi, up) in changed {
            let svc = &self.plan.services[si];
            let m = &svc.members[mi];
            self.history
                .change(m.id, &m.address.to_string(), up, started);
            if let Some(ramp) = svc
                .slow_start
                .filter(|_| self.states[si][mi].up_since.is_some())
            {
                info!(service = %svc.name, backend = %m.address, ?ramp, "back up: slow start");
            }
        }
        for &si in &touched {
            self.prepare(si)?;
        }
        let took = started.elapsed();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut visible = Duration::ZERO;
        if let Ok(mut h) = self.latency.lock() {
            for u in batch {
                let owner = self.owner.get(u.backend as usize).copied().flatten();
                // An update that changed nothing was visible once the others were.
                let at = owner
                    .and_then(|(si, _)| visible_at.get(&si).copied())
                    .unwrap_or(all_visible);
                let took = at.saturating_duration_since(u.decided);
                visible = visible.max(took);
                h.saturating_record(took.as_nanos() as u64);
                self.prometheus_latency.observe(took.as_secs_f64());
                if let Some((si, mi)) = owner {
                    self.states[si][mi].last = Some(Change {
                        reason: u.reason.clone(),
                        at: now,
                    });
                }
            }
        }
        self.changes += batch.len() as u64;
        // The writer's share of decision to visible: until the last touched service was.
        let write = visible_at
            .values()
            .max()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(started));
        if !touched.is_empty() {
            info!(
                changes = batch.len(),
                services = touched.len(),
                by_bits,
                write_us = write.as_micros() as u64,
                decision_to_visible_us = visible.as_micros() as u64,
                prepared_us = took.as_micros() as u64,
                "data plane updated"
            );
        }
        Ok(Applied {
            visible,
            write,
            took,
            by_bits,
        })
    }

    /// Applies batches until `stop` fires, then returns the writer (dropping it detaches XDP).
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        mut control: mpsc::Receiver<Control>,
        mut stop: oneshot::Receiver<()>,
        stats_every: Duration,
    ) -> Writer {
        let mut tick = tokio::time::interval(stats_every);
        let mut drops_tick = tokio::time::interval(Duration::from_secs(1));
        let mut history_tick = tokio::time::interval(history::STEP);
        let mut ramp_tick = tokio::time::interval(Duration::from_millis(50));
        let mut hops = self.hop_events.take();
        let mut drops = watch::DropWatch::default();
        let mut flood = watch::FloodWatch::default();
        let mut forwarding = watch::ForwardingWatch::default();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(c) = control.recv() => match c {
                    Control::Snapshot(reply) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Control::Reload { config, reply } => {
                        let _ = reply.send(self.reload(&config).map_err(|e| e.to_string()));
                        // The old plan and the new one's scratch were this thread's.
                        crate::allocator::release_freed_memory();
                    }
                    Control::Explain { service, client, reply } => {
                        let _ = reply.send(self.explain(&service, client));
                    }
                    Control::Drain { service, backend, drain, reply } => {
                        let _ = reply.send(self.drain(&service, &backend, drain));
                    }
                },
                Some(first) = updates.recv() => {
                    let mut batch = vec![first];
                    while let Ok(u) = updates.try_recv() {
                        batch.push(u);
                    }
                    if let Err(e) = self.apply(&batch) {
                        error!(error = %e, "writing the data plane failed");
                    }
                }
                event = next_hop_event(&mut hops) => self.hop_event(event, &mut hops),
                _ = tick.tick() => self.log_stats(),
                _ = history_tick.tick() => self.sample_history(),
                _ = ramp_tick.tick() => self.step_ramps(),
                _ = drops_tick.tick() => {
                    drops.check(self.dp.redirect_drops());
                    let counters = self.dp.counters().unwrap_or_default();
                    flood.check(&self.flooded_cpus(), &counters);
                    forwarding.check(&counters);
                }
            }
        }
        self.log_stats();
        self
    }

    /// The interfaces XDP was attached to (see [`Writer::interfaces`]).
    pub fn set_interfaces(&mut self, names: Vec<String>) {
        self.interfaces = names;
    }

    /// Rewrites the table of each kernel service whose slow starts moved a step.
    fn step_ramps(&mut self) {
        let now = Instant::now();
        for si in 0..self.plan.services.len() {
            let steps = ramp::steps(&self.plan.services[si], &self.states[si], now);
            if steps != self.views[si].ramp
                && let Err(e) = self.refresh(si)
            {
                error!(service = %self.plan.services[si].name, error = %e, "writing a slow-start step failed");
            }
        }
    }

    /// Every backend's new-flow count, for its history.
    fn sample_history(&mut self) {
        let counts: Vec<(u32, String, u64)> = self
            .plan
            .services
            .iter()
            .flat_map(|s| s.members.iter())
            .map(|m| {
                let n = self.dp.backend_traffic(m.id).map_or(0, |t| t.new_flows);
                (m.id, m.address.to_string(), n)
            })
            .collect();
        self.history.sample(
            Instant::now(),
            counts.iter().map(|(id, a, n)| (*id, a.as_str(), *n)),
        );
    }

    /// A route, neighbour or link changed (all at once, however many came): the cached next
    /// hops go stale. A watcher gone blind turns the cache off.
    fn hop_event(
        &mut self,
        event: crate::dataplane::next_hops::HopEvent,
        hops: &mut Option<mpsc::UnboundedReceiver<crate::dataplane::next_hops::HopEvent>>,
    ) {
        use crate::dataplane::next_hops::HopEvent;
        let mut blind = matches!(event, HopEvent::Blind(_));
        if let Some(rx) = hops.as_mut() {
            while let Ok(e) = rx.try_recv() {
                blind |= matches!(e, HopEvent::Blind(_));
            }
        }
        let written = if blind {
            *hops = None;
            self.dp.edge.disable_hops()
        } else {
            self.dp.edge.invalidate_hops()
        };
        if let Err(e) = written {
            error!(error = %e, "marking the cached next hops stale failed");
        }
    }

    /// [`crate::explain`] against the installed table, each backend's health, and `FLOWS`.
    pub fn explain(
        &self,
        service: &str,
        client: std::net::SocketAddr,
    ) -> Result<crate::explain::Explanation, crate::explain::ExplainError> {
        let si = self
            .plan
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| crate::explain::ExplainError::UnknownService(service.to_string()))?;
        let svc = &self.plan.services[si];
        let health = state::health(&self.states[si]);
        let mut e = crate::explain::explain(svc, &self.views[si].table, &health, client)?;
        e.denied = self.plan.edge.refusal(svc, client.ip()).map(String::from);
        let key = crate::explain::flow_key(svc, client);
        e.tracked = self.dp.flow(&key).map(|flow| {
            let owner = self.owner.get(flow.backend as usize).copied().flatten();
            let entry = self.dp.backend_entry(flow.backend);
            crate::explain::Tracked {
                backend: owner.map(|(s, m)| self.plan.services[s].members[m].address.to_string()),
                age_ms: monotonic_ns().saturating_sub(flow.since_ns) / 1_000_000,
                holds: entry.is_some_and(|b| {
                    b.state & BACKEND_ALIVE != 0 && b.generation == flow.generation
                }),
            }
        });
        Ok(e)
    }

    fn log_stats(&self) {
        if let Ok(c) = self.dp.counters() {
            let nonzero: Vec<String> =
                c.0.iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(k, v)| format!("{}={v}", k.name()))
                    .collect();
            debug!(counters = %nonzero.join(" "), "data plane");
        }
        if let Ok(h) = self.latency.lock()
            && !h.is_empty()
        {
            info!(
                count = h.len(),
                p50_us = h.value_at_quantile(0.5) / 1000,
                p99_us = h.value_at_quantile(0.99) / 1000,
                max_us = h.max() / 1000,
                "decision-to-visible latency"
            );
        }
    }
}

/// The next route, neighbour or link change; never, without a watcher.
async fn next_hop_event(
    hops: &mut Option<mpsc::UnboundedReceiver<crate::dataplane::next_hops::HopEvent>>,
) -> crate::dataplane::next_hops::HopEvent {
    match hops {
        Some(rx) => match rx.recv().await {
            Some(e) => e,
            None => crate::dataplane::next_hops::HopEvent::Blind("the watcher stopped".into()),
        },
        None => std::future::pending().await,
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so `FLOWS` ages compare.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
