//! End to end, failover: the real daemon with HTTP health checks, two primary backends and one
//! backup, a client that keeps opening short connections and holds long-lived streams, and
//! backends killed and restored under that load. Bounds are generous on purpose: the precise
//! figures belong in `cargo xtask bench failover`.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use understudy_testbed::{
    Daemon, Netns, Topology, require_root,
    traffic::{
        Backend, Load, assert_streams_healthy, close, open_streams, rounds, short_connection,
    },
};

const VIP: &str = "10.0.0.10:80";
/// Health checks every 100 ms, down after 2 failures: a dead backend is out within about
/// 2 x 110 ms + the 80 ms timeout. The tests allow a full second.
const DETECTION: Duration = Duration::from_millis(1000);

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

fn write_config(topo: &Topology, interval: &str, passive: &str) -> PathBuf {
    let service = format!(
        "table_size = 1021\npassive = {{ {passive} }}\n\n[service.health]\nkind = \"http\"\n\
         port = 8081\npath = \"/\"\ninterval = \"{interval}\"\ntimeout = \"80ms\"\nrise = 2\nfall = 2"
    );
    let backends: Vec<(usize, &str)> = (1..=topo.backends.len())
        .map(|i| (i, if i == 3 { "tier = 1" } else { "tier = 0" }))
        .collect();
    topo.echo_config("", &service, &backends)
}

fn web_root(topo: &Topology) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-www", topo.lb.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "ok\n").unwrap();
    dir
}

/// Waits (up to 15 s) until short connections reach every backend in `names`.
fn wait_for(client: &Netns, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < deadline {
        let got: Vec<Result<String, String>> =
            client.enter(|| (0..20).map(|_| short_connection(vip())).collect());
        seen.extend(got.into_iter().flatten());
        if names.iter().all(|n| seen.contains(*n)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backends {names:?} never all answered; saw {seen:?}");
}

/// Waits (up to 10 s) until something listens on `addr`, seen from `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr}");
}

fn assert_all_ok_on(results: &[Result<String, String>], names: &[&str], what: &str) {
    assert!(
        results.len() > 20,
        "{what}: only {} connections made",
        results.len()
    );
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} connections failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(3)]
    );
    let stray: Vec<&String> = results
        .iter()
        .flatten()
        .filter(|n| !names.contains(&n.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "{what}: connections reached {stray:?}, expected only {names:?}"
    );
}

#[test]
fn failover_to_the_backup_and_back_under_load() {
    require_root("the failover end-to-end test");
    let topo = Topology::build(3);
    let root = web_root(&topo);
    let mut backends: Vec<Backend> = (1..=3).map(Backend::new).collect();
    for b in &mut backends {
        b.start(&topo, &root, true);
    }
    let config = write_config(&topo, "100ms", "");
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    wait_for(&topo.client, &["be1", "be2"]);

    let streams = open_streams(&topo.client, vip(), 20);
    let on: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    assert!(
        on.iter().all(|n| *n == "be1" || *n == "be2"),
        "a stream opened on the backup: {on:?}"
    );
    let load = Load::start(&topo.client, vip(), Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_all_ok_on(
        &load.since(Instant::now() - Duration::from_millis(400)),
        &["be1", "be2"],
        "all up",
    );

    // 1. One primary dies: after detection, nothing fails and nothing reaches it; the other
    //    primary's streams go on byte for byte.
    let before = rounds(&streams);
    let killed = Instant::now();
    backends[0].kill();
    std::thread::sleep(DETECTION + Duration::from_millis(1000));
    assert_all_ok_on(&load.since(killed + DETECTION), &["be2"], "be1 killed");
    assert_streams_healthy(&streams, &["be2"], &before, "be1 killed");

    // 2. Both primaries die: the backup takes every new connection.
    let killed = Instant::now();
    backends[1].kill();
    std::thread::sleep(DETECTION + Duration::from_millis(1000));
    assert_all_ok_on(
        &load.since(killed + DETECTION),
        &["be3"],
        "be1 and be2 killed",
    );
    let backup_streams = open_streams(&topo.client, vip(), 5);
    assert!(backup_streams.iter().all(|s| s.name == "be3"));

    // 3. The primaries return: new connections go back to them, and the streams opened on the
    //    backup carry on.
    let before = rounds(&backup_streams);
    let restored = Instant::now();
    backends[0].start(&topo, &root, true);
    backends[1].start(&topo, &root, true);
    // Python's start-up, then rise 2 x 100 ms.
    let recovery = Duration::from_millis(2500);
    std::thread::sleep(recovery + Duration::from_millis(1000));
    assert_all_ok_on(
        &load.since(restored + recovery),
        &["be1", "be2"],
        "primaries restored",
    );
    assert_streams_healthy(&backup_streams, &["be3"], &before, "primaries restored");

    load.finish();
    close(&streams);
    close(&backup_streams);
    let output = daemon.output();
    assert!(output.contains("backend down"), "{output}");
    assert!(daemon.stop(), "understudy did not exit cleanly");
    std::fs::remove_file(config).ok();
    std::fs::remove_dir_all(root).ok();
}

/// Two backends whose health endpoints answer (probed every 5 s, so the next probe after
/// start-up is far beyond what a test waits), with the traffic port of those in `refusing` closed
/// (SYNs get RSTs), and the daemon with passive detection at 3 events, started once both pass
/// their first probe.
struct PassiveSetup {
    topo: Topology,
    root: PathBuf,
    backends: Vec<Backend>,
    config: PathBuf,
    daemon: Daemon,
}

fn passive_setup(refusing: &[usize]) -> PassiveSetup {
    let topo = Topology::build(2);
    let root = web_root(&topo);
    let mut backends: Vec<Backend> = (1..=2).map(Backend::new).collect();
    for (i, b) in backends.iter_mut().enumerate() {
        b.start(&topo, &root, !refusing.contains(&(i + 1)));
    }
    for i in 1..=2 {
        wait_listening(&topo.lb, SocketAddr::new(topo.backend_addr(i, false), 8081));
    }
    let config = write_config(&topo, "5s", "events_to_eject = 3");
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    std::thread::sleep(Duration::from_millis(300));
    PassiveSetup {
        topo,
        root,
        backends,
        config,
        daemon,
    }
}

#[test]
fn a_backend_refusing_connections_is_ejected_before_its_next_probe() {
    require_root("the passive-detection end-to-end test");
    // be1's traffic port refuses: SYNs get RSTs.
    let PassiveSetup {
        topo,
        root,
        backends,
        config,
        daemon,
    } = passive_setup(&[1]);
    let started = Instant::now();
    let results: Vec<(Instant, Result<String, String>)> = topo.client.enter(|| {
        let mut v = Vec::new();
        let mut streak = 0;
        while streak < 100 && started.elapsed() < Duration::from_secs(4) {
            let r = short_connection(vip());
            streak = if r.is_ok() { streak + 1 } else { 0 };
            v.push((Instant::now(), r));
        }
        v
    });
    let failures: Vec<&(Instant, Result<String, String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    let last_failure = failures.last().map(|(t, _)| t.duration_since(started));
    assert!(
        results.iter().rev().take(100).all(|(_, r)| r.is_ok()),
        "connections kept failing: {} of {} failed, last at {last_failure:?}\n{}",
        failures.len(),
        results.len(),
        daemon.output()
    );
    assert!(
        last_failure.is_none_or(|t| t < Duration::from_millis(2500)),
        "ejection took until {last_failure:?}, too close to the next probe"
    );
    assert!(
        failures.len() <= 10,
        "{} connections failed before the ejection",
        failures.len()
    );
    let output = daemon.output();
    assert!(
        output.contains("passive: rst_to_syn"),
        "no passive ejection logged:\n{output}"
    );
    eprintln!(
        "{} of {} connections refused before the passive ejection; last at {last_failure:?}",
        failures.len(),
        results.len()
    );
    assert!(daemon.stop());
    drop(backends);
    std::fs::remove_file(config).ok();
    std::fs::remove_dir_all(root).ok();
}

/// Passive evidence alone never empties a service whose checks pass: with both backends
/// refusing connections on their traffic port (their health endpoints answer), the kernel's
/// RST-to-SYN reports eject one backend, and the cap (`max_ejection_percent`, never the last
/// backend in service) refuses the other's ejection, saying why.
#[test]
fn passive_evidence_never_ejects_every_backend() {
    require_root("the passive ejection cap test");
    let PassiveSetup {
        topo,
        root,
        backends,
        config,
        daemon,
    } = passive_setup(&[1, 2]);
    let started = Instant::now();
    topo.client.enter(|| {
        while started.elapsed() < Duration::from_secs(2) {
            let _ = short_connection(vip());
        }
    });
    let output = daemon.output();
    let ejected = output
        .lines()
        .filter(|l| l.contains("backend down") && l.contains("passive: rst_to_syn"))
        .count();
    assert_eq!(ejected, 1, "exactly one passive ejection:\n{output}");
    assert!(
        output.contains("passive ejection refused")
            && output.contains("the service's last backend in service"),
        "the refusal is logged with its reason:\n{output}"
    );
    assert!(daemon.stop());
    drop(backends);
    std::fs::remove_file(config).ok();
    std::fs::remove_dir_all(root).ok();
}

/// Slow start on a kernel service: a backend that comes back takes its Maglev entries back in
/// batches over `slow_start`, so its share of new connections rises over the ramp instead of
/// jumping to half at once.
#[test]
fn a_returning_backend_ramps_its_share_of_new_flows_over_slow_start() {
    require_root("the L4 slow-start test");
    let topo = Topology::build(2);
    let start = |i: usize| {
        understudy_testbed::EchoServer::start_greeting(
            &topo.backends[i - 1],
            SocketAddr::new(topo.backend_addr(i, false), 8080),
            Some(format!("be{i}\n")),
        )
    };
    let _be1 = start(1);
    let be2 = start(2);
    let config = topo.echo_config(
        "",
        "table_size = 1021\nslow_start = \"3s\"\nhealth = { kind = \"tcp\", interval = \"100ms\", timeout = \"80ms\", fall = 1, rise = 1 }",
        &[(1, ""), (2, "")],
    );
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    wait_for(&topo.client, &["be1", "be2"]);

    // be2 goes away and comes back.
    be2.kill();
    let deadline = Instant::now() + DETECTION;
    let connections = |n: usize| -> Vec<Result<String, String>> {
        topo.client
            .enter(|| (0..n).map(|_| short_connection(vip())).collect())
    };
    while connections(20).iter().any(|r| r.as_deref() == Ok("be2")) {
        assert!(
            Instant::now() < deadline,
            "be2 still taking flows:\n{}",
            daemon.output()
        );
    }
    let _be2 = start(2);
    daemon.wait_for_line("back up: slow start", Duration::from_secs(5));

    // Its share of new connections per half second, over the 3 s ramp and after it.
    let mut shares = Vec::new();
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(4000) {
        let window = Instant::now();
        let results = connections(60);
        let ok: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), results.len(), "failed connections: {results:?}");
        let on_be2 = ok.iter().filter(|n| n.as_str() == "be2").count();
        shares.push(on_be2 as f64 / ok.len() as f64);
        if let Some(rest) = Duration::from_millis(500).checked_sub(window.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    println!("be2's share per window over the ramp: {shares:.2?}");
    let first = shares[0];
    let last = *shares.last().unwrap();
    assert!(first < 0.25, "be2 took {first:.2} at once: {shares:.2?}");
    assert!(last > 0.3, "be2 never took its share back: {shares:.2?}");
    let middle = shares[shares.len() / 2 - 1];
    assert!(
        first < middle && middle < last + 0.1,
        "no ramp: {shares:.2?}"
    );
    assert!(daemon.stop());
}
