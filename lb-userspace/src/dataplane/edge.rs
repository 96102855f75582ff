//! Edge protection's maps as user space writes and reads them: the access-list tries, the rate
//! limits, the flood guard's setting and state, the per-service refusal counters, and
//! `REVERSE`. Writes are differences against what this process installed, so a reload that
//! changes one prefix touches one trie entry and no flow.

use std::collections::{HashMap as StdHashMap, HashSet};

use aya::maps::{
    Array, HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use lb_common::{
    edge::{
        AclV4, AclV6, BACKEND_PORT_WORDS, DropReason, Flood, RateLimit, ReverseKey, ReverseValue,
        ServiceDrops, Settings,
    },
    forwarding::Tunnel,
    map_names::{
        ACL_V4, ACL_V6, BACKEND_PORTS, FLOOD, RATE_LIMITS, REVERSE, SERVICE_DROPS, SETTINGS,
        TUNNELS,
    },
};

use super::maps::DataplaneError;
use crate::edge::{AclEntry, EdgePlan, TunnelPlan};

/// Typed handles on edge protection's maps, with what this process wrote into them.
pub struct EdgeMaps {
    acl_v4: LpmTrie<MapData, AclV4, u32>,
    acl_v6: LpmTrie<MapData, AclV6, u32>,
    rate_limits: Array<MapData, RateLimit>,
    settings_map: Array<MapData, Settings>,
    flood: PerCpuArray<MapData, Flood>,
    drops: PerCpuArray<MapData, ServiceDrops>,
    reverse: HashMap<MapData, ReverseKey, ReverseValue>,
    ports: Array<MapData, u64>,
    tunnels: Array<MapData, Tunnel>,
    /// What `BACKEND_PORTS` holds.
    ports_installed: Vec<u64>,
    acl_installed: HashSet<AclEntry>,
    limited: HashSet<u32>,
    reverse_installed: StdHashMap<ReverseKey, ReverseValue>,
    /// The `NEXT_HOPS` generation in force (0: the cache is off), and the settings last written
    /// with it.
    hop_generation: u32,
    /// Set for good once changes cannot be watched.
    hops_off: bool,
    settings: Settings,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// One CPU's flood guard as user space reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFlood {
    pub cpu: usize,
    pub active: bool,
    /// `CLOCK_MONOTONIC` nanoseconds when its current window began.
    pub window_start_ns: u64,
    pub new_flows: u32,
}

impl EdgeMaps {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<EdgeMaps, DataplaneError> {
        use super::maps::typed;
        Ok(EdgeMaps {
            acl_v4: typed(ebpf, ACL_V4)?,
            acl_v6: typed(ebpf, ACL_V6)?,
            rate_limits: typed(ebpf, RATE_LIMITS)?,
            settings_map: typed(ebpf, SETTINGS)?,
            flood: typed(ebpf, FLOOD)?,
            drops: typed(ebpf, SERVICE_DROPS)?,
            reverse: typed(ebpf, REVERSE)?,
            ports: typed(ebpf, BACKEND_PORTS)?,
            tunnels: typed(ebpf, TUNNELS)?,
            ports_installed: vec![0; BACKEND_PORT_WORDS as usize],
            acl_installed: HashSet::new(),
            limited: HashSet::new(),
            reverse_installed: StdHashMap::new(),
            hop_generation: 0,
            hops_off: false,
            settings: Settings::default(),
        })
    }

    fn acl_write(&mut self, e: &AclEntry, remove: bool) -> Result<(), DataplaneError> {
        let (len, addr) = e.key_parts();
        let scope = e.scope.to_be();
        if e.net.network().is_ipv4() {
            let key = Key::new(
                len,
                AclV4 {
                    scope,
                    addr: addr[0],
                },
            );
            if remove {
                self.acl_v4.remove(&key).map_err(map_err(ACL_V4))
            } else {
                self.acl_v4
                    .insert(&key, e.value, 0)
                    .map_err(map_err(ACL_V4))
            }
        } else {
            let key = Key::new(len, AclV6 { scope, addr });
            if remove {
                self.acl_v6.remove(&key).map_err(map_err(ACL_V6))
            } else {
                self.acl_v6
                    .insert(&key, e.value, 0)
                    .map_err(map_err(ACL_V6))
            }
        }
    }

    /// Writes what `plan` adds or changes. Nothing is removed yet: the `SERVICES` entries
    /// that stop using an entry are rewritten first ([`EdgeMaps::prune`]).
    pub fn install(&mut self, plan: &EdgePlan) -> Result<(), DataplaneError> {
        self.settings = plan.settings;
        // A backend id may now name another address: every cached next hop goes stale.
        self.invalidate_hops()?;
        for e in &plan.acl {
            // An entry whose value changed has a new key set member; the old one is pruned.
            if !self.acl_installed.contains(e) {
                self.acl_write(e, false)?;
                self.acl_installed.insert(*e);
            }
        }
        for (id, limit) in &plan.rate_limits {
            self.rate_limits
                .set(*id, *limit, 0)
                .map_err(map_err(RATE_LIMITS))?;
            self.limited.insert(*id);
        }
        for (key, value) in &plan.reverse {
            if self.reverse_installed.get(key) != Some(value) {
                self.reverse
                    .insert(key, value, 0)
                    .map_err(map_err(REVERSE))?;
                self.reverse_installed.insert(*key, *value);
            }
        }
        for (id, t) in &plan.tunnels {
            let entry = tunnel_entry(t);
            self.tunnels.set(*id, entry, 0).map_err(map_err(TUNNELS))?;
        }
        self.write_ports()
    }

    /// Backend `id`'s `TUNNELS` entry.
    pub fn tunnel(&self, id: u32) -> Result<Tunnel, DataplaneError> {
        self.tunnels.get(&id, 0).map_err(map_err(TUNNELS))
    }

    /// Sets `BACKEND_PORTS` to the ports of every `REVERSE` entry, writing the words that change.
    fn write_ports(&mut self) -> Result<(), DataplaneError> {
        let mut words = vec![0u64; BACKEND_PORT_WORDS as usize];
        for key in self.reverse_installed.keys() {
            let (w, bit) = lb_common::edge::port_bit(u16::from_be(key.port));
            words[w as usize] |= bit;
        }
        for (i, (&new, old)) in words.iter().zip(&mut self.ports_installed).enumerate() {
            if new != *old {
                self.ports
                    .set(i as u32, new, 0)
                    .map_err(map_err(BACKEND_PORTS))?;
                *old = new;
            }
        }
        Ok(())
    }

    /// Marks every cached next hop stale: each backend's next packet asks the FIB again.
    pub fn invalidate_hops(&mut self) -> Result<(), DataplaneError> {
        // 0 means "never valid": skip it on wrapping.
        if !self.hops_off {
            self.hop_generation = self.hop_generation.wrapping_add(1).max(1);
        }
        self.write_settings()
    }

    /// Turns the next-hop cache off (every packet asks the FIB), when changes can no longer be
    /// watched.
    pub fn disable_hops(&mut self) -> Result<(), DataplaneError> {
        self.hops_off = true;
        self.hop_generation = 0;
        self.write_settings()
    }

    fn write_settings(&mut self) -> Result<(), DataplaneError> {
        let settings = Settings {
            hop_generation: self.hop_generation,
            ..self.settings
        };
        self.settings_map
            .set(0, settings, 0)
            .map_err(map_err(SETTINGS))
    }

    /// Removes what `plan` no longer holds, once no `SERVICES` entry refers to it. A removed
    /// backend's `REVERSE` entry stays while `keep_backend` says its id still belongs to it:
    /// its established flows go on, as its `BACKENDS` entry does.
    pub fn prune(
        &mut self,
        plan: &EdgePlan,
        keep_backend: impl Fn(&ReverseKey, &ReverseValue) -> bool,
    ) -> Result<(), DataplaneError> {
        let wanted: HashSet<AclEntry> = plan.acl.iter().copied().collect();
        let stale: Vec<AclEntry> = self
            .acl_installed
            .iter()
            .filter(|e| !wanted.contains(e))
            .copied()
            .collect();
        for e in stale {
            // Another entry with the same prefix and scope but a new value replaced it in the
            // trie already; removing the key would remove the new value.
            let replaced = wanted.iter().any(|w| w.scope == e.scope && w.net == e.net);
            if !replaced {
                self.acl_write(&e, true)?;
            }
            self.acl_installed.remove(&e);
        }
        let limited: HashSet<u32> = plan.rate_limits.iter().map(|(id, _)| *id).collect();
        for id in self.limited.clone() {
            if !limited.contains(&id) {
                self.rate_limits
                    .set(id, RateLimit::default(), 0)
                    .map_err(map_err(RATE_LIMITS))?;
                self.limited.remove(&id);
            }
        }
        let wanted: HashSet<ReverseKey> = plan.reverse.iter().map(|(k, _)| *k).collect();
        let stale: Vec<(ReverseKey, ReverseValue)> = self
            .reverse_installed
            .iter()
            .filter(|(k, v)| !wanted.contains(k) && !keep_backend(k, v))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, _) in &stale {
            self.reverse_installed.remove(k);
        }
        // Bits of ports no entry keeps are cleared first: a packet in between may skip an entry
        // about to go, never one that stays.
        self.write_ports()?;
        for (k, _) in stale {
            self.reverse.remove(&k).map_err(map_err(REVERSE))?;
        }
        Ok(())
    }

    /// A service's refusals by reason, summed over CPUs.
    pub fn refusals(&self, service_id: u32) -> Result<Vec<(DropReason, u64)>, DataplaneError> {
        let per_cpu = self
            .drops
            .get(&service_id, 0)
            .map_err(map_err(SERVICE_DROPS))?;
        Ok(DropReason::ALL
            .iter()
            .map(|&r| {
                let n = per_cpu.iter().map(|d| d.by_reason[r as usize]).sum();
                (r, n)
            })
            .collect())
    }

    /// The guard's state itself, for tests and benchmarks that move its window in time.
    pub fn flood_map(&mut self) -> &mut PerCpuArray<MapData, Flood> {
        &mut self.flood
    }

    /// Every CPU's flood guard.
    pub fn flood(&self) -> Result<Vec<CpuFlood>, DataplaneError> {
        let per_cpu = self.flood.get(&0, 0).map_err(map_err(FLOOD))?;
        Ok(per_cpu
            .iter()
            .enumerate()
            .map(|(cpu, f)| CpuFlood {
                cpu,
                active: f.active != 0,
                window_start_ns: f.window_start_ns,
                new_flows: f.new_flows,
            })
            .collect())
    }
}

/// The `TUNNELS` entry of one backend: its outer source is the configured one, or the source the
/// kernel's route to the backend picks (`routes::route_to`). A backend with no route gets an
/// empty entry, whose packets are dropped and counted (`drop_no_tunnel`), and a warning now.
fn tunnel_entry(t: &TunnelPlan) -> Tunnel {
    let source = match t.source {
        Some(ip) => Ok(ip),
        None => super::routes::route_to(t.backend).and_then(|r| {
            r.source
                .ok_or_else(|| std::io::Error::other("the route names no source address"))
        }),
    };
    match source {
        Ok(src) => {
            let (src, family) = lb_common::addr_words(src);
            Tunnel {
                src,
                port: t.port.to_be(),
                family,
                _pad: 0,
            }
        }
        Err(e) => {
            tracing::warn!(backend = %t.backend, error = %e, "no route to the tunnel backend, so no outer source: its packets are dropped (drop_no_tunnel) until the next reload");
            Tunnel::default()
        }
    }
}
