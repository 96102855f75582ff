//! The writer's status picture: every service, backend and counter, consistent at one moment.

use super::*;
use crate::{
    config::Protocol,
    dataplane::redirect_drops::interface_name,
    status::{ServedProtocol, ServiceState},
};

impl Writer {
    /// One consistent picture of every service, backend and counter.
    pub fn snapshot(&self) -> Snapshot {
        let traffic = |t: Result<lb_common::Traffic, DataplaneError>| {
            let t = t.unwrap_or_default();
            status::Traffic {
                packets: t.packets,
                bytes: t.bytes,
                new_flows: t.new_flows,
            }
        };
        let services = self
            .plan
            .services
            .iter()
            .enumerate()
            .map(|(si, svc)| {
                let active = match &self.views[si].active {
                    Active::Members(set) => set.clone(),
                    _ => vec![false; svc.members.len()],
                };
                let state = match (&self.views[si].active, svc.on_all_down) {
                    (Active::Drop, _) => ServiceState::Drop,
                    (Active::Reject, _) => ServiceState::Reject,
                    (_, crate::config::OnAllDown::FailOpen)
                        if !self.states[si].iter().any(|m| m.healthy) =>
                    {
                        ServiceState::FailOpen
                    }
                    _ => ServiceState::Serving,
                };
                let backends = svc
                    .members
                    .iter()
                    .zip(&self.states[si])
                    .zip(&active)
                    .map(|((m, state), &active)| {
                        (m, state, active, traffic(self.dp.backend_traffic(m.id)))
                    })
                    .map(|(m, state, active, traffic)| BackendStatus {
                        id: m.id,
                        address: m.address.to_string(),
                        history: self.history.view(
                            m.id,
                            &m.address.to_string(),
                            traffic.new_flows,
                            std::time::Instant::now(),
                        ),
                        tier: m.rank.tier,
                        weight: m.rank.weight,
                        healthy: state.healthy,
                        draining: m.rank.drain,
                        active,
                        alive: state.alive,
                        last_change: state.last.as_ref().map(|c| c.reason.clone()),
                        last_change_at: state.last.as_ref().map(|c| c.at),
                        // Filled by the admin API from the health board.
                        last_check_ok: None,
                        last_check: None,
                        last_check_at: None,
                        waiting_for_first_check: false,
                        slow_start_percent: state.up_since.zip(svc.slow_start).and_then(
                            |(since, ramp)| {
                                let done = crate::l7::availability::ramp_done(
                                    since,
                                    ramp,
                                    std::time::Instant::now(),
                                );
                                (done < 1.0).then_some((done * 100.0) as u8)
                            },
                        ),
                        traffic,
                    })
                    .collect();
                ServiceStatus {
                    name: svc.name.clone(),
                    vip: if svc.pool {
                        "-".to_string()
                    } else {
                        svc.vip.to_string()
                    },
                    // HTTP services are served by the proxy: say so, not just "tcp".
                    protocol: match (&svc.serving, svc.protocol) {
                        (Serving::Proxy, _) if svc.pool => ServedProtocol::Pool,
                        (Serving::Proxy, _) => ServedProtocol::Http,
                        (Serving::Kernel(_), Protocol::Tcp) => ServedProtocol::Tcp,
                        (Serving::Kernel(_), Protocol::Udp) => ServedProtocol::Udp,
                    },
                    forwarding: svc
                        .serving
                        .kernel()
                        .map(|k| crate::plan::forwarding_name(k.entry.forwarding).to_string()),
                    state,
                    tier_in_use: svc
                        .members
                        .iter()
                        .zip(&active)
                        .filter(|(_, a)| **a)
                        .map(|(m, _)| m.rank.tier)
                        .max(),
                    traffic: traffic(self.dp.service_traffic(svc.id)),
                    refused: match svc.serving {
                        Serving::Kernel(_) => self
                            .dp
                            .edge
                            .refusals(svc.id)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(r, n)| (r.name().to_string(), n))
                            .collect(),
                        Serving::Proxy => BTreeMap::new(),
                    },
                    backends,
                    // Filled by the admin API from the HTTP listeners.
                    routes: Vec::new(),
                }
            })
            .collect();
        let datapath: BTreeMap<String, u64> = self
            .dp
            .counters()
            .map(|c| {
                c.0.iter()
                    .map(|(k, v)| (k.name().to_string(), *v))
                    .collect()
            })
            .unwrap_or_default();
        let decision_to_visible = self
            .latency
            .lock()
            .map(|h| status::Latency {
                count: h.len(),
                p50_us: h.value_at_quantile(0.5) / 1000,
                p99_us: h.value_at_quantile(0.99) / 1000,
                max_us: h.max() / 1000,
            })
            .unwrap_or_default();
        let count = |name: &str| datapath.get(name).copied().unwrap_or(0);
        let flood = status::Flood {
            threshold: self.plan.edge.flood_threshold,
            cpus: self.flooded_cpus(),
            entered: count(lb_common::Counter::FloodEnter.name()),
            left: count(lb_common::Counter::FloodLeave.name()),
            unwritten: count(lb_common::Counter::FloodUnwritten.name()),
        };
        Snapshot {
            flood,
            services,
            datapath,
            changes: self.changes,
            stale_updates: self.stale,
            flows_capacity: self.dp.flows_capacity().unwrap_or(0),
            decision_to_visible,
            redirect_drops: self
                .interfaces
                .iter()
                .map(|name| (name.clone(), 0))
                .chain(
                    self.dp
                        .redirect_drops()
                        .into_iter()
                        .map(|(ifindex, n)| (interface_name(ifindex), n)),
                )
                .collect(),
            node: Default::default(),
        }
    }
}

impl Writer {
    /// CPUs whose flood guard is on now. A CPU that saw no SYN for two windows has not had the
    /// chance to step back: it counts as off.
    pub fn flooded_cpus(&self) -> Vec<usize> {
        let now = monotonic_ns();
        self.dp
            .edge
            .flood()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| {
                f.active
                    && now.saturating_sub(f.window_start_ns) < 2 * lb_common::edge::FLOOD_WINDOW_NS
            })
            .map(|f| f.cpu)
            .collect()
    }
}
