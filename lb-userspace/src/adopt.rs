//! Taking over what a previous daemon pinned (after a `kill -9`, a crash or an upgrade).
//!
//! The successor's plan keeps each service's id and each backend's id, generation and health,
//! found by service and address in the pinned maps, never by the backend's place in the config.
//! Reloads move ids away from config order (a removed backend keeps its id while its flows may
//! still use it), so numbering afresh would take healthy backends for new ones, which then wait
//! for a first check (an HTTP service answers 503 meanwhile), and would give their ids new
//! generations, so their established flows re-select.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use lb_common::{BACKEND_ALIVE, BACKEND_NO_NEW, BackendInfo, ServiceKey, words_addr};

use crate::{
    config::Config,
    plan::{Kept, Plan, plan_keeping, service_key},
};

/// What a previous daemon left in the maps.
#[derive(Debug, Default, Clone)]
pub struct Pinned {
    /// Each service entry: its key, id, and the backend ids of its active table.
    pub services: Vec<(ServiceKey, u32, Vec<u32>)>,
    /// `BACKENDS`, by id (an unused entry has family 0).
    pub backends: Vec<BackendInfo>,
}

/// The successor's plan and where it starts from.
#[derive(Debug)]
pub struct Adopted {
    pub plan: Plan,
    /// Per service and member: healthy as the previous daemon left it for a kept backend, the
    /// service's initial health for one new to the kernel.
    pub healthy: Vec<Vec<bool>>,
    /// Backends that kept their id, and backends new to the kernel.
    pub kept: usize,
    pub new: usize,
}

impl Pinned {
    fn entry(&self, id: u32) -> Option<(SocketAddr, &BackendInfo)> {
        let b = self.backends.get(id as usize).filter(|b| b.family != 0)?;
        Some((
            SocketAddr::new(words_addr(b.addr, b.family), u16::from_be(b.port)),
            b,
        ))
    }
}

/// The plan for `config` that keeps what `pinned` holds.
pub fn adopt(config: &Config, pinned: &Pinned) -> Adopted {
    let kept = kept(config, pinned);
    let mut generations: Vec<u32> = pinned.backends.iter().map(|b| b.generation).collect();
    let plan = plan_keeping(config, &kept, &mut generations);
    let (mut n_kept, mut n_new) = (0, 0);
    let healthy = plan
        .services
        .iter()
        .map(|s| {
            s.members
                .iter()
                .map(|m| match kept.backends.get(&(s.key, m.address)) {
                    Some(&id) => {
                        n_kept += 1;
                        pinned.backends[id as usize].state & BACKEND_ALIVE != 0
                    }
                    None => {
                        n_new += 1;
                        s.initially_healthy
                    }
                })
                .collect()
        })
        .collect();
    Adopted {
        plan,
        healthy,
        kept: n_kept,
        new: n_new,
    }
}

/// Which pinned ids the config's services and backends keep.
fn kept(config: &Config, pinned: &Pinned) -> Kept {
    let tables: HashMap<ServiceKey, (u32, &[u32])> = pinned
        .services
        .iter()
        .map(|(key, id, table)| (*key, (*id, table.as_slice())))
        .collect();
    let mut kept = Kept::default();
    let mut claimed = HashSet::new();
    // First the ids in a kept service's active table: certainly that service's backends.
    for svc in &config.services {
        let key = service_key(svc.vip, svc.protocol);
        let Some(&(id, table)) = tables.get(&key) else {
            continue;
        };
        kept.services.insert(key, id);
        let wanted: HashSet<SocketAddr> = svc.backends.iter().map(|b| b.address).collect();
        let ids: std::collections::BTreeSet<u32> = table.iter().copied().collect();
        for id in ids {
            if let Some((address, _)) = pinned.entry(id)
                && wanted.contains(&address)
                && !kept.backends.contains_key(&(key, address))
                && claimed.insert(id)
            {
                kept.backends.insert((key, address), id);
            }
        }
    }
    // Then by address among the other entries (an HTTP service has no table, and an unhealthy
    // or backup backend is in none): entries still taking new connections first, since a removed
    // backend's entry is marked as taking none (a drained one too), then the lowest id.
    let mut by_address: HashMap<SocketAddr, Vec<(bool, u32)>> = HashMap::new();
    for id in 0..pinned.backends.len() as u32 {
        if let Some((address, b)) = pinned.entry(id) {
            by_address
                .entry(address)
                .or_default()
                .push((b.state & BACKEND_NO_NEW != 0, id));
            kept.avoid.push(id);
        }
    }
    for ids in by_address.values_mut() {
        ids.sort_unstable();
    }
    for svc in &config.services {
        let key = service_key(svc.vip, svc.protocol);
        for b in &svc.backends {
            if kept.backends.contains_key(&(key, b.address)) {
                continue;
            }
            let found = by_address.get(&b.address).and_then(|ids| {
                ids.iter()
                    .map(|&(_, id)| id)
                    .find(|id| !claimed.contains(id))
            });
            if let Some(id) = found {
                claimed.insert(id);
                kept.backends.insert((key, b.address), id);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, plan_update};

    fn config(nat: &[u8], http: &[u8]) -> Config {
        let mut text = String::from(
            "[dataplane]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"nat\"\nvip = \"10.0.0.10:81\"\ntable_size = 7\n\
             [service.health]\nkind = \"none\"\n",
        );
        for i in nat {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"10.0.1.{i}:9\"\n"
            ));
        }
        text.push_str(
            "[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n\
             [service.health]\nkind = \"http\"\npath = \"/\"\n",
        );
        for i in http {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"10.0.1.{i}:8080\"\n"
            ));
        }
        Config::parse(std::path::Path::new("test.toml"), &text).unwrap()
    }

    /// What a daemon with `plan` installed leaves pinned, with `down` ids not alive.
    fn pinned(plan: &Plan, down: &[u32]) -> Pinned {
        let mut backends = plan.backends.clone();
        for &id in down {
            backends[id as usize].state &= !BACKEND_ALIVE;
        }
        let services = plan
            .services
            .iter()
            .filter_map(|s| match &s.serving {
                crate::plan::Serving::Kernel(_) => Some((s.key, s.id, s.initial_ring())),
                crate::plan::Serving::Proxy => None,
            })
            .collect();
        Pinned { services, backends }
    }

    fn ids(plan: &Plan) -> Vec<(String, SocketAddr, u32, u32)> {
        plan.services
            .iter()
            .flat_map(|s| {
                s.members.iter().map(|m| {
                    (
                        s.name.clone(),
                        m.address,
                        m.id,
                        plan.backends[m.id as usize].generation,
                    )
                })
            })
            .collect()
    }

    #[test]
    fn ids_moved_by_reloads_are_kept_by_address_with_health_and_generation() {
        let mut generations = Vec::new();
        let first = plan_update(&config(&[1, 2, 3], &[1, 2]), None, &mut generations);
        // Backend 3 leaves the NAT service: the HTTP backends keep ids 3 and 4, which a fresh
        // plan of the same config would number 2 and 3.
        let after = config(&[1, 2], &[1, 2]);
        let running = plan_update(&after, Some(&first), &mut generations);
        assert_ne!(
            ids(&running),
            ids(&plan(&after)),
            "the test needs moved ids"
        );
        let api_be2 = running.services[1].members[1].id;

        let mut left = pinned(&running, &[api_be2]);
        // The removed backend's entry stays, marked as taking no new connections.
        let removed = first.services[0].members[2].id;
        left.backends[removed as usize] = first.backends[removed as usize];
        left.backends[removed as usize].state |= BACKEND_NO_NEW;
        let adopted = adopt(&after, &left);
        assert_eq!(ids(&adopted.plan), ids(&running));
        assert_eq!(adopted.healthy, vec![vec![true, true], vec![true, false]]);
        assert_eq!((adopted.kept, adopted.new), (4, 0));
        // The removed backend's id is not given away while others are free.
        left.backends[api_be2 as usize].state |= BACKEND_ALIVE;
        let with_new = adopt(&config(&[1, 2, 4], &[1, 2]), &left);
        let new_id = with_new.plan.services[0].members[2].id;
        assert!(
            !first.services[0].members.iter().any(|m| m.id == new_id),
            "a new backend took a pinned id ({new_id})"
        );
        assert_eq!((with_new.kept, with_new.new), (4, 1));
        // New to the kernel: the service's initial health (an HTTP check waits for its first).
        let http_new = adopt(&config(&[1, 2], &[1, 2, 5]), &left);
        assert_eq!(http_new.healthy[1], vec![true, true, false]);
    }

    #[test]
    fn a_backend_in_two_services_and_a_stale_removed_entry_go_to_the_right_owners() {
        let mut generations = Vec::new();
        // The same address and port in a TCP and a UDP service: two entries, one per service.
        let both = |extra: &str| {
            Config::parse(
                std::path::Path::new("test.toml"),
                &format!(
                    "[dataplane]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"t\"\nvip = \"10.0.0.10:53\"\ntable_size = 7\n\
                     [service.health]\nkind = \"none\"\n\
                     [[service.backend]]\naddress = \"10.0.1.1:53\"\n{extra}\
                     [[service]]\nname = \"u\"\nvip = \"10.0.0.10:53\"\nprotocol = \"udp\"\n\
                     table_size = 7\n[service.health]\nkind = \"none\"\n\
                     [[service.backend]]\naddress = \"10.0.1.1:53\"\n"
                ),
            )
            .unwrap()
        };
        let first = plan_update(
            &both("[[service.backend]]\naddress = \"10.0.1.2:53\"\n"),
            None,
            &mut generations,
        );
        let running = plan_update(&both(""), Some(&first), &mut generations);
        let mut left = pinned(&running, &[]);
        // The removed backend's entry stays, marked as taking no new connections.
        let removed = first.services[0].members[1].id;
        left.backends[removed as usize].state |= BACKEND_NO_NEW;
        let adopted = adopt(&both(""), &left);
        assert_eq!(ids(&adopted.plan), ids(&running));
        // Back in the config after the restart: it keeps its old id (and generation).
        let back = adopt(
            &both("[[service.backend]]\naddress = \"10.0.1.2:53\"\n"),
            &left,
        );
        assert_eq!(back.plan.services[0].members[1].id, removed);
        assert_eq!(
            back.plan.backends[removed as usize].generation,
            first.backends[removed as usize].generation
        );
    }
}
