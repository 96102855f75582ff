//! End to end, hot reload: a config change that adds one backend and removes another, applied
//! with SIGHUP under long-lived streams, and invalid reloads refused through the CLI while the
//! running config stays.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use understudy::status::Snapshot;
use understudy_testbed::{
    Daemon, Netns, Topology, require_root,
    traffic::{Stream, close, open_streams, rounds, short_connection},
};
use understudy_testbed::{admin, cli, named_echo_servers};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

fn vip() -> SocketAddr {
    "10.0.0.10:80".parse().unwrap()
}

/// Writes the config (the backends `backends`, each with `extra` lines) to the topology's config
/// file and returns its path.
fn config(topo: &Topology, backends: &[usize], extra: &str) -> PathBuf {
    let backends: Vec<(usize, &str)> = backends.iter().map(|&i| (i, extra)).collect();
    topo.echo_config("", "table_size = 1021", &backends)
}

fn landed(client: &Netns, n: usize) -> Vec<String> {
    client.enter(|| (0..n).map(|_| short_connection(vip()).unwrap()).collect())
}

fn assert_going(streams: &[Stream], on: &str, before: &[u64], what: &str) {
    let mut watched = 0;
    for (i, s) in streams.iter().enumerate() {
        if s.name != on {
            continue;
        }
        watched += 1;
        assert_eq!(
            *s.error.lock().unwrap(),
            None,
            "{what}: stream {i} on {on} broke"
        );
        assert!(
            s.rounds.load(Ordering::Relaxed) > before[i] + 5,
            "{what}: stream {i} stalled"
        );
    }
    assert!(watched > 0, "{what}: no stream on {on} to watch");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_reload_adds_and_removes_backends_without_breaking_streams_and_refuses_bad_configs() {
    require_root("the reload test");
    let topo = Topology::build(3);
    let _servers = named_echo_servers(&topo);
    let path = config(&topo, &[1, 2], "");
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let streams = open_streams(&topo.client, vip(), 16);

    // 1. be1 out, be3 in, by SIGHUP.
    config(&topo, &[2, 3], "");
    let before = rounds(&streams);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !landed(&topo.client, 20).iter().any(|n| n == "be3") {
        assert!(
            Instant::now() < deadline,
            "be3 never took traffic after the reload"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_going(
        &streams,
        "be2",
        &before,
        "after adding be3 and removing be1",
    );
    let after = landed(&topo.client, 100);
    assert!(after.iter().all(|n| n == "be2" || n == "be3"), "{after:?}");
    assert!(after.iter().any(|n| n == "be2") && after.iter().any(|n| n == "be3"));
    assert!(daemon.output().contains("reloaded"), "{}", daemon.output());

    // 2. An invalid file is refused with its location, and nothing changes.
    let good = std::fs::read_to_string(&path).unwrap();
    config(&topo, &[1, 2, 3], "weight = 0\n");
    let before = rounds(&streams);
    let (ok, _, stderr) = cli(BIN, &topo.lb, &["reload"]);
    assert!(!ok, "an invalid reload was accepted");
    assert!(
        stderr.contains(&format!("{}:", path.display()))
            && stderr.contains("weight 0 is out of range"),
        "{stderr}"
    );
    // 3. So is a change that needs a restart.
    write(&path, &good.replace("\"lb-client\", ", ""));
    let (ok, _, stderr) = cli(BIN, &topo.lb, &["reload"]);
    assert!(!ok);
    assert!(stderr.contains("take effect on a restart only"), "{stderr}");

    std::thread::sleep(Duration::from_millis(300));
    assert_going(&streams, "be2", &before, "after the refused reloads");
    let (ok, json, _) = cli(BIN, &topo.lb, &["status", "--json"]);
    assert!(ok);
    let status: Snapshot = serde_json::from_str(&json).unwrap();
    let addresses: Vec<&str> = status.services[0]
        .backends
        .iter()
        .map(|b| b.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        vec!["10.0.12.2:8080", "10.0.13.2:8080"],
        "the running config changed"
    );
    let still = landed(&topo.client, 50);
    assert!(still.iter().all(|n| n == "be2" || n == "be3"), "{still:?}");

    // 4. The good file again, through the CLI: accepted.
    write(&path, &good);
    let (ok, stdout, stderr) = cli(BIN, &topo.lb, &["reload"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 services, 2 backends"), "{stdout}");

    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    assert!(
        metrics.contains("understudy_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("understudy_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );

    close(&streams);
    assert!(daemon.stop());
    std::fs::remove_file(path).ok();
}

/// The harness waits for the daemon's own `READY=1` on a socket it owns (`Daemon::start`); what
/// follows is what systemd hears around a reload and a stop.
#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    require_root("the sd_notify test");
    let topo = Topology::build(1);
    let path = config(&topo, &[1], "");
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let wait = Duration::from_secs(10);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let reloading = daemon.notify().next(wait).expect("RELOADING");
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(daemon.notify().next(wait).as_deref(), Some("READY=1\n"));
    let (stopped, notify) = daemon.stop_keeping_notify();
    assert!(stopped);
    assert_eq!(notify.next(wait).as_deref(), Some("STOPPING=1\n"));
    std::fs::remove_file(path).ok();
}

#[test]
fn after_kill_9_the_pinned_program_serves_and_the_successor_adopts_it() {
    require_root("the restart test");
    let topo = Topology::build(2);
    let _servers = named_echo_servers(&topo);
    let path = config(&topo, &[1, 2], "");
    let pinned = understudy::config::pin_dir(topo.lb.name());
    let first = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    assert!(pinned.join("FLOWS").exists() && pinned.join("link-lb-client").exists());

    let streams = open_streams(&topo.client, vip(), 12);
    let load =
        understudy_testbed::traffic::Load::start(&topo.client, vip(), Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(300));
    let before = rounds(&streams);
    let started = Instant::now();

    // SIGKILL: no cleanup. The pinned program keeps balancing with the pinned maps.
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        pinned.join("FLOWS").exists(),
        "the pinned state went with the daemon"
    );
    assert_going(&streams, "be1", &before, "with no daemon");
    assert_going(&streams, "be2", &before, "with no daemon");

    let second = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let log = second.output();
    assert!(log.contains("adopting the pinned state"), "{log}");
    assert!(log.contains("mode=\"adopted\""), "{log}");
    std::thread::sleep(Duration::from_millis(700));
    let during: Vec<Result<String, String>> = load.since(started - Duration::from_millis(300));
    let failed: Vec<&String> = during.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(during.len() > 100, "only {} connections made", during.len());
    assert!(
        failed.is_empty(),
        "{} connections failed across the restart: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let before = rounds(&streams);
    std::thread::sleep(Duration::from_millis(300));
    assert_going(&streams, "be1", &before, "after the restart");
    assert_going(&streams, "be2", &before, "after the restart");
    let landed = landed(&topo.client, 60);
    assert!(landed.iter().any(|n| n == "be1") && landed.iter().any(|n| n == "be2"));

    load.finish();
    close(&streams);
    assert!(second.stop());
    assert!(!pinned.exists(), "a clean stop leaves nothing pinned");
    let (ok, stdout, _) = cli(BIN, &topo.lb, &["clean", "--instance", topo.lb.name()]);
    assert!(ok && stdout.contains("nothing pinned"), "{stdout}");
    drop(first);
    std::fs::remove_file(path).ok();
}

/// A restart takes over each backend by service and address, not by position in the config.
/// Here reloads have moved the ids away from config order (a removed backend keeps its id), so
/// a fresh plan numbers them differently from the pinned one. The HTTP service's backends answer
/// their checks 1.5 s late: a successor that mistook them for new backends would wait for those
/// first checks and answer 503 meanwhile (what the soak once saw right after a `kill -9`).
#[test]
fn a_restart_after_reloads_keeps_each_backends_health_by_address() {
    require_root("the adoption-by-address test");
    let topo = Topology::build(3);
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let http: Vec<_> = (1..=2)
        .map(|i| {
            understudy_testbed::HttpBackend::start(
                &topo.backends[i - 1],
                SocketAddr::new(topo.backend_addr(i, false), 8080),
                format!("be{i}"),
            )
        })
        .collect();
    let text = |nat: &[usize]| {
        let mut t = format!(
            "{}\n[[service]]\nname = \"nat\"\nvip = \"10.0.0.10:81\"\n\
             [service.health]\nkind = \"none\"\n",
            topo.dataplane_toml()
        );
        for &i in nat {
            t.push_str(&format!(
                "[[service.backend]]\naddress = \"{}:9\"\n",
                topo.backend_addr(i, false)
            ));
        }
        t.push_str(
            "\n[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n\
             [service.health]\nkind = \"http\"\npath = \"/\"\ninterval = \"3s\"\ntimeout = \"3s\"\n",
        );
        for i in 1..=2 {
            t.push_str(&format!(
                "[[service.backend]]\naddress = \"{}:8080\"\n",
                topo.backend_addr(i, false)
            ));
        }
        t
    };
    let path = std::env::temp_dir().join(format!("understudy-{}-adopt.toml", topo.lb.name()));
    write(&path, &text(&[1, 2, 3]));
    let first = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let get = || {
        topo.client.enter(|| {
            understudy_testbed::http_get(vip(), "/", Duration::from_secs(10))
                .unwrap_or_else(|e| (0, e))
        })
    };
    // The first checks pass before any request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get().0 != 200 {
        assert!(Instant::now() < deadline, "the HTTP service never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // be3 leaves the NAT service: its id stays its own, so the pinned ids are no longer the
    // config's order (NAT be1, be2: 0, 1; api be1, be2: 3, 4; a fresh plan says 2, 3).
    write(&path, &text(&[1, 2]));
    let (ok, stdout, stderr) = cli(BIN, &topo.lb, &["reload"]);
    assert!(ok, "{stdout}{stderr}");

    for b in &http {
        b.delay_ms.store(1500, Ordering::SeqCst);
    }
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    let second = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let (status, body) = get();
    let log = second.output();
    assert_eq!(
        status, 200,
        "right after the restart, before any check could finish: {body}\n{log}"
    );
    assert!(log.contains("adopting the pinned state"), "{log}");
    assert!(second.stop());
    drop(first);
    std::fs::remove_file(path).ok();
}
