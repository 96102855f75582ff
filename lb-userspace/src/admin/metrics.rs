//! Prometheus text exposition of a status snapshot, through `prometheus-client`. Counters come
//! from the kernel's per-CPU maps at scrape time, so a fresh registry is filled per scrape; the
//! decision-to-visible histogram is shared with the writer and updated live.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use std::{collections::HashMap, path::Path};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{FlowKey, FlowValue};

use super::Reloads;
use crate::status::Snapshot;

/// `FLOWS` entries in total and per backend id.
pub struct FlowCount {
    pub total: u64,
    pub per_backend: HashMap<u32, u64>,
}

/// Counts the pinned `FLOWS` map (an LRU: entries are tracked flows, not necessarily open
/// connections).
pub fn count_flows(pin_dir: &Path) -> Result<FlowCount, String> {
    let path = pin_dir.join(lb_common::map_names::FLOWS);
    let data = MapData::from_pin(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let flows: BpfHashMap<_, FlowKey, FlowValue> =
        BpfHashMap::try_from(Map::LruHashMap(data)).map_err(|e| e.to_string())?;
    let mut count = FlowCount {
        total: 0,
        per_backend: HashMap::new(),
    };
    for (_, v) in flows.iter().filter_map(Result::ok) {
        count.total += 1;
        *count.per_backend.entry(v.backend).or_default() += 1;
    }
    Ok(count)
}

type Labels = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn set(f: &Family<Labels, Counter>, labels: Labels, value: u64) {
    f.get_or_create(&labels)
        .inner()
        .store(value, std::sync::atomic::Ordering::Relaxed);
}

pub fn render(
    s: &Snapshot,
    latency: &Histogram,
    reloads: &Reloads,
    audit: &crate::audit::AuditLog,
    flows: Option<&FlowCount>,
    l7: &crate::l7::metrics::L7Metrics,
) -> String {
    // prometheus-client adds the final period to each help text.
    let mut r = Registry::with_prefix("understudy");
    let svc_packets = counter(&mut r, "service_packets", "Packets to the service's VIP");
    let svc_bytes = counter(&mut r, "service_bytes", "Bytes to the service's VIP");
    let svc_flows = counter(&mut r, "service_new_flows", "Flows pinned to a backend");
    let tier = gauge(
        &mut r,
        "service_tier_in_use",
        "Highest tier taking new flows (-1: none)",
    );
    let be_packets = counter(&mut r, "backend_packets", "Packets to and from the backend");
    let be_bytes = counter(&mut r, "backend_bytes", "Bytes to and from the backend");
    let be_flows = counter(&mut r, "backend_new_flows", "Flows pinned to the backend");
    let be_tracked = gauge(
        &mut r,
        "backend_flows_tracked",
        "FLOWS entries pinned to the backend",
    );
    let healthy = gauge(
        &mut r,
        "backend_healthy",
        "1 if checks and passive detection say up",
    );
    let draining = gauge(&mut r, "backend_draining", "1 if drained by the operator");
    let active = gauge(&mut r, "backend_active", "1 if the backend takes new flows");
    let waiting = gauge(
        &mut r,
        "backend_waiting_first_check",
        "1 if the backend has not passed its first check yet (wait_for_first_check), so takes no traffic",
    );
    let datapath = counter(&mut r, "datapath_packets", "XDP outcomes by reason");
    let redirect_drops = counter(
        &mut r,
        "redirect_drops",
        "Frames the kernel dropped after XDP redirected them, by target interface",
    );
    let refused = counter(
        &mut r,
        "service_refused",
        "Packets the service's access lists or rate limit refused, by reason",
    );
    let flood_cpus = Gauge::<i64>::default();
    r.register(
        "flood_mode_cpus",
        "CPUs in SYN-flood mode now (their new SYN flows are not written to the flow table)",
        flood_cpus.clone(),
    );
    flood_cpus.set(s.flood.cpus.len() as i64);
    let flood_threshold = Gauge::<i64>::default();
    r.register(
        "flood_threshold",
        "SYNs per second per CPU that start flood mode (0: off)",
        flood_threshold.clone(),
    );
    flood_threshold.set(i64::from(s.flood.threshold));
    if s.node.enabled {
        let announced = Gauge::<i64>::default();
        r.register(
            "announced_vips",
            "VIPs this node last told BIRD to announce",
            announced.clone(),
        );
        announced.set(s.node.announced.len() as i64);
        let speaker = Gauge::<i64>::default();
        r.register(
            "bird_up",
            "Whether BIRD answered the daemon's last check (0: the announcements are not kept current)",
            speaker.clone(),
        );
        speaker.set(i64::from(s.node.speaker_up == Some(true)));
        let drained = Gauge::<i64>::default();
        r.register(
            "node_drained",
            "Whether the node is drained (understudy node drain): nothing announced",
            drained.clone(),
        );
        drained.set(i64::from(s.node.state == "drained"));
    }
    let flood = counter(
        &mut r,
        "flood_transitions",
        "CPUs entering and leaving SYN-flood mode",
    );
    for (direction, n) in [("enter", s.flood.entered), ("leave", s.flood.left)] {
        set(
            &flood,
            vec![("direction".to_string(), direction.to_string())],
            n,
        );
    }
    let reload = counter(&mut r, "reloads", "Config reloads by result");
    // Unlabelled metrics are plain metrics: an empty label set would print as `name{}`.
    let changes = Counter::<u64>::default();
    r.register(
        "health_changes",
        "Health and drain changes applied",
        changes.clone(),
    );
    let stale = Counter::<u64>::default();
    r.register(
        "health_updates_stale",
        "Health updates dropped: about a backend id's former owner, or from a replaced task",
        stale.clone(),
    );
    stale.inc_by(s.stale_updates);
    let suppressed = Counter::<u64>::default();
    r.register(
        "passive_events_suppressed",
        "Kernel passive-detection events dropped by the per-backend rate limit",
        suppressed.clone(),
    );
    suppressed.inc_by(crate::health::passive::suppressed_events());
    let capped = Counter::<u64>::default();
    r.register(
        "passive_ejections_capped",
        "Passive ejections refused by max_ejection_percent or to keep a service's last backend",
        capped.clone(),
    );
    capped.inc_by(crate::health::capped_ejections());
    let capacity = Gauge::<i64>::default();
    r.register("flows_capacity", "Capacity of FLOWS", capacity.clone());
    r.register(
        "decision_to_visible_seconds",
        "Health decision to kernel-visible maps",
        latency.clone(),
    );

    for svc in &s.services {
        let l = vec![("service".to_string(), svc.name.clone())];
        set(&svc_packets, l.clone(), svc.traffic.packets);
        set(&svc_bytes, l.clone(), svc.traffic.bytes);
        set(&svc_flows, l.clone(), svc.traffic.new_flows);
        // Every reason of a kernel service, zeros included: a series that exists before its
        // first refusal lets `increase()` in an alert see that first one.
        let kernel = matches!(
            svc.protocol,
            crate::status::ServedProtocol::Tcp | crate::status::ServedProtocol::Udp
        );
        let reasons = lb_common::edge::DropReason::ALL
            .iter()
            .filter(|_| kernel)
            .map(|r| r.name().to_string())
            .chain(svc.refused.keys().cloned());
        for reason in reasons {
            let n = svc.refused.get(&reason).copied().unwrap_or(0);
            let l = vec![
                ("service".to_string(), svc.name.clone()),
                ("reason".to_string(), reason),
            ];
            set(&refused, l, n);
        }
        tier.get_or_create(&l)
            .set(svc.tier_in_use.map_or(-1, i64::from));
        for b in &svc.backends {
            let l = vec![
                ("service".to_string(), svc.name.clone()),
                ("backend".to_string(), b.address.clone()),
            ];
            set(&be_packets, l.clone(), b.traffic.packets);
            set(&be_bytes, l.clone(), b.traffic.bytes);
            set(&be_flows, l.clone(), b.traffic.new_flows);
            if let Some(f) = flows {
                let n = f.per_backend.get(&b.id).copied().unwrap_or(0);
                be_tracked.get_or_create(&l).set(n as i64);
            }
            healthy.get_or_create(&l).set(i64::from(b.healthy));
            draining.get_or_create(&l).set(i64::from(b.draining));
            active.get_or_create(&l).set(i64::from(b.active));
            waiting
                .get_or_create(&l)
                .set(i64::from(b.waiting_for_first_check));
        }
    }
    for (reason, v) in &s.datapath {
        set(&datapath, vec![("reason".to_string(), reason.clone())], *v);
    }
    for (interface, v) in &s.redirect_drops {
        let l = vec![("interface".to_string(), interface.clone())];
        set(&redirect_drops, l, *v);
    }
    for (result, n) in [("ok", &reloads.ok), ("error", &reloads.failed)] {
        let v = n.load(std::sync::atomic::Ordering::Relaxed);
        set(&reload, vec![("result".to_string(), result.to_string())], v);
    }
    let audit_records = counter(&mut r, "audit_records", "Records written to the audit log");
    let audit_errors = counter(
        &mut r,
        "audit_write_errors",
        "Audit records that could not be written, and failed reopens (see the error log)",
    );
    set(
        &audit_records,
        vec![],
        audit.records.load(std::sync::atomic::Ordering::Relaxed),
    );
    set(
        &audit_errors,
        vec![],
        audit
            .write_errors
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    changes
        .inner()
        .store(s.changes, std::sync::atomic::Ordering::Relaxed);
    capacity.set(i64::from(s.flows_capacity));
    if let Some(f) = flows {
        let tracked = Gauge::<i64>::default();
        tracked.set(f.total as i64);
        r.register(
            "flows_tracked",
            "Entries in FLOWS (tracked client flows)",
            tracked,
        );
    }
    l7.register(&mut r);
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}
