//! Moving the writer to a new config, applying only the difference, and the operator's drains.

use super::*;

impl Writer {
    /// Moves to a new config, applying only the difference: kept services and backends keep
    /// their ids, health and established flows; a service whose table is unchanged is not
    /// rewritten; removed VIPs go, and removed backends' flows re-select. Returns the new plan and
    /// each backend id's health.
    pub fn reload(&mut self, config: &crate::config::Config) -> Result<Reloaded, DataplaneError> {
        let next = crate::plan::plan_update(config, Some(&self.plan), &mut self.generations);
        // What each kept backend (same service key, same address, so same id) carries over.
        let mut carried = std::collections::HashMap::new();
        for (svc, states) in self.plan.services.iter().zip(&self.states) {
            for (m, state) in svc.members.iter().zip(states) {
                carried.insert((svc.key, m.address, m.id), state.clone());
            }
        }
        let mut states: Vec<Vec<MemberState>> = next
            .services
            .iter()
            .map(|svc| {
                svc.members
                    .iter()
                    .map(|m| match carried.remove(&(svc.key, m.address, m.id)) {
                        Some(state) => state,
                        None => MemberState::added(svc.initially_healthy),
                    })
                    .collect()
            })
            .collect();
        // Backends: new and kept entries (kept ones are rewritten unchanged). A removed backend's
        // entry stays as it was: it is in no table, so it takes no new flows, and its established
        // flows keep going until its id is given to another backend (whose new generation makes
        // them re-select).
        let mut health_by_id = vec![None; next.backends.len()];
        for (svc, states) in next.services.iter().zip(&mut states) {
            let health = state::health(states);
            for (mi, m) in svc.members.iter().enumerate() {
                let alive_now = svc.alive(&health, mi);
                states[mi].alive = alive_now;
                let mut info = next.backends[m.id as usize];
                info.state = state_bits(alive_now, m.rank.drain);
                self.dp.set_backend(m.id, &info)?;
                health_by_id[m.id as usize] = Some(health[mi]);
            }
        }
        // A removed backend takes no new connection, even one whose reused client port still
        // finds its old `FLOWS` entry.
        let used: std::collections::HashSet<u32> = next
            .services
            .iter()
            .flat_map(|s| s.members.iter().map(|m| m.id))
            .collect();
        for svc in &self.plan.services {
            for m in svc.members.iter().filter(|m| !used.contains(&m.id)) {
                if let Some(mut entry) = self.dp.backend_entry(m.id)
                    && entry.family != 0
                {
                    entry.state |= BACKEND_NO_NEW;
                    self.dp.set_backend(m.id, &entry)?;
                }
            }
        }
        // New access-list prefixes and `REVERSE` entries before the entries that use them.
        self.dp.edge.install(&next.edge)?;
        let keys: std::collections::HashSet<_> = next.services.iter().map(|s| s.key).collect();
        for svc in &self.plan.services {
            if !keys.contains(&svc.key) {
                self.dp.remove_service(&svc.key)?;
            }
        }
        // Tables: written (into both slots) only where they differ from what is installed.
        let mut views = Vec::new();
        for (svc, states) in next.services.iter().zip(&states) {
            let health = state::health(states);
            let active = active_set(&svc.members, &health, svc.min_healthy, svc.on_all_down);
            // A backend the reload adds to a kernel service with slow_start ramps from here.
            let ramp = super::ramp::steps(svc, states, Instant::now());
            let table = super::ramp::table(svc, &active, &ramp);
            let old = self
                .plan
                .services
                .iter()
                .position(|o| o.key == svc.key && o.id == svc.id);
            let entries = super::alternatives::entries(svc, &health, &table, !ramp.is_empty());
            let unchanged = old.is_some_and(|oi| {
                let o = &self.plan.services[oi];
                self.views[oi].entries == entries && o.serving.entry() == svc.serving.entry()
            });
            let last_delta = match old {
                Some(oi) if unchanged => self.views[oi].last_delta.take(),
                _ => {
                    self.dp.install_table(svc, &entries)?;
                    self.dp.install_table(svc, &entries)?;
                    Some(Vec::new())
                }
            };
            views.push(View {
                active,
                table,
                entries,
                last_delta,
                ramp,
            });
        }
        // A removed backend keeps its `REVERSE` entry while its id is not another backend's.
        let reused = |id: u32| {
            next.backends
                .get(id as usize)
                .is_some_and(|b| b.family != 0)
        };
        self.dp.edge.prune(&next.edge, |_, v| !reused(v.backend))?;
        self.owner = owners(&next);
        self.plan = next;
        self.states = states;
        self.views = views;
        self.publish_all();
        debug!(
            services = self.plan.services.len(),
            "data plane moved to the new config"
        );
        Ok((self.plan.clone(), health_by_id))
    }

    /// Drains or enables one backend (an operator's decision, applied like a health change).
    pub fn drain(&mut self, service: &str, backend: &str, drain: bool) -> Result<(), DrainError> {
        let si = self
            .plan
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| DrainError::UnknownService(service.to_string()))?;
        let mi = self.plan.services[si]
            .members
            .iter()
            .position(|m| m.address.to_string() == backend)
            .ok_or_else(|| DrainError::UnknownBackend {
                service: service.to_string(),
                backend: backend.to_string(),
            })?;
        if self.plan.services[si].members[mi].rank.drain != drain {
            self.plan.services[si].members[mi].rank.drain = drain;
            self.changes += 1;
            let id = self.plan.services[si].members[mi].id;
            let info = self.backend_info(si, mi, self.states[si][mi].alive);
            self.dp
                .set_backend(id, &info)
                .and_then(|()| self.refresh(si))
                .map_err(|e| DrainError::MapWrite(format!("{e:#}")))?;
        }
        info!(service, backend, drain, "operator changed draining");
        Ok(())
    }
}
