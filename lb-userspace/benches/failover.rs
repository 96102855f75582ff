//! Failover figures (`cargo xtask bench failover`, as root):
//!
//! 1. **Decision to visible**: from a health decision until the kernel chooses by it (its
//!    `ALIVE` bits alone, or the new table written), as the real map writer reports it, with 100 services x 10 backends and the
//!    default 65,537-entry tables: one backend failing, and a whole tier failing.
//! 2. **Disruption**: the share of table entries one failure moves, against the ideal 1/N.
//! 3. **Death to shift**: a backend killed under load (HTTP checks every 50 ms, fall 2, no jitter,
//!    passive detection off) to the start of the last connection that failed on it.
//! 4. **Passive detection**: the same with probes every 5 s, so only the kernel's RST-to-SYN
//!    reports can act (3 events eject). The client runs 4 connections back to back.
//! 5. **Decision to visible in the real daemon**: the release daemon in namespaces, under load
//!    (4 clients connecting back to back), TCP checks every 20 ms with fall 1 and rise 1, two of
//!    three backends' servers stopped and started by turns; the figure is the daemon's own (the
//!    `decision_to_visible_us` of each "data plane updated" line, the measurement that also feeds
//!    `understudy_decision_to_visible_seconds`), and its `write_us`, the writer's share until the
//!    kernel chose by the change. And 100 backends (10 whole services) failing in
//!    one batch through the real writer.
//! 6. **Reload planning**: validating and planning a reload that replaces all 4096 backends of
//!    a service with new addresses (every new id avoids the previous plan's, so the allocator's
//!    worst case).

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use understudy::{
    config::Config, dataplane::Dataplane, health::Update, plan::plan, writer::Writer,
};
use understudy_testbed::{
    Daemon, EchoServer, Topology, require_root,
    traffic::{Backend, Load, short_connection},
};

const SERVICES: usize = 100;
const BACKENDS: usize = 10;
const ROUNDS: usize = 200;

fn fleet_config(primaries: usize) -> String {
    let mut text = String::from("[dataplane]\ninterfaces = [\"lo\"]\n");
    for s in 0..SERVICES {
        text.push_str(&format!(
            "\n[[service]]\nname = \"s{s}\"\nvip = \"10.1.{}.{}:80\"\n",
            s / 250,
            s % 250 + 1
        ));
        for b in 0..BACKENDS {
            let tier = if b < primaries { 0 } else { 1 };
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"10.2.{s}.{}:8080\"\ntier = {tier}\n",
                b + 1
            ));
        }
    }
    text
}

fn update(backend: u32, up: bool) -> Update {
    Update {
        backend,
        // A fresh plan's first generation; no epochs are checked without Writer::with_epochs.
        generation: 1,
        task: 0,
        up,
        reason: "bench".into(),
        decided: Instant::now(),
    }
}

fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:>6.1} us   p99 {:>6.1} us   max {:>6.1} us",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// Applies `rounds` failures and recoveries of the backends `pick` chooses, one batch each way,
/// through the real writer over the fleet (`primaries` per service in tier 0), timing decision
/// to visible for each batch.
fn time_batches(
    primaries: usize,
    rounds: usize,
    seed: u64,
    mut pick: impl FnMut(&mut fastrand::Rng) -> Vec<u32>,
) -> Histogram<u64> {
    let config = Config::parse("fleet.toml".as_ref(), &fleet_config(primaries)).unwrap();
    let dp = Dataplane::load().expect("load the XDP object");
    let mut writer = Writer::new(dp, plan(&config));
    writer.install().unwrap();
    let mut h = histogram();
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..rounds {
        let ids = pick(&mut rng);
        for up in [false, true] {
            let batch: Vec<Update> = ids.iter().map(|&id| update(id, up)).collect();
            // The writer's own figure: until the kernel chose by the batch (with the bits
            // alone, or after writing the table), not until it prepared the next change.
            let applied = writer.apply(&batch).unwrap();
            h.record(applied.visible.as_nanos() as u64).unwrap();
        }
    }
    h
}

/// `ROUNDS` failures and recoveries of `group` backends of a random service.
fn decision_to_visible(primaries: usize, group: usize) -> Histogram<u64> {
    time_batches(primaries, ROUNDS, 7, |rng| {
        let s = rng.usize(..SERVICES) as u32;
        let first = if group == 1 { rng.usize(..BACKENDS) } else { 0 };
        (first..first + group)
            .map(|b| s * BACKENDS as u32 + b as u32)
            .collect()
    })
}

/// 100 backends failing and recovering at once: all of 10 random services, in one batch each
/// way.
fn decision_to_visible_hundred() -> Histogram<u64> {
    time_batches(BACKENDS, ROUNDS / 4, 11, |rng| {
        let first = rng.usize(..SERVICES - 10) as u32;
        (first * BACKENDS as u32..(first + 10) * BACKENDS as u32).collect()
    })
}

/// The daemon's own decision-to-visible over `flaps` failures and recoveries, under load: be2
/// and be3's echo servers stop and start by turns (be1 stays), TCP checks every 20 ms decide
/// at the first result. Read from its "data plane updated" lines. `priority` is the writer's
/// `[dataplane] writer_priority` (0: the normal scheduler).
fn daemon_decision_to_visible(flaps: usize, priority: u8) -> [Histogram<u64>; 2] {
    let topo = Topology::build(3);
    let echo = |i: usize| {
        EchoServer::start_greeting(
            &topo.backends[i - 1],
            SocketAddr::new(topo.backend_addr(i, false), 8080),
            Some(format!("be{i}\n")),
        )
    };
    let mut servers: Vec<Option<EchoServer>> = (1..=3).map(|i| Some(echo(i))).collect();
    let config = topo.echo_config(
        &format!("writer_priority = {priority}"),
        "passive = { events_to_eject = 0 }\n\n[service.health]\nkind = \"tcp\"\n\
         interval = \"20ms\"\ntimeout = \"10ms\"\njitter = 0.0\nrise = 1\nfall = 1",
        &[(1, ""), (2, ""), (3, "")],
    );
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    let updates = |d: &Daemon| d.output().matches("data plane updated").count();
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let load = Load::start(&topo.client, vip, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(500));
    for k in 0..flaps * 2 {
        let before = updates(&daemon);
        let i = 2 + (k / 2) % 2;
        match servers[i - 1].take() {
            Some(s) => s.kill(),
            None => servers[i - 1] = Some(echo(i)),
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while updates(&daemon) == before {
            assert!(
                Instant::now() < deadline,
                "flap {k}: the daemon applied no change within 5 s; its output:\n{}",
                daemon.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Apart, so each change is one decision and one write.
        std::thread::sleep(Duration::from_millis(60));
    }
    load.finish();
    // Decision to visible, and the part of it spent writing (the rest is the hop to the
    // writer's thread).
    let mut h = [histogram(), histogram()];
    for line in daemon
        .output()
        .lines()
        .filter(|l| l.contains("data plane updated"))
    {
        for (h, field) in h.iter_mut().zip(["decision_to_visible_us=", "write_us="]) {
            let us = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(field))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a {field} field: {line}"));
            h.record(us * 1000).unwrap();
        }
    }
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
    h
}

/// An empty histogram of nanoseconds, up to 10 s.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).unwrap()
}

/// Entries moved by each single failure in one 10-backend service, as a share of the table.
fn disruption() -> (f64, f64, f64) {
    let config = Config::parse("fleet.toml".as_ref(), &fleet_config(BACKENDS)).unwrap();
    let p = plan(&config);
    let svc = &p.services[0];
    let all = svc.table_for(&[true; BACKENDS]);
    let mut shares = Vec::new();
    let mut excess = 0usize;
    for b in 0..BACKENDS {
        let mut healthy = [true; BACKENDS];
        healthy[b] = false;
        let t = svc.table_for(&healthy);
        let moved = all.iter().zip(&t).filter(|(x, y)| x != y).count();
        let own = all.iter().filter(|&&x| x == svc.members[b].id).count();
        excess += moved - own;
        shares.push(moved as f64 / all.len() as f64);
    }
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    let max = shares.iter().cloned().fold(0.0, f64::max);
    (mean, max, excess as f64)
}

fn e2e_config(topo: &Topology, interval: &str, passive: &str) -> PathBuf {
    let service = format!(
        "passive = {{ {passive} }}\n\n[service.health]\nkind = \"http\"\nport = 8081\n\
         interval = \"{interval}\"\ntimeout = \"40ms\"\njitter = 0.0\nrise = 2\nfall = 2"
    );
    let backends: Vec<(usize, &str)> = (1..=topo.backends.len()).map(|i| (i, "")).collect();
    topo.echo_config("", &service, &backends)
}

/// Kills backend 1 (`whole`: the host; else only its traffic port) under load, `runs` times,
/// and returns the delays from each kill to the start of the last connection that failed.
fn death_to_shift(
    interval: &str,
    passive: &str,
    whole: bool,
    runs: usize,
) -> (Vec<Duration>, usize) {
    let topo = Topology::build(3);
    let root = std::env::temp_dir().join(format!("{}-www", topo.lb.name()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "ok\n").unwrap();
    let mut backends: Vec<Backend> = (1..=3).map(Backend::new).collect();
    for b in &mut backends {
        b.start(&topo, &root, true);
    }
    let config = e2e_config(&topo, interval, passive);
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let mut delays = Vec::new();
    let mut discarded = 0;
    // Bounded: at most twice the runs asked for.
    for run in 0..runs * 2 {
        if delays.len() == runs {
            break;
        }
        // Everyone serving again: the restored backend must pass its checks (and, after a passive
        // ejection, wait out its backoff) before it takes flows.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !topo
            .client
            .enter(|| (0..20).any(|_| short_connection(vip).as_deref() == Ok("be1")))
        {
            assert!(Instant::now() < deadline, "run {run}: be1 never came back");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Back to back: the passive path's delay is mostly the wait for enough refused SYNs.
        let load = Load::start(&topo.client, vip, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        if whole {
            backends[0].kill();
        } else {
            backends[0].kill();
            backends[0].start(&topo, &root, false);
        }
        std::thread::sleep(Duration::from_millis(1000));
        let failures = load.since(killed).iter().filter(|r| r.is_err()).count();
        let results = load.results.lock().unwrap().clone();
        load.finish();
        let last = results
            .iter()
            .filter(|(t, r)| *t >= killed && r.is_err())
            .map(|(t, _)| t.duration_since(killed))
            .max();
        assert!(failures < 2000, "run {run}: failures did not stop");
        // No failure at all: no flow reached the backend while it was dead, so nothing was
        // measured. Such runs are discarded and counted.
        match last {
            Some(last) => delays.push(last),
            None => discarded += 1,
        }
        backends[0].kill();
        backends[0].start(&topo, &root, true);
    }
    assert!(daemon.stop());
    std::fs::remove_file(config).ok();
    std::fs::remove_dir_all(root).ok();
    assert!(!delays.is_empty(), "every run was discarded");
    (delays, discarded)
}

fn summary((v, discarded): &mut (Vec<Duration>, usize)) -> String {
    v.sort();
    format!(
        "median {:>7.1} ms   max {:>7.1} ms   ({} runs, {discarded} discarded)",
        v[v.len() / 2].as_secs_f64() * 1000.0,
        v[v.len() - 1].as_secs_f64() * 1000.0,
        v.len()
    )
}

/// One service of 4096 backends, their addresses offset by `shift`.
fn wide_config(shift: u32) -> String {
    let mut text = String::from(
        "[dataplane]\ninterfaces = [\"lo\"]\n\n[[service]]\nname = \"wide\"\nvip = \"10.1.0.1:80\"\ntable_size = 65537\n",
    );
    for b in 0..lb_common::MAX_BACKENDS {
        let n = b + shift;
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"10.{}.{}.{}:8080\"\n",
            3 + n / 65536,
            (n / 256) % 256,
            n % 256
        ));
    }
    text
}

/// Milliseconds to parse and plan a reload that replaces every one of 4096 backends (median of 5).
fn reload_planning() -> (f64, f64) {
    let before = Config::parse("wide.toml".as_ref(), &wide_config(0)).unwrap();
    let text = wide_config(lb_common::MAX_BACKENDS);
    let previous = plan(&before);
    let (mut parse_ms, mut plan_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let after = Config::parse("wide.toml".as_ref(), &text).unwrap();
        parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let mut generations = vec![1; lb_common::MAX_BACKENDS as usize];
        let p = understudy::plan::plan_update(&after, Some(&previous), &mut generations);
        plan_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            p.services[0].members.len(),
            lb_common::MAX_BACKENDS as usize
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut parse_ms), median(&mut plan_ms))
}

fn main() {
    require_root("the failover benchmark");
    let (parse_ms, plan_ms) = reload_planning();
    println!(
        "reload replacing 4096 backends        parse and validate {parse_ms:.1} ms   plan (ids, tables) {plan_ms:.1} ms\n"
    );
    println!("Failover benchmark ({SERVICES} services x {BACKENDS} backends, tables of 65537)\n");

    let one = decision_to_visible(BACKENDS, 1);
    println!("decision to visible, one backend      {}", quantiles(&one));
    let tier = decision_to_visible(BACKENDS / 2, BACKENDS / 2);
    println!(
        "decision to visible, whole tier ({})   {}",
        BACKENDS / 2,
        quantiles(&tier)
    );

    let hundred = decision_to_visible_hundred();
    println!(
        "decision to visible, 100 at once      {}",
        quantiles(&hundred)
    );
    // The writer real-time (the default) and on the normal scheduler, by turns.
    let mut by_priority = [
        (10, "real-time writer", [histogram(), histogram()]),
        (0, "normal scheduler", [histogram(), histogram()]),
    ];
    for _ in 0..2 {
        for (priority, _, all) in &mut by_priority {
            let run = daemon_decision_to_visible(50, *priority);
            all[0].add(&run[0]).unwrap();
            all[1].add(&run[1]).unwrap();
        }
    }
    for (_, name, all) in &by_priority {
        println!(
            "decision to visible, real daemon, {name}  {}   ({} changes under load; the daemon's own figure)",
            quantiles(&all[0]),
            all[0].len()
        );
        println!(
            "  of which in the writer                              {}",
            quantiles(&all[1])
        );
    }

    let (mean, max, excess) = disruption();
    println!(
        "disruption per failure                mean {:.4}   max {:.4}   ideal 1/N = {:.4}   entries moved beyond the failed backend's: {excess}",
        mean,
        max,
        1.0 / BACKENDS as f64
    );

    let mut active = death_to_shift("50ms", "events_to_eject = 0", true, 5);
    println!(
        "death to shift, active (50 ms x 2)    {}   target < 101 ms",
        summary(&mut active)
    );
    let mut passive = death_to_shift("5s", "events_to_eject = 3", false, 5);
    println!(
        "death to shift, passive RST (3 events) {}   target < 5 ms",
        summary(&mut passive)
    );
    println!("\nreproduce: cargo xtask bench failover   (as root)");
}
