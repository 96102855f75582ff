//! Turns a validated config into the exact contents of the data-plane maps: service entries,
//! backend entries and one Maglev ring per service. Pure, so it is tested without a kernel and two
//! nodes with the same config compute the same plan.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::{
    BACKEND_ALIVE, BackendInfo, FORWARD_DSR, FORWARD_GUE, FORWARD_IPIP, FORWARD_NAT, MAX_BACKENDS,
    PROTO_TCP, PROTO_UDP, SERVICE_F_HASH_SRC_IP, ServiceKey, addr_words,
};

use crate::{
    config::{Check, Config, Encap, HashMode, MinHealthy, Mode, OnAllDown, Protocol, Service},
    edge::{self, EdgePlan},
    fallback::{Member, Preferences, active_set, derive},
    maglev,
};

/// Everything the map writer installs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub services: Vec<PlannedService>,
    /// Indexed by backend id.
    pub backends: Vec<BackendInfo>,
    /// Access lists, rate limits, the flood guard and the reply path (`REVERSE`).
    pub edge: EdgePlan,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedService {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub id: u32,
    pub key: ServiceKey,
    /// The L4 part (the kernel's entry and ring) or the L7 part.
    pub serving: Serving,
    /// The service's backends, in config order.
    pub members: Vec<PlannedMember>,
    /// Maglev table of the primary tier, as member indices.
    pub base: Vec<u32>,
    /// Each entry's first-ranked member per tier, for fast reassignment.
    pub prefs: Preferences,
    pub min_healthy: MinHealthy,
    pub on_all_down: OnAllDown,
    /// Each backend's health before its first check: up, unless it must pass one first.
    pub initially_healthy: bool,
    /// A `[[pool]]`: no VIP; the proxy serves routes from its backends.
    pub pool: bool,
    /// `slow_start`: a returning backend's ramp to its full share (HTTP services and pools).
    pub slow_start: Option<std::time::Duration>,
}

/// Who serves a planned service. Kernel code matches on it once; it never tests for HTTP.
#[derive(Debug, Clone, PartialEq)]
pub enum Serving {
    /// The XDP program: a `SERVICES` entry and a Maglev ring.
    Kernel(KernelService),
    /// The daemon's HTTP proxy, which reads the health view: no `SERVICES` entry, so the VIP's
    /// packets reach the stack and the proxy's sockets.
    Proxy,
}

/// The L4 part of a plan: what the `SERVICES` entry says and the ring it points to.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelService {
    pub entry: EntrySettings,
}

/// The `SERVICES` entry's settings, other than its ring: a reload that changes none of them (nor
/// the table) rewrites nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySettings {
    /// `lb_common::FORWARD_*`: which `steer()` the kernel runs.
    pub forwarding: u32,
    /// `lb_common::SERVICE_F_*`.
    pub flags: u32,
    pub syn_timeout_ms: u32,
}

impl Serving {
    /// The kernel's part, for an L4 service.
    pub fn kernel(&self) -> Option<&KernelService> {
        match self {
            Serving::Kernel(k) => Some(k),
            Serving::Proxy => None,
        }
    }

    /// The entry settings, for an L4 service.
    pub fn entry(&self) -> Option<EntrySettings> {
        self.kernel().map(|k| k.entry)
    }
}

/// One backend of a planned service: where it is, its id in the maps, and how fallback ranks it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedMember {
    pub address: SocketAddr,
    /// Its index in `BACKENDS`.
    pub id: u32,
    /// As fallback sees it: identity hash, weight, tier and drain.
    pub rank: Member,
    /// The entries it owns in the service's base table (ascending).
    pub base_slots: Vec<u32>,
}

impl AsRef<Member> for PlannedMember {
    fn as_ref(&self) -> &Member {
        &self.rank
    }
}

impl PlannedService {
    /// The table for a health view (`healthy[i]` for member `i`), as backend ids.
    pub fn table_for(&self, healthy: &[bool]) -> Vec<u32> {
        self.ids(self.member_table(healthy))
    }

    /// The table for every backend healthy, as backend ids: what a plan installed on its own
    /// (without the writer's health view) starts from. Computed when asked, not kept: the writer
    /// keeps the table it installs.
    pub fn initial_ring(&self) -> Vec<u32> {
        self.table_for(&vec![true; self.members.len()])
    }

    /// The same table as member indices (or the markers), as the writer holds it.
    pub fn member_table(&self, healthy: &[bool]) -> Vec<u32> {
        let active = active_set(&self.members, healthy, self.min_healthy, self.on_all_down);
        derive(&self.base, &self.prefs, &self.members, &active)
    }

    /// Member indices to backend ids; the `NO_BACKEND`/`REJECT` markers pass through.
    pub fn ids(&self, table: Vec<u32>) -> Vec<u32> {
        table.into_iter().map(|i| self.backend_id(i)).collect()
    }

    /// Member index `m` to its backend id; the `NO_BACKEND`/`REJECT` markers pass through.
    pub fn backend_id(&self, m: u32) -> u32 {
        self.members.get(m as usize).map_or(m, |member| member.id)
    }

    /// Whether established flows may stay on member `i`: it is healthy, or the service failed
    /// open and uses every backend.
    pub fn alive(&self, healthy: &[bool], i: usize) -> bool {
        healthy[i] || (self.on_all_down == OnAllDown::FailOpen && !healthy.iter().any(|&h| h))
    }
}

pub fn service_key(vip: SocketAddr, protocol: Protocol) -> ServiceKey {
    let (addr, family) = addr_words(vip.ip());
    ServiceKey {
        addr,
        port: vip.port().to_be(),
        proto: match protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family,
    }
}

fn backend_info(address: SocketAddr) -> BackendInfo {
    let (addr, family) = addr_words(address.ip());
    BackendInfo {
        addr,
        port: address.port().to_be(),
        family,
        state: BACKEND_ALIVE,
        generation: 1,
    }
}

fn plan_service(config: &Config, id: u32, svc: &Service, backend_ids: Vec<u32>) -> PlannedService {
    let identities: Vec<String> = svc.backends.iter().map(|b| b.address.to_string()).collect();
    let ranks: Vec<Member> = svc
        .backends
        .iter()
        .zip(&identities)
        .map(|(b, identity)| Member {
            identity_hash: maglev::identity_hash(identity),
            weight: b.weight,
            tier: b.tier,
            drain: b.drain,
        })
        .collect();
    // The base table covers the primary (lowest) tier only; other tiers get entries by fallback.
    let primary = svc.backends.iter().map(|b| b.tier).min().unwrap_or(0);
    let in_primary: Vec<usize> = (0..svc.backends.len())
        .filter(|&i| svc.backends[i].tier == primary)
        .collect();
    let entries: Vec<maglev::Entry<'_>> = in_primary
        .iter()
        .map(|&i| maglev::Entry {
            identity: &identities[i],
            weight: svc.backends[i].weight,
        })
        .collect();
    // An HTTP service's proxy picks backends from the health view, not from a table: building
    // one (65,537 entries by default, and its per-tier preferences) would be wasted.
    let base: Vec<u32> = if let Mode::Http(_) | Mode::Pool = svc.mode {
        Vec::new()
    } else {
        maglev::build(&entries, svc.table_size)
            .into_iter()
            .map(|e| in_primary[e as usize] as u32)
            .collect()
    };
    let mut planned = PlannedService {
        name: svc.name.clone(),
        vip: svc.vip,
        protocol: svc.protocol,
        id,
        key: service_key(svc.vip, svc.protocol),
        serving: Serving::Proxy,
        prefs: Preferences::new(&base, &ranks),
        members: members(svc, backend_ids, ranks, &base),
        base,
        min_healthy: svc.min_healthy,
        on_all_down: svc.on_all_down,
        initially_healthy: svc.health.check == Check::None || !svc.wait_for_first_check,
        pool: svc.mode == Mode::Pool,
        slow_start: svc.slow_start,
    };
    if svc.mode.kernel() {
        planned.serving = Serving::Kernel(KernelService {
            entry: EntrySettings {
                forwarding: forwarding(&svc.mode),
                flags: edge::service_flags(config, svc)
                    | match svc.hash {
                        HashMode::FiveTuple => 0,
                        HashMode::SourceIp => SERVICE_F_HASH_SRC_IP,
                    },
                syn_timeout_ms: svc.passive.syn_timeout.as_millis().min(u32::MAX as u128) as u32,
            },
        });
    }
    planned
}

/// The kernel's `steer()` for a kernel-served mode.
pub fn forwarding(mode: &Mode) -> u32 {
    match mode {
        Mode::Dsr => FORWARD_DSR,
        Mode::Tunnel(t) => match t.encap {
            Encap::Ipip => FORWARD_IPIP,
            Encap::Gue => FORWARD_GUE,
        },
        Mode::Nat | Mode::Http(_) | Mode::Pool => FORWARD_NAT,
    }
}

/// The config's word for a `FORWARD_*` value, as `/status` shows it.
pub fn forwarding_name(forwarding: u32) -> &'static str {
    match forwarding {
        FORWARD_DSR => "dsr",
        FORWARD_IPIP => "ipip",
        FORWARD_GUE => "gue",
        _ => "nat",
    }
}

/// The service's members, each with the base entries it owns.
fn members(svc: &Service, ids: Vec<u32>, ranks: Vec<Member>, base: &[u32]) -> Vec<PlannedMember> {
    let mut members: Vec<PlannedMember> = svc
        .backends
        .iter()
        .zip(ids)
        .zip(ranks)
        .map(|((b, id), rank)| PlannedMember {
            address: b.address,
            id,
            rank,
            base_slots: Vec::new(),
        })
        .collect();
    for (slot, &owner) in base.iter().enumerate() {
        members[owner as usize].base_slots.push(slot as u32);
    }
    // Grown by pushes: up to twice the entries' room, held for the plan's life.
    for m in &mut members {
        m.base_slots.shrink_to_fit();
    }
    members
}

/// Service ids follow config order; backend ids are handed out service by service.
pub fn plan(config: &Config) -> Plan {
    plan_update(config, None, &mut Vec::new())
}

/// What a new plan keeps of the state before it: each service's id (by VIP and protocol), each
/// backend's id (by service and address), and the ids a new backend should not take while others
/// are free (a removed backend's, whose established flows may still use it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Kept {
    pub services: HashMap<ServiceKey, u32>,
    pub backends: HashMap<(ServiceKey, SocketAddr), u32>,
    pub avoid: Vec<u32>,
}

impl Kept {
    /// What `plan` has installed.
    pub fn of(plan: &Plan) -> Kept {
        let mut kept = Kept::default();
        for s in &plan.services {
            kept.services.insert(s.key, s.id);
            for m in &s.members {
                kept.backends.insert((s.key, m.address), m.id);
                kept.avoid.push(m.id);
            }
        }
        kept
    }
}

/// The plan for `config` when `previous` is installed: services keep their ids (by VIP and
/// protocol) and backends theirs (by service and address), so their flows and state carry over.
/// New services take the lowest free id, new backends the lowest id the previous plan did not
/// use (or, when none is left, the lowest free one). `generations[id]` is the last generation each backend id
/// has had: an id given to a different backend gets the next one, so `FLOWS` entries pinned to
/// its former owner miss.
pub fn plan_update(config: &Config, previous: Option<&Plan>, generations: &mut Vec<u32>) -> Plan {
    plan_keeping(
        config,
        &previous.map(Kept::of).unwrap_or_default(),
        generations,
    )
}

/// The plan for `config` keeping what `kept` says (see [`plan_update`]; a restarted daemon's
/// comes from the pinned maps, `crate::adopt`).
pub fn plan_keeping(config: &Config, kept: &Kept, generations: &mut Vec<u32>) -> Plan {
    // Ids already spoken for by what this config keeps.
    let mut service_ids = IdAllocator::default();
    let mut backend_ids = IdAllocator::default();
    for svc in &config.services {
        let key = service_key(svc.vip, svc.protocol);
        if let Some(&old) = kept.services.get(&key) {
            service_ids.mark_used(old);
        }
        for b in &svc.backends {
            if let Some(&id) = kept.backends.get(&(key, b.address)) {
                backend_ids.mark_used(id);
            }
        }
    }
    // New backends prefer ids the previous plan did not use: a removed backend's id stays
    // with it (and its established flows keep going) until an id is really needed.
    for &id in &kept.avoid {
        backend_ids.avoid(id);
    }

    let mut backends: Vec<BackendInfo> = Vec::new();
    let mut services = Vec::new();
    for svc in &config.services {
        let key = service_key(svc.vip, svc.protocol);
        let id = match kept.services.get(&key) {
            Some(&old) => old,
            None => service_ids.take(),
        };
        let ids: Vec<u32> = svc
            .backends
            .iter()
            .map(|b| match kept.backends.get(&(key, b.address)) {
                Some(&kept) => kept,
                None => {
                    let new = backend_ids.take();
                    if generations.len() <= new as usize {
                        generations.resize(new as usize + 1, 0);
                    }
                    generations[new as usize] += 1;
                    new
                }
            })
            .collect();
        for (b, &bid) in svc.backends.iter().zip(&ids) {
            if backends.len() <= bid as usize {
                backends.resize(bid as usize + 1, EMPTY_BACKEND);
            }
            let mut info = backend_info(b.address);
            info.generation = generations[bid as usize];
            backends[bid as usize] = info;
        }
        services.push(plan_service(config, id, svc, ids));
    }
    Plan {
        edge: edge::plan(config, &services),
        services,
        backends,
    }
}

/// Hands out the lowest free ids, preferring those not marked `avoid`. Ids only ever become
/// used within one plan, so two cursors that never move back make a whole plan linear in its
/// ids (a reload of 4096 new backends used to be cubic: `Vec::contains` inside a scan).
#[derive(Debug, Default)]
struct IdAllocator {
    used: Vec<bool>,
    avoided: Vec<bool>,
    /// Below it, every id is used or avoided.
    fresh: usize,
    /// Below it, every id is used.
    any: usize,
}

impl IdAllocator {
    fn grow(v: &mut Vec<bool>, id: usize) {
        if v.len() <= id {
            v.resize(id + 1, false);
        }
    }

    fn mark_used(&mut self, id: u32) {
        Self::grow(&mut self.used, id as usize);
        self.used[id as usize] = true;
    }

    fn avoid(&mut self, id: u32) {
        Self::grow(&mut self.avoided, id as usize);
        self.avoided[id as usize] = true;
    }

    fn is(v: &[bool], id: usize) -> bool {
        v.get(id).copied().unwrap_or(false)
    }

    /// The lowest id neither used nor avoided below the id capacity, else the lowest unused.
    fn take(&mut self) -> u32 {
        while self.fresh < MAX_BACKENDS as usize
            && (Self::is(&self.used, self.fresh) || Self::is(&self.avoided, self.fresh))
        {
            self.fresh += 1;
        }
        let id = if self.fresh < MAX_BACKENDS as usize {
            self.fresh
        } else {
            while Self::is(&self.used, self.any) {
                self.any += 1;
            }
            self.any
        };
        self.mark_used(id as u32);
        id as u32
    }
}

/// A backend id nobody holds: no family, so the kernel treats a reference to it as bad.
pub const EMPTY_BACKEND: BackendInfo = BackendInfo {
    addr: [0; 4],
    port: 0,
    family: 0,
    state: 0,
    generation: 0,
};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ids(s: &PlannedService) -> Vec<u32> {
        s.members.iter().map(|m| m.id).collect()
    }

    // Services as one inline array; service "b" is the last line, so a test can cut it off.
    const TEXT: &str = r#"
dataplane = { interfaces = ["eth0"] }
service = [
  { name = "a", vip = "10.0.0.10:80", table_size = 307, backend = [{ address = "10.0.11.2:8080" }, { address = "10.0.12.2:8080" }] },
  { name = "b", vip = "[2001:db8::10]:53", protocol = "udp", hash = "source_ip", table_size = 101, backend = [{ address = "[2001:db8::11]:5353" }] },
]
"#;

    /// Scale-out rests on this: nodes with the same config build the same table, slot for
    /// slot, whatever the order of its services and backends (and the plan reads no clock, so
    /// whenever each started); and a node whose health view differs by one backend differs only
    /// in that backend's slots.
    #[test]
    fn nodes_agree_on_every_slot_whatever_the_config_order() {
        let one = r#"
dataplane = { interfaces = ["eth0"] }
service = [
  { name = "web", vip = "10.0.0.10:80", table_size = 1021, backend = [{ address = "10.0.11.2:80" }, { address = "10.0.12.2:80" }, { address = "10.0.13.2:80", weight = 2 }, { address = "10.0.14.2:80", tier = 1 }] },
  { name = "dns", vip = "10.0.0.11:53", protocol = "udp", table_size = 101, backend = [{ address = "10.0.11.2:53" }] },
]
"#;
        let other = r#"
dataplane = { interfaces = ["eth0"] }
service = [
  { name = "dns", vip = "10.0.0.11:53", protocol = "udp", table_size = 101, backend = [{ address = "10.0.11.2:53" }] },
  { name = "web", vip = "10.0.0.10:80", table_size = 1021, backend = [{ address = "10.0.14.2:80", tier = 1 }, { address = "10.0.13.2:80", weight = 2 }, { address = "10.0.11.2:80" }, { address = "10.0.12.2:80" }] },
]
"#;
        let web = |text: &str| {
            let p = plan(&Config::parse(Path::new("t.toml"), text).unwrap());
            p.services.into_iter().find(|s| s.name == "web").unwrap()
        };
        // The active table as backend addresses, with `down` (an address) unhealthy.
        let table = |svc: &PlannedService, down: Option<&str>| -> Vec<String> {
            let healthy: Vec<bool> = svc
                .members
                .iter()
                .map(|m| Some(m.address.to_string().as_str()) != down)
                .collect();
            let active = active_set(&svc.members, &healthy, svc.min_healthy, svc.on_all_down);
            derive(&svc.base, &svc.prefs, &svc.members, &active)
                .iter()
                .map(|&m| svc.members[m as usize].address.to_string())
                .collect()
        };
        let (a, b) = (web(one), web(other));
        let all_up = table(&a, None);
        assert_eq!(all_up, table(&b, None), "the same config in another order");
        assert!(!all_up.contains(&"10.0.14.2:80".to_string()), "tier 1 idle");
        let down = "10.0.12.2:80";
        let degraded = table(&b, Some(down));
        assert_eq!(degraded, table(&a, Some(down)));
        let moved: Vec<usize> = (0..all_up.len())
            .filter(|&i| all_up[i] != degraded[i])
            .collect();
        assert!(!moved.is_empty());
        assert!(
            moved.iter().all(|&i| all_up[i] == down),
            "only the down backend's slots may differ"
        );
    }

    #[test]
    fn ids_keys_and_rings() {
        let config = Config::parse(Path::new("t.toml"), TEXT).unwrap();
        let p = plan(&config);
        assert_eq!(p.backends.len(), 3);
        assert_eq!(ids(&p.services[0]), vec![0, 1]);
        assert_eq!(ids(&p.services[1]), vec![2]);
        assert_eq!(p.services[0].initial_ring().len(), 307);
        assert!(p.services[0].initial_ring().iter().all(|&b| b < 2));
        assert!(
            p.services[0].initially_healthy,
            "no check: up from the start"
        );
        assert!(p.services[1].initial_ring().iter().all(|&b| b == 2));
        assert_eq!(p.services[0].key.port, 80u16.to_be());
        assert_eq!(p.services[0].key.proto, PROTO_TCP);
        assert_eq!(p.services[1].key.proto, PROTO_UDP);
        assert_eq!(p.services[1].key.family, lb_common::FAMILY_V6);
        assert_eq!(
            p.services[1].serving.entry().unwrap().flags,
            SERVICE_F_HASH_SRC_IP
        );
        assert_eq!(p.backends[2].port, 5353u16.to_be());
        assert_eq!(p.backends[2].state, BACKEND_ALIVE);
        assert_eq!(p, plan(&config), "planning is deterministic");
    }

    #[test]
    fn ids_are_the_lowest_free_preferring_unavoided_ones() {
        let mut ids = IdAllocator::default();
        ids.mark_used(0);
        ids.mark_used(2);
        ids.avoid(1);
        ids.avoid(3);
        assert_eq!((ids.take(), ids.take()), (4, 5));
        // With every id below the capacity taken or avoided, the lowest unused one.
        for id in 6..MAX_BACKENDS {
            ids.mark_used(id);
        }
        assert_eq!((ids.take(), ids.take(), ids.take()), (1, 3, MAX_BACKENDS));
    }

    #[test]
    fn a_reload_keeps_ids_and_bumps_the_generation_of_reused_ones() {
        let config = Config::parse(Path::new("t.toml"), TEXT).unwrap();
        let mut generations = Vec::new();
        let first = plan_update(&config, None, &mut generations);
        // Drop backend 10.0.11.2 from "a", add 10.0.13.2, and drop service "b".
        let changed: Vec<&str> = TEXT
            .lines()
            .filter(|l| !l.contains("name = \"b\""))
            .collect();
        let changed = changed
            .join("\n")
            .replace("10.0.11.2:8080", "10.0.13.2:8080");
        let config2 = Config::parse(Path::new("t.toml"), &changed).unwrap();
        let second = plan_update(&config2, Some(&first), &mut generations);
        assert_eq!(second.services.len(), 1);
        assert_eq!(second.services[0].id, first.services[0].id);
        // 10.0.12.2 keeps id 1; the newcomer avoids the ids the first plan used (0-2), so the
        // removed backends keep their entries and flows: it gets id 3.
        assert_eq!(ids(&second.services[0]), vec![3, 1]);
        assert_eq!(second.backends[1].generation, first.backends[1].generation);
        assert_eq!(second.backends[3].generation, 1);
        assert_eq!(second.backends[3].port, 8080u16.to_be());
        // Back to the first config: 10.0.11.2 and b's backend return on ids 0 and 2. Both ids
        // have changed owner in between, so they carry new generations: old flows cannot match.
        let third = plan_update(&config, Some(&second), &mut generations);
        assert_eq!(third.services.len(), 2);
        assert_eq!(ids(&third.services[0]), vec![0, 1]);
        assert_eq!(ids(&third.services[1]), vec![2]);
        assert_eq!(
            third.backends[0].generation,
            first.backends[0].generation + 1
        );
        assert_eq!(
            third.backends[2].generation,
            first.backends[2].generation + 1
        );
    }
}
