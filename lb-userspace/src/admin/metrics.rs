//! Prometheus text exposition of a status snapshot, through `prometheus-client`. Counters come
//! from the kernel's per-CPU maps at scrape time, so a fresh registry is filled per scrape; the
//! decision-to-visible histogram is shared with the writer and updated live.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{daemon::Reloads, status::Snapshot};

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

pub fn render(s: &Snapshot, latency: &Histogram, reloads: &Reloads) -> String {
    let mut r = Registry::with_prefix("understudy");
    let svc_packets = counter(&mut r, "service_packets", "Packets to the service's VIP.");
    let svc_bytes = counter(&mut r, "service_bytes", "Bytes to the service's VIP.");
    let svc_flows = counter(&mut r, "service_new_flows", "Flows pinned to a backend.");
    let tier = gauge(
        &mut r,
        "service_tier_in_use",
        "Highest tier taking new flows (-1: none).",
    );
    let be_packets = counter(
        &mut r,
        "backend_packets",
        "Packets to and from the backend.",
    );
    let be_bytes = counter(&mut r, "backend_bytes", "Bytes to and from the backend.");
    let be_flows = counter(&mut r, "backend_new_flows", "Flows pinned to the backend.");
    let healthy = gauge(
        &mut r,
        "backend_healthy",
        "1 if checks and passive detection say up.",
    );
    let draining = gauge(&mut r, "backend_draining", "1 if drained by the operator.");
    let active = gauge(
        &mut r,
        "backend_active",
        "1 if the backend takes new flows.",
    );
    let datapath = counter(&mut r, "datapath_packets", "XDP outcomes by reason.");
    let changes = counter(
        &mut r,
        "health_changes",
        "Health and drain changes applied.",
    );
    let reload = counter(&mut r, "reloads", "Config reloads by result.");
    r.register(
        "decision_to_visible_seconds",
        "Health decision to kernel-visible maps.",
        latency.clone(),
    );

    for svc in &s.services {
        let l = vec![("service".to_string(), svc.name.clone())];
        set(&svc_packets, l.clone(), svc.traffic.packets);
        set(&svc_bytes, l.clone(), svc.traffic.bytes);
        set(&svc_flows, l.clone(), svc.traffic.new_flows);
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
            healthy.get_or_create(&l).set(i64::from(b.healthy));
            draining.get_or_create(&l).set(i64::from(b.draining));
            active.get_or_create(&l).set(i64::from(b.active));
        }
    }
    for (reason, v) in &s.datapath {
        set(&datapath, vec![("reason".to_string(), reason.clone())], *v);
    }
    set(&changes, Vec::new(), s.changes);
    for (result, n) in [("ok", &reloads.ok), ("error", &reloads.failed)] {
        let v = n.load(std::sync::atomic::Ordering::Relaxed);
        set(&reload, vec![("result".to_string(), result.to_string())], v);
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}
