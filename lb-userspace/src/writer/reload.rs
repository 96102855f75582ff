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
        for (si, svc) in self.plan.services.iter().enumerate() {
            for (mi, &id) in svc.backend_ids.iter().enumerate() {
                let state = (
                    self.healthy[si][mi],
                    self.alive[si][mi],
                    self.last[si][mi].clone(),
                );
                carried.insert((svc.key, svc.addresses[mi], id), state);
            }
        }
        let mut healthy = Vec::new();
        let mut alive = Vec::new();
        let mut last = Vec::new();
        for svc in &next.services {
            let (mut h, mut a, mut l) = (Vec::new(), Vec::new(), Vec::new());
            for (mi, &id) in svc.backend_ids.iter().enumerate() {
                match carried.get(&(svc.key, svc.addresses[mi], id)) {
                    Some((hh, aa, ll)) => {
                        h.push(*hh);
                        a.push(*aa);
                        l.push(ll.clone());
                    }
                    None => {
                        h.push(svc.initially_healthy);
                        a.push(svc.initially_healthy);
                        l.push(None);
                    }
                }
            }
            healthy.push(h);
            alive.push(a);
            last.push(l);
        }
        // Backends: new and kept entries (kept ones are rewritten unchanged). A removed backend's
        // entry stays as it was: it is in no table, so it takes no new flows, and its established
        // flows keep going until its id is given to another backend (whose new generation makes
        // them re-select).
        let mut health_by_id = vec![None; next.backends.len()];
        for (si, svc) in next.services.iter().enumerate() {
            for (mi, &id) in svc.backend_ids.iter().enumerate() {
                let alive_now = svc.alive(&healthy[si], mi);
                alive[si][mi] = alive_now;
                let mut info = next.backends[id as usize];
                info.state = if alive_now { BACKEND_ALIVE } else { 0 };
                self.dp.set_backend(id, &info)?;
                health_by_id[id as usize] = Some(healthy[si][mi]);
            }
        }
        let keys: std::collections::HashSet<_> = next.services.iter().map(|s| s.key).collect();
        for svc in &self.plan.services {
            if !keys.contains(&svc.key) {
                self.dp.remove_service(&svc.key)?;
            }
        }
        // Tables: written (into both slots) only where they differ from what is installed.
        let mut views = Vec::new();
        for (si, svc) in next.services.iter().enumerate() {
            let active = active_set(&svc.members, &healthy[si], svc.min_healthy, svc.on_all_down);
            let table = derive(&svc.base, &svc.prefs, &svc.members, &active);
            let old = self
                .plan
                .services
                .iter()
                .position(|o| o.key == svc.key && o.id == svc.id);
            let unchanged = old.is_some_and(|oi| {
                let o = &self.plan.services[oi];
                o.ids(self.views[oi].table.clone()) == svc.ids(table.clone())
                    && o.flags == svc.flags
                    && o.syn_timeout_ms == svc.syn_timeout_ms
            });
            let last_delta = match old {
                Some(oi) if unchanged => self.views[oi].last_delta.take(),
                _ => {
                    let ring = svc.ids(table.clone());
                    self.dp.install_table(svc, &ring)?;
                    self.dp.install_table(svc, &ring)?;
                    Some(Vec::new())
                }
            };
            views.push(View {
                active,
                table,
                last_delta,
            });
        }
        self.owner = owners(&next);
        self.plan = next;
        self.healthy = healthy;
        self.alive = alive;
        self.last = last;
        self.views = views;
        self.publish_all();
        info!(services = self.plan.services.len(), "config reloaded");
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
            .addresses
            .iter()
            .position(|a| a.to_string() == backend)
            .ok_or_else(|| DrainError::UnknownBackend {
                service: service.to_string(),
                backend: backend.to_string(),
            })?;
        if self.plan.services[si].members[mi].drain != drain {
            self.plan.services[si].members[mi].drain = drain;
            self.changes += 1;
            self.refresh(si)
                .map_err(|e| DrainError::MapWrite(format!("{e:#}")))?;
        }
        info!(service, backend, drain, "operator changed draining");
        Ok(())
    }
}
