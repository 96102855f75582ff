//! End to end, HTTP routes: the daemon serving one HTTP service from two `[[pool]]`s of backends
//! in their own namespaces. Requests take the route their path selects; the pools have their own
//! health checks; a primary pool whose backends all fail their checks hands its route to the
//! backup pool, first tries included; `/status` and `understudy status` show the routes, the
//! pool each serves from, and the pools themselves.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use understudy::status::{ServedProtocol, Snapshot};
use understudy_testbed::{Daemon, HttpBackend, Topology, admin, cli, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// GET `path` on its own connection: status, body and the attempts header.
fn get(to: SocketAddr, path: &str) -> (u16, String, u32) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let attempts = text
        .lines()
        .find_map(|l| l.strip_prefix("x-understudy-attempts: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body, attempts)
}

fn snapshot(topo: &Topology) -> Snapshot {
    let (code, body) = admin(&topo.lb, None, "GET", "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn routes_pick_their_pool_and_a_pool_that_fails_its_checks_hands_over_to_the_backup() {
    require_root("the HTTP routes test");
    let topo = Topology::build(3);
    let backends = HttpBackend::on_every_backend(&topo);
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let be = |i: usize| format!("{}:8080", topo.backend_addr(i, false));
    let config = format!(
        r#"{dataplane}
[[pool]]
name = "primary"
[pool.health]
kind = "http"
path = "/healthz"
interval = "200ms"
fall = 2
[[pool.backend]]
address = "{be1}"
[[pool.backend]]
address = "{be2}"

[[pool]]
name = "backup"
[pool.health]
kind = "http"
interval = "200ms"
[[pool.backend]]
address = "{be3}"

[[service]]
name = "api"
vip = "10.0.0.10:80"
mode = "http"
[service.http]
attempt_header = "x-understudy-attempts"
[service.circuit]
consecutive_failures = 1000

[[service.route]]
name = "static"
path_prefix = "/static/"
pools = ["backup"]

[[service.route]]
name = "app"
path_prefix = "/app/"
pools = ["primary", "backup"]
"#,
        dataplane = topo.dataplane_toml(),
        be1 = be(1),
        be2 = be(2),
        be3 = be(3),
    );
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, &config).unwrap();
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let answered = |path: &str, n: usize| -> Vec<(u16, String, u32)> {
        topo.client.enter(|| {
            (0..n)
                .map(|_| {
                    let (status, body, attempts) = get(vip, path);
                    (
                        status,
                        body.split(' ').next().unwrap_or("").to_string(),
                        attempts,
                    )
                })
                .collect()
        })
    };

    // The pools' backends start down until their first check passes (wait_for_first_check).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !snapshot(&topo).services[1..]
        .iter()
        .all(|s| s.backends.iter().all(|b| b.healthy))
    {
        assert!(
            Instant::now() < deadline,
            "pools never came up:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Each route reaches its pool; no route, a 404.
    let app = answered("/app/x", 20);
    assert!(app.iter().all(|(s, _, _)| *s == 200), "{app:?}");
    for name in ["be1", "be2"] {
        assert!(
            app.iter().any(|(_, b, _)| b == name),
            "app reaches {name}: {app:?}"
        );
    }
    assert!(app.iter().all(|(_, b, _)| b != "be3"), "{app:?}");
    let stat = answered("/static/logo.png", 10);
    assert!(
        stat.iter().all(|(s, b, _)| *s == 200 && b == "be3"),
        "{stat:?}"
    );
    let none = topo.client.enter(|| get(vip, "/nowhere"));
    assert_eq!(
        (none.0, none.1.as_str()),
        (404, "404 no route matches this request\n")
    );

    // /status: the pools, and the routes with the pool each serves from.
    let snap = snapshot(&topo);
    let names: Vec<(&str, ServedProtocol, &str)> = snap
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.protocol, s.vip.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("api", ServedProtocol::Http, "10.0.0.10:80"),
            ("primary", ServedProtocol::Pool, "-"),
            ("backup", ServedProtocol::Pool, "-"),
        ]
    );
    let api = &snap.services[0];
    assert!(
        api.backends.is_empty(),
        "the service has no backends of its own"
    );
    let routes: Vec<(&str, &str, &str)> = api
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.matches.as_str(), r.serving.as_str()))
        .collect();
    assert_eq!(
        routes,
        [
            ("static", "path /static/*", "backup"),
            ("app", "path /app/*", "primary")
        ]
    );
    assert_eq!((api.routes[1].requests, api.routes[0].requests), (20, 10));

    // Both primary backends fail their checks: the route's first tries go to the backup pool.
    for b in &backends[..2] {
        b.status.store(503, Ordering::SeqCst);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = snapshot(&topo);
        if snap.services[1].backends.iter().all(|b| !b.healthy) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "primary still up:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = backends[0].hits.load(Ordering::SeqCst) + backends[1].hits.load(Ordering::SeqCst);
    let app = answered("/app/x", 20);
    assert!(
        app.iter()
            .all(|(s, b, a)| *s == 200 && b == "be3" && *a == 1),
        "the backup answers at the first try: {app:?}"
    );
    let after = backends[0].hits.load(Ordering::SeqCst) + backends[1].hits.load(Ordering::SeqCst);
    // Only the health checks reach the primary now (a few per 200 ms interval).
    assert!(
        after - before < 20,
        "requests still reached the primary: {} hits",
        after - before
    );

    // `understudy status` prints the routes and the pools.
    let (ok, out, err) = cli(BIN, &topo.lb, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("api routes:"), "{out}");
    for needle in ["static", "path /static/*", "primary > backup", "pool"] {
        assert!(out.contains(needle), "{needle} in\n{out}");
    }
    let (_, metrics) = admin(&topo.lb, None, "GET", "/metrics");
    assert!(
        metrics.contains(
            "understudy_http_route_requests_total{service=\"api\",route=\"app\",pool=\"backup\",code=\"200\"} 20"
        ),
        "{metrics}"
    );
    assert!(daemon.stop(), "clean stop");
}

#[test]
fn a_returning_backend_ramps_up_over_its_slow_start() {
    require_root("the HTTP slow-start test");
    let topo = Topology::build(2);
    let backends = HttpBackend::on_every_backend(&topo);
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let config = format!(
        "{}\n[[pool]]\nname = \"app\"\nslow_start = \"2s\"\n[pool.health]\nkind = \"http\"\n\
         interval = \"100ms\"\nrise = 1\nfall = 1\n[[pool.backend]]\naddress = \"{}:8080\"\n\
         [[pool.backend]]\naddress = \"{}:8080\"\n\
         [[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n\
         [[service.route]]\npools = [\"app\"]\n",
        topo.dataplane_toml(),
        topo.backend_addr(1, false),
        topo.backend_addr(2, false),
    );
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, &config).unwrap();
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &path);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let be2_state = |topo: &Topology| {
        let snap = snapshot(topo);
        let b = snap.services[1].backends[1].clone();
        (b.healthy, b.slow_start_percent)
    };
    let wait = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while be2_state(&topo).0 != want {
            assert!(
                Instant::now() < deadline,
                "be2 never became healthy={want}:\n{}",
                daemon.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(true);
    let (_, at_start) = be2_state(&topo);
    assert_eq!(
        at_start, None,
        "no slow start for backends up from the start"
    );
    backends[1].status.store(503, Ordering::SeqCst);
    wait(false);
    backends[1].status.store(200, Ordering::SeqCst);
    wait(true);
    let back = Instant::now();
    let (_, percent) = be2_state(&topo);
    assert!(
        percent.is_some_and(|p| p < 50),
        "/status shows the ramp: {percent:?}"
    );
    // be2's share of requests in each 500 ms of the 2 s ramp, and after it.
    let mut windows = [(0u32, 0u32); 5];
    topo.client.enter(|| {
        while back.elapsed() < Duration::from_millis(2500) {
            let w = (back.elapsed().as_millis() / 500).min(4) as usize;
            let (status, body, _) = get(vip, "/");
            assert_eq!(status, 200);
            windows[w].1 += 1;
            if body.starts_with("be2") {
                windows[w].0 += 1;
            }
        }
    });
    let shares: Vec<f64> = windows
        .iter()
        .map(|(b, n)| *b as f64 / (*n).max(1) as f64)
        .collect();
    eprintln!("be2's share per 500 ms since it came back: {shares:.2?} of {windows:?}");
    assert!(shares[0] < 0.3, "ramping: {shares:?}");
    assert!(shares[4] > 0.4, "full share after the ramp: {shares:?}");
    assert!(
        shares[0] < shares[2] && shares[2] < shares[4] + 0.1,
        "rising: {shares:?}"
    );
    assert!(daemon.stop());
}
